//! Reading an answer's usage while it passes through, without holding back a byte: a streamed
//! answer (SSE) carries it in `message_start` (`message.usage`: input and cache tokens) and
//! `message_delta` (`usage`: the output tokens so far, cumulative); a JSON answer in its top-level
//! `usage`. Only what is needed is kept: the current line of a stream (bounded), or a JSON body up
//! to a bound.

use serde_json::Value;

use crate::domain::TurnUsage;

/// A stream line longer than this is not looked at (usage events are a few hundred bytes).
const MAX_LINE: usize = 1 << 20;
/// A JSON answer longer than this is passed on without its usage being read.
const MAX_JSON: usize = 8 << 20;

/// Takes every count present in a `usage` object (later reports are cumulative: they replace).
fn apply(counts: &mut TurnUsage, usage: &Value) {
    let set = |field: &mut u64, name: &str| {
        if let Some(n) = usage[name].as_u64() {
            *field = n;
        }
    };
    set(&mut counts.input_tokens, "input_tokens");
    set(&mut counts.output_tokens, "output_tokens");
    set(&mut counts.cache_read_input_tokens, "cache_read_input_tokens");
    set(
        &mut counts.cache_creation_input_tokens,
        "cache_creation_input_tokens",
    );
}

/// What an answer's body is, for reading its usage.
pub(super) enum UsageScan {
    /// Server-sent events.
    Stream(StreamScan),
    /// A JSON body, kept up to [`MAX_JSON`] (`None` once it grew past it).
    Json(Option<Vec<u8>>),
    /// Anything else: nothing to read.
    Opaque,
}

/// The `event:` line of the event being read, as far as usage goes.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum EventName {
    /// None yet (the data says what it is).
    #[default]
    Unnamed,
    /// `message_start` or `message_delta`: carries usage.
    Usage,
    /// Any other event.
    Other,
}

/// What a streamed answer has reported so far, and the line being read.
#[derive(Default)]
pub(super) struct StreamScan {
    line: Vec<u8>,
    /// The current line grew past [`MAX_LINE`]: skip to its end.
    skipping: bool,
    /// The `event:` of the event being read.
    event: EventName,
    usage: TurnUsage,
    model: Option<String>,
}

impl UsageScan {
    /// The scan for an answer of this `content-type`.
    pub(super) fn for_content_type(content_type: &str) -> UsageScan {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/event-stream" => UsageScan::Stream(StreamScan::default()),
            "application/json" => UsageScan::Json(Some(Vec::new())),
            _ => UsageScan::Opaque,
        }
    }

    /// Reads one chunk of the answer (the chunk itself goes on unchanged).
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageScan::Stream(scan) => scan.feed(chunk),
            UsageScan::Json(body) => {
                if let Some(kept) = body {
                    if kept.len() + chunk.len() > MAX_JSON {
                        *body = None;
                    } else {
                        kept.extend_from_slice(chunk);
                    }
                }
            }
            UsageScan::Opaque => {}
        }
    }

    /// The usage (and the model the answer names) reported by what was read.
    pub(super) fn finish(&mut self) -> (TurnUsage, Option<String>) {
        match self {
            UsageScan::Stream(scan) => {
                // A last line without its newline (a stream that was cut) still counts.
                if !scan.skipping && !scan.line.is_empty() {
                    let line = std::mem::take(&mut scan.line);
                    scan.line_done(&line);
                }
                (std::mem::take(&mut scan.usage), scan.model.take())
            }
            UsageScan::Json(Some(body)) => {
                let mut usage = TurnUsage::default();
                let answer: Value = serde_json::from_slice(body).unwrap_or_default();
                apply(&mut usage, &answer["usage"]);
                (usage, answer["model"].as_str().map(str::to_string))
            }
            UsageScan::Json(None) | UsageScan::Opaque => (TurnUsage::default(), None),
        }
    }
}

