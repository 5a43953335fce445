//! What the CLI is started with: a `SpawnSpec` (everything the session decides) becomes a program,
//! its arguments and its whole environment. Inherited variables are inputs of the spec, captured
//! once at startup by the caller; nothing here reads the service's own environment, so what an
//! agent sees is exactly what the spec says. The model API's variables come only from the spec's
//! `ModelAccess` (the service's relay and a token of the process's own): the real credential
//! never reaches an agent, whatever the inherited variables or `defaults.env` hold.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::domain::{AgentOptions, PermissionMode, SessionId};

/// The environment variable set on every agent process when no cgroup holds the session; its
/// value is the session id (the best-effort way to find a session's processes without cgroups).
pub const SESSION_MARKER: &str = "CLAUDE_AGENT_HTTP_SESSION";

/// Variables of the service's environment an agent may inherit (locale, search path, the model
/// the CLI defaults to).
const INHERITED: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "ANTHROPIC_MODEL",
];

/// The variables that carry the model API's address and credential. The service reads them for
/// its relay; a CLI never gets them from the service's environment or `defaults.env`, only the
/// relay's address and a token of its own ([`ModelAccess`]).
pub const MODEL_API: &[&str] = &["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"];

/// What the agents inherit from the service, read once at startup.
#[derive(Clone, Default)]
pub struct Inherited {
    /// Locale, `PATH` and `ANTHROPIC_MODEL`: passed to every agent.
    pub env: Vec<(String, String)>,
    /// The model API's address and credential ([`MODEL_API`]): for the relay, never for an agent.
    pub model_api: Vec<(String, String)>,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.model_api.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Inherited")
            .field("env", &self.env)
            .field("model_api", &names)
            .finish()
    }
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
            model_api: read(MODEL_API),
        }
    }

    /// The value of one of the [`MODEL_API`] variables, if the service has it.
    pub fn model_api_value(&self, name: &str) -> Option<&str> {
        self.model_api
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The variables that name the egress proxy.
pub const PROXY_VARIABLES: &[&str] = &["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"];

/// What the CLI and its tools reach without the proxy: loopback, where the relay is.
const NO_PROXY: &str = "127.0.0.1,localhost,::1";

/// How a CLI reaches the model: the service's relay, and the token that opens it to this process
/// (none when the service has no credential: the CLI then says it is not logged in).
#[derive(Clone)]
pub struct ModelAccess {
    /// The relay's address (`ANTHROPIC_BASE_URL`).
    pub base_url: String,
    /// The process's own relay token (`ANTHROPIC_API_KEY`).
    pub token: Option<String>,
    /// The service's egress proxy, with the process's token as its password
    /// (`HTTPS_PROXY`/`HTTP_PROXY`); none when nothing beyond the model may be reached.
    pub proxy: Option<String>,
    /// The token's own relay socket, where the token is bound to one (sandboxed CLIs): the launcher
    /// forwards the relay port there and nowhere else.
    pub socket: Option<std::path::PathBuf>,
    /// The token's own egress proxy socket, where it has one: the launcher forwards the proxy
    /// port there and nowhere else.
    pub proxy_socket: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ModelAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelAccess")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("proxy", &self.proxy.as_ref().map(|_| "<redacted>"))
            .field("socket", &self.socket)
            .field("proxy_socket", &self.proxy_socket)
            .finish()
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
    /// Variables inherited from the service and `defaults.env` (any [`MODEL_API`] variable among
    /// them is dropped).
    pub env: Vec<(String, String)>,
    /// How the CLI reaches the model (the only source of its [`MODEL_API`] variables).
    pub model: ModelAccess,
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
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| !MODEL_API.contains(&k.as_str()))
            .cloned()
            .collect();
        let mut set = |key: &str, value: String| {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value));
        };
        set("ANTHROPIC_BASE_URL", self.model.base_url.clone());
        if let Some(token) = &self.model.token {
            set("ANTHROPIC_API_KEY", token.clone());
        }
        if let Some(proxy) = &self.model.proxy {
            // Both spellings: curl reads only the lowercase `http_proxy`, others the uppercase.
            for key in PROXY_VARIABLES {
                set(key, proxy.clone());
            }
            // The relay is on loopback and must not be asked through the proxy.
            for key in ["NO_PROXY", "no_proxy"] {
                set(key, NO_PROXY.into());
            }
        }
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
                ("ANTHROPIC_API_KEY".into(), "sk-real".into()),
                ("ANTHROPIC_AUTH_TOKEN".into(), "real-token".into()),
                ("ANTHROPIC_BASE_URL".into(), "https://upstream.example".into()),
            ],
            model: ModelAccess {
                base_url: "http://127.0.0.1:9".into(),
                token: Some("cah_relay_k".into()),
                proxy: None,
                socket: None,
                proxy_socket: None,
            },
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
        assert_eq!(
            get("ANTHROPIC_API_KEY"),
            vec!["cah_relay_k"],
            "the relay token, never the real key"
        );
        assert_eq!(get("ANTHROPIC_BASE_URL"), vec!["http://127.0.0.1:9"]);
        assert!(get("ANTHROPIC_AUTH_TOKEN").is_empty());
        assert_eq!(get("CLAUDE_CODE_RESUME_INTERRUPTED_TURN"), vec!["0"]);
        assert!(get(SESSION_MARKER).is_empty());
        let mut without = spec(AgentOptions::default());
        without.model.token = None;
        let without = without.command_line();
        assert!(
            !without.env.iter().any(|(k, _)| k == "ANTHROPIC_API_KEY"),
            "no token, no key at all"
        );
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

    #[test]
    fn the_egress_proxy_is_named_in_every_spelling_only_when_given() {
        let var = |command: &CommandLine, key: &str| {
            command.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        let none = spec(AgentOptions::default()).command_line();
        for key in PROXY_VARIABLES.iter().chain(&["NO_PROXY", "no_proxy"]) {
            assert_eq!(var(&none, key), None, "{key} without egress");
        }
        let mut with = spec(AgentOptions::default());
        with.env
            .push(("HTTPS_PROXY".into(), "http://elsewhere:3128".into()));
        with.model.proxy = Some("http://cah:cah_relay_k@127.0.0.1:7".into());
        let with = with.command_line();
        for key in PROXY_VARIABLES {
            assert_eq!(
                var(&with, key).as_deref(),
                Some("http://cah:cah_relay_k@127.0.0.1:7"),
                "{key}"
            );
        }
        assert_eq!(with.env.iter().filter(|(k, _)| k == "HTTPS_PROXY").count(), 1);
        assert_eq!(var(&with, "NO_PROXY").as_deref(), Some("127.0.0.1,localhost,::1"));
        assert_eq!(var(&with, "no_proxy").as_deref(), Some("127.0.0.1,localhost,::1"));
    }
}
