//! The live sessions of this service instance: a registry of one actor per session (`live`), the
//! admission of new CLI processes (the live cap, the memory limit, a FIFO queue of starts, and
//! evicting the least recently used idle agent to make room), the memory watch, and shutdown.
//! Each session's process and turn state belong to its actor alone; the registry only holds the
//! handles and a status each actor publishes about itself (live, busy, last use) for admission
//! and `/health`. It must not know HTTP.

mod live;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::workspace::create_private_dir;
use live::{Close, Command, LiveSession};
pub use live::{SendRefusal, TurnTicket};

use crate::agent::cgroup::{CgroupRoot, SessionCgroup};
use crate::agent::{Inherited, Launcher, SpawnSpec, tree};
use crate::audit::AuditLog;
use crate::domain::{Caller, SessionId, SessionRecord};
use crate::relay::Relay;
use crate::store::{EventStore, SessionStore, TranscriptStore, UidStore};
use crate::webhooks::Webhooks;
use crate::workspace::Workspaces;

/// Commands a live session may have waiting; a caller beyond this waits its turn.
const INBOX: usize = 32;
/// How often the memory limit and adopted zombies are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Every how many watches the fallback orphan sweep runs (only without cgroups).
const ORPHAN_SWEEP_WATCHES: u64 = 3;

/// What the runtime needs from the configuration.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Where per-user CLI state lives (`<data_dir>/agents/<user>`), and the instance's identity.
    pub data_dir: PathBuf,
    /// CLI processes alive at once (`api.max_live_agents`).
    pub max_live: usize,
    /// Memory of the service and its agents before idle agents are stopped (0 = no limit).
    pub memory_limit_bytes: u64,
    /// An idle CLI is stopped after this long.
    pub idle_timeout: Duration,
    /// Turns running at once (`api.max_concurrent_requests`).
    pub max_concurrent_turns: usize,
    /// Turns one user may run at once (`api.max_concurrent_turns_per_user`); more are refused.
    pub max_turns_per_user: usize,
    /// CLI processes starting at once (FIFO).
    pub max_concurrent_starts: usize,
    /// The server-side bound of every turn.
    pub turn_timeout: Option<Duration>,
    /// A turn whose CLI prints nothing for this long (outside a tool run) is stopped.
    pub silence_timeout: Option<Duration>,
    /// Start a session's CLI when it is created or resumed.
    pub prewarm: bool,
    /// Events buffered per session for streaming readers.
    pub stream_buffer: usize,
    /// Text deltas closer together than this are merged into one event (0: only those one pipe
    /// read delivered together).
    pub stream_coalesce: Duration,
    /// `defaults.env`.
    pub extra_env: BTreeMap<String, String>,
    /// The MCP servers every agent gets (with their secrets; never stored).
    pub mcp_servers: Map<String, Value>,
    /// What agents inherit from the service's environment (their model API variables excepted:
    /// those come from the relay).
    pub inherited: Inherited,
    /// Use a cgroup per session where the host allows it.
    pub use_cgroups: bool,
    /// Per-user uids and limits (the strict profile), or none.
    pub isolation: Option<Isolation>,
    /// The egress proxy's loopback address (`isolation.egress_allow`): each CLI gets it as
    /// `HTTPS_PROXY`/`HTTP_PROXY` with its own relay token as the password; none: no proxy.
    pub egress_proxy: Option<std::net::SocketAddr>,
}

/// Users isolated from each other (the strict profile): each user's CLI runs as a uid of its own,
/// in a cgroup with these limits.
#[derive(Clone)]
pub struct Isolation {
    /// Where users' uids are kept.
    pub uids: Arc<dyn UidStore>,
    /// The first uid of the range.
    pub uid_first: u32,
    /// How many uids the range holds.
    pub uid_count: u32,
    /// Each session's cgroup limits.
    pub limits: crate::agent::cgroup::CgroupLimits,
}

