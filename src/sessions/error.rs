//! Errors of the session service.

use crate::store::{LimitScope, StoreError};
use crate::workspace::WorkspaceError;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session (unknown, expired or deleted).
    #[error("Session {0} not found")]
    NotFound(String),
    /// A session limit is reached.
    #[error("Session limit reached: {0}")]
    LimitReached(LimitScope),
    /// The user id or subdirectory was refused.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// No such turn in this session.
    #[error("Turn {0} not found")]
    TurnNotFound(String),
    /// A turn is already running in this session.
    #[error("Session {0} is busy with another message")]
    Busy(String),
    /// No agent process can be started: all are busy at the configured limits.
    #[error("No capacity for another agent: {0}")]
    NoCapacity(String),
    /// The agent cannot be started (no CLI, spawn failure).
    #[error("The agent is unavailable: {0}")]
    AgentUnavailable(String),
    /// The service is shutting down.
    #[error("The service is shutting down")]
    ShuttingDown,
    /// The user runs as many turns at once as allowed.
    #[error("{0}")]
    TooManyTurns(String),
    /// The caller may not act for this user.
    #[error("{0}")]
    Forbidden(String),
    /// The request lacks something it needs.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
