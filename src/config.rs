//! The configuration tree: compiled defaults, then the YAML file, then the environment, then
//! `validate()`. It owns key names, defaults and the seed-compatible environment variables; it must
//! not open databases or touch workspaces (that is `app`'s job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{AgentOptions, BudgetLimits, PermissionMode, PluginSpec, WebhookEvent};

/// A configuration problem, always naming the key or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The YAML file is not valid YAML or not a mapping.
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key is unknown, has the wrong type or an impossible value.
    #[error("config key `{key}`{origin}: {message}")]
    Invalid {
        /// The dotted key, e.g. `api.port`.
        key: String,
        /// ` (from environment VAR)` when a variable set it, else empty.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Where the storage of session records lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In process memory: lost on restart.
    Memory,
    /// An embedded SQLite file (the default).
    Sqlite,
    /// A PostgreSQL server, for several instances.
    Postgresql,
}

impl StorageKind {
    /// The name used in config and in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Memory => "memory",
            StorageKind::Sqlite => "sqlite",
            StorageKind::Postgresql => "postgresql",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder for everything the service keeps: the SQLite file, user workspaces, CLI config dirs.
    pub data_dir: PathBuf,
    /// Workspaces.
    pub user: UserConfig,
    /// The session store.
    pub session: SessionConfig,
    /// The HTTP listener and service-wide limits.
    pub api: ApiConfig,
    /// Agent options for new sessions.
    pub defaults: AgentDefaults,
    /// MCP servers given to every session (`--mcp-config`), by name.
    pub mcp_servers: Map<String, Value>,
    /// Plugin folders given to every session (`--plugin-dir`).
    pub plugins: Vec<PluginSpec>,
    /// Who may call: API keys, JWTs, rate limits.
    pub auth: AuthConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// How agents are isolated from each other and from the host.
    pub isolation: IsolationConfig,
    /// Prices of model tokens (the cost of usage, and what USD budgets count).
    pub pricing: PricingConfig,
    /// Spending limits per user, session and turn, enforced by the model relay.
    pub budgets: BudgetLimits,
    /// Endpoints told about events (`turn.completed`, ...), each with a signing secret.
    pub webhooks: Vec<WebhookConfig>,
    /// How webhook deliveries are tried.
    pub webhook_delivery: WebhookDeliveryConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
}

/// The `pricing` section: USD per million tokens, by model. Built-in prices cover current Claude
/// models; `models` adds or replaces entries. A model is priced by the entry that is the longest
/// prefix of its name, else by `fallback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Prices by model-name prefix, over the built-in ones.
    pub models: BTreeMap<String, ModelPrice>,
    /// The price of a model no entry names (the dearest current one, so nothing is under-counted).
    pub fallback: ModelPrice,
}

/// One model's prices, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Tokens read from the prompt cache (default: a tenth of `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Tokens written to the prompt cache (default: 1.25 times `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

impl ModelPrice {
    /// A price with the usual cache multipliers.
    pub const fn of(input: f64, output: f64) -> ModelPrice {
        ModelPrice {
            input,
            output,
            cache_read: None,
            cache_write: None,
        }
    }

    /// The first amount that is negative or not finite.
    fn invalid(&self) -> Option<f64> {
        [
            Some(self.input),
            Some(self.output),
            self.cache_read,
            self.cache_write,
        ]
        .into_iter()
        .flatten()
        .find(|v| !v.is_finite() || *v < 0.0)
    }
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            models: BTreeMap::new(),
            fallback: ModelPrice::of(15.0, 75.0),
        }
    }
}

/// One entry of `webhooks`: where to send which events, signed with which secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An `http` or `https` URL, POSTed to.
    pub url: String,
    /// The events it receives (at least one).
    pub events: Vec<WebhookEvent>,
    /// The HMAC-SHA256 key of the `X-Webhook-Signature` header (at least 16 bytes); redacted when
    /// printed, never stored.
    pub secret: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The `webhook_delivery` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookDeliveryConfig {
    /// Attempts per delivery, the first included; then it is given up on (`failed`).
    pub max_attempts: u32,
    /// Milliseconds before the first retry; each further retry waits twice as long as the last.
    pub retry_backoff_ms: u64,
    /// The longest wait between two attempts, seconds.
    pub retry_backoff_max_seconds: u64,
    /// Seconds an attempt may take (connecting, sending, the answer's status) before it counts as
    /// failed.
    pub timeout_seconds: u64,
    /// Days delivered and failed deliveries are kept (0: forever).
    pub retention_days: u32,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        WebhookDeliveryConfig {
            max_attempts: 12,
            retry_backoff_ms: 2000,
            retry_backoff_max_seconds: 3600,
            timeout_seconds: 10,
            retention_days: 7,
        }
    }
}

/// The `metrics` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A second listener serving only `GET /metrics`, without authentication, for scrapers
    /// (`ip:port`, e.g. `127.0.0.1:9464`); unset: none (admins still get `/metrics` on the API).
    pub listen: Option<String>,
    /// Label turns and model usage with the user's id (one series per user: only where users
    /// are few and known).
    pub per_user_labels: bool,
}

/// How strongly agents are isolated (`isolation.profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationProfile {
    /// The strongest this host supports (strict where it can, else none, loudly).
    Auto,
    /// Each CLI as its user's own uid, in its own namespaces, under Landlock and seccomp, in a
    /// limited cgroup; refuses to start where the host lacks any part.
    Strict,
    /// Every CLI as the service's own user (no isolation between users).
    None,
}

/// The `isolation` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// `auto`, `strict` or `none`.
    pub profile: IsolationProfile,
    /// The first uid (and gid) users' agents run as.
    pub uid_first: u32,
    /// How many uids the range holds (one per user, kept in the store).
    pub uid_count: u32,
    /// Processes and threads per session (cgroup `pids.max`; 0: no limit).
    pub pids_max: u32,
    /// Memory per session, MiB (0: no limit).
    pub memory_max_mb: u64,
    /// CPU per session, percent of one CPU (0: no limit).
    pub cpu_percent: u32,
    /// Hosts agents may reach through the service's HTTP(S) proxy (`name`, `*.domain`, an IP
    /// literal, each with an optional `:port`); empty: no proxy, agents reach only the model.
    pub egress_allow: Vec<String>,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            profile: IsolationProfile::Auto,
            uid_first: 200_000,
            uid_count: 100_000,
            pids_max: 512,
            memory_max_mb: 4096,
            cpu_percent: 100,
            egress_allow: Vec::new(),
        }
    }
}

/// Whether requests must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the port acts as any user (the seed's behaviour).
    None,
    /// Every request but the public ones needs an API key or a JWT.
    On,
}

/// The `auth` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`, `on`, or unset: `none` while the service binds a loopback address; any other
    /// address then refuses to start (set `none` explicitly to run open anyway).
    pub mode: Option<AuthMode>,
    /// A first admin key (e.g. from `CLAUDE_AGENT_AUTH__ADMIN_KEY` in a container), accepted as
    /// an admin credential beside the stored keys; redacted when printed.
    pub admin_key: Option<String>,
    /// Requests per second each principal may make (0: no limit).
    pub rate_limit_per_second: u32,
    /// Requests a principal may make at once above its rate.
    pub rate_limit_burst: u32,
    /// JWTs from an identity provider.
    pub jwt: JwtConfig,
}

/// The `auth.jwt` section: accepted when one of `jwks_url`, `hs256_secret`, `public_key_pem` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// Where the issuer publishes its keys (RS256/ES256/EdDSA, by `kid`).
    pub jwks_url: Option<String>,
    /// A shared secret for HS256 tokens; redacted when printed.
    pub hs256_secret: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519) for tokens without a JWKS.
    pub public_key_pem: Option<String>,
    /// The claim naming the user (must pass the user-id rules).
    pub user_claim: String,
    /// A claim that makes the token an admin when it equals (or, for an array, contains)
    /// `admin_value`.
    pub admin_claim: Option<String>,
    /// The value of `admin_claim` that means admin.
    pub admin_value: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
}

impl JwtConfig {
    /// Whether JWTs are accepted at all.
    pub fn enabled(&self) -> bool {
        self.jwks_url.is_some() || self.hs256_secret.is_some() || self.public_key_pem.is_some()
    }
}

