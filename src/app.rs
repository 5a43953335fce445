//! `App::build(config)` wires the store, workspaces, sessions and HTTP router, and binds the
//! listener (port 0 in tests); `App::run` serves until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::agent::sandbox::{SandboxLauncher, SandboxSettings};
use crate::agent::{DirectLauncher, Inherited, Launcher, cli, tree};
use crate::audit::AuditLog;
use crate::auth::{Authenticator, RateLimits};
use crate::config::{AuthMode, Config, IsolationProfile, StorageKind};
use crate::domain::EgressRules;
use crate::http::health::IsolationHealth;
use crate::http::serve::ConnectionLimits;
use crate::http::{self, AppState};
use crate::relay::{
    DEFAULT_UPSTREAM, Egress, EgressSettings, Relay, RelayError, RelaySettings, UpstreamCredential,
};
use crate::runtime::{CliState, Isolation, Runtime, RuntimeSettings};
use crate::sessions::Sessions;
use crate::store::{
    Limits, MemoryStore, PostgresSettings, PostgresStore, SqliteStore, StoreError, Stores, UidStore,
};
use crate::telemetry::{Metrics, MetricsSettings, TelemetryError};
use crate::webhooks::Webhooks;
use crate::workspace::Workspaces;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The session store could not be opened.
    #[error("cannot open the session store: {0}")]
    Store(#[from] StoreError),
    /// The configured storage is not available.
    #[error("session.storage: {0}")]
    Storage(String),
    /// The workspace base directory is unusable.
    #[error("user.base_dir {path}: {source}")]
    Workspaces {
        /// The base directory.
        path: String,
        /// Why it is unusable.
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why it cannot be bound.
        source: std::io::Error,
    },
    /// Authentication is misconfigured, or missing where it is needed.
    #[error("{0}")]
    Auth(String),
    /// The isolation profile asked for cannot be had on this host.
    #[error("isolation.profile: {0}")]
    Isolation(String),
    /// The model relay could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] TelemetryError),
}

/// A built service, bound and ready to serve.
pub struct App {
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    sessions: Arc<Sessions>,
    /// The `metrics.listen` listener and what it serves.
    scrape: Option<(TcpListener, axum::Router)>,
}

