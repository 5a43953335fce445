//! The live session: one task (actor) per session that owns its CLI process and its turn state,
//! takes commands on a bounded queue, and ends in a terminal closed state after which nothing can
//! start a process for it. Every decision about one session's process is made here, in order:
//! start (admitted by the runtime), hand a message over, answer the CLI's requests, stop a turn
//! (interrupt, deadline, silence), retire an idle process, and kill everything on delete.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::stream::SessionStream;
use super::{Admission, CliState, LiveStatus, Shared, UserTurn};
use crate::agent::command::{CliFeatures, mcp_config_json};
use crate::agent::policy::Policy;
use crate::agent::process::{has_transcript, session_files};
use crate::agent::protocol::{self, AgentMessage};
use crate::agent::tracker::TurnTracker;
use crate::agent::{AgentProcess, ExitInfo, ModelAccess, Output, SpawnSpec};
use crate::domain::{Caller, SessionEvent, SessionId, SessionRecord, TurnErrorCode, TurnEvent, TurnId};
use crate::relay::RelayToken;
use crate::store::{TurnRecord, TurnStatus};

/// How long an interrupted CLI gets to end its turn before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// How long a stopping agent gets to flush its transcript and exit before SIGTERM.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a turn's end waits for its last model answer to finish passing through the relay
/// (the CLI may print its result a moment before the answer's last bytes are read).
const SETTLE_PATIENCE: Duration = Duration::from_secs(2);
/// Attempts at a turn whose CLI died before printing anything for it.
const MAX_SILENT_ATTEMPTS: u32 = 2;

/// What a caller may ask of a live session.
pub(super) enum Command {
    /// Start a turn; refused if one runs.
    Send {
        message: String,
        timeout: Option<Duration>,
        caller: Caller,
        reply: oneshot::Sender<Result<TurnTicket, SendRefusal>>,
    },
    /// A reader of the session's live events from now on.
    Subscribe {
        reply: oneshot::Sender<broadcast::Receiver<Arc<SessionEvent>>>,
    },
    /// Stop the running turn; answers whether one was running.
    Interrupt { reply: oneshot::Sender<bool> },
    /// Start the CLI ahead of need (evicting idle agents for room only if `evict`).
    Warm { evict: bool },
    /// Stop the CLI if no turn runs (to make room); answers whether it stopped one.
    Evict { reply: oneshot::Sender<bool> },
    /// End the session for good.
    Close { why: Close, reply: oneshot::Sender<()> },
}

/// Why a live session closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// Deleted or expired: kill everything at once, remove what the CLI kept.
    Deleted,
    /// The service stops: let a running turn end, stop the CLI gracefully.
    Shutdown,
}

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// A turn is running.
    Busy,
    /// The session is closed (deleted, or the service is stopping).
    Closed,
    /// The session's user already runs this many turns at once, the most allowed.
    UserAtLimit(usize),
}

/// A started turn: its id, a reader of its events, and its terminal event.
pub struct TurnTicket {
    /// The turn.
    pub turn: TurnId,
    /// Every event of the session from the turn's start (bounded: a slow reader lags).
    pub events: broadcast::Receiver<Arc<SessionEvent>>,
    /// The turn's terminal event, always delivered.
    pub done: oneshot::Receiver<Arc<SessionEvent>>,
}

/// Messages from the actor's own helper tasks.
enum Internal {
    /// A turn slot (`api.max_concurrent_requests`) for this turn.
    TurnPermit(TurnId, OwnedSemaphorePermit),
    /// The runtime's answer to a start request.
    Admitted(Admission),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a turn slot.
    Queued,
    /// Waiting for the CLI to start.
    Starting,
    /// The message is with the CLI.
    Running,
}

struct Turn {
    id: TurnId,
    message: String,
    phase: Phase,
    tracker: TurnTracker,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Option<Instant>,
    last_output: Instant,
    kill_at: Option<Instant>,
    attempts: u32,
    done: Option<oneshot::Sender<Arc<SessionEvent>>>,
    started_at: DateTime<Utc>,
    /// Who asked for it (audit records of its tool calls name them).
    caller: Caller,
    /// The user's turn slot, given back when the turn is dropped.
    _user_slot: UserTurn,
    /// Entered around every step of the actor while this turn runs: every line logged there
    /// carries the request, session, user and turn.
    span: tracing::Span,
    /// When the actor took it (for its duration and time to first delta).
    began: Instant,
    /// A text delta was published.
    first_delta: bool,
}

/// One thing the actor handles, taken off its inputs before it is handled (inside the running
/// turn's span).
enum Step {
    Internal(Internal),
    Output(Option<Output>),
    Command(Command),
    Timer,
}

/// The actor's state. Only its own task touches it.
pub(super) struct LiveSession {
    record: SessionRecord,
    shared: Arc<Shared>,
    status: Arc<LiveStatus>,
    policy: Policy,
    internal_tx: mpsc::UnboundedSender<Internal>,
    process: Option<Agent>,
    /// An admission request is in flight.
    starting: bool,
    /// The start in flight may evict idle agents for room (a turn needs it); a start ahead of need
    /// may not.
    start_evicts: bool,
    /// The start slot, held until the CLI has answered `initialize` (starting is what is costly).
    start_permit: Option<OwnedSemaphorePermit>,
    init_request: Option<String>,
    /// The CLI's running cost total as of its last result (to report each turn's own share).
    cost_total: f64,
    /// The last `result_index` of this process (2.1.332 numbers results per process).
    last_result_index: Option<u64>,
    /// The running CLI can cancel queued messages with an interrupt (`interrupt_cancel_queued_v1`).
    cancel_queued: bool,
    turn: Option<Turn>,
    stream: SessionStream,
    last_used: Instant,
    /// The session no longer exists in the store: close at the next step.
    doomed: bool,
    /// The start in flight was evicted before it spawned anything.
    abandon_start: bool,
    closed: bool,
}

