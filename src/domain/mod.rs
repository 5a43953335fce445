//! Pure types and rules shared by every layer: session records, agent options, turn events, the
//! principal a request acts as.
//! No I/O lives here.

pub mod budget;
pub mod egress;
pub mod events;
pub mod options;
pub mod principal;
pub mod session;
pub mod webhook;

pub use budget::{
    BudgetLimits, BudgetOverride, BudgetRefusal, BudgetScope, NANOS_PER_USD, Nanos, nanos_to_usd,
    usd_to_nanos,
};
pub use egress::{EgressRules, HostPattern, PatternError};
pub use events::{
    SessionEvent, ToolCall, TurnErrorCode, TurnEvent, TurnId, TurnOutcome, TurnUsage, round_usd,
};
pub use options::{AgentOptions, PermissionMode, PluginSpec};
pub use principal::{Caller, Credential, Principal, Role};
pub use session::{SessionId, SessionRecord};
pub use webhook::WebhookEvent;
