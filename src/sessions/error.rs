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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