impl LiveSession {
    /// Runs the actor until the session closes or every handle is gone.
    pub(super) async fn run(
        record: SessionRecord,
        shared: Arc<Shared>,
        status: Arc<LiveStatus>,
        mut inbox: mpsc::Receiver<Command>,
    ) {
        let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
        // The stream continues where the store's left off (across restarts and idle periods).
        let last_seq = match shared.events.last_seq(record.session_id).await {
            Ok(last) => last,
            Err(e) => {
                tracing::error!(session.id = %record.session_id, error = %e, "cannot read the session's last event number");
                0
            }
        };
        let stream = SessionStream::new(
            record.session_id,
            shared.events.clone(),
            shared.transcripts.clone(),
            last_seq,
            shared.settings.stream_buffer,
        );
        let mut live = LiveSession {
            policy: Policy::new(&record.options),
            record,
            shared,
            status,
            internal_tx,
            process: None,
            starting: false,
            start_evicts: false,
            start_permit: None,
            init_request: None,
            cost_total: 0.0,
            last_result_index: None,
            cancel_queued: false,
            turn: None,
            stream,
            last_used: Instant::now(),
            doomed: false,
            abandon_start: false,
            closed: false,
        };
        while !live.closed {
            let wake = live.next_wake();
            let step = tokio::select! {
                biased;
                Some(message) = internal_rx.recv() => Step::Internal(message),
                output = next_output(&mut live.process) => Step::Output(output),
                command = inbox.recv() => match command {
                    Some(command) => Step::Command(command),
                    None => break,
                },
                () = sleep_until(wake) => Step::Timer,
            };
            let span = live.span_of(&step);
            async {
                match step {
                    Step::Internal(message) => live.on_internal(message).await,
                    Step::Output(output) => live.on_output(output).await,
                    Step::Command(command) => live.on_command(command).await,
                    Step::Timer => live.on_timer().await,
                }
                if live.doomed {
                    live.close(Close::Deleted).await;
                }
            }
            .instrument(span)
            .await;
        }
        live.status.live.store(false, Ordering::Release);
        live.status.busy.store(false, Ordering::Release);
        live.shared.forget(live.record.session_id, &live.status);
    }

    fn id(&self) -> SessionId {
        self.record.session_id
    }

