//! The live agents: at most one CLI process per session, started on demand, stopped when idle,
//! evicted least-recently-used under the process cap and the memory limit, killed with everything
//! it started when its session is deleted or the service shuts down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::SessionError;
use crate::agent::cli::TESTED_CLI_VERSION;
use crate::agent::process::{has_transcript, session_files};
use crate::agent::{AgentProcess, SpawnSpec, tree};
use crate::config::Config;
use crate::domain::{SessionId, SessionRecord, TurnErrorCode};
use crate::workspace::Workspaces;

/// How long a stopping agent gets to flush its transcript and exit before SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the supervisor looks for idle agents, memory pressure and orphans.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);
/// Every how many ticks it looks for processes left behind by a service that died (it reads every
/// process's environment, so not on every tick).
const ORPHAN_SWEEP_TICKS: u64 = 6;

/// Where the pool stands with the Claude Code CLI.
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

/// One session's live state.
pub struct Slot {
    pub session: SessionId,
    /// A turn is running (or about to); a second one is refused.
    busy: AtomicBool,
    /// The process, locked for the whole of a turn or a stop.
    pub(super) process: tokio::sync::Mutex<Option<AgentProcess>>,
    /// Mirrors `process.is_some()` for readers that must not wait for the lock.
    live: AtomicBool,
    last_used: Mutex<Instant>,
    /// Reaches the running turn, to stop it.
    interrupt: Mutex<Option<mpsc::UnboundedSender<TurnErrorCode>>>,
}

impl Slot {
    /// Claims the slot for a turn; false if one is running.
    pub(super) fn try_claim(&self) -> bool {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(super) fn release(&self) {
        *self.interrupt.lock().expect("interrupt lock") = None;
        self.touch();
        self.busy.store(false, Ordering::Release);
    }

    pub(super) fn touch(&self) {
        *self.last_used.lock().expect("last_used lock") = Instant::now();
    }

    pub(super) fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    pub(super) fn listen_for_interrupts(&self) -> mpsc::UnboundedReceiver<TurnErrorCode> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.interrupt.lock().expect("interrupt lock") = Some(tx);
        rx
    }

    fn interrupt(&self, code: TurnErrorCode) -> bool {
        match self.interrupt.lock().expect("interrupt lock").as_ref() {
            Some(tx) => tx.send(code).is_ok(),
            None => false,
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().expect("last_used lock").elapsed()
    }

    fn is_idle_and_live(&self) -> bool {
        self.live.load(Ordering::Acquire) && !self.busy.load(Ordering::Acquire)
    }
}

/// All live agents of this service.
pub struct AgentPool {
    /// Where the pool stands with the CLI.
    cli: std::sync::RwLock<CliState>,
    config_root: PathBuf,
    workspaces: Workspaces,
    extra_env: BTreeMap<String, String>,
    max_live: usize,
    memory_limit_bytes: u64,
    idle_timeout: Duration,
    slots: Mutex<HashMap<SessionId, Arc<Slot>>>,
    owned_pids: Arc<Mutex<HashSet<u32>>>,
    pub(super) turns: Arc<Semaphore>,
    closing: AtomicBool,
}

impl AgentPool {
    /// A pool with no CLI yet (see `set_cli_state`).
    pub fn new(config: &Config, workspaces: Workspaces) -> Self {
        AgentPool {
            cli: std::sync::RwLock::new(CliState::Looking),
            config_root: config_root(config),
            workspaces,
            extra_env: config.defaults.env.clone(),
            max_live: config.api.max_live_agents as usize,
            memory_limit_bytes: config.api.memory_limit_mb * 1024 * 1024,
            idle_timeout: Duration::from_secs(config.api.idle_session_timeout),
            slots: Mutex::new(HashMap::new()),
            owned_pids: Arc::new(Mutex::new(HashSet::new())),
            turns: Arc::new(Semaphore::new(config.api.max_concurrent_requests as usize)),
            closing: AtomicBool::new(false),
        }
    }