impl StreamScan {
    fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|b| *b == b'\n') {
            let piece = &chunk[..end];
            chunk = &chunk[end + 1..];
            if self.skipping {
                self.skipping = false;
            } else if self.line.is_empty() {
                self.line_done(piece);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(piece);
                self.line_done(&line);
                line.clear();
                self.line = line;
            }
        }
        if self.skipping || chunk.is_empty() {
            return;
        }
        if self.line.len() + chunk.len() > MAX_LINE {
            self.line.clear();
            self.skipping = true;
        } else {
            self.line.extend_from_slice(chunk);
        }
    }

    /// One complete line of the event stream.
    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The end of an event.
            self.event = EventName::Unnamed;
        } else if let Some(name) = line.strip_prefix(b"event:") {
            self.event = match name.trim_ascii() {
                b"message_start" | b"message_delta" => EventName::Usage,
                _ => EventName::Other,
            };
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let wanted = match self.event {
                EventName::Usage => true,
                EventName::Other => false,
                // No `event:` line: look inside the data when it may hold usage.
                EventName::Unnamed => contains(data, b"\"usage\""),
            };
            if wanted {
                self.data(data);
            }
        }
    }

    fn data(&mut self, data: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match event["type"].as_str() {
            Some("message_start") => {
                let message = &event["message"];
                apply(&mut self.usage, &message["usage"]);
                if let Some(model) = message["model"].as_str() {
                    self.model = Some(model.to_string());
                }
            }
            Some("message_delta") => apply(&mut self.usage, &event["usage"]),
            _ => {}
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",",
        "\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":30,\"cache_read_input_tokens\":400,\"output_tokens\":1}}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\\\"usage\\\" is a word\"}}\n",
        "\n",
        "event: message_delta\r\n",
        "data: {\"delta\":{\"stop_reason\":\"end_turn\"},\"type\":\"message_delta\",\"usage\":{\"output_tokens\":57}}\r\n",
        "\r\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n",
        "\n",
    );

    fn scan_in_pieces(text: &str, size: usize) -> (TurnUsage, Option<String>) {
        let mut scan = UsageScan::for_content_type("text/event-stream; charset=utf-8");
        for piece in text.as_bytes().chunks(size) {
            scan.feed(piece);
        }
        scan.finish()
    }

    #[test]
    fn a_stream_reports_its_usage_however_it_is_cut() {
        let expected = TurnUsage {
            input_tokens: 12,
            output_tokens: 57,
            cache_read_input_tokens: 400,
            cache_creation_input_tokens: 30,
        };
        for size in [1, 2, 7, 64, STREAM.len()] {
            let (usage, model) = scan_in_pieces(STREAM, size);
            assert_eq!(usage, expected, "chunks of {size}");
            assert_eq!(model.as_deref(), Some("claude-x"));
        }
    }

    #[test]
    fn a_stream_without_event_lines_is_read_from_its_data() {
        let text = STREAM
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .collect::<Vec<_>>()
            .join("\n");
        let (usage, _) = scan_in_pieces(&text, 5);
        assert_eq!(usage.input_tokens, 12);
        assert_eq!(usage.output_tokens, 57);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_rest_still_read() {
        let long = format!(
            "event: content_block_delta\ndata: {{\"text\":\"{}\"}}\n\n{STREAM}",
            "x".repeat(MAX_LINE + 10)
        );
        let (usage, _) = scan_in_pieces(&long, 4096);
        assert_eq!(usage.output_tokens, 57);
    }

    #[test]
    fn a_json_answer_reports_its_top_level_usage() {
        let mut scan = UsageScan::for_content_type("application/json");
        let body = br#"{"id":"msg_1","model":"claude-y","usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5}}"#;
        for piece in body.chunks(10) {
            scan.feed(piece);
        }
        let (usage, model) = scan.finish();
        assert_eq!(
            usage,
            TurnUsage {
                input_tokens: 3,
                output_tokens: 4,
                cache_read_input_tokens: 5,
                cache_creation_input_tokens: 0
            }
        );
        assert_eq!(model.as_deref(), Some("claude-y"));
        let mut other = UsageScan::for_content_type("text/plain");
        other.feed(body);
        assert_eq!(other.finish(), (TurnUsage::default(), None));
    }
}