impl std::fmt::Debug for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolation")
            .field("uid_first", &self.uid_first)
            .field("uid_count", &self.uid_count)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Where the runtime stands with the Claude Code CLI.
#[derive(Debug, Clone, PartialEq)]
pub enum CliState {
    /// Not looked for yet.
    Looking,
    /// Being installed with npm.
    Installing,
    /// Found.
    Ready {
        /// The executable.
        path: PathBuf,
        /// Its version, once it has answered `--version`.
        version: Option<String>,
    },
    /// None, and why.
    Missing(String),
}

impl CliState {
    /// A one-word status for `/health`.
    pub fn status(&self) -> &'static str {
        match self {
            CliState::Looking => "looking",
            CliState::Installing => "installing",
            CliState::Ready { .. } => "ready",
            CliState::Missing(_) => "missing",
        }
    }
}

/// What a session's actor publishes about itself (it is the only writer).
#[derive(Debug, Default)]
pub(crate) struct LiveStatus {
    /// A CLI process is running or starting (a live slot is taken).
    live: AtomicBool,
    /// A turn is running or waiting.
    busy: AtomicBool,
    /// Milliseconds since the runtime started, at the last use.
    last_used_ms: AtomicU64,
    epoch: Option<Instant>,
}

impl LiveStatus {
    fn new(epoch: Instant) -> Self {
        let status = LiveStatus {
            epoch: Some(epoch),
            ..Default::default()
        };
        status.touch();
        status
    }

    fn touch(&self) {
        let ms = self
            .epoch
            .map(|e| e.elapsed().as_millis() as u64)
            .unwrap_or_default();
        self.last_used_ms.store(ms, Ordering::Release);
    }
}

/// The answer to a request to start a CLI.
pub(crate) enum Admission {
    /// Room was made; the permit is a start slot, held until the CLI is up.
    Granted(OwnedSemaphorePermit),
    /// No room, and why.
    NoCapacity(String),
    /// The service is stopping.
    Closing,
}

struct Entry {
    commands: mpsc::Sender<Command>,
    status: Arc<LiveStatus>,
}

/// What every actor shares: settings, the spawn seam, the store, and the admission state.
pub(crate) struct Shared {
    settings: RuntimeSettings,
    launcher: Arc<dyn Launcher>,
    store: Arc<dyn SessionStore>,
    workspaces: Workspaces,
    events: Arc<dyn EventStore>,
    transcripts: Arc<dyn TranscriptStore>,
    cgroups: Option<CgroupRoot>,
    cli: RwLock<CliState>,
    registry: Mutex<HashMap<SessionId, Entry>>,
    turns: Arc<Semaphore>,
    starts: Arc<Semaphore>,
    user_turns: Arc<UserTurns>,
    audit: AuditLog,
    /// The model relay: each CLI process gets a token of its own, live as long as the process.
    relay: Relay,
    /// Told about every turn's end.
    webhooks: Webhooks,
    closing: AtomicBool,
    epoch: Instant,
}

/// How many turns each user runs on this instance, against `api.max_concurrent_turns_per_user`.
pub(crate) struct UserTurns {
    limit: usize,
    running: Mutex<HashMap<String, usize>>,
}

impl UserTurns {
    fn new(limit: usize) -> UserTurns {
        UserTurns {
            limit: limit.max(1),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// A turn slot of `user`, held until dropped; `Err(limit)` when the user is at it.
    pub(crate) fn take(self: &Arc<Self>, user: &str) -> Result<UserTurn, usize> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let count = running.entry(user.to_string()).or_default();
        if *count >= self.limit {
            return Err(self.limit);
        }
        *count += 1;
        Ok(UserTurn {
            owner: self.clone(),
            user: user.to_string(),
        })
    }
}

/// One running turn of a user; gives its slot back when dropped, however the turn ends.
pub(crate) struct UserTurn {
    owner: Arc<UserTurns>,
    user: String,
}

impl Drop for UserTurn {
    fn drop(&mut self) {
        let mut running = self.owner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = running.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.user);
            }
        }
    }
}