/// The `audit` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days audit records are kept (0: forever).
    pub retention_days: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: None,
            admin_key: None,
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            jwt: JwtConfig {
                user_claim: "sub".into(),
                leeway_seconds: 30,
                ..JwtConfig::default()
            },
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention_days: 90 }
    }
}

/// The `user` section: where workspaces live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    /// Base of all user workspaces; `null` means `<data_dir>/users`.
    pub base_dir: Option<PathBuf>,
    /// Create `base_dir/<user>/<subdir>` on session create.
    pub auto_create_dir: bool,
}

/// The `session` section: the session store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Which backend stores sessions.
    pub storage: StorageKind,
    /// Seconds after the last activity a session expires; 0 never expires.
    pub ttl: u64,
    /// SQLite file; `null` means `<data_dir>/sessions.db`.
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL host.
    pub pg_host: String,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// PostgreSQL database.
    pub pg_database: String,
    /// PostgreSQL user.
    pub pg_user: String,
    /// PostgreSQL password (redacted when printed).
    pub pg_password: String,
    /// A PostgreSQL URL (`postgres://user:password@host:port/database?sslmode=require`); when set
    /// it wins over `pg_host` ... `pg_password`, so libpq's URL options work. Its password is
    /// redacted when printed.
    pub pg_url: Option<String>,
    /// Connections the PostgreSQL pool holds at most.
    pub pg_pool_size: u32,
}

/// The `api` section: the HTTP listener and service-wide limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on (loopback by default).
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Origins allowed by CORS; `["*"]` allows any, `[]` sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Stored (unexpired) sessions across all users.
    pub max_sessions: u32,
    /// Stored (unexpired) sessions per user.
    pub max_sessions_per_user: u32,
    /// Turns running at once across the service.
    pub max_concurrent_requests: u32,
    /// Turns one user may run at once (on one instance); more are refused with 429.
    pub max_concurrent_turns_per_user: u32,
    /// Memory of the service plus all agent processes, in MiB, above which idle agents are
    /// stopped; 0 disables the check.
    pub memory_limit_mb: u64,
    /// Seconds after its last turn a live agent process is stopped (the session stays resumable).
    pub idle_session_timeout: u64,
    /// Agent processes alive at once; the least recently used idle one is stopped to make room.
    pub max_live_agents: u32,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a connection may take to send a complete request head (after it opens, and after
    /// each response on a kept-alive connection) before it is closed.
    pub header_read_timeout_seconds: u64,
    /// Open client connections at most; beyond it new connections wait in the listen backlog.
    pub max_connections: u32,
    /// Seconds between SSE keep-alive comments while the agent is quiet.
    pub keepalive_seconds: u64,
    /// Start a session's CLI in the background when the session is created or resumed, if it fits
    /// under `max_live_agents` and `memory_limit_mb` without stopping another agent.
    pub prewarm: bool,
    /// CLI processes starting at once; further starts wait in a FIFO queue.
    pub max_concurrent_starts: u32,
    /// Events buffered per session for streaming readers; a reader further behind is dropped.
    pub stream_buffer_events: u32,
    /// Milliseconds within which text deltas are merged into one event (the first after a pause
    /// goes at once); 0 merges only what one read of the agent's output delivered.
    pub stream_coalesce_ms: u64,
}

/// The `defaults` section: agent options every new session gets (see [`Config::agent_options`])
/// and how agents are run.
///
/// The option keys mirror [`AgentOptions`] field by field rather than embedding it with
/// `#[serde(flatten)]`: a flattened struct is deserialized from a buffered copy, so an error in
/// one of its keys would name only `defaults`, not `defaults.permission_mode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentDefaults {
    /// Replaces Claude Code's system prompt; `null` keeps it.
    pub system_prompt: Option<String>,
    /// Appended to Claude Code's own system prompt.
    pub append_system_prompt: Option<String>,
    /// The CLI's `--permission-mode`.
    pub permission_mode: PermissionMode,
    /// Tools that run without asking; permission requests for others are denied.
    pub allowed_tools: Vec<String>,
    /// `--setting-sources`; `null` leaves the CLI's default.
    pub setting_sources: Option<Vec<String>>,
    /// The `claude` executable; `null` looks on PATH, then in `<data_dir>/cli`.
    pub cli_path: Option<PathBuf>,
    /// Install the pinned CLI into `<data_dir>/cli` with npm when none is found.
    pub cli_auto_install: bool,
    /// The model (`null`: the CLI's default).
    pub model: Option<String>,
    /// Model calls per message (`null`: no limit).
    pub max_turns: Option<u32>,
    /// Spend per message in USD (`null`: no limit).
    pub max_budget_usd: Option<f64>,
    /// Extra environment variables for the CLI (beyond the built-in allow-list).
    pub env: BTreeMap<String, String>,
    /// Seconds a turn may run before the service stops it; 0: no server-side deadline.
    pub turn_timeout: u64,
    /// Seconds a turn's CLI may print nothing before the service stops the turn; 0: off.
    pub turn_silence_timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            user: UserConfig::default(),
            session: SessionConfig::default(),
            api: ApiConfig::default(),
            defaults: AgentDefaults::default(),
            mcp_servers: Map::new(),
            plugins: Vec::new(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            isolation: IsolationConfig::default(),
            pricing: PricingConfig::default(),
            budgets: BudgetLimits::default(),
            webhooks: Vec::new(),
            webhook_delivery: WebhookDeliveryConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig {
            base_dir: None,
            auto_create_dir: true,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            storage: StorageKind::Sqlite,
            ttl: 3600,
            sqlite_path: None,
            pg_host: "localhost".into(),
            pg_port: 5432,
            pg_database: "claude_agent".into(),
            pg_user: "postgres".into(),
            pg_password: "postgres".into(),
            pg_url: None,
            pg_pool_size: 10,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            cors_origins: Vec::new(),
            max_sessions: 1000,
            max_sessions_per_user: 50,
            max_concurrent_requests: 20,
            max_concurrent_turns_per_user: 5,
            memory_limit_mb: 0,
            idle_session_timeout: 300,
            max_live_agents: 32,
            max_body_bytes: 1024 * 1024,
            header_read_timeout_seconds: 10,
            max_connections: 1024,
            keepalive_seconds: 15,
            prewarm: true,
            max_concurrent_starts: 2,
            stream_buffer_events: 4096,
            stream_coalesce_ms: 2,
        }
    }
}

impl Default for AgentDefaults {
    fn default() -> Self {
        AgentDefaults {
            system_prompt: None,
            append_system_prompt: None,
            permission_mode: PermissionMode::Default,
            allowed_tools: ["Bash", "Read", "Write", "Edit", "Glob", "Grep"]
                .map(String::from)
                .to_vec(),
            setting_sources: None,
            cli_path: None,
            cli_auto_install: true,
            model: None,
            max_turns: None,
            max_budget_usd: None,
            env: BTreeMap::new(),
            turn_timeout: 1800,
            turn_silence_timeout: 600,
        }
    }
}

/// The shortest webhook secret accepted: an HMAC key much shorter than this is guessable.
const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// The seed's environment variables and the key each one sets.
const NAMED_ENV: &[(&str, &str)] = &[
    ("CLAUDE_AGENT_DATA_DIR", "data_dir"),
    ("CLAUDE_AGENT_USER_BASE_DIR", "user.base_dir"),
    ("CLAUDE_AGENT_SESSION_STORAGE", "session.storage"),
    ("CLAUDE_AGENT_SESSION_TTL", "session.ttl"),
    ("CLAUDE_AGENT_SESSION_SQLITE_PATH", "session.sqlite_path"),
    ("CLAUDE_AGENT_SESSION_PG_HOST", "session.pg_host"),
    ("CLAUDE_AGENT_SESSION_PG_PORT", "session.pg_port"),
    ("CLAUDE_AGENT_SESSION_PG_DATABASE", "session.pg_database"),
    ("CLAUDE_AGENT_SESSION_PG_USER", "session.pg_user"),
    ("CLAUDE_AGENT_SESSION_PG_PASSWORD", "session.pg_password"),
    ("CLAUDE_AGENT_API_HOST", "api.host"),
    ("CLAUDE_AGENT_API_PORT", "api.port"),
    ("CLAUDE_AGENT_MAX_SESSIONS", "api.max_sessions"),
    ("CLAUDE_AGENT_MAX_SESSIONS_PER_USER", "api.max_sessions_per_user"),
    ("CLAUDE_AGENT_MAX_CONCURRENT", "api.max_concurrent_requests"),
    ("CLAUDE_AGENT_MEMORY_LIMIT_MB", "api.memory_limit_mb"),
    ("CLAUDE_AGENT_IDLE_SESSION_TIMEOUT", "api.idle_session_timeout"),
    ("CLAUDE_AGENT_CLI_PATH", "defaults.cli_path"),
    // The whole list as YAML or JSON, e.g. from a container secret.
    ("CLAUDE_AGENT_WEBHOOKS", "webhooks"),
];