impl App {
    /// Opens the store and workspaces and binds the listener.
    pub async fn build(config: Config) -> Result<App, StartupError> {
        // First, so the stores' and the runtime's first operations are measured too.
        let metrics = Metrics::install(MetricsSettings {
            per_user_labels: config.metrics.per_user_labels,
        })?;
        let stores = open_stores(&config).await?;
        let base = config.base_dir();
        let workspaces =
            Workspaces::new(&config.data_dir, &base, config.user.auto_create_dir).map_err(|source| {
                StartupError::Workspaces {
                    path: base.display().to_string(),
                    source,
                }
            })?;
        let agents_root = crate::runtime::agents_root(&config.data_dir);
        if agents_root.starts_with(workspaces.base()) || workspaces.base().starts_with(&agents_root) {
            return Err(StartupError::Storage(format!(
                "user.base_dir ({}) and the agents' config folder ({}) must not contain each other",
                workspaces.base().display(),
                agents_root.display()
            )));
        }
        // Tools that detach are adopted by the service (and reaped by it) rather than by init.
        if let Err(e) = tree::become_subreaper() {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphaned tool processes may escape");
        }
        // Bind before anything starts in the background (a CLI install), so a taken port fails at once.
        let addr = format!("{}:{}", config.api.host, config.api.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let mode = auth_mode(&config, &listener)?;
        let audit = AuditLog::new(stores.audit.clone());
        spawn_audit_pruner(audit.clone(), config.audit.retention_days);
        let webhooks = Webhooks::start(
            &config.webhooks,
            &config.webhook_delivery,
            stores.webhooks.clone(),
        );
        spawn_webhook_pruner(webhooks.clone(), config.webhook_delivery.retention_days);
        let (launcher, isolation, isolation_health) = choose_isolation(&config, stores.uids.clone())?;
        let inherited = Inherited::from_service_environment();
        let relay = Relay::start(relay_settings(&config, &inherited), stores.usage.clone()).await?;
        let egress = start_egress(&config, &relay).await?;
        let mut settings = runtime_settings(&config, inherited);
        settings.isolation = isolation;
        settings.egress_proxy = egress.map(|egress| egress.address());
        let runtime = Arc::new(Runtime::new(
            settings,
            stores.sessions.clone(),
            workspaces.clone(),
            launcher,
            stores.events.clone(),
            stores.transcripts.clone(),
            audit.clone(),
            relay,
            webhooks.clone(),
        ));
        let isolation_health = check_cgroups(&config, &runtime, isolation_health)?;
        runtime.recover_interrupted_turns().await?;
        if !runtime.has_cgroups() {
            tokio::task::spawn_blocking(tree::kill_orphaned_agent_processes);
        }
        let sessions = Arc::new(Sessions::new(
            &stores,
            workspaces,
            runtime.clone(),
            Limits {
                max_total: config.api.max_sessions,
                max_per_user: config.api.max_sessions_per_user,
            },
            config.agent_options(),
            config.budgets.clone(),
            audit.clone(),
            webhooks,
        ));
        if !runtime.has_model_credentials() {
            tracing::warn!(
                "no model API credentials: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN with \
                 ANTHROPIC_BASE_URL) in the service's environment or defaults.env; until then every \
                 turn fails with credentials_missing"
            );
        }
        find_cli(&config, runtime.clone());
        tokio::spawn(runtime.watch());
        let auth = Arc::new(
            Authenticator::new(&config.auth, mode, stores.keys.clone(), audit)
                .map_err(|e| StartupError::Auth(e.to_string()))?,
        );
        let rate = Arc::new(RateLimits::new(
            config.auth.rate_limit_per_second,
            config.auth.rate_limit_burst,
        ));
        spawn_rate_table_cleaner(rate.clone());
        let state = AppState {
            auth,
            rate,
            sessions: sessions.clone(),
            started: Instant::now(),
            storage_type: config.session.storage.as_str(),
            keepalive: Duration::from_secs(config.api.keepalive_seconds),
            isolation: isolation_health,
            metrics,
        };
        let scrape = bind_scrape_listener(&config, &state).await?;
        let router = http::router(state, &config);
        let bound = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;
        if !bound.ip().is_loopback() && mode == AuthMode::None {
            tracing::warn!(
                listen = %bound,
                "LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT AUTHENTICATION: anyone who can reach \
                 this port can run agents as any user. Set auth.mode: on, or bind 127.0.0.1."
            );
        }
        spawn_purger(sessions.clone(), config.session.ttl);
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(config.api.header_read_timeout_seconds),
            max_connections: config.api.max_connections as usize,
        };
        Ok(App {
            listener,
            router,
            limits,
            sessions,
            scrape,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes; then stops accepting, stops every agent (ending open
    /// streams) and drains connections. No agent process outlives this call.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(listen = %self.local_addr(), "serving");
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let (scrape_stop, scrape_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some((listener, router)) = self.scrape {
            tokio::spawn(http::serve::serve(listener, router, self.limits, async move {
                let _ = scrape_stopped.await;
            }));
        }
        let sessions = self.sessions.clone();
        let signal = async move {
            shutdown.await;
            let _ = scrape_stop.send(());
            // Stopping the agents ends running turns, so their SSE streams close and the
            // graceful drain below can finish.
            let runtime = sessions.runtime().clone();
            tokio::spawn(async move {
                runtime.shutdown().await;
                let _ = stopped_tx.send(());
            });
        };
        http::serve::serve(self.listener, self.router, self.limits, signal).await;
        self.sessions.runtime().shutdown().await;
        let _ = stopped_rx.await;
        // After the agents: the turns they ended are told too (or kept for the next run).
        self.sessions.webhooks().shutdown().await;
        Ok(())
    }
}

/// Binds `metrics.listen`, if set: a listener serving only `GET /metrics`, without authentication.
async fn bind_scrape_listener(
    config: &Config,
    state: &AppState,
) -> Result<Option<(TcpListener, axum::Router)>, StartupError> {
    let Some(addr) = config.metrics.listen.as_deref().map(str::trim) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    if !bound.ip().is_loopback() {
        tracing::warn!(metrics.listen = %bound, "the metrics listener needs no credential and is reachable from other machines: keep it behind a firewall");
    }
    tracing::info!(metrics.listen = %bound, "serving metrics");
    Ok(Some((listener, http::metrics::scrape_router(state.clone()))))
}

/// Finds the CLI at startup. When it must be installed, the install runs in the background (the
/// service listens meanwhile; turns answer `agent_unavailable` until it is done) and the pool gets
/// the CLI when it is ready.
fn find_cli(config: &Config, pool: Arc<Runtime>) {
    let install_dir = cli::install_dir(&config.data_dir);
    match cli::find(
        config.defaults.cli_path.as_deref(),
        &install_dir,
        config.defaults.cli_auto_install,
    ) {
        cli::Lookup::Found(path) => {
            pool.set_cli_state(CliState::Ready {
                path: path.clone(),
                version: None,
            });
            tokio::task::spawn_blocking(move || {
                let version = cli::log_version(&path);
                log_missing_features(version.as_deref());
                pool.set_cli_state(CliState::Ready { path, version });
            });
        }
        cli::Lookup::Installable { npm } => {
            pool.set_cli_state(CliState::Installing);
            tokio::task::spawn_blocking(move || match cli::install(&npm, &install_dir) {
                Ok(path) => {
                    let version = cli::log_version(&path);
                    log_missing_features(version.as_deref());
                    pool.set_cli_state(CliState::Ready { path, version });
                }
                Err(e) => {
                    tracing::error!(error = %e, "no Claude Code CLI: chat will answer agent_unavailable");
                    pool.set_cli_state(CliState::Missing(e.to_string()));
                }
            });
        }
        cli::Lookup::Missing(e) => {
            tracing::error!(error = %e, "no Claude Code CLI: chat will answer agent_unavailable");
            pool.set_cli_state(CliState::Missing(e.to_string()));
        }
    }
}

/// Says what an older CLI cannot do that the tested one does.
fn log_missing_features(version: Option<&str>) {
    let missing = crate::agent::command::CliFeatures::of(version).missing();
    if !missing.is_empty() {
        tracing::warn!(cli.version = version.unwrap_or("unknown"), missing = %missing.join("; "), "this Claude Code CLI lacks features the service uses when available");
    }
}

/// Opens every store of the configured backend (running its migrations).
pub async fn open_stores(config: &Config) -> Result<Stores, StartupError> {
    Ok(match config.session.storage {
        StorageKind::Memory => Stores::of(Arc::new(MemoryStore::new(config.session.ttl))),
        StorageKind::Sqlite => Stores::of(Arc::new(
            SqliteStore::open(&config.sqlite_path(), config.session.ttl).await?,
        )),
        StorageKind::Postgresql => Stores::of(Arc::new(
            PostgresStore::connect(&postgres_settings(config)).await?,
        )),
    })
}

/// Key management on the configured store, for `claude-agent-http keys` (works while a server
/// runs on the same store).
pub async fn key_admin(config: &Config) -> Result<Authenticator, StartupError> {
    if config.session.storage == StorageKind::Memory {
        return Err(StartupError::Auth(
            "session.storage is memory: keys would vanish with this command; use sqlite or postgresql \
             (or auth.admin_key for a key from the environment)"
                .into(),
        ));
    }
    let stores = open_stores(config).await?;
    let audit = AuditLog::new(stores.audit);
    Authenticator::new(&config.auth, AuthMode::On, stores.keys, audit)
        .map_err(|e| StartupError::Auth(e.to_string()))
}

/// The authentication mode in force: as configured, or (unset) none on a loopback address. A
/// service reachable from elsewhere does not start open by default.
fn auth_mode(config: &Config, listener: &TcpListener) -> Result<AuthMode, StartupError> {
    if let Some(mode) = config.auth.mode {
        if mode == AuthMode::On && config.auth.admin_key.is_none() && !config.auth.jwt.enabled() {
            tracing::info!(
                "authentication is on: create a first admin key with `claude-agent-http keys create --admin` \
                 (or set CLAUDE_AGENT_AUTH__ADMIN_KEY)"
            );
        }
        return Ok(mode);
    }
    let loopback = listener.local_addr().is_ok_and(|addr| addr.ip().is_loopback());
    if loopback {
        return Ok(AuthMode::None);
    }
    Err(StartupError::Auth(format!(
        "api.host {} is reachable from other machines and authentication is off: set auth.mode: on \
         (CLAUDE_AGENT_AUTH__MODE=on) and create a key with `claude-agent-http keys create --admin` \
         (or set CLAUDE_AGENT_AUTH__ADMIN_KEY), or set auth.mode: none to serve without authentication anyway",
        config.api.host
    )))
}

/// Prunes audit records older than `retention_days` (0: keep them) at startup and every hour.
fn spawn_audit_pruner(audit: AuditLog, retention_days: u32) {
    if retention_days == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let before = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            match audit.prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(audit.pruned = n, "pruned audit records past audit.retention_days"),
                Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
            }
        }
    });
}

