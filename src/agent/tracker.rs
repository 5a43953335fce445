//! Turning the messages of one turn into client events and, at its end, the turn's outcome:
//! all text in order, tool calls with their results, and this turn's own usage and cost.

use super::process::ExitInfo;
use super::protocol::{AgentMessage, TurnResult};
use crate::domain::round_usd;
use crate::domain::{ToolCall, TurnErrorCode, TurnEvent, TurnOutcome};

/// The state of one running turn.
#[derive(Debug, Default)]
pub struct TurnTracker {
    texts: Vec<String>,
    tool_calls: Vec<ToolCall>,
    cost_before: f64,
    stopped_by: Option<TurnErrorCode>,
    /// Whether any message of this turn has arrived.
    seen_output: bool,
}

impl TurnTracker {
    /// A new turn on a process whose running cost total is `cost_before`.
    pub fn new(cost_before: f64) -> Self {
        TurnTracker {
            cost_before,
            ..Default::default()
        }
    }

    /// Records that we stopped the turn (interrupt, timeout, shutdown), which decides its error code.
    pub fn stopped_by(&mut self, code: TurnErrorCode) {
        self.stopped_by.get_or_insert(code);
    }

    /// Why we stopped the turn, if we did.
    pub fn stop_reason(&self) -> Option<TurnErrorCode> {
        self.stopped_by
    }

    /// Whether the CLI has printed anything for this turn.
    pub fn has_seen_output(&self) -> bool {
        self.seen_output
    }

    /// Whether a tool call of this turn has not returned yet.
    pub fn tool_running(&self) -> bool {
        self.tool_calls.iter().any(|call| call.result.is_none())
    }

    /// Records that the CLI printed something for this turn that produces no event.
    pub fn note_output(&mut self) {
        self.seen_output = true;
    }

    /// The events one message produces; the last one is terminal when the turn ended.
    pub fn on_message(&mut self, message: AgentMessage) -> Vec<TurnEvent> {
        self.seen_output = true;
        match message {
            AgentMessage::TextDelta(text) => vec![TurnEvent::TextDelta(text)],
            AgentMessage::Assistant { texts, tool_uses } => {
                self.texts.extend(texts.into_iter().filter(|t| !t.is_empty()));
                tool_uses
                    .into_iter()
                    .map(|tool| {
                        self.tool_calls.push(ToolCall {
                            tool: tool.name.clone(),
                            input: tool.input.clone(),
                            id: tool.id.clone(),
                            result: None,
                            is_error: None,
                        });
                        TurnEvent::ToolUse {
                            name: tool.name,
                            input: tool.input,
                            id: tool.id,
                        }
                    })
                    .collect()
            }
            AgentMessage::ToolResults(results) => results
                .into_iter()
                .map(|result| {
                    if let Some(call) = self.tool_calls.iter_mut().find(|c| c.id == result.id) {
                        call.result = Some(result.content.clone());
                        call.is_error = Some(result.is_error);
                    }
                    TurnEvent::ToolResult {
                        id: result.id,
                        content: result.content,
                        is_error: result.is_error,
                    }
                })
                .collect(),
            AgentMessage::ApiRetry {
                attempt,
                max_retries,
                delay_ms,
                status,
            } => {
                vec![TurnEvent::ApiRetry {
                    attempt,
                    max_retries,
                    delay_ms,
                    status,
                }]
            }
            AgentMessage::Result(result) => vec![self.finish(*result)],
            AgentMessage::ControlRequest { .. }
            | AgentMessage::ControlResponse { .. }
            | AgentMessage::TranscriptMirror { .. }
            | AgentMessage::Other(_) => Vec::new(),
        }
    }

    /// The terminal event for a process that exited before the turn's result.
    pub fn on_exit(&mut self, exit: ExitInfo) -> TurnEvent {
        let code = self.stopped_by.unwrap_or(TurnErrorCode::AgentCrashed);
        let message = match code {
            TurnErrorCode::AgentCrashed => format!("the agent process ended mid-turn ({exit})"),
            _ => stopped_message(code),
        };
        TurnEvent::Error {
            code,
            message,
            partial: self.outcome(None),
        }
    }

    fn outcome(&self, result: Option<&TurnResult>) -> TurnOutcome {
        let mut text = self.texts.join("\n\n");
        if text.is_empty()
            && let Some(r) = result.filter(|r| !r.is_error)
        {
            text = r.result.clone().unwrap_or_default();
        }
        TurnOutcome {
            text,
            tool_calls: self.tool_calls.clone(),
            usage: result.map(|r| r.usage.clone()).unwrap_or_default(),
            total_cost_usd: result
                .map(|r| {
                    let own = r
                        .cost_since_last_result
                        .unwrap_or(r.total_cost_usd - self.cost_before);
                    round_usd(own.max(0.0))
                })
                .unwrap_or_default(),
            duration_ms: result.map(|r| r.duration_ms).unwrap_or_default(),
            num_turns: result.map(|r| r.num_turns).unwrap_or_default(),
            stop_reason: result.and_then(|r| r.stop_reason.clone()),
            budget_refusal: None,
        }
    }