const ENV_PREFIX: &str = "CLAUDE_AGENT_";

/// Variables without the prefix that set a key, as other tools name them; a `CLAUDE_AGENT_*`
/// variable for the same key wins.
const ALIAS_ENV: &[(&str, &str)] = &[("DATABASE_URL", "session.pg_url")];

/// Keys whose environment value is always text, never parsed as YAML (a URL may hold `#`, `: `...).
const TEXT_ENV_KEYS: &[&str] = &[
    "session.pg_url",
    "auth.admin_key",
    "auth.jwt.hs256_secret",
    "auth.jwt.public_key_pem",
    "auth.jwt.jwks_url",
    "auth.jwt.issuer",
    "auth.jwt.audience",
];

/// How a loaded config may be used; tests and benchmarks may bind port 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Port 0 is allowed because the caller learns the bound port another way (`--port-file`).
    pub allow_ephemeral_port: bool,
}

/// A loaded configuration and what the loader noticed but did not refuse.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// One line per problem worth a warning, e.g. an ignored `CLAUDE_AGENT_*` variable.
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads defaults, then `file` (or `./config.yaml` if present), then `env`, then validates;
    /// logs the loader's warnings with `tracing` (lost if logging is not initialised yet: a caller
    /// that initialises logging later should use [`Config::load_with_warnings`]).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        options: LoadOptions,
    ) -> Result<Config, ConfigError> {
        let loaded = Self::load_with_warnings(file, env, options)?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        Ok(loaded.config)
    }

    /// Like [`Config::load`], but returns the warnings for the caller to report once it can.
    pub fn load_with_warnings(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        options: LoadOptions,
    ) -> Result<Loaded, ConfigError> {
        let mut tree = serde_json::to_value(Config::default()).expect("defaults serialize");
        let known = known_env_names(&tree);
        let implicit = Path::new("config.yaml");
        let file = match file {
            Some(path) => Some(path),
            None if implicit.is_file() => Some(implicit),
            None => None,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let yaml_error = |e: yaml_serde::Error| ConfigError::Yaml {
                path: path.to_owned(),
                message: e.to_string(),
            };
            // Through yaml_serde's own Value first: it refuses duplicate keys, which would otherwise
            // silently keep the last section.
            let yaml: yaml_serde::Value = yaml_serde::from_str(&text).map_err(yaml_error)?;
            let yaml: Value = yaml_serde::from_value(yaml).map_err(yaml_error)?;
            match yaml {
                Value::Null => {}
                Value::Object(_) => merge(&mut tree, yaml),
                _ => {
                    return Err(ConfigError::Yaml {
                        path: path.to_owned(),
                        message: "the top level must be a mapping of sections".into(),
                    });
                }
            }
        }
        let (origins, ignored) = apply_env(&mut tree, env)?;
        let warnings = ignored
            .iter()
            .map(|name| ignored_env_warning(name, &known))
            .collect();
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                origin: origin_of(&origins, &key),
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        config.make_paths_absolute();
        config
            .validate(options)
            .map_err(|(key, message)| (key.to_string(), message))
            .and_then(|()| config.validate_webhooks())
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin_of(&origins, &key),
                key,
                message,
            })?;
        Ok(Loaded { config, warnings })
    }

    /// The agent options a new session gets: the `defaults` section's options and the plugins.
    pub fn agent_options(&self) -> AgentOptions {
        // Destructured, and built without `..`, so that a field added to either side is a compile
        // error here until it is routed (or deliberately left out).
        let AgentDefaults {
            system_prompt,
            append_system_prompt,
            permission_mode,
            allowed_tools,
            setting_sources,
            model,
            max_turns,
            max_budget_usd,
            cli_path: _,
            cli_auto_install: _,
            env: _,
            turn_timeout: _,
            turn_silence_timeout: _,
        } = &self.defaults;
        AgentOptions {
            system_prompt: system_prompt.clone(),
            append_system_prompt: append_system_prompt.clone(),
            permission_mode: *permission_mode,
            allowed_tools: allowed_tools.clone(),
            setting_sources: setting_sources.clone(),
            model: model.clone(),
            max_turns: *max_turns,
            max_budget_usd: *max_budget_usd,
            plugins: self.plugins.clone(),
        }
    }

    /// Where user workspaces live.
    pub fn base_dir(&self) -> PathBuf {
        self.user
            .base_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("users"))
    }

    /// The SQLite database file.
    pub fn sqlite_path(&self) -> PathBuf {
        self.session
            .sqlite_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sessions.db"))
    }

    /// The configuration as JSON with secrets replaced, for printing and logging.
    pub fn redacted(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("config serializes");
        value["session"]["pg_password"] = Value::String(REDACTED.into());
        if let Some(url) = &self.session.pg_url {
            value["session"]["pg_url"] = Value::String(redact_url(url));
        }
        if let Some(env) = value["defaults"]["env"].as_object_mut() {
            redact_secret_entries(env);
        }
        if self.auth.admin_key.is_some() {
            value["auth"]["admin_key"] = Value::String(REDACTED.into());
        }
        if self.auth.jwt.hs256_secret.is_some() {
            value["auth"]["jwt"]["hs256_secret"] = Value::String(REDACTED.into());
        }
        if let Some(webhooks) = value["webhooks"].as_array_mut() {
            for (webhook, config) in webhooks.iter_mut().zip(&self.webhooks) {
                webhook["secret"] = Value::String(REDACTED.into());
                webhook["url"] = Value::String(redact_url(&config.url));
            }
        }
        if let Some(servers) = value["mcp_servers"].as_object_mut() {
            for server in servers.values_mut() {
                for field in ["env", "headers"] {
                    if let Some(map) = server.get_mut(field).and_then(Value::as_object_mut) {
                        redact_secret_entries(map);
                    }
                }
            }
        }
        value
    }

    /// Expands `~` and makes every path absolute against the service's working directory: agents
    /// run in other directories, so a relative path would point somewhere else for them.
    fn make_paths_absolute(&mut self) {
        let expand = |path: &mut PathBuf| {
            let expanded = expand_tilde(path);
            *path = std::path::absolute(&expanded).unwrap_or(expanded);
        };
        expand(&mut self.data_dir);
        if let Some(path) = self.user.base_dir.as_mut() {
            expand(path);
        }
        if let Some(path) = self.session.sqlite_path.as_mut() {
            expand(path);
        }
        if let Some(path) = self.defaults.cli_path.as_mut() {
            expand(path);
        }
        for plugin in &mut self.plugins {
            match plugin {
                PluginSpec::Path(path) | PluginSpec::Local { path, .. } => expand(path),
            }
        }
    }

    fn validate(&self, options: LoadOptions) -> Result<(), (&'static str, String)> {
        if self.api.port == 0 && !options.allow_ephemeral_port {
            return Err((
                "api.port",
                "0 is only allowed with --port-file (otherwise nobody learns the bound port)".into(),
            ));
        }
        if self.api.host.trim().is_empty() {
            return Err(("api.host", "must not be empty".into()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "must not be empty".into()));
        }
        if self.data_dir.exists() && !self.data_dir.is_dir() {
            return Err((
                "data_dir",
                format!("{} is not a directory", self.data_dir.display()),
            ));
        }
        let base = self.base_dir();
        if base.exists() && !base.is_dir() {
            return Err(("user.base_dir", format!("{} is not a directory", base.display())));
        }
        for (key, value) in [
            ("api.max_sessions", self.api.max_sessions),
            ("api.max_sessions_per_user", self.api.max_sessions_per_user),
            ("api.max_concurrent_requests", self.api.max_concurrent_requests),
            (
                "api.max_concurrent_turns_per_user",
                self.api.max_concurrent_turns_per_user,
            ),
            ("api.max_live_agents", self.api.max_live_agents),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.api.max_connections == 0 {
            return Err((
                "api.max_connections",
                "must be at least 1 (0 would accept no connection at all)".into(),
            ));
        }
        if !(1..=MAX_HEADER_READ_SECONDS).contains(&self.api.header_read_timeout_seconds) {
            return Err((
                "api.header_read_timeout_seconds",
                format!("must be between 1 and {MAX_HEADER_READ_SECONDS} seconds"),
            ));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(("api.max_body_bytes", "must be at least 1024".into()));
        }
        if self.api.keepalive_seconds == 0 {
            return Err(("api.keepalive_seconds", "must be at least 1".into()));
        }
        if self.api.stream_coalesce_ms > 1000 {
            return Err(("api.stream_coalesce_ms", "must be at most 1000".into()));
        }
        if self.api.max_concurrent_starts == 0 {
            return Err(("api.max_concurrent_starts", "must be at least 1".into()));
        }
        if !(MIN_STREAM_BUFFER..=MAX_STREAM_BUFFER).contains(&self.api.stream_buffer_events) {
            return Err((
                "api.stream_buffer_events",
                format!("must be between {MIN_STREAM_BUFFER} and {MAX_STREAM_BUFFER}"),
            ));
        }
        for (key, value) in [
            ("defaults.turn_timeout", self.defaults.turn_timeout),
            (
                "defaults.turn_silence_timeout",
                self.defaults.turn_silence_timeout,
            ),
        ] {
            if value > MAX_TURN_SECONDS {
                return Err((
                    key,
                    format!("must be at most {MAX_TURN_SECONDS} seconds (one year); 0 turns it off"),
                ));
            }
        }
        for origin in &self.api.cors_origins {
            check_origin(origin).map_err(|why| ("api.cors_origins", format!("entry {origin:?} {why}")))?;
        }
        if self.defaults.max_turns == Some(0) {
            return Err(("defaults.max_turns", "must be at least 1 (or null)".into()));
        }
        if let Some(budget) = self.defaults.max_budget_usd
            && !(budget.is_finite() && budget > 0.0)
        {
            return Err((
                "defaults.max_budget_usd",
                "must be a positive number (or null)".into(),
            ));
        }
        for plugin in &self.plugins {
            if let PluginSpec::Local { kind, .. } = plugin
                && kind != "local"
            {
                return Err((
                    "plugins",
                    format!("unknown plugin type {kind:?} (only \"local\")"),
                ));
            }
        }
        for name in self.defaults.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(("defaults.env", format!("{name:?} is not a variable name")));
            }
        }
        if self.session.storage == StorageKind::Sqlite && self.sqlite_path().is_dir() {
            return Err(("session.sqlite_path", "is a directory".into()));
        }
        if self.session.pg_pool_size == 0 {
            return Err(("session.pg_pool_size", "must be at least 1".into()));
        }
        if self.session.storage == StorageKind::Postgresql {
            self.validate_postgresql()?;
        }
        self.validate_isolation()?;
        self.validate_pricing()?;
        self.validate_metrics(options)?;
        self.validate_auth()
    }

    /// The `pricing` and `budgets` keys: amounts of money that are numbers of dollars.
    fn validate_pricing(&self) -> Result<(), (&'static str, String)> {
        for (model, price) in &self.pricing.models {
            if model.trim().is_empty() {
                return Err(("pricing.models", "a model name is empty".into()));
            }
            if let Some(bad) = price.invalid() {
                return Err((
                    "pricing.models",
                    format!("{model:?} has the price {bad}: prices are USD per million tokens, 0 or more"),
                ));
            }
        }
        if let Some(bad) = self.pricing.fallback.invalid() {
            return Err((
                "pricing.fallback",
                format!("has the price {bad}: prices are USD per million tokens, 0 or more"),
            ));
        }
        if let Some((key, bad)) = self.budgets.invalid_amount() {
            let key = match key {
                "user_daily_usd" => "budgets.user_daily_usd",
                "user_monthly_usd" => "budgets.user_monthly_usd",
                "session_usd" => "budgets.session_usd",
                _ => "budgets.turn_usd",
            };
            return Err((key, format!("is {bad}: a budget is USD, 0 or more (or null)")));
        }
        Ok(())
    }

    /// The `webhooks` entries (each error names its entry's key, e.g. `webhooks[1].url`) and the
    /// `webhook_delivery` keys.
    fn validate_webhooks(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for (index, webhook) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("webhooks[{index}].{field}");
            let url = reqwest::Url::parse(&webhook.url).map_err(|e| {
                (
                    key("url"),
                    format!("{:?} is not a URL: {e}", redact_url(&webhook.url)),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
                return Err((
                    key("url"),
                    format!(
                        "{:?} must be an http or https URL with a host",
                        redact_url(&webhook.url)
                    ),
                ));
            }
            if !seen.insert(url.as_str().to_string()) {
                return Err((
                    key("url"),
                    "is listed twice (list all of its events in one entry)".into(),
                ));
            }
            if webhook.events.is_empty() {
                return Err((
                    key("events"),
                    format!(
                        "must name at least one of {}",
                        WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ")
                    ),
                ));
            }
            if webhook.secret.len() < MIN_WEBHOOK_SECRET_BYTES {
                return Err((
                    key("secret"),
                    format!(
                        "must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
        }
        let delivery = &self.webhook_delivery;
        let bounded = |key: &str, value: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&value) {
                Ok(())
            } else {
                Err((
                    format!("webhook_delivery.{key}"),
                    format!("must be between {} and {}", range.start(), range.end()),
                ))
            }
        };
        bounded("max_attempts", u64::from(delivery.max_attempts), 1..=100)?;
        bounded(
            "retry_backoff_ms",
            delivery.retry_backoff_ms,
            10..=MAX_TURN_SECONDS * 1000,
        )?;
        bounded(
            "retry_backoff_max_seconds",
            delivery.retry_backoff_max_seconds,
            1..=MAX_TURN_SECONDS,
        )?;
        bounded("timeout_seconds", delivery.timeout_seconds, 1..=300)
    }

    /// `metrics.listen`: an IP address and port, not the API's own.
    fn validate_metrics(&self, options: LoadOptions) -> Result<(), (&'static str, String)> {
        let Some(listen) = &self.metrics.listen else {
            return Ok(());
        };
        let addr: std::net::SocketAddr = listen.trim().parse().map_err(|_| {
            (
                "metrics.listen",
                format!("{listen:?} is not an IP address and port, e.g. 127.0.0.1:9464 or [::1]:9464 (leave it unset for no metrics listener)"),
            )
        })?;
        if addr.port() == 0 && !options.allow_ephemeral_port {
            return Err((
                "metrics.listen",
                "port 0 is only allowed with --port-file (otherwise nobody learns the bound port)".into(),
            ));
        }
        let api_ip = self
            .api
            .host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .ok();
        if addr.port() != 0
            && addr.port() == self.api.port
            && api_ip.is_none_or(|ip| ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified())
        {
            return Err((
                "metrics.listen",
                format!(
                    "{listen} is the API's own address (api.host:api.port); give the metrics listener a port of its own"
                ),
            ));
        }
        Ok(())
    }

    /// The `isolation` keys: a uid range that is neither root's nor wrapping, limits the CLI can
    /// live with.
    fn validate_isolation(&self) -> Result<(), (&'static str, String)> {
        let iso = &self.isolation;
        if iso.uid_first < 1000 {
            return Err((
                "isolation.uid_first",
                "must be at least 1000 (clear of system accounts and root)".into(),
            ));
        }
        if iso.uid_count == 0 {
            return Err(("isolation.uid_count", "must be at least 1".into()));
        }
        if u64::from(iso.uid_first) + u64::from(iso.uid_count) > u64::from(u32::MAX - 1) {
            return Err((
                "isolation.uid_count",
                "uid_first + uid_count must stay below 4294967295".into(),
            ));
        }
        if iso.pids_max != 0 && iso.pids_max < 64 {
            return Err((
                "isolation.pids_max",
                "must be at least 64 (the CLI alone runs dozens of threads), or 0 for no limit".into(),
            ));
        }
        if iso.memory_max_mb != 0 && iso.memory_max_mb < 256 {
            return Err((
                "isolation.memory_max_mb",
                "must be at least 256 (the CLI needs ~200 MiB), or 0 for no limit".into(),
            ));
        }
        if iso.cpu_percent > 100 * 1024 {
            return Err((
                "isolation.cpu_percent",
                "must be at most 102400 (1024 CPUs)".into(),
            ));
        }
        if let Err(e) = crate::domain::EgressRules::parse(&iso.egress_allow) {
            return Err(("isolation.egress_allow", format!("entry {e}")));
        }
        Ok(())
    }

    /// The `auth` keys: a usable admin key, a complete JWT setup, a rate with a burst.
    fn validate_auth(&self) -> Result<(), (&'static str, String)> {
        let auth = &self.auth;
        if let Some(key) = &auth.admin_key
            && key.trim().len() < MIN_ADMIN_KEY_CHARS
        {
            return Err((
                "auth.admin_key",
                format!(
                    "must be at least {MIN_ADMIN_KEY_CHARS} characters (e.g. the output of \
                     `openssl rand -hex 32`, or a key from `claude-agent-http keys create --admin`)"
                ),
            ));
        }
        if auth.rate_limit_per_second > 0 && auth.rate_limit_burst == 0 {
            return Err((
                "auth.rate_limit_burst",
                "must be at least 1 when auth.rate_limit_per_second is set".into(),
            ));
        }
        let jwt = &auth.jwt;
        if jwt.enabled() {
            let sources = [
                jwt.jwks_url.is_some(),
                jwt.hs256_secret.is_some(),
                jwt.public_key_pem.is_some(),
            ];
            if sources.iter().filter(|set| **set).count() > 1 {
                return Err((
                    "auth.jwt",
                    "set only one of jwks_url, hs256_secret and public_key_pem".into(),
                ));
            }
            if jwt.issuer.trim().is_empty() {
                return Err(("auth.jwt.issuer", "must be set when JWTs are accepted".into()));
            }
            if jwt.audience.trim().is_empty() {
                return Err(("auth.jwt.audience", "must be set when JWTs are accepted".into()));
            }
            if jwt.user_claim.trim().is_empty() {
                return Err(("auth.jwt.user_claim", "must not be empty".into()));
            }
            if let Some(secret) = &jwt.hs256_secret
                && secret.len() < 32
            {
                return Err((
                    "auth.jwt.hs256_secret",
                    "must be at least 32 bytes (a shorter HMAC secret can be guessed)".into(),
                ));
            }
            if let Some(url) = &jwt.jwks_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(("auth.jwt.jwks_url", "must be an http(s):// URL".into()));
            }
            if jwt.admin_claim.is_some() != jwt.admin_value.is_some() {
                return Err((
                    "auth.jwt.admin_claim",
                    "admin_claim and admin_value go together".into(),
                ));
            }
        }
        Ok(())
    }

    /// The PostgreSQL keys, checked only when PostgreSQL is the storage (`DATABASE_URL` may be
    /// meant for another program).
    fn validate_postgresql(&self) -> Result<(), (&'static str, String)> {
        let session = &self.session;
        if let Some(url) = &session.pg_url {
            return check_pg_url(url).map_err(|why| ("session.pg_url", why));
        }
        for (key, value) in [
            ("session.pg_host", &session.pg_host),
            ("session.pg_database", &session.pg_database),
            ("session.pg_user", &session.pg_user),
        ] {
            if value.trim().is_empty() {
                return Err((key, "must not be empty (or set session.pg_url)".into()));
            }
        }
        if session.pg_port == 0 {
            return Err(("session.pg_port", "must be a port (1 to 65535)".into()));
        }
        Ok(())
    }
}

const REDACTED: &str = "***";

/// The shortest `auth.admin_key` accepted.
const MIN_ADMIN_KEY_CHARS: usize = 32;

/// Bounds of `api.stream_buffer_events`: each live session preallocates this many slots.
const MIN_STREAM_BUFFER: u32 = 16;
const MAX_STREAM_BUFFER: u32 = 1 << 20;

/// Upper bound of `api.header_read_timeout_seconds`: a client needs seconds for a request head,
/// not hours.
const MAX_HEADER_READ_SECONDS: u64 = 3600;

/// Upper bound of the turn timeouts, far beyond any real turn; keeps deadlines representable.
const MAX_TURN_SECONDS: u64 = 365 * 24 * 3600;

/// Checks a CORS origin as browsers send it: `*`, or `scheme://host[:port]` with nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let usage = "(an origin is `*` or scheme://host[:port], e.g. \"https://app.example.com\", \
                 with no path or trailing slash)";
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!("is not an origin {usage}"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(format!("has an invalid scheme {usage}"));
    }
    if authority.is_empty() {
        return Err(format!("has no host {usage}"));
    }
    if authority.contains('/') {
        return Err(format!("has a path or a trailing slash {usage}"));
    }
    if let Some(bad) = authority
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '@' | '\\' | '*'))
    {
        return Err(format!("contains {bad:?} {usage}"));
    }
    // `host:port`, `[v6]` or `[v6]:port`: whatever follows the last `:` outside brackets is a port.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match authority[host_end..].rfind(':') {
        Some(i) => (&authority[..host_end + i], Some(&authority[host_end + i + 1..])),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(format!("has no host {usage}"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("has an invalid port {port:?} {usage}"));
    }
    Ok(())
}

