//! Pure types and rules shared by every layer: session records, agent options, turn events.
//! No I/O lives here.

pub mod events;
pub mod session;

pub use events::{
    SessionEvent, ToolCall, TurnErrorCode, TurnEvent, TurnId, TurnOutcome, TurnUsage, round_usd,
};
pub use session::{AgentOptions, SessionId, SessionRecord};