/// The live sessions of this instance.
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// A runtime with no live session yet. Opens this instance's cgroups (killing what a dead
    /// predecessor on the same data left in them). Its CLIs reach the model through `relay`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: RuntimeSettings,
        store: Arc<dyn SessionStore>,
        workspaces: Workspaces,
        launcher: Arc<dyn Launcher>,
        events: Arc<dyn EventStore>,
        transcripts: Arc<dyn TranscriptStore>,
        audit: AuditLog,
        relay: Relay,
        webhooks: Webhooks,
    ) -> Runtime {
        let cgroups = if settings.use_cgroups {
            match CgroupRoot::open(&crate::agent::cgroup::instance_key(&settings.data_dir)) {
                Ok(root) => {
                    let leftovers = root.kill_leftovers();
                    if leftovers > 0 {
                        tracing::warn!(
                            count = leftovers,
                            "killed agent processes left behind by a service that died"
                        );
                    }
                    tracing::info!(cgroup.version = ?root.version(), "each session runs in its own cgroup");
                    Some(root)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroups: finding a session's processes is best effort (process marker and /proc)");
                    None
                }
            }
        } else {
            None
        };
        let turns = Arc::new(Semaphore::new(settings.max_concurrent_turns.max(1)));
        let starts = Arc::new(Semaphore::new(settings.max_concurrent_starts.max(1)));
        let user_turns = Arc::new(UserTurns::new(settings.max_turns_per_user));
        Runtime {
            shared: Arc::new(Shared {
                settings,
                launcher,
                store,
                workspaces,
                events,
                transcripts,
                cgroups,
                cli: RwLock::new(CliState::Looking),
                registry: Mutex::new(HashMap::new()),
                turns,
                starts,
                user_turns,
                audit,
                relay,
                webhooks,
                closing: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
        }
    }

    /// Ends the turns a previous instance left running (it crashed or was killed): each gets its
    /// terminal `error` event (`service_restarted`) and is recorded as failed; returns how many.
    /// Call once at startup, before any session is live.
    pub async fn recover_interrupted_turns(&self) -> Result<usize, crate::store::StoreError> {
        let events = &self.shared.events;
        let running = events.running_turns().await?;
        for mut turn in running.iter().cloned() {
            let terminal = crate::domain::TurnEvent::Error {
                code: crate::domain::TurnErrorCode::ServiceRestarted,
                message: "the service stopped while this turn ran; send the message again".into(),
                partial: Default::default(),
            };
            let event = crate::store::StoredEvent {
                seq: events.last_seq(turn.session_id).await? + 1,
                turn_id: turn.turn_id,
                data: terminal.wire_json(),
                at: chrono::Utc::now(),
            };
            turn.status = crate::store::TurnStatus::Failed;
            turn.error_code = Some(crate::domain::TurnErrorCode::ServiceRestarted.as_str().into());
            turn.finished_at = Some(chrono::Utc::now());
            events.finish_turn(&turn, &[event], false).await?;
            tracing::warn!(session.id = %turn.session_id, turn.id = %turn.turn_id, "a turn was cut short by a service restart");
            if let Some(session) = self.shared.store.get(turn.session_id).await? {
                self.shared
                    .webhooks
                    .turn_ended(&session, turn.turn_id, turn.status, &terminal);
            }
        }
        Ok(running.len())
    }

    /// Whether sessions run in cgroups (else the best-effort marker fallback is in use).
    pub fn has_cgroups(&self) -> bool {
        self.shared.cgroups.is_some()
    }

    /// Records where the runtime stands with the CLI (found, being installed, missing).
    pub fn set_cli_state(&self, state: CliState) {
        *self.shared.cli.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Where the runtime stands with the CLI.
    pub fn cli_state(&self) -> CliState {
        self.shared.cli_state()
    }

    /// The user's own CLI config dir (transcripts, memory, `.claude.json`), outside every workspace.
    pub fn config_dir(&self, user_id: &str) -> PathBuf {
        self.shared.config_dir(user_id)
    }

    /// Starts a turn in the session; its events and terminal event arrive on the ticket.
    pub async fn send(
        &self,
        record: &SessionRecord,
        message: String,
        timeout: Option<Duration>,
        caller: Caller,
    ) -> Result<TurnTicket, SendRefusal> {
        let (reply, answer) = oneshot::channel();
        self.command(
            record,
            Command::Send {
                message,
                timeout,
                caller,
                reply,
            },
        )
        .await?;
        answer.await.unwrap_or(Err(SendRefusal::Closed))
    }

    /// A reader of the session's events from now on (its running turn's and every later one's);
    /// `None` when the runtime is closing.
    pub async fn subscribe(
        &self,
        record: &SessionRecord,
    ) -> Option<tokio::sync::broadcast::Receiver<Arc<crate::domain::SessionEvent>>> {
        let (reply, answer) = oneshot::channel();
        self.command(record, Command::Subscribe { reply }).await.ok()?;
        answer.await.ok()
    }

    /// Stops the session's running turn; false if none runs.
    pub async fn interrupt(&self, id: SessionId) -> bool {
        let Some(commands) = self.shared.commands(id) else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        if commands.send(Command::Interrupt { reply }).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Starts the session's CLI in the background if none runs; with `evict`, idle agents may be
    /// stopped to make room (an explicit resume), else only free room is used (prewarming).
    pub async fn warm(&self, record: &SessionRecord, evict: bool) {
        if !evict && !self.shared.settings.prewarm {
            return;
        }
        // Nothing to start yet (being installed, or missing): the first message says why.
        if !matches!(self.shared.cli_state(), CliState::Ready { .. }) {
            return;
        }
        let _ = self.command(record, Command::Warm { evict }).await;
    }

    /// Ends a deleted or expired session: kills its processes, removes what the CLI kept about
    /// it. Returns when nothing of it runs.
    pub async fn close(&self, id: SessionId, user_id: &str) {
        let entry = self.shared.registry().remove(&id);
        match entry {
            Some(entry) => {
                let (reply, done) = oneshot::channel();
                if entry
                    .commands
                    .send(Command::Close {
                        why: Close::Deleted,
                        reply,
                    })
                    .await
                    .is_ok()
                {
                    let _ = done.await;
                }
            }
            None => {
                // Never live here: only the CLI's files may remain.
                let config_dir = self.shared.config_dir(user_id);
                let _ = tokio::task::spawn_blocking(move || {
                    for path in crate::agent::process::session_files(&config_dir, id) {
                        let _ = if path.is_dir() {
                            std::fs::remove_dir_all(&path)
                        } else {
                            std::fs::remove_file(&path)
                        };
                    }
                })
                .await;
            }
        }
    }

    /// Whether agents can reach the model: the relay has a real credential (a key or token in the
    /// service's environment or `defaults.env`); without one every turn fails with
    /// `credentials_missing`.
    pub fn has_model_credentials(&self) -> bool {
        self.shared.relay.has_credential()
    }

    /// Whether the runtime is shutting down.
    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// How many sessions have a CLI process (running or starting).
    pub fn live_count(&self) -> usize {
        self.shared.live_count()
    }

    /// Whether this session has a CLI process.
    pub fn is_live(&self, id: SessionId) -> bool {
        self.shared
            .registry()
            .get(&id)
            .is_some_and(|e| e.status.live.load(Ordering::Acquire))
    }

    /// Memory of the service and its agents, in bytes (cgroups where available).
    pub async fn memory_bytes(&self) -> u64 {
        self.shared.memory_bytes().await
    }

    /// Refuses new work, lets running turns end (briefly), stops every CLI; returns when none is left.
    pub async fn shutdown(&self) {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let entries: Vec<Entry> = self.shared.registry().drain().map(|(_, e)| e).collect();
        let stops = entries.into_iter().map(|entry| async move {
            let (reply, done) = oneshot::channel();
            let close = Command::Close {
                why: Close::Shutdown,
                reply,
            };
            if entry.commands.send(close).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(15), done).await;
            }
        });
        futures_util::future::join_all(stops).await;
        // What the agents spent is stored before the service goes.
        if !self.shared.relay.flush(Duration::from_secs(10)).await {
            tracing::error!("usage records were still unstored at shutdown");
        }
        if let Some(root) = self.shared.cgroups.clone() {
            let _ = tokio::task::spawn_blocking(move || root.remove()).await;
        }
        tracing::info!("all agents stopped");
    }

    /// Runs until shutdown: relieves memory pressure, reaps adopted zombies, and (without
    /// cgroups) sweeps for processes a dead instance left behind.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watches = 0u64;
        loop {
            tick.tick().await;
            if self.shared.closing.load(Ordering::Acquire) {
                return;
            }
            let limit = self.shared.settings.memory_limit_bytes;
            if limit > 0
                && self.shared.memory_bytes().await > limit
                && let Some(victim) = self.shared.least_recently_used_idle(None)
            {
                tracing::info!(session.id = %victim.0, "memory limit reached; stopping the least recently used idle agent");
                let (reply, answer) = oneshot::channel();
                if victim.1.send(Command::Evict { reply }).await.is_ok() {
                    let _ = answer.await;
                }
            }
            watches += 1;
            let sweep = self.shared.cgroups.is_none() && watches.is_multiple_of(ORPHAN_SWEEP_WATCHES);
            // Both walk /proc: on a blocking thread.
            let _ = tokio::task::spawn_blocking(move || {
                tree::reap_zombie_children(&Default::default());
                if sweep {
                    // A service that died is not around to clean up; its tools end up adopted by init.
                    tree::kill_orphaned_agent_processes();
                }
            })
            .await;
        }
    }

    async fn command(&self, record: &SessionRecord, command: Command) -> Result<(), SendRefusal> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(SendRefusal::Closed);
        }
        let commands = {
            let mut registry = self.shared.registry();
            match registry.get(&record.session_id) {
                Some(entry) if !entry.commands.is_closed() => entry.commands.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(INBOX);
                    let status = Arc::new(LiveStatus::new(self.shared.epoch));
                    registry.insert(
                        record.session_id,
                        Entry {
                            commands: tx.clone(),
                            status: status.clone(),
                        },
                    );
                    // A root: the actor outlives the request that happened to start it, whose
                    // fields must not end up on every line it ever logs.
                    let span = tracing::info_span!(parent: None, "session", session.id = %record.session_id, user.id = %record.user_id);
                    tokio::spawn(tracing::Instrument::instrument(
                        LiveSession::run(record.clone(), self.shared.clone(), status, rx),
                        span,
                    ));
                    tx
                }
            }
        };
        commands.send(command).await.map_err(|_| SendRefusal::Closed)
    }
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops a closed session's registry entry, if it is still that session's.
    fn forget(&self, id: SessionId, status: &Arc<LiveStatus>) {
        let mut registry = self.registry();
        if registry.get(&id).is_some_and(|e| Arc::ptr_eq(&e.status, status)) {
            registry.remove(&id);
        }
    }

    fn commands(&self, id: SessionId) -> Option<mpsc::Sender<Command>> {
        self.registry().get(&id).map(|e| e.commands.clone())
    }

    fn cli_state(&self) -> CliState {
        self.cli.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn config_dir(&self, user_id: &str) -> PathBuf {
        agents_root(&self.settings.data_dir).join(user_id)
    }

    fn live_count(&self) -> usize {
        self.registry()
            .values()
            .filter(|e| e.status.live.load(Ordering::Acquire))
            .count()
    }

    fn prepare_spawn(
        &self,
        record: &SessionRecord,
        cli: PathBuf,
        version: Option<String>,
        uid: Option<u32>,
        access: Option<live::TokenAccess>,
    ) -> Result<
        (
            SpawnSpec,
            std::os::fd::OwnedFd,
            Option<SessionCgroup>,
            Option<crate::agent::Identity>,
        ),
        String,
    > {
        live::prepare(self, record, cli, version, uid, access)
    }

    async fn memory_bytes(&self) -> u64 {
        match &self.cgroups {
            Some(root) => own_rss_bytes() + root.memory_bytes(),
            None => tokio::task::spawn_blocking(tree::service_memory_bytes)
                .await
                .unwrap_or_default(),
        }
    }

    /// The idle live session used longest ago (not `except`), with its command queue.
    fn least_recently_used_idle(
        &self,
        except: Option<SessionId>,
    ) -> Option<(SessionId, mpsc::Sender<Command>)> {
        self.registry()
            .iter()
            .filter(|(id, e)| {
                Some(**id) != except
                    && e.status.live.load(Ordering::Acquire)
                    && !e.status.busy.load(Ordering::Acquire)
            })
            .min_by_key(|(_, e)| e.status.last_used_ms.load(Ordering::Acquire))
            .map(|(id, e)| (*id, e.commands.clone()))
    }

    /// Makes room for one more CLI: waits for a start slot (FIFO, so early sessions answer
    /// early), then reserves a live slot under the cap and the memory limit, stopping least
    /// recently used idle agents for room if `evict`.
    async fn admit(&self, id: SessionId, status: &LiveStatus, evict: bool) -> Admission {
        let Ok(permit) = self.starts.clone().acquire_owned().await else {
            return Admission::Closing;
        };
        let limit = self.settings.memory_limit_bytes;
        // Victims may be between states (a start in flight, a turn just ending): retry a few times.
        for attempt in 0..self.settings.max_live + 8 {
            if self.closing.load(Ordering::Acquire) {
                return Admission::Closing;
            }
            let over_memory = limit > 0 && self.memory_bytes().await >= limit;
            let victim = {
                let registry = self.registry();
                let live = registry
                    .values()
                    .filter(|e| e.status.live.load(Ordering::Acquire))
                    .count();
                if live < self.settings.max_live && !over_memory {
                    // Reserved under the registry lock: two starts cannot both take the last slot.
                    status.live.store(true, Ordering::Release);
                    status.touch();
                    return Admission::Granted(permit);
                }
                drop(registry);
                if !evict {
                    return Admission::NoCapacity("no room to start an agent ahead of need".into());
                }
                match self.least_recently_used_idle(Some(id)) {
                    Some(victim) => victim,
                    None => {
                        return Admission::NoCapacity(if over_memory {
                            "memory is at api.memory_limit_mb and no agent is idle".to_string()
                        } else {
                            format!(
                                "all {} agents are busy (api.max_live_agents)",
                                self.settings.max_live
                            )
                        });
                    }
                }
            };
            let (reply, answer) = oneshot::channel();
            let stopped =
                victim.1.send(Command::Evict { reply }).await.is_ok() && answer.await.unwrap_or(false);
            if !stopped {
                tokio::time::sleep(Duration::from_millis(10 * (attempt as u64 + 1))).await;
            }
        }
        Admission::NoCapacity("agents could not be stopped to make room".into())
    }
}

/// Where per-user CLI config dirs live: beside the workspaces, never inside them.
pub fn agents_root(data_dir: &Path) -> PathBuf {
    data_dir.join("agents")
}

/// This process's resident memory (one small read of /proc/self/statm).
fn own_rss_bytes() -> u64 {
    tree::rss_bytes(std::process::id()).unwrap_or_default()
}