    /// The slot of a session, created on first use.
    pub(super) fn slot(&self, record: &SessionRecord) -> Result<Arc<Slot>, SessionError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        let mut slots = self.slots.lock().expect("slots lock");
        let slot = slots.entry(record.session_id).or_insert_with(|| {
            Arc::new(Slot {
                session: record.session_id,
                busy: AtomicBool::new(false),
                process: tokio::sync::Mutex::new(None),
                live: AtomicBool::new(false),
                last_used: Mutex::new(Instant::now()),
                interrupt: Mutex::new(None),
            })
        });
        Ok(slot.clone())
    }

    /// Records where the pool stands with the CLI (found, being installed, missing).
    pub fn set_cli_state(&self, state: CliState) {
        *self.cli.write().expect("cli lock") = state;
    }

    /// Where the pool stands with the CLI.
    pub fn cli_state(&self) -> CliState {
        self.cli.read().expect("cli lock").clone()
    }

    /// How many sessions have a live process.
    pub fn live_count(&self) -> usize {
        self.slots
            .lock()
            .expect("slots lock")
            .values()
            .filter(|s| s.live.load(Ordering::Acquire))
            .count()
    }

    /// Whether this session has a live process.
    pub fn is_live(&self, id: SessionId) -> bool {
        self.slots
            .lock()
            .expect("slots lock")
            .get(&id)
            .is_some_and(|s| s.live.load(Ordering::Acquire))
    }

    /// Stops the session's running turn; false if none runs.
    pub fn interrupt(&self, id: SessionId) -> bool {
        let slot = self.slots.lock().expect("slots lock").get(&id).cloned();
        slot.is_some_and(|slot| slot.interrupt(TurnErrorCode::Interrupted))
    }

    /// The user's own CLI config dir (transcripts, memory, `.claude.json`), outside every workspace.
    pub fn config_dir(&self, user_id: &str) -> PathBuf {
        self.config_root.join(user_id)
    }

    /// Starts the session's CLI, making room first; resumes its transcript if one exists.
    pub(super) async fn start(
        &self,
        slot: &Slot,
        record: &SessionRecord,
    ) -> Result<AgentProcess, SessionError> {
        let cli = match self.cli_state() {
            CliState::Ready { path, .. } => path,
            CliState::Installing => {
                return Err(SessionError::AgentUnavailable(format!(
                    "the Claude Code CLI {TESTED_CLI_VERSION} is being installed; try again shortly"
                )));
            }
            CliState::Looking => {
                return Err(SessionError::AgentUnavailable(
                    "the Claude Code CLI is being looked for".into(),
                ));
            }
            CliState::Missing(why) => return Err(SessionError::AgentUnavailable(why)),
        };
        self.make_room(slot.session).await?;
        let config_dir = self.config_dir(&record.user_id);
        create_private_dir(&config_dir)?;
        let cwd_dir = self.workspaces.open(&record.user_id, record.subdir.as_deref())?;
        let home = self.workspaces.path_of(&record.user_id, None);
        let resume = has_transcript(&config_dir, record.session_id);
        let process = AgentProcess::spawn(
            SpawnSpec {
                cli: &cli,
                session: record.session_id,
                resume,
                cwd: &record.cwd,
                cwd_dir,
                config_dir: &config_dir,
                home: &home,
                options: &record.options,
                extra_env: &self.extra_env,
            },
            self.owned_pids.clone(),
        )
        .map_err(|e| SessionError::AgentUnavailable(e.to_string()))?;
        tracing::info!(session.id = %record.session_id, agent.pid = process.pid(), agent.resume = resume, "agent started");
        slot.set_live(true);
        Ok(process)
    }

    /// Stops idle agents until a new one fits under the process cap and the memory limit.
    async fn make_room(&self, except: SessionId) -> Result<(), SessionError> {
        loop {
            let over_count = self.live_count() >= self.max_live;
            let over_memory = self.memory_limit_bytes > 0 && memory_in_use().await >= self.memory_limit_bytes;
            if !over_count && !over_memory {
                return Ok(());
            }
            let Some(victim) = self.least_recently_used_idle(except) else {
                return Err(SessionError::NoCapacity(if over_count {
                    format!("{} agents are busy (api.max_live_agents)", self.max_live)
                } else {
                    "memory is at api.memory_limit_mb and no agent is idle".to_string()
                }));
            };
            self.stop_slot(&victim, "making room").await;
        }
    }