    /// The span a step runs in: the running turn's, a new turn's for a message (its `turn.id` is
    /// recorded once the turn exists), else none.
    fn span_of(&self, step: &Step) -> tracing::Span {
        if let Some(turn) = &self.turn {
            return turn.span.clone();
        }
        let Step::Command(Command::Send { caller, .. }) = step else {
            return tracing::Span::none();
        };
        // At error level so that no filter that lets any line through drops these fields.
        tracing::error_span!(
            "turn",
            request.id = caller.request_id.as_deref().unwrap_or_default(),
            session.id = %self.record.session_id,
            user.id = %self.record.user_id,
            turn.id = tracing::field::Empty,
        )
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Send {
                message,
                timeout,
                caller,
                reply,
            } => {
                let result = self.begin_turn(message, timeout, caller).await;
                let _ = reply.send(result);
            }
            Command::Subscribe { reply } => {
                let _ = reply.send(self.stream.subscribe());
            }
            Command::Interrupt { reply } => {
                let _ = reply.send(self.stop_turn(TurnErrorCode::Interrupted).await);
            }
            Command::Warm { evict } => {
                if self.process.is_none() && !self.starting {
                    self.begin_start(evict);
                }
            }
            Command::Evict { reply } => {
                let mut stopped = false;
                if self.turn.is_none() {
                    if self.process.is_some() {
                        self.stop_process("making room").await;
                        crate::telemetry::agent_evicted();
                        stopped = true;
                    } else if self.starting {
                        // A start ahead of need gives way to a session that needs the room now.
                        self.abandon_start = true;
                        self.status.live.store(false, Ordering::Release);
                        stopped = true;
                    }
                }
                let _ = reply.send(stopped);
            }
            Command::Close { why, reply } => {
                self.close(why).await;
                let _ = reply.send(());
            }
        }
    }

    async fn begin_turn(
        &mut self,
        message: String,
        timeout: Option<Duration>,
        caller: Caller,
    ) -> Result<TurnTicket, SendRefusal> {
        if self.closed {
            return Err(SendRefusal::Closed);
        }
        if self.turn.is_some() {
            return Err(SendRefusal::Busy);
        }
        let user_slot = self
            .shared
            .user_turns
            .take(&self.record.user_id)
            .map_err(SendRefusal::UserAtLimit)?;
        let id = TurnId::new();
        let span = tracing::Span::current();
        span.record("turn.id", tracing::field::display(id));
        let now = Instant::now();
        // The client's timeout and the server's deadline, whichever comes first.
        let deadline = [timeout, self.shared.settings.turn_timeout]
            .into_iter()
            .flatten()
            .min()
            .map(|limit| now + limit);
        let (done_tx, done_rx) = oneshot::channel();
        let started_at = Utc::now();
        self.stream
            .begin(TurnRecord {
                turn_id: id,
                session_id: self.record.session_id,
                user_message: message.clone(),
                status: TurnStatus::Running,
                error_code: None,
                text: String::new(),
                tool_calls: serde_json::Value::Array(Vec::new()),
                usage: Default::default(),
                cost_usd: 0.0,
                started_at,
                finished_at: None,
            })
            .await;
        self.turn = Some(Turn {
            started_at,
            caller,
            _user_slot: user_slot,
            id,
            message,
            phase: Phase::Queued,
            tracker: TurnTracker::new(self.cost_total),
            permit: None,
            deadline,
            last_output: now,
            kill_at: None,
            attempts: 0,
            done: Some(done_tx),
            span,
            began: now,
            first_delta: false,
        });
        crate::telemetry::turn_started(&self.record.user_id);
        tracing::debug!("turn started");
        self.status.busy.store(true, Ordering::Release);
        let ticket = TurnTicket {
            turn: id,
            events: self.stream.subscribe(),
            done: done_rx,
        };
        let turns = self.shared.turns.clone();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            if let Ok(permit) = turns.acquire_owned().await {
                let _ = internal.send(Internal::TurnPermit(id, permit));
            }
        });
        Ok(ticket)
    }

    async fn on_internal(&mut self, message: Internal) {
        match message {
            Internal::TurnPermit(id, permit) => {
                let Some(turn) = self
                    .turn
                    .as_mut()
                    .filter(|t| t.id == id && t.phase == Phase::Queued)
                else {
                    return;
                };
                turn.permit = Some(permit);
                turn.phase = Phase::Starting;
                self.hand_over().await;
            }
            Internal::Admitted(admission) => {
                self.starting = false;
                self.on_admitted(admission).await;
            }
        }
    }

    /// Gives the waiting turn's message to the CLI, starting one first if there is none.
    async fn hand_over(&mut self) {
        if self.turn.as_ref().is_none_or(|t| t.phase != Phase::Starting) {
            return;
        }
        let Some(process) = self.process.as_ref() else {
            if !self.starting {
                self.begin_start(true);
            }
            return;
        };
        let turn = self.turn.as_mut().expect("checked");
        turn.attempts += 1;
        turn.phase = Phase::Running;
        turn.last_output = Instant::now();
        // The model requests the CLI makes from here on are this turn's.
        if let Some(token) = &process._token {
            self.shared.relay.begin_turn(token, turn.id);
        }
        // Tenant text is never expanded (`@path`) or run as a slash command by newer CLIs.
        if !process.write_line(&protocol::user_line(&turn.message)) {
            // stdin is closed: the process is on its way out; its exit ends or retries the turn.
            tracing::debug!(session.id = %self.record.session_id, "agent stdin closed before the message");
        }
    }

    /// Asks the runtime for room to start the CLI (in a task: admission may wait for a start slot
    /// or for another session to stop).
    fn begin_start(&mut self, evict: bool) {
        if self.closed || self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        self.starting = true;
        self.start_evicts = evict;
        let shared = self.shared.clone();
        let status = self.status.clone();
        let internal = self.internal_tx.clone();
        let id = self.id();
        // In the turn's span, if a turn asked for it: what admission logs is about that turn.
        tokio::spawn(
            async move {
                let admission = shared.admit(id, &status, evict).await;
                let _ = internal.send(Internal::Admitted(admission));
            }
            .in_current_span(),
        );
    }

    async fn on_admitted(&mut self, admission: Admission) {
        let permit = match admission {
            Admission::Granted(_) if std::mem::take(&mut self.abandon_start) && self.turn.is_none() => {
                // Evicted before it started: give the room back.
                self.status.live.store(false, Ordering::Release);
                return;
            }
            Admission::Granted(permit) => {
                // The room is ours (again, if an eviction of the start raced with a turn's arrival).
                self.status.live.store(true, Ordering::Release);
                permit
            }
            Admission::NoCapacity(_) if !self.start_evicts && self.turn.is_some() => {
                // A start ahead of need found no room, but a turn arrived meanwhile: it needs the
                // room now, so ask again, evicting an idle agent if one is.
                self.begin_start(true);
                return;
            }
            Admission::NoCapacity(why) => {
                self.fail_waiting_turn(TurnErrorCode::AgentCapacityReached, why)
                    .await;
                return;
            }
            Admission::Closing => {
                self.fail_waiting_turn(
                    TurnErrorCode::ServiceShutdown,
                    "the service is shutting down".into(),
                )
                .await;
                return;
            }
        };
        // The runtime reserved a live slot for us; from here every exit path releases it.
        match self.spawn_process().await {
            Ok((mut process, features)) => {
                crate::telemetry::agent_spawned(true);
                tracing::info!(session.id = %self.id(), agent.pid = process.pid(), "agent started");
                // `initialize` first (a CLI started with --await-initialize requires it): it warms
                // the CLI up before any message, and carries what must stay off the command line.
                self.init_request = Some(process.request(self.initialize_request(features)));
                self.process = Some(process);
                self.start_permit = Some(permit);
                // Each process counts its cost from zero (a resumed 2.1.332 one reports per-result costs).
                self.cost_total = 0.0;
                self.last_result_index = None;
                self.cancel_queued = false;
                self.last_used = Instant::now();
                self.hand_over().await;
            }
            Err(failure) => {
                self.status.live.store(false, Ordering::Release);
                drop(permit);
                match failure {
                    StartFailure::Gone => self.doomed = true,
                    StartFailure::Unavailable(why) => {
                        crate::telemetry::agent_spawned(false);
                        tracing::error!(session.id = %self.id(), error = %why, "cannot start the agent");
                        self.fail_waiting_turn(TurnErrorCode::AgentUnavailable, why).await;
                    }
                }
            }
        }
    }

    /// Writes the session's transcript back from the store when the local file is missing or
    /// shorter (a wiped or new disk, or a CLI killed before it flushed), so `--resume` sees every turn.
    async fn restore_transcript(&self) {
        let id = self.id();
        let saved = match self.shared.transcripts.transcript(id).await {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(session.id = %id, error = %e, "cannot read the stored transcript; resuming from the local one");
                return;
            }
        };
        let config_dir = self.shared.config_dir(&self.record.user_id);
        let restored =
            tokio::task::spawn_blocking(move || restore_transcript_file(&config_dir, &saved)).await;
        match restored {
            Ok(Ok(true)) => {
                tracing::info!(session.id = %id, "restored the agent's transcript from the store")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(session.id = %id, error = %e, "cannot restore the agent's transcript")
            }
            Err(e) => tracing::warn!(session.id = %id, error = %e, "cannot restore the agent's transcript"),
        }
    }

    fn initialize_request(&self, features: CliFeatures) -> serde_json::Value {
        let mut request = json!({"subtype": "initialize", "hooks": null});
        if features.await_initialize && !self.shared.settings.mcp_servers.is_empty() {
            request["mcpServers"] = serde_json::Value::Object(self.shared.settings.mcp_servers.clone());
        }
        request
    }

    async fn spawn_process(&mut self) -> Result<(Agent, CliFeatures), StartFailure> {
        // A session deleted while its start was queued must never get a process.
        match self.shared.store.get(self.id()).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(StartFailure::Gone),
            Err(e) => {
                tracing::error!(session.id = %self.id(), error = %e, "cannot check the session before starting its agent");
                return Err(StartFailure::Unavailable(
                    "the session store is unavailable".into(),
                ));
            }
        }
        let (cli, version) = match self.shared.cli_state() {
            CliState::Ready { path, version } => (path, version),
            CliState::Installing => {
                return Err(StartFailure::Unavailable(format!(
                    "the Claude Code CLI {} is being installed; try again shortly",
                    crate::agent::cli::TESTED_CLI_VERSION
                )));
            }
            CliState::Looking => {
                return Err(StartFailure::Unavailable(
                    "the Claude Code CLI is being looked for".into(),
                ));
            }
            CliState::Missing(why) => return Err(StartFailure::Unavailable(why)),
        };
        self.restore_transcript().await;
        let uid = match &self.shared.settings.isolation {
            Some(isolation) => Some(
                isolation
                    .uids
                    .uid_for(&self.record.user_id, isolation.uid_first, isolation.uid_count)
                    .await
                    .map_err(|e| {
                        tracing::error!(session.id = %self.id(), error = %e, "no uid for the session's user");
                        StartFailure::Unavailable(
                            "no operating-system identity for this user; the service log says why".into(),
                        )
                    })?,
            ),
            None => None,
        };
        // The process's own relay token: revoked when the process is gone (or never started). A
        // sandboxed process's is bound to a socket of its own, the only relay endpoint its sandbox
        // gets, so a token learnt from another session is refused there.
        let relay = &self.shared.relay;
        let token = if !relay.has_credential() {
            None
        } else if self.shared.settings.isolation.is_some() {
            Some(relay.issue_bound(self.id(), &self.record.user_id).map_err(|e| {
                tracing::error!(session.id = %self.id(), error = %e, "no relay socket for the session's agent");
                StartFailure::Unavailable("the agent's model relay could not be prepared; the service log says why".into())
            })?)
        } else {
            Some(relay.issue(self.id(), &self.record.user_id))
        };
        let access = token.as_ref().map(|t| TokenAccess {
            secret: t.secret().to_string(),
            socket: t.socket().map(std::path::Path::to_path_buf),
            proxy_socket: t.egress_socket().map(std::path::Path::to_path_buf),
        });
        let shared = self.shared.clone();
        let record = self.record.clone();
        // Directory checks, the MCP file and the cgroup are file system work: off the workers.
        let prepared =
            tokio::task::spawn_blocking(move || shared.prepare_spawn(&record, cli, version, uid, access))
                .await
                .map_err(|e| StartFailure::Unavailable(format!("cannot prepare the agent: {e}")))?;
        let (spec, cwd_dir, cgroup, identity) = prepared.map_err(StartFailure::Unavailable)?;
        if spec.resume {
            tracing::debug!(session.id = %self.id(), "resuming the agent's transcript");
        }
        // Spawned from this task (a worker thread), never from a blocking thread: see launch.rs.
        let features = spec.features;
        let coalesce = self.shared.settings.stream_coalesce;
        AgentProcess::spawn(
            self.shared.launcher.as_ref(),
            &spec,
            cwd_dir,
            cgroup,
            identity,
            coalesce,
        )
        .map(|process| {
            let agent = Agent {
                process,
                _token: token,
            };
            (agent, features)
        })
        .map_err(|e| {
            tracing::error!(session.id = %self.id(), error = %e, "cannot start the agent");
            StartFailure::Unavailable(
                "the Claude Code CLI could not be started; the service log says why".into(),
            )
        })
    }

    async fn on_output(&mut self, output: Option<Output>) {
        match output {
            Some(Output::Message(message)) => {
                // Anything printed shows the CLI is up: the start slot can go to the next one.
                if self.start_permit.is_some() && self.init_request.is_none() {
                    self.start_permit = None;
                }
                self.on_message(message).await;
            }
            Some(Output::Exited(exit)) => self.on_exit(exit).await,
            None => self.on_exit(ExitInfo::UNKNOWN).await,
        }
    }

    async fn on_message(&mut self, message: AgentMessage) {
        match message {
            AgentMessage::ControlRequest { request_id, request } => {
                let answer = self.policy.answer_line(&request_id, &request);
                if let Some(process) = &self.process {
                    process.write_line(&answer);
                }
            }
            AgentMessage::TranscriptMirror { file_path, lines } => {
                // Kept whenever it comes (a last line may follow the turn's result).
                let config_dir = self.shared.config_dir(&self.record.user_id);
                match std::path::Path::new(&file_path).strip_prefix(&config_dir) {
                    Ok(path) => self.stream.transcript(path.display().to_string(), lines).await,
                    Err(_) => {
                        tracing::warn!(session.id = %self.id(), "the agent's transcript is outside its config dir; not kept")
                    }
                }
            }
            AgentMessage::ControlResponse { request_id, outcome } => {
                if self.init_request.as_deref() == Some(request_id.as_str()) {
                    self.init_request = None;
                    self.start_permit = None;
                    match outcome {
                        Err(e) => {
                            tracing::warn!(session.id = %self.id(), error = %e, "the agent refused initialize")
                        }
                        Ok(answer) => {
                            if answer["mcp_servers_applied"] == false {
                                tracing::warn!(session.id = %self.id(), "the agent did not apply the MCP servers sent in initialize");
                            }
                            // Features of a running CLI come from what it says it can do.
                            let capabilities = answer["capabilities"].as_array();
                            self.cancel_queued = capabilities
                                .is_some_and(|c| c.iter().any(|c| c == "interrupt_cancel_queued_v1"));
                        }
                    }
                }
            }
            message => {
                let Some(turn) = self.turn.as_mut().filter(|t| t.phase == Phase::Running) else {
                    // Between turns nothing is expected; nothing of one turn reaches the next.
                    return;
                };
                turn.last_output = Instant::now();
                if let AgentMessage::Result(result) = &message {
                    self.cost_total = result.total_cost_usd;
                    if let Some(index) = result.result_index {
                        if let Some(last) = self.last_result_index
                            && index != last + 1
                        {
                            tracing::warn!(session.id = %self.record.session_id, result.index = index, result.previous = last, "the agent lost a result");
                        }
                        self.last_result_index = Some(index);
                    }
                }
                if let AgentMessage::Other(value) = &message {
                    turn.tracker.note_output();
                    note_unusual(self.record.session_id, value);
                    return;
                }
                if let AgentMessage::ApiRetry {
                    attempt,
                    max_retries,
                    delay_ms,
                    status,
                } = &message
                {
                    tracing::warn!(session.id = %self.record.session_id, retry.attempt = attempt, retry.max = max_retries,
                        retry.delay_ms = delay_ms, retry.status = ?status, "the model API failed; the agent retries");
                }
                let id = turn.id;
                for event in turn.tracker.on_message(message) {
                    if event.is_terminal() {
                        self.finish_turn(event).await;
                        return;
                    }
                    if let TurnEvent::ToolUse {
                        name,
                        input,
                        id: call,
                    } = &event
                    {
                        self.audit_tool(name, input, call);
                    }
                    if let TurnEvent::TextDelta(_) = &event
                        && let Some(turn) = self.turn.as_mut()
                        && !std::mem::replace(&mut turn.first_delta, true)
                    {
                        crate::telemetry::turn_first_delta(turn.began.elapsed());
                    }
                    self.stream.publish(id, event).await;
                }
            }
        }
    }

    async fn on_exit(&mut self, exit: ExitInfo) {
        let Some(process) = self.process.take() else {
            return;
        };
        // Processes the service stops or kills are taken before they exit: this one went on its
        // own (a turn stopped by the service is the one exception that may end this way).
        if self
            .turn
            .as_ref()
            .is_none_or(|t| t.tracker.stop_reason().is_none())
        {
            crate::telemetry::agent_crashed();
        }
        let stderr = process.stderr_tail();
        // Whatever its tools left running dies before the session goes on.
        process.kill().await;
        self.status.live.store(false, Ordering::Release);
        self.start_permit = None;
        self.init_request = None;
        let Some(turn) = self.turn.as_mut() else {
            tracing::warn!(session.id = %self.record.session_id, agent.exit = %exit, agent.stderr = %stderr, "agent had exited while idle");
            return;
        };
        if turn.phase != Phase::Running {
            // It died before it had the message; a new one will be started for it.
            if turn.phase == Phase::Starting && !self.starting {
                self.begin_start(true);
            }
            return;
        }
        let stopped = turn.tracker.stop_reason().is_some();
        let silent = !stopped && !turn.tracker.has_seen_output();
        // A CLI that dies without printing anything for this turn never began it (killed or
        // crashed while idle, or as the message was written): hand the message to a new one.
        if silent && turn.attempts < MAX_SILENT_ATTEMPTS {
            tracing::warn!(session.id = %self.record.session_id, agent.exit = %exit, agent.stderr = %stderr, "agent died before the turn began; retrying on a fresh process");
            turn.phase = Phase::Starting;
            self.begin_start(true);
            return;
        }
        if !stopped {
            tracing::error!(session.id = %self.record.session_id, agent.exit = %exit, agent.stderr = %stderr, "agent died mid-turn");
        }
        let terminal = turn.tracker.on_exit(exit);
        self.finish_turn(terminal).await;
    }

    /// Records a tool call of the running turn in the audit log: its name and a digest of its
    /// input, never the input.
    fn audit_tool(&self, name: &str, input: &serde_json::Value, call: &str) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        self.shared.audit.session_act(
            "tool.used",
            &turn.caller,
            &self.record.user_id,
            self.record.session_id,
            serde_json::json!({
                "turn_id": turn.id.to_string(),
                "tool": name,
                "tool_use_id": call,
                "input_sha256": crate::audit::input_digest(input),
            }),
        );
    }

    /// Records the turn, then publishes its terminal event (so a client that sees `done` also
    /// sees the new message count) and frees the session for the next message.
    async fn finish_turn(&mut self, terminal: TurnEvent) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        let id = self.id();
        if let TurnEvent::Error { code, message, .. } = &terminal {
            tracing::warn!(session.id = %id, turn.id = %turn.id, error.code = code.as_str(), error.message = %message, "turn failed");
        }
        let deleted = turn.tracker.stop_reason() == Some(TurnErrorCode::SessionDeleted);
        let terminal = self.metered(turn.id, terminal).await;
        let terminal_code = match &terminal {
            TurnEvent::Error { code, .. } => Some(*code),
            _ => None,
        };
        let record = self.finished_record(&turn, &terminal);
        let status = record.status;
        // One transaction: the turn's last events, its record, and the session's new activity.
        let (event, exists) = self.stream.finish(record, terminal).await;
        // Queued, never waited for; after the turn is stored, so a receiver that reads it finds it.
        self.shared
            .webhooks
            .turn_ended(&self.record, turn.id, status, &event.event);
        // Deleted or expired while the turn ran: nothing of it may stay behind.
        let gone = !exists && !deleted;
        let outcome = match &terminal_code {
            Some(code) => code.as_str(),
            None => "done",
        };
        crate::telemetry::turn_finished(&self.record.user_id, outcome, turn.began.elapsed());
        tracing::debug!(turn.outcome = outcome, "turn finished");
        // Idle before the client hears of the end: its next request (here, or a start elsewhere
        // looking for an idle agent to evict) finds the session as it now is.
        self.last_used = Instant::now();
        self.status.touch();
        self.status.busy.store(false, Ordering::Release);
        // The user's turn slot is given back (with the turn) before the client hears of the end.
        let done = turn.done.take();
        drop(turn);
        if let Some(done) = done {
            let _ = done.send(event);
        }
        if gone {
            // Closed by the main loop (closing from here would recurse through the turn's end).
            self.doomed = true;
        }
    }

    /// The turn's terminal event with what the relay metered: the tokens and cost of its model
    /// requests (priced by the service, not the CLI's estimate), and `budget_exceeded` when the
    /// relay refused a request for its budget. Unchanged where no request went through the relay.
    async fn metered(&self, turn: TurnId, terminal: TurnEvent) -> TurnEvent {
        let token = self.process.as_ref().and_then(|p| p._token.as_ref());
        let Some(metered) = self.shared.relay.settle_turn(token, turn, SETTLE_PATIENCE).await else {
            return terminal;
        };
        let cost = crate::domain::nanos_to_usd(metered.cost_nanos);
        let apply = |outcome: &mut crate::domain::TurnOutcome| {
            outcome.usage = metered.usage.clone();
            outcome.total_cost_usd = cost;
        };
        match (terminal, metered.refusal) {
            (TurnEvent::Done(mut outcome), None) => {
                apply(&mut outcome);
                TurnEvent::Done(outcome)
            }
            (
                TurnEvent::Error {
                    code,
                    message,
                    mut partial,
                },
                None,
            ) => {
                apply(&mut partial);
                TurnEvent::Error {
                    code,
                    message,
                    partial,
                }
            }
            (TurnEvent::Done(mut partial) | TurnEvent::Error { mut partial, .. }, Some(refusal)) => {
                apply(&mut partial);
                partial.budget_refusal = Some(refusal.clone());
                TurnEvent::Error {
                    code: TurnErrorCode::BudgetExceeded,
                    message: format!("budget exceeded: {refusal}"),
                    partial,
                }
            }
            (other, _) => other,
        }
    }

    /// The record of a turn that ended with `terminal`.
    fn finished_record(&self, turn: &Turn, terminal: &TurnEvent) -> TurnRecord {
        let (status, error_code, outcome) = match terminal {
            TurnEvent::Done(outcome) => (TurnStatus::Completed, None, Some(outcome)),
            TurnEvent::Error { code, partial, .. } => (
                match code {
                    TurnErrorCode::Interrupted | TurnErrorCode::SessionDeleted => TurnStatus::Interrupted,
                    TurnErrorCode::TurnTimeout => TurnStatus::TimedOut,
                    _ => TurnStatus::Failed,
                },
                Some(code.as_str().to_string()),
                Some(partial),
            ),
            _ => (TurnStatus::Failed, None, None),
        };
        let outcome = outcome.cloned().unwrap_or_default();
        TurnRecord {
            turn_id: turn.id,
            session_id: self.record.session_id,
            user_message: turn.message.clone(),
            status,
            error_code,
            tool_calls: serde_json::to_value(&outcome.tool_calls).unwrap_or_default(),
            text: outcome.text,
            usage: outcome.usage,
            cost_usd: outcome.total_cost_usd,
            started_at: turn.started_at,
            finished_at: Some(Utc::now()),
        }
    }

    /// Ends a turn that has not reached the CLI yet.
    async fn fail_waiting_turn(&mut self, code: TurnErrorCode, message: String) {
        if self.turn.as_ref().is_some_and(|t| t.phase != Phase::Running) {
            self.finish_turn(TurnEvent::Error {
                code,
                message,
                partial: Default::default(),
            })
            .await;
        }
    }

    /// Stops the running turn for `code`: at once if the CLI does not have it yet, else by an
    /// interrupt, with a kill if the CLI does not end the turn within the grace.
    async fn stop_turn(&mut self, code: TurnErrorCode) -> bool {
        let Some(turn) = self.turn.as_mut() else {
            return false;
        };
        turn.tracker.stopped_by(code);
        if turn.phase != Phase::Running {
            let message = match code {
                TurnErrorCode::TurnTimeout => "timed out before the agent could take the message".to_string(),
                _ => "stopped before it started".to_string(),
            };
            self.finish_turn(TurnEvent::Error {
                code,
                message,
                partial: Default::default(),
            })
            .await;
            return true;
        }
        if turn.kill_at.is_none() {
            turn.kill_at = Some(Instant::now() + INTERRUPT_GRACE);
            if let Some(process) = self.process.as_mut() {
                let mut interrupt = json!({"subtype": "interrupt"});
                if self.cancel_queued {
                    // Nothing queued behind the turn may start after it was stopped.
                    interrupt["cancel_queued"] = json!(true);
                }
                process.request(interrupt);
            }
        }
        true
    }

    /// Kills the CLI and everything it started now; the running turn ends with its stop reason.
    async fn kill_process(&mut self) {
        if let Some(process) = self.process.take() {
            tracing::warn!(session.id = %self.id(), agent.pid = process.pid(), "killing the agent");
            process.kill().await;
        }
        self.status.live.store(false, Ordering::Release);
        self.start_permit = None;
        self.init_request = None;
        if let Some(turn) = self.turn.as_mut()
            && turn.phase == Phase::Running
        {
            let terminal = turn.tracker.on_exit(ExitInfo {
                code: None,
                signal: Some(9),
            });
            self.finish_turn(terminal).await;
        }
    }

    /// Stops an idle CLI gracefully (it flushes its transcript; the next turn resumes it).
    async fn stop_process(&mut self, why: &'static str) {
        if let Some(process) = self.process.take() {
            tracing::info!(session.id = %self.id(), agent.pid = process.pid(), reason = why, "stopping agent");
            process.stop(STOP_GRACE).await;
        }
        self.status.live.store(false, Ordering::Release);
        self.start_permit = None;
        self.init_request = None;
    }

    fn next_wake(&self) -> Option<Instant> {
        let settings = &self.shared.settings;
        match &self.turn {
            Some(turn) => {
                let silence = match (settings.silence_timeout, turn.phase) {
                    // A running tool may legitimately print nothing for long (a build, tests):
                    // the turn deadline bounds it instead.
                    (Some(limit), Phase::Running) if !turn.tracker.tool_running() => {
                        Some(turn.last_output + limit)
                    }
                    _ => None,
                };
                let deadline = turn.deadline.filter(|_| turn.kill_at.is_none());
                [deadline, silence.filter(|_| turn.kill_at.is_none()), turn.kill_at]
                    .into_iter()
                    .flatten()
                    .min()
            }
            None if self.process.is_some() => Some(self.last_used + settings.idle_timeout),
            None => None,
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let settings = &self.shared.settings;
        let Some(turn) = self.turn.as_mut() else {
            if self.process.is_some() && now >= self.last_used + settings.idle_timeout {
                self.stop_process("idle").await;
            }
            return;
        };
        if turn.kill_at.is_some_and(|at| now >= at) {
            tracing::warn!(session.id = %self.record.session_id, "agent ignored the interrupt");
            self.kill_process().await;
            return;
        }
        if turn.kill_at.is_none() && turn.deadline.is_some_and(|at| now >= at) {
            self.stop_turn(TurnErrorCode::TurnTimeout).await;
            return;
        }
        if let Some(limit) = settings.silence_timeout
            && turn.kill_at.is_none()
            && turn.phase == Phase::Running
            && !turn.tracker.tool_running()
            && now >= turn.last_output + limit
        {
            tracing::warn!(session.id = %self.record.session_id, silent_for = ?limit, "the agent printed nothing for too long");
            turn.tracker.stopped_by(TurnErrorCode::AgentUnresponsive);
            self.kill_process().await;
        }
    }

    /// Closes the session: no process can be started for it afterwards.
    async fn close(&mut self, why: Close) {
        if self.closed {
            return;
        }
        match why {
            Close::Deleted => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.tracker.stopped_by(TurnErrorCode::SessionDeleted);
                }
                self.kill_process().await;
                // A turn that never reached the CLI ends too.
                self.fail_waiting_turn(TurnErrorCode::SessionDeleted, "the session was deleted".into())
                    .await;
                let config_dir = self.shared.config_dir(&self.record.user_id);
                let id = self.id();
                let removed =
                    tokio::task::spawn_blocking(move || remove_session_files(&config_dir, id)).await;
                if let Err(e) = removed {
                    tracing::warn!(session.id = %id, error = %e, "cannot remove the session's files");
                }
            }
            Close::Shutdown => {
                if self.turn.is_some() {
                    self.stop_turn(TurnErrorCode::ServiceShutdown).await;
                    self.drain_turn(Instant::now() + INTERRUPT_GRACE).await;
                    if self.turn.is_some() {
                        self.kill_process().await;
                    }
                }
                self.stop_process("shutdown").await;
            }
        }
        self.closed = true;
    }

    /// Lets the running turn end on its own until `until`.
    async fn drain_turn(&mut self, until: Instant) {
        while self.turn.is_some() && self.process.is_some() {
            tokio::select! {
                output = next_output(&mut self.process) => self.on_output(output).await,
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }
}

/// A running CLI process and the relay token it was given: the token lives exactly as long as the
/// process, so however the process ends (stopped, killed, exited, or the actor dropped) its token
/// is revoked with it.
struct Agent {
    process: AgentProcess,
    /// Dropped after the process (fields drop in order): revoked once nothing of it runs.
    _token: Option<RelayToken>,
}

impl Agent {
    /// Stops the CLI gracefully; then its token is revoked.
    async fn stop(self, grace: Duration) {
        let Agent { process, _token } = self;
        process.stop(grace).await;
    }

    /// Kills the CLI and everything it started; then its token is revoked.
    async fn kill(self) {
        let Agent { process, _token } = self;
        process.kill().await;
    }
}

impl std::ops::Deref for Agent {
    type Target = AgentProcess;

    fn deref(&self) -> &AgentProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.process
    }
}

