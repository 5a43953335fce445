//! What the CLI is started with: a `SpawnSpec` (everything the session decides) becomes a program,
//! its arguments and its whole environment. Credentials and inherited variables are inputs of
//! the spec, captured once at startup by the caller; nothing here reads the service's own
//! environment, so what an agent sees is exactly what the spec says.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::domain::{AgentOptions, PermissionMode, SessionId};

/// The environment variable set on every agent process when no cgroup holds the session; its
/// value is the session id (the best-effort way to find a session's processes without cgroups).
pub const SESSION_MARKER: &str = "CLAUDE_AGENT_HTTP_SESSION";

/// Variables of the service's environment an agent may inherit (locale and search path).
const INHERITED: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
];
/// Variables that carry the model API's address and credentials.
const CREDENTIALS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
];

/// What the agents inherit from the service, read once at startup.
#[derive(Debug, Clone, Default)]
pub struct Inherited {
    /// Locale and `PATH`.
    pub env: Vec<(String, String)>,
    /// The model API's address and credentials.
    pub credentials: Vec<(String, String)>,
}

impl Inherited {
    /// Reads the allow-listed variables from this process's environment (call once, at startup).
    pub fn from_service_environment() -> Inherited {
        let read = |names: &[&str]| {
            names
                .iter()
                .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
                .filter(|(_, value): &(String, String)| !value.is_empty())
                .collect()
        };
        Inherited {
            env: read(INHERITED),
            credentials: read(CREDENTIALS),
        }
    }

    /// Whether any way to reach the model is configured (a key, a token, or a gateway URL).
    pub fn has_model_credentials(&self) -> bool {
        self.credentials
            .iter()
            .any(|(k, _)| k == "ANTHROPIC_API_KEY" || k == "ANTHROPIC_AUTH_TOKEN")
    }
}

/// What the CLI at hand understands, where it has to be known before it starts (flags and
/// variables). What can be learned from a running CLI (`capabilities` in its `initialize`
/// answer) is detected there instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CliFeatures {
    /// `--await-initialize`: MCP servers and settings arrive in `initialize`, never on argv.
    pub await_initialize: bool,
    /// `--system-prompt-snapshot off`: a changed system prompt applies on resume.
    pub system_prompt_snapshot: bool,
    /// `CLAUDE_CODE_RESUME_INTERRUPTED_TURN=0` is honoured (older CLIs read any value as "yes").
    pub resume_interrupted_turn_off: bool,
}

impl CliFeatures {
    /// The features of a CLI version (unknown: none of them).
    pub fn of(version: Option<&str>) -> CliFeatures {
        let at_least = |min| version.is_some_and(|v| super::cli::version_at_least(v, min));
        CliFeatures {
            await_initialize: at_least((2, 1, 261)),
            system_prompt_snapshot: at_least((2, 1, 332)),
            resume_interrupted_turn_off: at_least((2, 1, 221)),
        }
    }

    /// What an older CLI lacks, for the log.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.await_initialize {
            missing.push("MCP servers off the command line (--await-initialize, 2.1.261)");
        }
        if !self.system_prompt_snapshot {
            missing.push("a changed system prompt applying on resume (--system-prompt-snapshot, 2.1.332)");
        }
        if !self.resume_interrupted_turn_off {
            missing.push("no silent re-run of an interrupted turn after a restart (2.1.221)");
        }
        missing
    }
}

/// Settings every agent gets (`--settings`): no messages from other sessions on the host.
pub const AGENT_SETTINGS: &str = r#"{"crossSessionInbound":"refuse"}"#;

