//! A stored session: its id and the record the store keeps.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::AgentOptions;

/// A session's id: a UUID, also the CLI's `--session-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A fresh random id.
    pub fn new() -> Self {
        SessionId(Uuid::new_v4())
    }

    /// Parses the textual form; `None` for anything that is not a UUID.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(SessionId)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// What the store keeps about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's id.
    pub session_id: SessionId,
    /// Whose session it is.
    pub user_id: String,
    /// The subdirectory of the user's directory, if any.
    pub subdir: Option<String>,
    /// The resolved working directory (no symlinks in it).
    pub cwd: PathBuf,
    /// The agent options in force.
    pub options: AgentOptions,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (expiry counts from here).
    pub last_active_at: DateTime<Utc>,
    /// Turns completed.
    pub message_count: u64,
    /// The client's own data.
    pub metadata: Map<String, Value>,
}
