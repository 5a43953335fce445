//! What a turn produces: streamed events and the summary of a finished turn.

use serde::Serialize;
use serde_json::{Value, json};

/// One tool call made during a turn, with its result once known.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ToolCall {
    /// The tool's name.
    pub tool: String,
    /// The tool's input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The tool call's id.
    pub id: String,
    /// What the tool returned, once it has.
    #[schema(value_type = Object, nullable)]
    pub result: Option<Value>,
    /// Whether the tool failed, once it has returned.
    pub is_error: Option<bool>,
}

/// Token counts: of one turn (as the CLI reports it, or as the relay metered it), of one model
/// request, or summed over many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct TurnUsage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

impl TurnUsage {
    /// Every token the model processed: input, output, cache writes and cache reads.
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &TurnUsage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(other.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(other.cache_read_input_tokens);
    }
}

/// The summary of a turn that ended normally.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TurnOutcome {
    /// All text the agent said in the turn, blocks joined by a blank line.
    pub text: String,
    /// Tool calls in order, each with its result.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used by the turn.
    pub usage: TurnUsage,
    /// This turn's own cost (the CLI reports a running total per process).
    pub total_cost_usd: f64,
    /// Wall time of the turn, as the CLI measured it.
    pub duration_ms: u64,
    /// Model calls in the turn.
    pub num_turns: u64,
    /// Why the model stopped (`end_turn`, ...).
    pub stop_reason: Option<String>,
    /// The budget the relay refused the turn's next model request for, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_refusal: Option<super::BudgetRefusal>,
}

/// A turn's id (unique across sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TurnId(pub uuid::Uuid);

impl TurnId {
    /// A fresh random id.
    pub fn new() -> Self {
        TurnId(uuid::Uuid::new_v4())
    }
}

impl Default for TurnId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for TurnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// One event in a session's stream: its sequence number (per session, gap-free, increasing; the
/// SSE `id`), the turn it belongs to, the event, and its wire form (made once: the same bytes go
/// to every reader, to the store and to every replay).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    /// Its place in the session's stream.
    pub seq: u64,
    /// The turn that produced it.
    pub turn: TurnId,
    /// What happened.
    pub event: TurnEvent,
    /// The JSON text of its SSE `data:` line.
    pub data: String,
}

/// Rounds a USD amount to 10 decimal places, so sums of float prices print as people write them
/// (`0.00035`, not `0.00034999999999999994`).
pub fn round_usd(amount: f64) -> f64 {
    (amount * 1e10).round() / 1e10
}

/// An event of a running turn, in the order the agent produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// A piece of the agent's text, as the model streamed it.
    TextDelta(String),
    /// The agent called a tool.
    ToolUse {
        /// The tool's name.
        name: String,
        /// The tool's input.
        input: Value,
        /// The tool call's id.
        id: String,
    },
    /// A tool finished.
    ToolResult {
        /// The tool call's id.
        id: String,
        /// What the tool returned.
        content: Value,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// The CLI is retrying the model API (the model is slow, not the service).
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
    /// The turn ended normally (terminal).
    Done(TurnOutcome),
    /// The turn failed (terminal).
    Error {
        /// Why.
        code: TurnErrorCode,
        /// What happened, for people.
        message: String,
        /// What the turn produced before it failed.
        partial: TurnOutcome,
    },
}

impl TurnEvent {
    /// Whether this event ends the turn.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TurnEvent::Done(_) | TurnEvent::Error { .. })
    }

    /// The event's wire form: the JSON text of its SSE `data:` line, as every client, the store
    /// and every replay see it. `text_delta`, most of a stream, is written without a `Value` tree.
    pub fn wire_json(&self) -> String {
        match self {
            TurnEvent::TextDelta(text) => serde_json::to_string(&TextDeltaData {
                kind: "text_delta",
                text,
            })
            .expect("serializes"),
            TurnEvent::ToolUse { name, input, id } => {
                json!({"type": "tool_use", "tool_name": name, "tool_input": input, "tool_use_id": id})
                    .to_string()
            }
            TurnEvent::ToolResult {
                id,
                content,
                is_error,
            } => json!({"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error})
                .to_string(),
            TurnEvent::ApiRetry {
                attempt,
                max_retries,
                delay_ms,
                status,
            } => json!({
                "type": "api_retry", "attempt": attempt, "max_retries": max_retries,
                "retry_delay_ms": delay_ms, "error_status": status,
            })
            .to_string(),
            TurnEvent::Done(outcome) => json!({
                "type": "done",
                "text": outcome.text,
                "usage": outcome.usage,
                "total_cost_usd": outcome.total_cost_usd,
                "duration_ms": outcome.duration_ms,
                "num_turns": outcome.num_turns,
                "stop_reason": outcome.stop_reason,
            })
            .to_string(),
            TurnEvent::Error { code, message, .. } => {
                json!({"type": "error", "error": message, "code": code.as_str()}).to_string()
            }
        }
    }
}

/// The `text_delta` wire form.
#[derive(Serialize)]
struct TextDeltaData<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// Why a turn failed, as a stable machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnErrorCode {
    /// A client asked to stop the turn.
    Interrupted,
    /// The turn ran past its `timeout`.
    TurnTimeout,
    /// The turn hit `defaults.max_turns`.
    MaxTurns,
    /// The turn hit `defaults.max_budget_usd`.
    BudgetExceeded,
    /// The CLI died or failed mid-turn.
    AgentCrashed,
    /// The model API failed.
    ModelError,
    /// The CLI could not be started (missing, being installed, no capacity).
    AgentUnavailable,
    /// The service is shutting down.
    ServiceShutdown,
    /// The CLI printed nothing for `defaults.turn_silence_timeout` and was killed.
    AgentUnresponsive,
    /// No agent could be started: every live one is busy at `api.max_live_agents` or memory.
    AgentCapacityReached,
    /// The model API refused the credentials, or none are configured.
    CredentialsMissing,
    /// The session was deleted while the turn ran.
    SessionDeleted,
    /// This stream's reader fell too far behind and was dropped (the turn goes on).
    StreamLagged,
    /// The service stopped (crashed or was killed) while the turn ran.
    ServiceRestarted,
    /// The session store was unavailable when the turn ended: its events are stored later.
    StoreUnavailable,
}

impl TurnErrorCode {
    /// The code as sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnErrorCode::Interrupted => "interrupted",
            TurnErrorCode::TurnTimeout => "turn_timeout",
            TurnErrorCode::MaxTurns => "max_turns",
            TurnErrorCode::BudgetExceeded => "budget_exceeded",
            TurnErrorCode::AgentCrashed => "agent_crashed",
            TurnErrorCode::ModelError => "model_error",
            TurnErrorCode::AgentUnavailable => "agent_unavailable",
            TurnErrorCode::ServiceShutdown => "service_shutdown",
            TurnErrorCode::AgentUnresponsive => "agent_unresponsive",
            TurnErrorCode::AgentCapacityReached => "agent_capacity_reached",
            TurnErrorCode::CredentialsMissing => "credentials_missing",
            TurnErrorCode::SessionDeleted => "session_deleted",
            TurnErrorCode::StreamLagged => "stream_lagged",
            TurnErrorCode::ServiceRestarted => "service_restarted",
            TurnErrorCode::StoreUnavailable => "store_unavailable",
        }
    }
}