/// Everything needed to start the CLI for one session.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The `claude` executable.
    pub cli: PathBuf,
    /// The session (the CLI's `--session-id`).
    pub session: SessionId,
    /// Continue an existing transcript (`--resume`) instead of starting one (`--session-id`).
    pub resume: bool,
    /// The working directory's path (for `PWD`; the launcher enters it by descriptor).
    pub cwd: PathBuf,
    /// The user's own `CLAUDE_CONFIG_DIR`.
    pub config_dir: PathBuf,
    /// The agent's `HOME`.
    pub home: PathBuf,
    /// The session's agent options (flags).
    pub options: AgentOptions,
    /// A file holding the MCP server configuration (`--mcp-config`), for CLIs that cannot take
    /// them in `initialize`; a file, so that the servers' secrets never appear on a command line.
    pub mcp_config: Option<PathBuf>,
    /// The CLI's per-user runtime directory (`XDG_RUNTIME_DIR`: its messaging socket).
    pub runtime_dir: PathBuf,
    /// Variables inherited from the service and `defaults.env`.
    pub env: Vec<(String, String)>,
    /// The model API's address and credentials.
    pub credentials: Vec<(String, String)>,
    /// Carry the session marker.
    pub marker: bool,
    /// What the CLI understands.
    pub features: CliFeatures,
}

/// A program with its arguments and complete environment.
#[derive(Debug, Clone)]
pub struct CommandLine {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
}

/// The JSON of an `--mcp-config` file for these servers.
pub fn mcp_config_json(servers: &Map<String, Value>) -> String {
    json!({ "mcpServers": servers }).to_string()
}

impl SpawnSpec {
    /// The command that starts the CLI for this spec.
    pub fn command_line(&self) -> CommandLine {
        let mut env = self.env.clone();
        env.extend(self.credentials.iter().cloned());
        let mut set = |key: &str, value: String| {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value));
        };
        set("CLAUDE_CONFIG_DIR", self.config_dir.display().to_string());
        set("HOME", self.home.display().to_string());
        set("PWD", self.cwd.display().to_string());
        set("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into());
        // A CLI that cannot start says why in a `result` (startup_failure_reason), not only on stderr.
        set("CLAUDE_CODE_STARTUP_FAILURE_RESULTS", "1".into());
        set("XDG_RUNTIME_DIR", self.runtime_dir.display().to_string());
        // After a restart the CLI must not silently re-run a turn that had side effects. CLIs
        // before 2.1.221 read any value as "yes", so they must not see the variable at all.
        if self.features.resume_interrupted_turn_off {
            set("CLAUDE_CODE_RESUME_INTERRUPTED_TURN", "0".into());
        }
        if self.marker {
            set(SESSION_MARKER, self.session.to_string());
        }
        if self.options.permission_mode == PermissionMode::BypassPermissions
            && rustix::process::geteuid().is_root()
        {
            // The CLI refuses bypassPermissions as root unless told it is sandboxed.
            set("IS_SANDBOX", "1".into());
        }
        CommandLine {
            program: self.cli.clone(),
            args: self.args(),
            env,
        }
    }
}

impl SpawnSpec {
    fn args(&self) -> Vec<String> {
        let mcp_config = if self.features.await_initialize {
            None
        } else {
            self.mcp_config.as_ref()
        };
        let mut args = cli_args(self.session, self.resume, &self.options, mcp_config);
        // Every transcript line also comes on stdout, so the store keeps it (resume on any disk).
        args.push("--session-mirror".into());
        args.push(format!("--settings={AGENT_SETTINGS}"));
        if self.features.await_initialize {
            args.push("--await-initialize".into());
        }
        if self.features.system_prompt_snapshot {
            args.push("--system-prompt-snapshot=off".into());
        }
        args
    }
}

