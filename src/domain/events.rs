//! What a turn produces: streamed events and the summary of a finished turn.

use serde::Serialize;
use serde_json::Value;

/// One tool call made during a turn, with its result once known.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub tool: String,
    #[schema(value_type = Object)]
    pub input: Value,
    pub id: String,
    #[schema(value_type = Object, nullable)]
    pub result: Option<Value>,
    pub is_error: Option<bool>,
}

/// Token usage of one turn, as the CLI reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TurnUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// The summary of a turn that ended normally.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TurnOutcome {
    /// All text the agent said in the turn, blocks joined by a blank line.
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: TurnUsage,
    /// This turn's own cost (the CLI reports a running total per process).
    pub total_cost_usd: f64,
    pub duration_ms: u64,
    pub num_turns: u64,
    pub stop_reason: Option<String>,
}

/// An event of a running turn, in the order the agent produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// A piece of the agent's text, as the model streamed it.
    TextDelta(String),
    /// The agent called a tool.
    ToolUse { name: String, input: Value, id: String },
    /// A tool finished.
    ToolResult {
        id: String,
        content: Value,
        is_error: bool,
    },
    /// The CLI is retrying the model API (the model is slow, not the service).
    ApiRetry {
        attempt: u64,
        max_retries: u64,
        delay_ms: u64,
        status: Option<u64>,
    },
    /// The turn ended normally (terminal).
    Done(TurnOutcome),
    /// The turn failed (terminal).
    Error {
        code: TurnErrorCode,
        message: String,
        partial: TurnOutcome,
    },
}

impl TurnEvent {
    /// Whether this event ends the turn.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TurnEvent::Done(_) | TurnEvent::Error { .. })
    }
}

/// Why a turn failed, as a stable machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnErrorCode {
    Interrupted,
    TurnTimeout,
    MaxTurns,
    BudgetExceeded,
    AgentCrashed,
    ModelError,
    AgentUnavailable,
    ServiceShutdown,
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
        }
    }
}