/// Checks a PostgreSQL URL the way the store will read it; the message never repeats the URL (it
/// may hold a password).
fn check_pg_url(url: &str) -> Result<(), String> {
    let usage = "(a URL such as postgres://user:password@host:5432/database?sslmode=require)";
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(format!("must start with postgres:// or postgresql:// {usage}"));
    }
    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
        .map(drop)
        .map_err(|e| {
            format!(
                "is not a usable PostgreSQL URL: {} {usage}",
                redact_url(&e.to_string())
            )
        })
}

/// `url` with the password of its user part and any `password=` parameter replaced by `***`.
fn redact_url(url: &str) -> String {
    let (head, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={REDACTED}"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    let head = if head.is_empty() {
        String::new()
    } else {
        format!("{head}://")
    };
    format!("{head}{authority}{tail}")
}

fn redact_secret_entries(map: &mut Map<String, Value>) {
    for (name, value) in map.iter_mut() {
        let upper = name.to_ascii_uppercase();
        if ["KEY", "TOKEN", "SECRET", "PASSWORD", "AUTH"]
            .iter()
            .any(|word| upper.contains(word))
        {
            *value = Value::String(REDACTED.into());
        }
    }
}

/// Replaces a leading `~` with `$HOME`.
pub fn expand_tilde(path: &Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("~") else {
        return path.to_owned();
    };
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(rest),
        None => path.to_owned(),
    }
}

