//! The CLI's stream-json protocol: typed views of the lines it prints, and the lines we write.
//! Unknown message types are kept as raw JSON (`Other`): the CLI adds types between versions.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::domain::TurnUsage;

/// One line the CLI printed, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    /// A token-level piece of the main agent's text (`stream_event` / `text_delta`).
    TextDelta(String),
    /// A complete assistant message of the main agent: its text blocks and tool calls.
    Assistant {
        /// Its text blocks, in order.
        texts: Vec<String>,
        /// Its tool calls, in order.
        tool_uses: Vec<ToolUse>,
    },
    /// Results of the main agent's tool calls.
    ToolResults(Vec<ToolResult>),
    /// The CLI is retrying the model API.
    ApiRetry {
        /// Which attempt comes next.
        attempt: u64,
        /// How many attempts the CLI makes in all.
        max_retries: u64,
        /// How long it waits before the attempt.
        delay_ms: u64,
        /// The HTTP status that failed, if any.
        status: Option<u64>,
    },
    /// The end of a turn (boxed: it is large and comes once per turn).
    Result(Box<TurnResult>),
    /// A request from the CLI that we must answer (permissions, hooks, MCP).
    ControlRequest {
        /// The CLI's id for the request, echoed in the answer.
        request_id: String,
        /// The request body (`subtype` and its fields).
        request: Value,
    },
    /// The answer to one of our control requests.
    ControlResponse {
        /// Our id for the request.
        request_id: String,
        /// The answer, or the CLI's error message.
        outcome: Result<Value, String>,
    },
    /// Lines the CLI appended to its transcript (`--session-mirror`), each as JSON text.
    TranscriptMirror {
        /// The transcript file.
        file_path: String,
        /// The lines, in order.
        lines: Vec<String>,
    },
    /// Anything else, untouched.
    Other(Value),
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The id the result will refer to.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The tool's input.
    pub input: Value,
}

/// A tool result in a user message.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the tool call.
    pub id: String,
    /// What the tool returned (text or content blocks).
    pub content: Value,
    /// Whether the tool failed.
    pub is_error: bool,
}

/// The `result` message that ends every turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnResult {
    /// `success`, or `error_*` (the kind of failure).
    pub subtype: String,
    /// Whether the turn failed (also with subtype `success` for API errors).
    pub is_error: bool,
    /// The final text, or the error text.
    pub result: Option<String>,
    /// Tokens used.
    pub usage: TurnUsage,
    /// Running total for the process, not for the turn (from 2.1.332 it also counts the turns
    /// before a resume).
    pub total_cost_usd: f64,
    /// This result's own cost, where the CLI reports it (`model_usage_since_last_result`).
    pub cost_since_last_result: Option<f64>,
    /// Why the CLI could not start at all (2.1.332: `cwd_unavailable`, ...).
    pub startup_failure_reason: Option<String>,
    /// The result's number within its process (2.1.332); a gap means a result was lost.
    pub result_index: Option<u64>,
    /// Wall time of the turn.
    pub duration_ms: u64,
    /// Model calls in the turn.
    pub num_turns: u64,
    /// Why the model stopped (`end_turn`, ...).
    pub stop_reason: Option<String>,
    /// Error details the CLI gives.
    pub errors: Vec<String>,
    /// The HTTP status of a failed model call.
    pub api_error_status: Option<u64>,
}

/// The shape of a `stream_event` line, borrowed: token deltas are most of what the CLI prints,
/// so they skip building a `Value` tree.
#[derive(Deserialize)]
struct StreamLine<'a> {
    #[serde(borrow)]
    event: StreamEventBody<'a>,
    #[serde(default)]
    parent_tool_use_id: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct StreamEventBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    delta: Option<DeltaBody<'a>>,
}

#[derive(Deserialize)]
struct DeltaBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// A main-agent text delta, if the line is one (the CLI prints `type` first).
fn fast_text_delta(line: &str) -> Option<String> {
    if !line.starts_with(r#"{"type":"stream_event""#) {
        return None;
    }
    let parsed: StreamLine = serde_json::from_str(line).ok()?;
    let delta = parsed.event.delta?;
    let is_text = parsed.event.kind == "content_block_delta" && delta.kind == "text_delta";
    (is_text && parsed.parent_tool_use_id.is_none())
        .then(|| delta.text.map(Cow::into_owned))
        .flatten()
}