    fn least_recently_used_idle(&self, except: SessionId) -> Option<Arc<Slot>> {
        let slots = self.slots.lock().expect("slots lock");
        slots
            .values()
            .filter(|s| s.session != except && s.is_idle_and_live())
            .max_by_key(|s| s.idle_for())
            .cloned()
    }

    /// Stops a slot's process gracefully if no turn holds it.
    async fn stop_slot(&self, slot: &Slot, why: &'static str) {
        let Ok(mut guard) = slot.process.try_lock() else {
            return;
        };
        if slot.busy.load(Ordering::Acquire) {
            return;
        }
        if let Some(process) = guard.take() {
            tracing::info!(session.id = %slot.session, agent.pid = process.pid(), reason = why, "stopping agent");
            slot.set_live(false);
            process.stop(STOP_GRACE).await;
        }
    }

    /// Stops and forgets a deleted or expired session, and removes what the CLI kept about it.
    pub async fn forget(&self, id: SessionId, user_id: &str) {
        let slot = self.slots.lock().expect("slots lock").remove(&id);
        if let Some(slot) = slot {
            slot.interrupt(TurnErrorCode::Interrupted);
            // The turn ends within a few seconds of the interrupt (it kills an unresponsive CLI).
            let guard = tokio::time::timeout(Duration::from_secs(10), slot.process.lock()).await;
            if let Ok(mut guard) = guard
                && let Some(process) = guard.take()
            {
                slot.set_live(false);
                process.kill().await;
            }
        }
        for path in session_files(&self.config_dir(user_id), id) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(session.id = %id, path = %path.display(), error = %e, "cannot remove session file");
            }
        }
    }

    /// Runs forever: stops idle agents, relieves memory pressure, reaps adopted orphans.
    pub async fn supervise(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        let mut sweeps = 0u64;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let idle: Vec<Arc<Slot>> = {
                let slots = self.slots.lock().expect("slots lock");
                slots
                    .values()
                    .filter(|s| s.is_idle_and_live() && s.idle_for() >= self.idle_timeout)
                    .cloned()
                    .collect()
            };
            for slot in idle {
                let pool = self.clone();
                tokio::spawn(async move { pool.stop_slot(&slot, "idle").await });
            }
            if self.memory_limit_bytes > 0
                && memory_in_use().await > self.memory_limit_bytes
                && let Some(victim) = self.least_recently_used_idle(SessionId(uuid::Uuid::nil()))
            {
                self.stop_slot(&victim, "memory limit").await;
            }
            let owned = self.owned_pids.lock().expect("pids lock").clone();
            tree::reap_zombie_children(&owned);
            sweeps += 1;
            if sweeps.is_multiple_of(ORPHAN_SWEEP_TICKS) {
                // A service that died is not around to clean up; its tools end up adopted by init.
                // (The sweep at startup can miss processes still being reparented.)
                tokio::task::spawn_blocking(tree::kill_orphaned_agent_processes);
            }
        }
    }

    /// Refuses new turns, stops running ones and every process; returns when none is left.
    pub async fn shutdown(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let slots: Vec<Arc<Slot>> = self.slots.lock().expect("slots lock").values().cloned().collect();
        for slot in &slots {
            slot.interrupt(TurnErrorCode::ServiceShutdown);
        }
        let stops = slots.into_iter().map(|slot| async move {
            let guard = tokio::time::timeout(Duration::from_secs(8), slot.process.lock()).await;
            if let Ok(mut guard) = guard
                && let Some(process) = guard.take()
            {
                slot.set_live(false);
                process.stop(STOP_GRACE).await;
            }
        });
        futures_util::future::join_all(stops).await;
        tracing::info!("all agents stopped");
    }
}

/// Where per-user CLI config dirs live: beside the workspaces, never inside them.
pub fn config_root(config: &Config) -> PathBuf {
    config.data_dir.join("agents")
}

fn create_private_dir(path: &std::path::Path) -> Result<(), SessionError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| SessionError::AgentUnavailable(format!("cannot create {}: {e}", path.display())))
}

async fn memory_in_use() -> u64 {
    tokio::task::spawn_blocking(tree::service_memory_bytes)
        .await
        .unwrap_or_default()
}
