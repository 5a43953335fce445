//! The agent options a session runs with, and the value types they are made of. They are domain
//! types that happen to be configurable: `config` reads them, `store` keeps them, `agent` turns
//! them into CLI flags; none of that is known here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The CLI's permission modes (`--permission-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionMode {
    /// Ask (through our policy) for every tool not pre-approved.
    #[serde(rename = "default")]
    #[default]
    Default,
    /// Auto-approve file edits.
    #[serde(rename = "acceptEdits")]
    AcceptEdits,
    /// Plan only, no changes.
    #[serde(rename = "plan")]
    Plan,
    /// Approve everything (as root this needs `IS_SANDBOX=1`, which the service sets).
    #[serde(rename = "bypassPermissions")]
    BypassPermissions,
    /// Deny whatever is not pre-approved, without asking.
    #[serde(rename = "dontAsk")]
    DontAsk,
}

impl PermissionMode {
    /// The flag value the CLI expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Plan => "plan",
            PermissionMode::BypassPermissions => "bypassPermissions",
            PermissionMode::DontAsk => "dontAsk",
        }
    }
}

/// A plugin folder: a bare path, or `{type: local, path}` as in the Python SDK.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PluginSpec {
    /// A plugin folder.
    Path(PathBuf),
    /// A plugin in the Python SDK's form.
    Local {
        /// Always `local`.
        #[serde(rename = "type")]
        kind: String,
        /// The plugin folder.
        path: PathBuf,
    },
}

impl PluginSpec {
    /// The plugin's folder.
    pub fn path(&self) -> &Path {
        match self {
            PluginSpec::Path(path) | PluginSpec::Local { path, .. } => path,
        }
    }
}

/// The agent options in force for one session, fixed when it is created. MCP servers are not
/// among them: they carry credentials, so they are never stored with a session and the runtime
/// takes them from its own settings when an agent starts.
///
/// The default is the CLI's own behaviour: no pre-approved tools, no limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Plugin folders.
    pub plugins: Vec<PluginSpec>,
}