/// Deep-merges `overlay` into `base`: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_object() && value.is_object() => merge(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Applies environment overrides; returns which variable set which key (for error messages) and
/// the `CLAUDE_AGENT_*` variables that set nothing (for warnings).
fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(BTreeMap<String, String>, Vec<String>), ConfigError> {
    let mut origins = BTreeMap::new();
    let mut ignored = Vec::new();
    let alias_of = |name: &str| {
        ALIAS_ENV
            .iter()
            .find(|(var, _)| *var == name)
            .map(|(_, key)| *key)
    };
    let mut pairs: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) || alias_of(name).is_some())
        .collect();
    // Aliases first, so that a `CLAUDE_AGENT_*` variable for the same key overrides them.
    pairs.sort_by_key(|(name, _)| (alias_of(name).is_none(), name.clone()));
    for (name, raw) in pairs {
        let key = if let Some(key) = alias_of(&name) {
            key.to_string()
        } else if let Some((_, key)) = NAMED_ENV.iter().find(|(var, _)| *var == name) {
            key.to_string()
        } else if let Some((section, key)) = name[ENV_PREFIX.len()..].split_once("__") {
            // A further `__` names a nested section: CLAUDE_AGENT_AUTH__JWT__ISSUER -> auth.jwt.issuer.
            format!(
                "{}.{}",
                section.to_ascii_lowercase(),
                key.to_ascii_lowercase().replace("__", ".")
            )
        } else {
            if !NOT_CONFIG_ENV.contains(&name.as_str()) {
                ignored.push(name);
            }
            continue;
        };
        let path: Vec<&str> = key.split('.').collect();
        let mut slot = &mut *tree;
        for (depth, part) in path.iter().enumerate() {
            let Some(object) = slot.as_object_mut() else {
                return Err(ConfigError::Invalid {
                    key: path[..depth].join("."),
                    origin: format!(" (from environment {name})"),
                    message: "is not a section".into(),
                });
            };
            slot = object.entry(part.to_string()).or_insert(Value::Null);
        }
        *slot = if TEXT_ENV_KEYS.contains(&key.as_str()) {
            Value::String(raw)
        } else if key == "webhooks" {
            // Refused here, not by serde: its error would quote the text, secrets and all.
            match yaml_serde::from_str::<Value>(&raw) {
                Ok(list @ Value::Array(_)) => list,
                _ => {
                    return Err(ConfigError::Invalid {
                        key,
                        origin: format!(" (from environment {name})"),
                        message: "must be a YAML or JSON list of {url, events, secret}".into(),
                    });
                }
            }
        } else {
            env_value(slot, &raw)
        };
        origins.insert(key, name);
    }
    Ok((origins, ignored))
}

