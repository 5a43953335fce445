//! A stored session and the agent options it runs with.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::{Config, PermissionMode, PluginSpec};

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

/// The agent options in force for one session, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentOptions {
    /// Replaces Claude Code's system prompt.
    pub system_prompt: Option<String>,
    /// Appended to Claude Code's system prompt.
    pub append_system_prompt: Option<String>,
    /// The CLI's permission mode.
    pub permission_mode: PermissionMode,
    /// Tools that run without asking.
    pub allowed_tools: Vec<String>,
    /// Settings sources the CLI reads.
    pub setting_sources: Option<Vec<String>>,
    /// The model.
    pub model: Option<String>,
    /// Model calls per message.
    pub max_turns: Option<u32>,
    /// Spend per message in USD.
    pub max_budget_usd: Option<f64>,
    /// MCP servers, by name.
    pub mcp_servers: Map<String, Value>,
    /// Plugin folders.
    pub plugins: Vec<PluginSpec>,
}

impl AgentOptions {
    /// The options a new session gets from the configuration.
    pub fn from_config(config: &Config) -> Self {
        let defaults = &config.defaults;
        AgentOptions {
            system_prompt: defaults.system_prompt.clone(),
            append_system_prompt: defaults.append_system_prompt.clone(),
            permission_mode: defaults.permission_mode,
            allowed_tools: defaults.allowed_tools.clone(),
            setting_sources: defaults.setting_sources.clone(),
            model: defaults.model.clone(),
            max_turns: defaults.max_turns,
            max_budget_usd: defaults.max_budget_usd,
            mcp_servers: config.mcp_servers.clone(),
            plugins: config.plugins.clone(),
        }
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