/// Classifies one stdout line; `Err` for a line that is not a JSON object.
pub fn parse_line(line: &str) -> Result<AgentMessage, serde_json::Error> {
    if let Some(text) = fast_text_delta(line) {
        return Ok(AgentMessage::TextDelta(text));
    }
    let value: Value = serde_json::from_str(line)?;
    if !value.is_object() {
        return Ok(AgentMessage::Other(value));
    }
    let main_agent = value.get("parent_tool_use_id").is_none_or(Value::is_null);
    let message = match value["type"].as_str().unwrap_or_default() {
        "stream_event" if main_agent => match text_delta(&value["event"]) {
            Some(text) => AgentMessage::TextDelta(text.to_string()),
            None => AgentMessage::Other(value),
        },
        "assistant" if main_agent => assistant(&value["message"]["content"]),
        "user" if main_agent => match tool_results(&value["message"]["content"]) {
            Some(results) => AgentMessage::ToolResults(results),
            None => AgentMessage::Other(value),
        },
        "system" if value["subtype"] == "api_retry" => AgentMessage::ApiRetry {
            attempt: value["attempt"].as_u64().unwrap_or_default(),
            max_retries: value["max_retries"].as_u64().unwrap_or_default(),
            // The CLI sends a float number of milliseconds.
            delay_ms: value["retry_delay_ms"]
                .as_f64()
                .map(|ms| ms.max(0.0).round() as u64)
                .unwrap_or_default(),
            status: value["error_status"].as_u64(),
        },
        "transcript_mirror" => AgentMessage::TranscriptMirror {
            file_path: value["filePath"].as_str().unwrap_or_default().to_string(),
            lines: value["entries"]
                .as_array()
                .map(|entries| entries.iter().map(Value::to_string).collect())
                .unwrap_or_default(),
        },
        "result" => AgentMessage::Result(Box::new(turn_result(&value))),
        "control_request" => AgentMessage::ControlRequest {
            request_id: value["request_id"].as_str().unwrap_or_default().to_string(),
            request: value["request"].clone(),
        },
        "control_response" => {
            let response = &value["response"];
            let request_id = response["request_id"].as_str().unwrap_or_default().to_string();
            let outcome = if response["subtype"] == "success" {
                Ok(response.get("response").cloned().unwrap_or(Value::Null))
            } else {
                Err(response["error"].as_str().unwrap_or("unknown error").to_string())
            };
            AgentMessage::ControlResponse { request_id, outcome }
        }
        _ => AgentMessage::Other(value),
    };
    Ok(message)
}

fn text_delta(event: &Value) -> Option<&str> {
    (event["type"] == "content_block_delta" && event["delta"]["type"] == "text_delta")
        .then(|| event["delta"]["text"].as_str())
        .flatten()
}

fn assistant(content: &Value) -> AgentMessage {
    let mut texts = Vec::new();
    let mut tool_uses = Vec::new();
    for block in content.as_array().map(Vec::as_slice).unwrap_or_default() {
        match block["type"].as_str() {
            Some("text") => texts.extend(block["text"].as_str().map(str::to_string)),
            Some("tool_use") => tool_uses.push(ToolUse {
                id: block["id"].as_str().unwrap_or_default().to_string(),
                name: block["name"].as_str().unwrap_or_default().to_string(),
                input: block["input"].clone(),
            }),
            _ => {}
        }
    }
    AgentMessage::Assistant { texts, tool_uses }
}

fn tool_results(content: &Value) -> Option<Vec<ToolResult>> {
    let results: Vec<ToolResult> = content
        .as_array()?
        .iter()
        .filter(|block| block["type"] == "tool_result")
        .map(|block| ToolResult {
            id: block["tool_use_id"].as_str().unwrap_or_default().to_string(),
            content: block["content"].clone(),
            is_error: block["is_error"].as_bool().unwrap_or(false),
        })
        .collect();
    (!results.is_empty()).then_some(results)
}