enum StartFailure {
    /// The session no longer exists.
    Gone,
    /// The CLI cannot be started, and why (for the client).
    Unavailable(String),
}

/// What a new process is given of its relay token.
pub(super) struct TokenAccess {
    /// The token itself.
    secret: String,
    /// A bound token's own socket.
    socket: Option<std::path::PathBuf>,
    /// A bound token's own egress proxy socket.
    proxy_socket: Option<std::path::PathBuf>,
}

/// The spec, working directory and cgroup for starting a session's CLI (blocking file work).
pub(super) fn prepare(
    shared: &Shared,
    record: &SessionRecord,
    cli: std::path::PathBuf,
    cli_version: Option<String>,
    uid: Option<u32>,
    access: Option<TokenAccess>,
) -> Result<
    (
        SpawnSpec,
        std::os::fd::OwnedFd,
        Option<crate::agent::cgroup::SessionCgroup>,
        Option<crate::agent::Identity>,
    ),
    String,
> {
    let settings = &shared.settings;
    let (token, socket, proxy_socket) =
        access.map_or((None, None, None), |a| (Some(a.secret), a.socket, a.proxy_socket));
    let config_dir = shared.config_dir(&record.user_id);
    super::create_private_dir(&config_dir).map_err(|e| {
        tracing::error!(path = %config_dir.display(), error = %e, "cannot create the agent's config dir");
        "cannot prepare the agent's state directory".to_string()
    })?;
    // A workspace lost with its disk comes back empty (where user.auto_create_dir allows it): the
    // conversation itself is restored from the store.
    let _ = shared
        .workspaces
        .resolve(&record.user_id, record.subdir.as_deref());
    let cwd_dir = shared
        .workspaces
        .open(&record.user_id, record.subdir.as_deref())
        .map_err(|e| {
            tracing::error!(session.id = %record.session_id, error = %e, "cannot open the session's working directory");
            "the session's working directory cannot be opened".to_string()
        })?;
    let features = CliFeatures::of(cli_version.as_deref());
    let runtime_dir = config_dir.join("run");
    super::create_private_dir(&runtime_dir).map_err(|e| {
        tracing::error!(path = %runtime_dir.display(), error = %e, "cannot create the agent's runtime dir");
        "cannot prepare the agent's state directory".to_string()
    })?;
    // A CLI that takes MCP servers in `initialize` gets them there (see `initialize_request`).
    let mcp_config = if settings.mcp_servers.is_empty() || features.await_initialize {
        None
    } else {
        let path = config_dir.join("mcp-servers.json");
        write_private(&path, mcp_config_json(&settings.mcp_servers).as_bytes()).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot write the MCP configuration");
            "cannot prepare the agent's MCP configuration".to_string()
        })?;
        Some(path)
    };
    let cgroup = match &shared.cgroups {
        // One cgroup per process, not per session: the cleanup of a previous process of this
        // session (killing its members, removing its directory) must never meet the new one.
        Some(root) => match root.session(&format!("{}.{}", record.session_id, next_cgroup_number())) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                tracing::warn!(session.id = %record.session_id, error = %e, "no cgroup for this session; falling back to the process marker");
                None
            }
        },
        None => None,
    };
    let identity = match uid {
        Some(uid) => Some(hand_to_user(shared, record, &config_dir, uid)?),
        None => None,
    };
    if let (Some(isolation), Some(cgroup)) = (&settings.isolation, &cgroup) {
        cgroup.limit(&isolation.limits).map_err(|e| {
            tracing::error!(session.id = %record.session_id, error = %e, "cannot limit the session's cgroup");
            "cannot limit the agent's resources".to_string()
        })?;
    }
    let mut env = settings.inherited.env.clone();
    env.extend(settings.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = SpawnSpec {
        cli,
        session: record.session_id,
        resume: has_transcript(&config_dir, record.session_id),
        cwd: record.cwd.clone(),
        home: shared.workspaces.path_of(&record.user_id, None),
        config_dir,
        options: record.options.clone(),
        mcp_config,
        runtime_dir,
        env,
        model: ModelAccess {
            base_url: shared.relay.base_url().to_string(),
            proxy: settings
                .egress_proxy
                .zip(token.as_deref())
                .map(|(address, token)| crate::relay::proxy_url(address, token)),
            token,
            socket,
            proxy_socket,
        },
        // Always set: with a cgroup it only helps people (and tests) find a session's processes.
        marker: true,
        features,
    };
    Ok((spec, cwd_dir, cgroup, identity))
}