/// The sections whose keys `CLAUDE_AGENT_<SECTION>__<KEY>` sets.
const SECTIONS: &[&str] = &[
    "user",
    "session",
    "api",
    "defaults",
    "auth",
    "audit",
    "isolation",
    "budgets",
    "webhook_delivery",
    "metrics",
];

/// Variables with the prefix that are not configuration: the marker every agent process carries
/// (`agent::tree::SESSION_MARKER`), inherited by a service started from inside a session.
const NOT_CONFIG_ENV: &[&str] = &["CLAUDE_AGENT_HTTP_SESSION"];

/// Every key an environment variable can set (from the defaults' tree), with its variables: the
/// generic name first, then the seed's alias if there is one.
fn known_env_names(defaults: &Value) -> Vec<(String, Vec<String>)> {
    let mut known: Vec<(String, Vec<String>)> = Vec::new();
    for section in SECTIONS {
        let Some(keys) = defaults[*section].as_object() else {
            continue;
        };
        for key in keys.keys() {
            let generic = format!(
                "{ENV_PREFIX}{}__{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            );
            known.push((format!("{section}.{key}"), vec![generic]));
        }
    }
    for (var, key) in NAMED_ENV {
        match known.iter_mut().find(|(known_key, _)| known_key == key) {
            Some((_, vars)) => vars.push(var.to_string()),
            None => known.push((key.to_string(), vec![var.to_string()])),
        }
    }
    known
}

/// The warning for a `CLAUDE_AGENT_*` variable that sets nothing, with the obvious correction if
/// there is one: the key whose name is the variable's tail (`CLAUDE_AGENT_PORT` -> `api.port`),
/// else the one variable within a small edit distance (`CLAUDE_AGENT_API_MAX_LIVE_AGENTS`).
fn ignored_env_warning(name: &str, known: &[(String, Vec<String>)]) -> String {
    let tail = name[ENV_PREFIX.len()..].to_ascii_lowercase();
    let by_tail: Vec<_> = known
        .iter()
        .filter(|(key, _)| key.rsplit('.').next() == Some(tail.as_str()))
        .collect();
    let suggestion = if let [only] = by_tail.as_slice() {
        Some(*only)
    } else {
        let mut scored: Vec<(usize, &(String, Vec<String>))> = known
            .iter()
            .filter_map(|entry| {
                let distance = entry.1.iter().map(|var| edit_distance(name, var)).min()?;
                Some((distance, entry))
            })
            .collect();
        scored.sort_by_key(|(distance, _)| *distance);
        match scored.as_slice() {
            [(best, entry), rest @ ..] if *best <= 3 && rest.first().is_none_or(|(next, _)| next > best) => {
                Some(*entry)
            }
            _ => None,
        }
    };
    let mut warning = format!("environment variable {name} is not a configuration variable and is ignored");
    if let Some((key, vars)) = suggestion {
        warning.push_str(&format!("; did you mean {} ({key})?", vars.join(" or ")));
    }
    warning
}

/// Levenshtein distance between two ASCII-ish names, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Parses an environment value as a YAML scalar, except where the key holds text.
fn env_value(current: &Value, raw: &str) -> Value {
    if current.is_string() {
        return Value::String(raw.to_string());
    }
    match yaml_serde::from_str::<Value>(raw) {
        Ok(value) => value,
        Err(_) => Value::String(raw.to_string()),
    }
}

fn origin_of(origins: &BTreeMap<String, String>, key: &str) -> String {
    origins
        .iter()
        .find(|(set, _)| {
            key == set.as_str() || key.starts_with(&format!("{set}.")) || key.starts_with(&format!("{set}["))
        })
        .map(|(_, var)| format!(" (from environment {var})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = yaml.map(|text| {
            let path = dir.path().join("config.yaml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(file.as_deref(), env, LoadOptions::default())
    }

    #[test]
    fn defaults_are_sqlite_on_loopback_under_data() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config.session.storage, StorageKind::Sqlite);
        assert_eq!(config.api.host, "127.0.0.1");
        assert_eq!(config.api.port, 8000);
        let here = std::env::current_dir().unwrap();
        assert_eq!(config.sqlite_path(), here.join("data/sessions.db"));
        assert_eq!(config.base_dir(), here.join("data/users"));
    }

    #[test]
    fn relative_paths_become_absolute() {
        let yaml = "data_dir: rel/data\ndefaults:\n  cli_path: bin/claude\nplugins: [plug]\n";
        let config = load(Some(yaml), &[]).unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(config.data_dir, here.join("rel/data"));
        assert_eq!(config.defaults.cli_path, Some(here.join("bin/claude")));
        assert_eq!(config.plugins[0].path(), here.join("plug"));
    }

    #[test]
    fn environment_beats_yaml_beats_defaults() {
        let yaml = "api:\n  port: 9001\n  max_sessions: 7\nsession:\n  ttl: 10\n";
        let config = load(
            Some(yaml),
            &[
                ("CLAUDE_AGENT_API_PORT", "9002"),
                ("CLAUDE_AGENT_MAX_CONCURRENT", "3"),
                ("CLAUDE_AGENT_DEFAULTS__MODEL", "claude-x"),
                ("CLAUDE_AGENT_SESSION_PG_PASSWORD", "12345"),
            ],
        )
        .unwrap();
        assert_eq!(config.api.port, 9002);
        assert_eq!(config.api.max_sessions, 7);
        assert_eq!(config.session.ttl, 10);
        assert_eq!(config.api.max_concurrent_requests, 3);
        assert_eq!(config.defaults.model.as_deref(), Some("claude-x"));
        assert_eq!(config.session.pg_password, "12345");
        assert_eq!(config.api.idle_session_timeout, 300);
    }

    #[test]
    fn a_seed_config_with_every_seed_key_loads() {
        let yaml = r#"
user:
  base_dir: "/srv/claude-users"
  auto_create_dir: true
session:
  storage: "postgresql"
  ttl: 7200
  sqlite_path: "sessions.db"
  pg_host: "db.internal"
  pg_port: 5433
  pg_database: "agents"
  pg_user: "svc"
  pg_password: "pw"
api:
  host: "0.0.0.0"
  port: 8080
  cors_origins: ["*"]
  max_sessions: 10
  max_sessions_per_user: 2
  max_concurrent_requests: 3
  memory_limit_mb: 2048
  idle_session_timeout: 60
defaults:
  system_prompt: "You are a helpful AI assistant."
  permission_mode: "bypassPermissions"
  allowed_tools: ["Bash", "Read"]
  setting_sources: ["user", "project"]
  cli_path: null
  model: null
  max_turns: 20
  max_budget_usd: 1.5
mcp_servers:
  files: {type: "stdio", command: "npx", args: ["-y", "some-mcp-server"]}
plugins:
  - type: "local"
    path: "/opt/plugins/one"
"#;
        let config = load(Some(yaml), &[]).unwrap();
        assert_eq!(config.base_dir(), PathBuf::from("/srv/claude-users"));
        assert_eq!(config.session.storage, StorageKind::Postgresql);
        assert_eq!((config.session.ttl, config.session.pg_port), (7200, 5433));
        assert!(config.sqlite_path().is_absolute() && config.sqlite_path().ends_with("sessions.db"));
        assert_eq!(config.api.cors_origins, vec!["*"]);
        assert_eq!(config.api.idle_session_timeout, 60);
        assert_eq!(config.defaults.permission_mode, PermissionMode::BypassPermissions);
        assert_eq!(config.defaults.max_turns, Some(20));
        assert_eq!(config.mcp_servers["files"]["command"], "npx");
        assert_eq!(config.plugins[0].path(), Path::new("/opt/plugins/one"));
    }

    #[test]
    fn data_dir_moves_everything() {
        let config = load(Some("data_dir: /srv/agents\n"), &[]).unwrap();
        assert_eq!(config.sqlite_path(), PathBuf::from("/srv/agents/sessions.db"));
        assert_eq!(config.base_dir(), PathBuf::from("/srv/agents/users"));
    }

    #[test]
    fn tilde_is_expanded() {
        let config = load(Some("user:\n  base_dir: ~/ws\n"), &[]).unwrap();
        let home = std::env::var("HOME").unwrap();
        assert_eq!(config.base_dir(), PathBuf::from(home).join("ws"));
    }

    #[test]
    fn bad_values_name_their_key() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (Some("api:\n  prot: 1\n"), &[], "api"),
            (Some("session:\n  ttl: -5\n"), &[], "session.ttl"),
            (Some("api:\n  port: 0\n"), &[], "api.port"),
            (Some("session:\n  storage: mongo\n"), &[], "session.storage"),
            (
                None,
                &[("CLAUDE_AGENT_API_PORT", "eighty")],
                "CLAUDE_AGENT_API_PORT",
            ),
            (None, &[("CLAUDE_AGENT_API__NOPE", "1")], "api"),
            (Some("api:\n  max_sessions: 0\n"), &[], "api.max_sessions"),
            (
                Some("api:\n  max_concurrent_starts: 0\n"),
                &[],
                "api.max_concurrent_starts",
            ),
            (
                Some("api:\n  stream_buffer_events: 15\n"),
                &[],
                "api.stream_buffer_events",
            ),
            (
                None,
                &[("CLAUDE_AGENT_API__STREAM_BUFFER_EVENTS", "2000000")],
                "CLAUDE_AGENT_API__STREAM_BUFFER_EVENTS",
            ),
            (Some("api:\n  prewarm: maybe\n"), &[], "api.prewarm"),
            (Some("api:\n  max_connections: -1\n"), &[], "api.max_connections"),
            (
                Some("api:\n  header_read_timeout_seconds: 0\n"),
                &[],
                "api.header_read_timeout_seconds",
            ),
            (
                None,
                &[("CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS", "3601")],
                "CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS",
            ),
            (
                Some("defaults:\n  turn_timeout: -1\n"),
                &[],
                "defaults.turn_timeout",
            ),
            (
                Some("defaults:\n  turn_silence_timeout: 99999999999\n"),
                &[],
                "defaults.turn_silence_timeout",
            ),
            (Some("- a\n- b\n"), &[], "mapping"),
            (Some("api:\n  port: 1\napi:\n  host: x\n"), &[], "duplicate"),
        ];
        for (yaml, env, expected) in cases {
            let message = load(*yaml, env).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message:?} should mention {expected}"
            );
        }
    }

    #[test]
    fn runtime_keys_have_defaults_and_environment_overrides() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config.defaults.turn_timeout, 1800);
        assert_eq!(config.defaults.turn_silence_timeout, 600);
        assert!(config.api.prewarm);
        assert_eq!(config.api.max_concurrent_starts, 2);
        assert_eq!(config.api.stream_buffer_events, 4096);
        let config = load(
            Some("api:\n  max_concurrent_starts: 3\ndefaults:\n  turn_timeout: 60\n"),
            &[
                ("CLAUDE_AGENT_DEFAULTS__TURN_SILENCE_TIMEOUT", "0"),
                ("CLAUDE_AGENT_API__PREWARM", "false"),
                ("CLAUDE_AGENT_API__STREAM_BUFFER_EVENTS", "16"),
            ],
        )
        .unwrap();
        assert_eq!(config.defaults.turn_timeout, 60);
        assert_eq!(config.defaults.turn_silence_timeout, 0, "0 turns it off");
        assert!(!config.api.prewarm);
        assert_eq!(config.api.max_concurrent_starts, 3);
        assert_eq!(config.api.stream_buffer_events, 16);
    }

    #[test]
    fn connection_limits_have_defaults_environment_overrides_and_bounds() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config.api.header_read_timeout_seconds, 10);
        assert_eq!(config.api.max_connections, 1024);
        let config = load(
            Some("api:\n  header_read_timeout_seconds: 5\n  max_connections: 64\n"),
            &[("CLAUDE_AGENT_API__MAX_CONNECTIONS", "2")],
        )
        .unwrap();
        assert_eq!(config.api.header_read_timeout_seconds, 5);
        assert_eq!(config.api.max_connections, 2, "the environment wins");
        let config = load(None, &[("CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS", "3600")]).unwrap();
        assert_eq!(config.api.header_read_timeout_seconds, 3600);

        let message = load(Some("api:\n  max_connections: 0\n"), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "config key `api.max_connections`: must be at least 1 (0 would accept no connection at all)"
        );
        let message = load(None, &[("CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("api.header_read_timeout_seconds")
                && message.contains("CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS")
                && message.contains("between 1 and 3600"),
            "{message}"
        );
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let good = r#"api:
  cors_origins: ["*", "https://app.example.com", "http://localhost:3000", "http://[::1]:8080", "app+x://h"]
"#;
        load(Some(good), &[]).unwrap();
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "http://",
            "http://:80",
            "http://host:99999",
            "http://host:",
            "1http://host",
            "https://user@host",
            "http://a b",
            "http://host\u{1}",
            "",
            "*.example.com",
        ] {
            let yaml = format!("api:\n  cors_origins: [{}]\n", serde_json::json!(bad));
            let message = load(Some(&yaml), &[]).unwrap_err().to_string();
            assert!(
                message.contains("api.cors_origins") && message.contains(&format!("{bad:?}")),
                "{bad:?}: {message}"
            );
        }
    }

    #[test]
    fn egress_allow_takes_host_patterns_and_names_a_bad_one() {
        let good = "isolation:\n  egress_allow: [registry.npmjs.org, \"*.pythonhosted.org\", \"10.0.0.5:8080\", \"[fd00::1]\"]\n";
        let config = load(Some(good), &[]).unwrap();
        assert_eq!(config.isolation.egress_allow.len(), 4);
        let from_env = load(
            None,
            &[("CLAUDE_AGENT_ISOLATION__EGRESS_ALLOW", "[pypi.org, github.com]")],
        )
        .unwrap();
        assert_eq!(from_env.isolation.egress_allow, vec!["pypi.org", "github.com"]);
        assert!(load(None, &[]).unwrap().isolation.egress_allow.is_empty());
        for bad in ["*", "https://pypi.org", "pypi.org/simple", "*.org", "host:0"] {
            let yaml = format!(
                "isolation:\n  egress_allow: [ok.org, {}]\n",
                serde_json::json!(bad)
            );
            let message = load(Some(&yaml), &[]).unwrap_err().to_string();
            assert!(
                message.contains("isolation.egress_allow") && message.contains(&format!("{bad:?}")),
                "{bad:?}: {message}"
            );
        }
    }

    #[test]
    fn unknown_prefixed_variables_are_warned_about_with_the_likely_name() {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("CLAUDE_AGENT_PORT", "9000"),
            ("CLAUDE_AGENT_API_MAX_LIVE_AGENTS", "4"),
            ("CLAUDE_AGENT_SESION_TTL", "5"),
            ("CLAUDE_AGENT_TURN_TIMEOUT", "5"),
            ("CLAUDE_AGENT_WHATEVER_ELSE_ENTIRELY", "sk-do-not-print"),
            // Known ones, and the marker every agent process carries: no warning.
            ("CLAUDE_AGENT_API_PORT", "9001"),
            ("CLAUDE_AGENT_API__HOST", "127.0.0.2"),
            ("CLAUDE_AGENT_HTTP_SESSION", "x"),
            ("OTHER_TOOL_PORT", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "").unwrap();
        let loaded = Config::load_with_warnings(Some(&empty), env, LoadOptions::default()).unwrap();
        assert_eq!(loaded.config.api.port, 9001);
        let warnings = loaded.warnings;
        assert_eq!(warnings.len(), 5, "{warnings:#?}");
        let about = |name: &str| {
            warnings
                .iter()
                .find(|w| w.contains(&format!("variable {name} ")))
                .unwrap_or_else(|| panic!("no warning about {name}: {warnings:#?}"))
                .clone()
        };
        assert!(
            about("CLAUDE_AGENT_PORT")
                .ends_with("did you mean CLAUDE_AGENT_API__PORT or CLAUDE_AGENT_API_PORT (api.port)?"),
            "{warnings:#?}"
        );
        assert!(about("CLAUDE_AGENT_API_MAX_LIVE_AGENTS").contains("CLAUDE_AGENT_API__MAX_LIVE_AGENTS"));
        assert!(about("CLAUDE_AGENT_SESION_TTL").contains("CLAUDE_AGENT_SESSION_TTL (session.ttl)"));
        assert!(about("CLAUDE_AGENT_TURN_TIMEOUT").contains("CLAUDE_AGENT_DEFAULTS__TURN_TIMEOUT"));
        let unrelated = about("CLAUDE_AGENT_WHATEVER_ELSE_ENTIRELY");
        assert!(!unrelated.contains("did you mean"), "{unrelated}");
        assert!(
            warnings
                .iter()
                .all(|w| !w.contains("sk-do-not-print") && !w.contains('\n'))
        );
    }

    #[test]
    fn base_dir_that_is_a_file_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let yaml = format!("user:\n  base_dir: {}\n", file.path().display());
        let message = load(Some(&yaml), &[]).unwrap_err().to_string();
        assert!(message.contains("user.base_dir"), "{message}");
    }

    #[test]
    fn postgresql_keys_have_defaults_and_a_url_that_wins() {
        let config = load(None, &[]).unwrap();
        assert_eq!(
            (config.session.pg_url.as_deref(), config.session.pg_pool_size),
            (None, 10)
        );
        let yaml = "session:\n  storage: postgresql\n  pg_url: postgres://yaml@h/db\n  pg_pool_size: 3\n";
        let config = load(Some(yaml), &[]).unwrap();
        assert_eq!(config.session.pg_url.as_deref(), Some("postgres://yaml@h/db"));
        assert_eq!(config.session.pg_pool_size, 3);
        // DATABASE_URL beats the file; the service's own variable beats DATABASE_URL.
        let config = load(Some(yaml), &[("DATABASE_URL", "postgres://alias@h/db")]).unwrap();
        assert_eq!(config.session.pg_url.as_deref(), Some("postgres://alias@h/db"));
        let url = "postgresql://u:p@db.internal:6432/agents?sslmode=require&application_name=a: b";
        let config = load(
            Some(yaml),
            &[
                ("DATABASE_URL", "postgres://alias@h/db"),
                ("CLAUDE_AGENT_SESSION__PG_URL", url),
                ("CLAUDE_AGENT_SESSION__PG_POOL_SIZE", "20"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.session.pg_url.as_deref(),
            Some(url),
            "taken as text, not YAML"
        );
        assert_eq!(config.session.pg_pool_size, 20);
    }

    #[test]
    fn a_database_url_for_another_program_is_ignored_unless_postgresql_is_the_storage() {
        let config = load(None, &[("DATABASE_URL", "sqlite://elsewhere.db")]).unwrap();
        assert_eq!(config.session.storage, StorageKind::Sqlite);
        let message = load(
            None,
            &[
                ("CLAUDE_AGENT_SESSION_STORAGE", "postgresql"),
                ("DATABASE_URL", "mysql://root:sekrit@h/db"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("session.pg_url") && message.contains("DATABASE_URL"),
            "{message}"
        );
        assert!(!message.contains("sekrit"), "{message}");
    }

    #[test]
    fn bad_postgresql_values_name_their_key() {
        let cases = [
            ("session:\n  pg_pool_size: 0\n", "session.pg_pool_size"),
            (
                "session:\n  storage: postgresql\n  pg_host: ''\n",
                "session.pg_host",
            ),
            (
                "session:\n  storage: postgresql\n  pg_database: ' '\n",
                "session.pg_database",
            ),
            (
                "session:\n  storage: postgresql\n  pg_user: ''\n",
                "session.pg_user",
            ),
            (
                "session:\n  storage: postgresql\n  pg_port: 0\n",
                "session.pg_port",
            ),
            (
                "session:\n  storage: postgresql\n  pg_url: ''\n",
                "session.pg_url",
            ),
            (
                "session:\n  storage: postgresql\n  pg_url: localhost:5432\n",
                "session.pg_url",
            ),
            (
                "session:\n  storage: postgresql\n  pg_url: 'postgres://u:pw-77@h/db?sslmode=sometimes'\n",
                "session.pg_url",
            ),
            (
                "session:\n  storage: postgresql\n  pg_url: 'postgres://u:pw-77@h:99999/db'\n",
                "session.pg_url",
            ),
        ];
        for (yaml, key) in cases {
            let message = load(Some(yaml), &[]).unwrap_err().to_string();
            assert!(message.contains(key), "{yaml}: {message}");
            assert!(!message.contains("pw-77"), "{yaml}: {message}");
        }
        // With a URL, the parts are not used and not checked.
        let yaml = "session:\n  storage: postgresql\n  pg_host: ''\n  pg_url: postgres://h/db\n";
        load(Some(yaml), &[]).unwrap();
    }

    #[test]
    fn passwords_in_a_postgresql_url_are_redacted() {
        for (url, shown) in [
            (
                "postgres://svc:hunter2@db:5432/agents?sslmode=require",
                "postgres://svc:***@db:5432/agents?sslmode=require",
            ),
            (
                "postgresql://svc:p%40ss:w@db/agents?password=hunter2&sslmode=verify-full",
                "postgresql://svc:***@db/agents?password=***&sslmode=verify-full",
            ),
            ("postgres://svc@db/agents", "postgres://svc@db/agents"),
            ("postgres://db", "postgres://db"),
        ] {
            let config = load(None, &[("DATABASE_URL", url)]).unwrap();
            let redacted = config.redacted();
            assert_eq!(redacted["session"]["pg_url"], shown, "{url}");
            assert!(!redacted.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let yaml = "defaults:\n  env:\n    ANTHROPIC_API_KEY: sk-secret\n    DEBUG: '1'\n";
        let config = load(Some(yaml), &[("CLAUDE_AGENT_SESSION_PG_PASSWORD", "hunter2")]).unwrap();
        let text = config.redacted().to_string();
        assert!(!text.contains("hunter2") && !text.contains("sk-secret"), "{text}");
        assert!(text.contains("DEBUG"));
    }

    #[test]
    fn the_metrics_listener_is_an_address_of_its_own() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config.metrics.listen, None);
        assert!(!config.metrics.per_user_labels);
        let config = load(
            Some("metrics:\n  listen: 127.0.0.1:9464\n"),
            &[("CLAUDE_AGENT_METRICS__PER_USER_LABELS", "true")],
        )
        .unwrap();
        assert_eq!(config.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
        assert!(config.metrics.per_user_labels);
        for (listen, says) in [
            ("localhost:9464", "is not an IP address and port"),
            ("127.0.0.1", "is not an IP address and port"),
            ("127.0.0.1:8000", "the API's own address"),
            ("0.0.0.0:8000", "the API's own address"),
            ("127.0.0.1:0", "only allowed with --port-file"),
        ] {
            let message = load(Some(&format!("metrics:\n  listen: \"{listen}\"\n")), &[])
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("metrics.listen") && message.contains(says),
                "{listen}: {message}"
            );
        }
    }
}
