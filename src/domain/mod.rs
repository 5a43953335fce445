//! Pure types and rules shared by every layer: session records, agent options, turn events.
//! No I/O lives here.

pub mod events;
pub mod session;

pub use events::{ToolCall, TurnErrorCode, TurnEvent, TurnOutcome, TurnUsage};
pub use session::{AgentOptions, SessionId, SessionRecord};