fn turn_result(value: &Value) -> TurnResult {
    let usage = &value["usage"];
    let count = |key: &str| usage[key].as_u64().unwrap_or_default();
    TurnResult {
        subtype: value["subtype"].as_str().unwrap_or_default().to_string(),
        is_error: value["is_error"].as_bool().unwrap_or(false),
        result: value["result"].as_str().map(str::to_string),
        usage: TurnUsage {
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            cache_creation_input_tokens: count("cache_creation_input_tokens"),
            cache_read_input_tokens: count("cache_read_input_tokens"),
        },
        total_cost_usd: value["total_cost_usd"].as_f64().unwrap_or_default(),
        startup_failure_reason: value["startup_failure_reason"].as_str().map(str::to_string),
        result_index: value["result_index"].as_u64(),
        cost_since_last_result: value["model_usage_since_last_result"].as_object().map(|models| {
            models
                .values()
                .filter_map(|usage| usage["costUSD"].as_f64())
                .sum()
        }),
        duration_ms: value["duration_ms"].as_u64().unwrap_or_default(),
        num_turns: value["num_turns"].as_u64().unwrap_or_default(),
        stop_reason: value["stop_reason"].as_str().map(str::to_string),
        errors: value["errors"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        api_error_status: value["api_error_status"].as_u64(),
    }
}

/// A user turn, as one stdin line. `client_composed`: the text is the tenant's own words, never
/// expanded (`@path` reads files) nor run as a slash command (CLIs before 2.1.332 ignore it).
pub fn user_line(text: &str) -> String {
    let line = json!({
        "type": "user",
        "message": {"role": "user", "content": text},
        "parent_tool_use_id": null,
        "session_id": "default",
        "client_composed": true,
    });
    line.to_string()
}

/// A control request of ours (`{"subtype": "interrupt"}`, `initialize`, ...), as one stdin line.
pub fn control_request_line(request_id: &str, request: Value) -> String {
    json!({"type": "control_request", "request_id": request_id, "request": request}).to_string()
}

/// A successful answer to a CLI control request.
pub fn control_success_line(request_id: &str, response: Value) -> String {
    json!({"type": "control_response", "response": {"subtype": "success", "request_id": request_id, "response": response}})
        .to_string()
}

/// An error answer to a CLI control request.
pub fn control_error_line(request_id: &str, error: &str) -> String {
    json!({"type": "control_response", "response": {"subtype": "error", "request_id": request_id, "error": error}})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_messages_a_turn_is_made_of() {
        let delta = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"he"}},"parent_tool_use_id":null}"#;
        assert_eq!(parse_line(delta).unwrap(), AgentMessage::TextDelta("he".into()));
        let sub = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}},"parent_tool_use_id":"toolu_1"}"#;
        assert!(
            matches!(parse_line(sub).unwrap(), AgentMessage::Other(_)),
            "subagent text is not the agent's"
        );
        let tool = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]},"parent_tool_use_id":null}"#;
        match parse_line(tool).unwrap() {
            AgentMessage::Assistant { texts, tool_uses } => {
                assert_eq!(texts, vec!["ok"]);
                assert_eq!(tool_uses[0].name, "Bash");
                assert_eq!(tool_uses[0].input, json!({"command": "ls"}));
            }
            other => panic!("{other:?}"),
        }
        let result = r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"a","is_error":false}]},"parent_tool_use_id":null}"#;
        assert_eq!(
            parse_line(result).unwrap(),
            AgentMessage::ToolResults(vec![ToolResult {
                id: "t1".into(),
                content: json!("a"),
                is_error: false
            }])
        );
        let end = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":211,"num_turns":2,"result":"R","stop_reason":"end_turn","total_cost_usd":0.00035,"usage":{"input_tokens":20,"output_tokens":10}}"#;
        match parse_line(end).unwrap() {
            AgentMessage::Result(r) => {
                assert_eq!((r.num_turns, r.duration_ms, r.usage.output_tokens), (2, 211, 10));
                assert_eq!(r.stop_reason.as_deref(), Some("end_turn"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_line(r#"{"type":"brand_new_type"}"#).unwrap(),
            AgentMessage::Other(_)
        ));
        assert!(parse_line("[SandboxDebug] hi").is_err());
        let retry = r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":512.7,"error_status":529}"#;
        match parse_line(retry).unwrap() {
            AgentMessage::ApiRetry { delay_ms, status, .. } => {
                assert_eq!((delay_ms, status), (513, Some(529)))
            }
            other => panic!("{other:?}"),
        }
        let escaped = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a \"q\"\n\u00e9"}},"session_id":"s","parent_tool_use_id":null,"uuid":"u"}"#;
        assert_eq!(
            parse_line(escaped).unwrap(),
            AgentMessage::TextDelta("a \"q\"\n\u{e9}".into())
        );
        let other_event = r#"{"type":"stream_event","event":{"type":"message_start","message":{}},"parent_tool_use_id":null}"#;
        assert!(matches!(parse_line(other_event).unwrap(), AgentMessage::Other(_)));
    }

    #[test]
    fn control_lines_round_trip() {
        let response =
            r#"{"type":"control_response","response":{"subtype":"error","request_id":"r1","error":"nope"}}"#;
        assert_eq!(
            parse_line(response).unwrap(),
            AgentMessage::ControlResponse {
                request_id: "r1".into(),
                outcome: Err("nope".into())
            }
        );
        let line: Value =
            serde_json::from_str(&control_request_line("r2", json!({"subtype": "interrupt"}))).unwrap();
        assert_eq!(line["request"]["subtype"], "interrupt");
        let line: Value = serde_json::from_str(&user_line("hi \"there\"\n")).unwrap();
        assert_eq!(line["message"]["content"], "hi \"there\"\n");
    }
}