/// Hands the user's workspace (root down to the session's directory) and CLI state to `uid` (the
/// gid is the same number), and opens both trees by descriptor for the sandbox.
fn hand_to_user(
    shared: &Shared,
    record: &SessionRecord,
    config_dir: &std::path::Path,
    uid: u32,
) -> Result<crate::agent::Identity, String> {
    let gid = uid;
    let home = shared
        .workspaces
        .own(&record.user_id, record.subdir.as_deref(), uid, gid)
        .map_err(|e| {
            tracing::error!(session.id = %record.session_id, error = %e, "cannot hand the workspace to the user's uid");
            "cannot prepare the session's working directory".to_string()
        })?;
    let state = rustix::fs::open(
        config_dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .and_then(|fd| {
        // The CLI state is small and the service writes into it (restored transcripts, the MCP
        // file): everything in it is handed over at every start.
        let walk = rustix::fs::openat(&fd, ".", rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
        crate::workspace::owner::own_tree(walk, uid, gid)?;
        Ok(fd)
    })
    .map_err(|e| {
        tracing::error!(session.id = %record.session_id, path = %config_dir.display(), error = %e, "cannot hand the CLI state to the user's uid");
        "cannot prepare the agent's state directory".to_string()
    })?;
    // The MCP servers' programs and scripts named by absolute path (operator configuration).
    let read_only = shared
        .settings
        .mcp_servers
        .values()
        .flat_map(|server| {
            let command = server["command"].as_str().into_iter();
            let args = server["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str());
            command.chain(args).map(str::to_string).collect::<Vec<_>>()
        })
        .map(std::path::PathBuf::from)
        .filter(|path| path.is_absolute())
        .collect();
    Ok(crate::agent::Identity {
        uid,
        gid,
        read_only,
        trees: vec![
            (shared.workspaces.path_of(&record.user_id, None), home),
            (config_dir.to_path_buf(), state),
        ],
    })
}

/// Writes `saved` to its file under `config_dir` unless the file already has as many lines; true
/// if it wrote.
fn restore_transcript_file(
    config_dir: &std::path::Path,
    saved: &crate::store::Transcript,
) -> std::io::Result<bool> {
    let relative = std::path::Path::new(&saved.path);
    // Only a plain relative path below the config dir.
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(std::io::Error::other(
            "the stored transcript path is not below the config dir",
        ));
    }
    let path = config_dir.join(relative);
    let local = std::fs::read_to_string(&path)
        .map(|text| text.lines().count())
        .unwrap_or(0);
    if local >= saved.lines.len() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        super::create_private_dir(parent)?;
    }
    let mut text = saved.lines.join("\n");
    text.push('\n');
    write_private(&path, text.as_bytes())?;
    Ok(true)
}

fn next_cgroup_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// Removes what the CLI kept about a session: its transcript and side files under the user's
/// config dir, and its scratch output under the temp dir (`/tmp/claude-<uid>/…<session>…`).
fn remove_session_files(config_dir: &std::path::Path, session: SessionId) {
    let mut paths = session_files(config_dir, session);
    let scratch = std::env::temp_dir().join(format!("claude-{}", rustix::process::getuid().as_raw()));
    paths.extend(session_files(&scratch, session));
    for path in paths {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(session.id = %session, path = %path.display(), error = %e, "cannot remove session file");
        }
    }
}

/// Logs the messages a client cannot act on but an operator must know about.
fn note_unusual(session: SessionId, value: &serde_json::Value) {
    match (value["type"].as_str(), value["subtype"].as_str()) {
        (Some("system"), Some("session_writes_lost")) => tracing::error!(
            session.id = %session,
            "the agent could not write its transcript (disk full or quota): this turn will be missing after a resume"
        ),
        (Some("conversation_reset"), _) => tracing::warn!(
            session.id = %session,
            new_conversation = %value["new_conversation_id"],
            "the agent reset its conversation"
        ),
        _ => {}
    }
}

async fn next_output(process: &mut Option<Agent>) -> Option<Output> {
    match process {
        Some(process) => process.next_output().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