    fn finish(&mut self, result: TurnResult) -> TurnEvent {
        let outcome = self.outcome(Some(&result));
        if !result.is_error {
            return TurnEvent::Done(outcome);
        }
        let not_logged_in = result
            .result
            .as_deref()
            .is_some_and(|text| text.contains("Not logged in") || text.contains("Invalid API key"));
        if let Some(reason) = &result.startup_failure_reason {
            return TurnEvent::Error {
                code: TurnErrorCode::AgentUnavailable,
                message: format!("the agent could not start ({reason})"),
                partial: outcome,
            };
        }
        let code = match result.subtype.as_str() {
            _ if not_logged_in => TurnErrorCode::CredentialsMissing,
            "error_max_turns" => TurnErrorCode::MaxTurns,
            "error_max_budget_usd" => TurnErrorCode::BudgetExceeded,
            _ if self.stopped_by.is_some() => self.stopped_by.expect("checked"),
            "error_during_execution" => TurnErrorCode::AgentCrashed,
            _ => TurnErrorCode::ModelError,
        };
        let message = match (&result.result, result.errors.is_empty()) {
            // We stopped it: say why in our words, not with the CLI's internal diagnostics.
            _ if Some(code) == self.stopped_by => stopped_message(code),
            // "Please run /login" means nothing to an HTTP client: name the setting.
            _ if code == TurnErrorCode::CredentialsMissing => "the agent has no valid model API credentials: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN with ANTHROPIC_BASE_URL) in the service's environment".to_string(),
            (Some(text), _) if !text.is_empty() => text.clone(),
            (_, false) => result.errors.join("; "),
            _ => format!("the turn ended with {}", result.subtype),
        };
        TurnEvent::Error {
            code,
            message,
            partial: outcome,
        }
    }
}

fn stopped_message(code: TurnErrorCode) -> String {
    match code {
        TurnErrorCode::Interrupted => "the turn was interrupted".into(),
        TurnErrorCode::TurnTimeout => "the turn exceeded its timeout and was interrupted".into(),
        TurnErrorCode::ServiceShutdown => "the service is shutting down".into(),
        TurnErrorCode::AgentUnresponsive => {
            "the agent printed nothing for defaults.turn_silence_timeout seconds and was stopped".into()
        }
        TurnErrorCode::SessionDeleted => "the session was deleted".into(),
        other => format!("the turn was stopped ({})", other.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::parse_line;

    fn feed(tracker: &mut TurnTracker, lines: &[&str]) -> Vec<TurnEvent> {
        lines
            .iter()
            .flat_map(|l| tracker.on_message(parse_line(l).unwrap()))
            .collect()
    }

    #[test]
    fn a_tool_turn_collects_all_text_and_results_and_its_own_cost() {
        let mut tracker = TurnTracker::new(0.5);
        let events = feed(
            &mut tracker,
            &[
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Writing."},{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"a"}}]}}"#,
                r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"ok","is_error":false}]}}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Done."}]}}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.75,"num_turns":2,"duration_ms":9,"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":4}}"#,
            ],
        );
        match events.last().unwrap() {
            TurnEvent::Done(outcome) => {
                assert_eq!(outcome.text, "Writing.\n\nDone.");
                assert_eq!(outcome.tool_calls.len(), 1);
                assert_eq!(outcome.tool_calls[0].result, Some(serde_json::json!("ok")));
                assert!((outcome.total_cost_usd - 0.25).abs() < 1e-9);
                assert_eq!(outcome.num_turns, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_map_to_stable_codes() {
        let cases = [
            (
                r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#,
                None,
                TurnErrorCode::MaxTurns,
            ),
            (
                r#"{"type":"result","subtype":"error_max_budget_usd","is_error":true}"#,
                None,
                TurnErrorCode::BudgetExceeded,
            ),
            (
                r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 400"}"#,
                None,
                TurnErrorCode::ModelError,
            ),
            (
                r#"{"type":"result","subtype":"error_during_execution","is_error":true}"#,
                Some(TurnErrorCode::Interrupted),
                TurnErrorCode::Interrupted,
            ),
            (
                r#"{"type":"result","subtype":"error_during_execution","is_error":true}"#,
                Some(TurnErrorCode::TurnTimeout),
                TurnErrorCode::TurnTimeout,
            ),
        ];
        for (line, stopped, expected) in cases {
            let mut tracker = TurnTracker::new(0.0);
            if let Some(code) = stopped {
                tracker.stopped_by(code);
            }
            match feed(&mut tracker, &[line]).pop().unwrap() {
                TurnEvent::Error { code, .. } => assert_eq!(code, expected, "{line}"),
                other => panic!("{other:?}"),
            }
        }
        let mut tracker = TurnTracker::new(0.0);
        match tracker.on_exit(ExitInfo {
            code: None,
            signal: Some(9),
        }) {
            TurnEvent::Error { code, .. } => assert_eq!(code, TurnErrorCode::AgentCrashed),
            other => panic!("{other:?}"),
        }
    }
}