/// The command-line arguments for a session (flags per the protocol reference, equals forms so no
/// value can be read as a flag).
pub fn cli_args(
    session: SessionId,
    resume: bool,
    options: &AgentOptions,
    mcp_config: Option<&PathBuf>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--output-format",
        "stream-json",
        "--input-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--permission-prompt-tool",
        "stdio",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--permission-mode={}", options.permission_mode.as_str()));
    args.push(if resume {
        format!("--resume={session}")
    } else {
        format!("--session-id={session}")
    });
    if let Some(prompt) = &options.system_prompt {
        args.push(format!("--system-prompt={prompt}"));
    }
    if let Some(prompt) = &options.append_system_prompt {
        args.push(format!("--append-system-prompt={prompt}"));
    }
    if !options.allowed_tools.is_empty() {
        args.push(format!("--allowedTools={}", options.allowed_tools.join(",")));
    }
    if let Some(model) = &options.model {
        args.push(format!("--model={model}"));
    }
    if let Some(turns) = options.max_turns {
        args.push(format!("--max-turns={turns}"));
    }
    if let Some(budget) = options.max_budget_usd {
        args.push(format!("--max-budget-usd={budget}"));
    }
    if let Some(sources) = &options.setting_sources {
        args.push(format!("--setting-sources={}", sources.join(",")));
    }
    if let Some(path) = mcp_config {
        args.push(format!("--mcp-config={}", path.display()));
    }
    for plugin in &options.plugins {
        args.push(format!("--plugin-dir={}", plugin.path().display()));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(options: AgentOptions) -> SpawnSpec {
        SpawnSpec {
            cli: "/bin/claude".into(),
            session: SessionId::new(),
            resume: false,
            cwd: "/w".into(),
            config_dir: "/c".into(),
            home: "/h".into(),
            options,
            mcp_config: Some("/c/mcp.json".into()),
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("HOME".into(), "/root".into()),
            ],
            credentials: vec![("ANTHROPIC_API_KEY".into(), "k".into())],
            marker: false,
            runtime_dir: "/c/run".into(),
            features: CliFeatures::of(Some("2.1.332")),
        }
    }

    #[test]
    fn args_carry_the_session_options_in_equals_form() {
        let options = AgentOptions {
            system_prompt: Some("--evil".into()),
            max_turns: Some(3),
            ..AgentOptions::default()
        };
        let spec = spec(options);
        let command = spec.command_line();
        let id = spec.session;
        assert!(command.args.contains(&format!("--session-id={id}")));
        assert!(command.args.contains(&"--system-prompt=--evil".to_string()));
        assert!(command.args.contains(&"--max-turns=3".to_string()));
        assert!(
            !command.args.iter().any(|a| a.starts_with("--mcp-config")),
            "MCP servers go in initialize"
        );
        assert!(command.args.contains(&"--await-initialize".to_string()));
        assert!(command.args.contains(&"--system-prompt-snapshot=off".to_string()));
        let resumed = cli_args(id, true, &spec.options, None);
        assert!(resumed.contains(&format!("--resume={id}")));
        assert!(!resumed.iter().any(|a| a.starts_with("--session-id")));
    }

    #[test]
    fn the_environment_is_exactly_the_spec() {
        let command = spec(AgentOptions::default()).command_line();
        let get = |key: &str| {
            command
                .env
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("HOME"),
            vec!["/h"],
            "the spec's HOME replaces an inherited one"
        );
        assert_eq!(get("ANTHROPIC_API_KEY"), vec!["k"]);
        assert_eq!(get("CLAUDE_CODE_RESUME_INTERRUPTED_TURN"), vec!["0"]);
        assert!(get(SESSION_MARKER).is_empty());
        let mut old = spec(AgentOptions::default());
        old.features = CliFeatures::of(Some("2.1.197"));
        let old = old.command_line();
        assert!(
            !old.env
                .iter()
                .any(|(k, _)| k == "CLAUDE_CODE_RESUME_INTERRUPTED_TURN")
        );
        assert!(
            old.args.contains(&"--mcp-config=/c/mcp.json".to_string()),
            "older CLIs read MCP servers from a file"
        );
        assert!(
            !old.args
                .iter()
                .any(|a| a.contains("await-initialize") || a.contains("snapshot"))
        );
    }
}