/// Prunes webhook deliveries (delivered or failed) older than `retention_days` (0: keep them) at
/// startup and every hour.
fn spawn_webhook_pruner(webhooks: Webhooks, retention_days: u32) {
    if retention_days == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let before = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            match webhooks.prune(before).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        webhooks.pruned = n,
                        "pruned webhook deliveries past webhook_delivery.retention_days"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
            }
        }
    });
}

/// Forgets idle principals of the rate limiter every minute.
fn spawn_rate_table_cleaner(rate: Arc<RateLimits>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            rate.forget_idle();
        }
    });
}

/// Where the PostgreSQL store connects, from the configuration.
fn postgres_settings(config: &Config) -> PostgresSettings {
    let session = &config.session;
    PostgresSettings {
        url: session.pg_url.clone(),
        host: session.pg_host.clone(),
        port: session.pg_port,
        database: session.pg_database.clone(),
        user: session.pg_user.clone(),
        password: session.pg_password.clone(),
        pool_size: session.pg_pool_size,
        ttl_seconds: session.ttl,
    }
}

/// The relay's settings: the model API's address and credential from the service's environment,
/// else from `defaults.env` (variable by variable), else Anthropic's API.
fn relay_settings(config: &Config, inherited: &Inherited) -> RelaySettings {
    let value = |name: &str| {
        inherited
            .model_api_value(name)
            .or_else(|| config.defaults.env.get(name).map(String::as_str))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    RelaySettings {
        upstream: value("ANTHROPIC_BASE_URL").unwrap_or_else(|| DEFAULT_UPSTREAM.to_string()),
        credential: UpstreamCredential {
            api_key: value("ANTHROPIC_API_KEY"),
            auth_token: value("ANTHROPIC_AUTH_TOKEN"),
        },
        run_dir: config.data_dir.join("run"),
        pricing: config.pricing.clone(),
        budgets: config.budgets.clone(),
    }
}

/// The runtime's settings, from the configuration.
fn runtime_settings(config: &Config, inherited: Inherited) -> RuntimeSettings {
    let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    RuntimeSettings {
        data_dir: config.data_dir.clone(),
        max_live: config.api.max_live_agents as usize,
        memory_limit_bytes: config.api.memory_limit_mb * 1024 * 1024,
        idle_timeout: Duration::from_secs(config.api.idle_session_timeout),
        max_concurrent_turns: config.api.max_concurrent_requests as usize,
        max_turns_per_user: config.api.max_concurrent_turns_per_user as usize,
        max_concurrent_starts: config.api.max_concurrent_starts as usize,
        turn_timeout: seconds(config.defaults.turn_timeout),
        silence_timeout: seconds(config.defaults.turn_silence_timeout),
        prewarm: config.api.prewarm,
        stream_buffer: config.api.stream_buffer_events as usize,
        stream_coalesce: Duration::from_millis(config.api.stream_coalesce_ms),
        extra_env: config.defaults.env.clone(),
        mcp_servers: config.mcp_servers.clone(),
        inherited,
        use_cgroups: true,
        isolation: None,
        egress_proxy: None,
    }
}

/// The egress proxy, where `isolation.egress_allow` names anything (its patterns were checked by
/// `validate`). Under profile none it runs too, and agents get its address, but nothing keeps a
/// tool from going around it.
async fn start_egress(config: &Config, relay: &Relay) -> Result<Option<Egress>, StartupError> {
    let rules = EgressRules::parse(&config.isolation.egress_allow)
        .map_err(|e| StartupError::Isolation(format!("isolation.egress_allow: entry {e}")))?;
    if rules.is_empty() {
        return Ok(None);
    }
    let egress = Egress::start(
        EgressSettings {
            rules,
            run_dir: config.data_dir.join("run"),
        },
        relay,
    )
    .await?;
    tracing::info!(
        egress.allow = ?config.isolation.egress_allow,
        "agents reach these hosts through the egress proxy (isolation.egress_allow)"
    );
    Ok(Some(egress))
}

/// The launcher, the runtime's isolation settings and what `/health` shows.
type ChosenIsolation = (Arc<dyn Launcher>, Option<Isolation>, IsolationHealth);

/// Picks the launcher from `isolation.profile` and what the host offers: `strict` refuses to start
/// where anything is missing, `auto` takes strict where the sandbox itself works (cgroups are
/// checked once the runtime opened them), `none` runs agents as the service's user. The effective
/// profile and what is missing are logged, loudly below strict.
fn choose_isolation(config: &Config, uids: Arc<dyn UidStore>) -> Result<ChosenIsolation, StartupError> {
    let requested = config.isolation.profile;
    let helper =
        std::env::current_exe().map_err(|e| StartupError::Isolation(format!("cannot find this binary: {e}")));
    let missing = match &helper {
        Ok(helper) => crate::agent::sandbox::probe(helper),
        Err(e) => vec![e.to_string()],
    };
    let strict = match requested {
        IsolationProfile::None => false,
        IsolationProfile::Auto => missing.is_empty(),
        IsolationProfile::Strict if missing.is_empty() => true,
        IsolationProfile::Strict => {
            return Err(StartupError::Isolation(format!(
                "strict needs what this host lacks: {}",
                missing.join("; ")
            )));
        }
    };
    let health = IsolationHealth {
        profile: if strict { "strict" } else { "none" },
        missing: missing.clone(),
    };
    if !strict {
        if requested == IsolationProfile::None {
            tracing::warn!(
                missing = ?missing,
                "ISOLATION PROFILE none: every agent runs as the service's own user and can read and \
                 change other users' files and the service's data"
            );
        } else {
            tracing::error!(
                missing = ?missing,
                "ISOLATION PROFILE none (auto): this host lacks what the strict profile needs; every \
                 agent runs as the service's own user"
            );
        }
        return Ok((Arc::new(DirectLauncher), None, health));
    }
    let helper = helper?;
    let run = config.data_dir.join("run");
    crate::workspace::create_private_dir(&run)
        .map_err(|e| StartupError::Isolation(format!("{}: {e}", run.display())))?;
    let tmp_mb = match config.isolation.memory_max_mb {
        0 => 1024,
        mb => (mb / 2).clamp(64, 4096),
    };
    let launcher = SandboxLauncher::new(SandboxSettings {
        helper,
        staging: run.join("sandbox-root"),
        relay_socket: run.join("relay.sock"),
        egress_socket: (!config.isolation.egress_allow.is_empty()).then(|| run.join("egress.sock")),
        tmp_mb,
    })
    .map_err(|e| StartupError::Isolation(format!("cannot prepare the sandbox: {e}")))?;
    harden_service_dirs(config);
    let iso = &config.isolation;
    let isolation = Isolation {
        // Kept in the store: the same after a restart and on every instance sharing it.
        uids,
        uid_first: iso.uid_first,
        uid_count: iso.uid_count,
        limits: crate::agent::cgroup::CgroupLimits {
            pids_max: iso.pids_max,
            memory_max_bytes: iso.memory_max_mb * 1024 * 1024,
            cpu_percent: iso.cpu_percent,
        },
    };
    Ok((Arc::new(launcher), Some(isolation), health))
}

/// Strict needs a cgroup per session for its limits: refused when asked for by name, reported
/// (loudly) under `auto`.
fn check_cgroups(
    config: &Config,
    runtime: &Runtime,
    mut health: IsolationHealth,
) -> Result<IsolationHealth, StartupError> {
    if health.profile == "strict" && !runtime.has_cgroups() {
        if config.isolation.profile == IsolationProfile::Strict {
            return Err(StartupError::Isolation(
                "strict needs cgroups (v2, or v1 pids and memory) for each session's limits".into(),
            ));
        }
        health
            .missing
            .push("cgroups (sessions run without pids, memory and cpu limits)".into());
    }
    if health.profile == "strict" {
        if health.missing.is_empty() {
            tracing::info!("isolation profile strict: each user's agents run as their own uid in a sandbox");
        } else {
            tracing::warn!(missing = ?health.missing, "isolation profile strict, WITHOUT some of its parts");
        }
    }
    Ok(health)
}

/// Users' agents must not be able to write the service's own folders (they never see them inside
/// a sandbox; this holds on the host too): no group or other write on the data and base dirs.
fn harden_service_dirs(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        config.data_dir.clone(),
        config.base_dir(),
        crate::runtime::agents_root(&config.data_dir),
    ] {
        if let Ok(meta) = std::fs::metadata(&dir)
            && meta.permissions().mode() & 0o022 != 0
        {
            let mode = meta.permissions().mode() & 0o7755;
            if let Err(e) = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot make the folder unwritable by others");
            }
        }
    }
}

/// Purges expired sessions in the background (reads already hide them).
fn spawn_purger(sessions: Arc<Sessions>, ttl: u64) {
    if ttl == 0 {
        return;
    }
    let every = Duration::from_secs(ttl.clamp(1, 60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match sessions.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions.purged = n, "purged expired sessions"),
                Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
            }
        }
    });
}
