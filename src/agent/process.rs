//! One Claude Code CLI process, owned: spawning it with the session's flags and a scrubbed
//! environment, writing stdin lines, reading stdout line by line (a bad line is logged and skipped),
//! always draining stderr (its tail is kept for the log), answering the CLI's permission requests
//! by policy, and stopping it as a sequence (end_session, close stdin, wait, SIGTERM, SIGKILL) that
//! leaves none of its processes behind.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{self, AgentMessage};
use super::tree;
use super::turn::TurnTracker;
use crate::config::PermissionMode;
use crate::domain::{AgentOptions, SessionId, TurnErrorCode, TurnEvent};

/// Lines of stderr kept for the log when a process fails.
const STDERR_TAIL_LINES: usize = 40;

/// A process-level failure.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The CLI could not be started.
    #[error("cannot start the Claude Code CLI: {0}")]
    Spawn(std::io::Error),
    /// The CLI's stdin is closed (it exited).
    #[error("the agent process is gone")]
    Gone,
    /// A control request got no answer in time.
    #[error("the agent did not answer {0} in time")]
    Timeout(&'static str),
    /// The CLI refused a control request.
    #[error("the agent refused {subtype}: {message}")]
    Refused {
        /// Which request.
        subtype: &'static str,
        /// What the CLI said.
        message: String,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "signal {signal}"),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// What the process reports to the turn that runs on it; `Exited` is always last.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The turn ended: its terminal event, and the CLI's running cost total if it reported one.
    Finished {
        /// The turn's terminal event (`Done` or `Error`).
        terminal: TurnEvent,
        /// The CLI's running cost total, from the `result` message.
        cost_total: Option<f64>,
    },
    /// The process exited.
    Exited(ExitInfo),
}

/// The running turn, as the stdout reader sees it: the reader translates each message as it
/// arrives and sends client events straight to the turn's client (one task hop fewer per token),
/// and hands the terminal event to the turn. Messages that arrive with no turn running are dropped,
/// so nothing of one turn can reach the next.
struct TurnSink {
    tracker: TurnTracker,
    client: mpsc::UnboundedSender<TurnEvent>,
}

type SharedSink = Arc<Mutex<Option<TurnSink>>>;

/// Everything needed to start the CLI for one session.
pub struct SpawnSpec<'a> {
    /// The `claude` executable.
    pub cli: &'a Path,
    /// The session (the CLI's `--session-id`).
    pub session: SessionId,
    /// Continue an existing transcript (`--resume`) instead of starting one (`--session-id`).
    pub resume: bool,
    /// The working directory's path (for `PWD`).
    pub cwd: &'a Path,
    /// The working directory, opened without following links; the child changes into it by descriptor.
    pub cwd_dir: OwnedFd,
    /// The user's own `CLAUDE_CONFIG_DIR`.
    pub config_dir: &'a Path,
    /// The agent's `HOME`: the user's directory.
    pub home: &'a Path,
    /// The session's agent options (flags and permission policy).
    pub options: &'a AgentOptions,
    /// Extra environment variables (`defaults.env`).
    pub extra_env: &'a BTreeMap<String, String>,
}

/// Variables passed through from the service's environment; nothing else leaks into the agent.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
];

/// The command-line arguments for a session (flags per the protocol reference, equals forms so no
/// value can be read as a flag).
pub fn cli_args(session: SessionId, resume: bool, options: &AgentOptions) -> Vec<String> {
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
    if !options.mcp_servers.is_empty() {
        args.push(format!(
            "--mcp-config={}",
            json!({"mcpServers": options.mcp_servers})
        ));
    }
    for plugin in &options.plugins {
        args.push(format!("--plugin-dir={}", plugin.path().display()));
    }
    args
}

/// Who may use which tool: the answer to the CLI's `can_use_tool` requests.
#[derive(Debug, Clone)]
struct Policy {
    bypass: bool,
    allowed: HashSet<String>,
}

impl Policy {
    fn new(options: &AgentOptions) -> Self {
        Policy {
            bypass: options.permission_mode == PermissionMode::BypassPermissions,
            // Rules with arguments ("Bash(git *)") are applied by the CLI itself; a request that
            // reaches us fell outside them, so only bare tool names grant here.
            allowed: options
                .allowed_tools
                .iter()
                .filter(|t| !t.contains('('))
                .cloned()
                .collect(),
        }
    }

    fn answer(&self, request: &Value) -> Value {
        let tool = request["tool_name"].as_str().unwrap_or_default();
        if self.bypass || self.allowed.contains(tool) {
            json!({"behavior": "allow", "updatedInput": request["input"]})
        } else {
            let mut allowed: Vec<&str> = self.allowed.iter().map(String::as_str).collect();
            allowed.sort_unstable();
            json!({
                "behavior": "deny",
                "message": format!(
                    "The tool {tool} is not allowed by this service's policy (allowed: {}).",
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                ),
                "interrupt": false,
            })
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, String>>>>>;

/// Sends control requests to a process; cheap to clone, usable while a turn reads events.
#[derive(Clone)]
pub struct AgentControl {
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    pending: Pending,
    counter: Arc<AtomicU64>,
}

impl AgentControl {
    async fn write_line(&self, line: &str) -> Result<(), AgentError> {
        let mut stdin = self.stdin.lock().await;
        let pipe = stdin.as_mut().ok_or(AgentError::Gone)?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        pipe.write_all(&bytes).await.map_err(|_| AgentError::Gone)?;
        pipe.flush().await.map_err(|_| AgentError::Gone)
    }

    /// Sends a control request and waits for its answer.
    pub async fn request(&self, subtype: &'static str, wait: Duration) -> Result<Value, AgentError> {
        let id = format!("req_{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id.clone(), tx);
        let sent = self
            .write_line(&protocol::control_request_line(&id, subtype))
            .await;
        let outcome = match sent {
            Ok(()) => match tokio::time::timeout(wait, rx).await {
                Ok(Ok(Ok(value))) => Ok(value),
                Ok(Ok(Err(message))) => Err(AgentError::Refused { subtype, message }),
                Ok(Err(_)) => Err(AgentError::Gone),
                Err(_) => Err(AgentError::Timeout(subtype)),
            },
            Err(e) => Err(e),
        };
        self.pending.lock().expect("pending lock").remove(&id);
        outcome
    }

    /// Asks the CLI to stop the running turn (and its running tool).
    pub async fn interrupt(&self) -> Result<(), AgentError> {
        self.request("interrupt", Duration::from_secs(2)).await.map(drop)
    }

    async fn close_stdin(&self) {
        if let Some(mut pipe) = self.stdin.lock().await.take() {
            let _ = pipe.shutdown().await;
        }
    }
}

/// A live CLI process for one session.
pub struct AgentProcess {
    session: SessionId,
    pid: u32,
    control: AgentControl,
    events: mpsc::UnboundedReceiver<AgentEvent>,
    exit: watch::Receiver<Option<ExitInfo>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The CLI's running cost total, to report each turn's own share.
    cost_total: f64,
    /// Pids of CLI processes whose exit status tokio collects (the orphan reaper must skip them).
    owned_pids: Arc<Mutex<HashSet<u32>>>,
    sink: SharedSink,
}

impl AgentProcess {
    /// Starts the CLI. Nothing is printed by it until the first line is written.
    pub fn spawn(spec: SpawnSpec<'_>, owned_pids: Arc<Mutex<HashSet<u32>>>) -> Result<Self, AgentError> {
        let mut command = Command::new(spec.cli);
        command
            .args(cli_args(spec.session, spec.resume, spec.options))
            .env_clear()
            .envs(
                PASSED_ENV
                    .iter()
                    .filter_map(|name| std::env::var(name).ok().map(|v| (*name, v))),
            )
            .envs(spec.extra_env)
            .env("CLAUDE_CONFIG_DIR", spec.config_dir)
            .env("HOME", spec.home)
            .env("PWD", spec.cwd)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env(tree::SESSION_MARKER, spec.session.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if spec.options.permission_mode == PermissionMode::BypassPermissions
            && rustix::process::geteuid().is_root()
        {
            // The CLI refuses bypassPermissions as root unless told it is sandboxed.
            command.env("IS_SANDBOX", "1");
        }
        let cwd_fd = spec.cwd_dir.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe system calls run: fchdir into the
        // workspace by descriptor (so a link swapped in since it was checked is never followed) and
        // asking the kernel to kill the CLI if the service dies.
        unsafe {
            command.pre_exec(move || {
                let dir = rustix::fd::BorrowedFd::borrow_raw(cwd_fd);
                rustix::process::fchdir(dir)?;
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(AgentError::Spawn)?;
        drop(spec.cwd_dir);
        let pid = child.id().unwrap_or_default();
        owned_pids.lock().expect("pids lock").insert(pid);
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        let control = AgentControl {
            stdin: Arc::new(tokio::sync::Mutex::new(Some(stdin))),
            pending: Arc::new(Mutex::new(HashMap::new())),
            counter: Arc::new(AtomicU64::new(1)),
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let waiter_pids = owned_pids.clone();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            waiter_pids.lock().expect("pids lock").remove(&pid);
            use std::os::unix::process::ExitStatusExt;
            let info = ExitInfo {
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
            };
            let _ = exit_tx.send(Some(info));
        });

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            // Always drain: a CLI whose stderr pipe fills or closes dies on its next write.
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = tail.lock().expect("tail lock");
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let sink: SharedSink = Arc::new(Mutex::new(None));
        let reader_sink = sink.clone();
        let reader_control = control.clone();
        let policy = Policy::new(spec.options);
        let session = spec.session;
        let mut exit_for_reader = exit_rx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                let line = match lines.next_line().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(session.id = %session, error = %e, "agent stdout unreadable");
                        break;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                let message = match protocol::parse_line(&line) {
                    Ok(message) => message,
                    Err(_) => {
                        tracing::debug!(session.id = %session, "skipping a non-JSON line from the agent");
                        continue;
                    }
                };
                match message {
                    AgentMessage::ControlRequest { request_id, request } => {
                        let line = answer_control_request(&policy, &request_id, &request);
                        let _ = reader_control.write_line(&line).await;
                    }
                    AgentMessage::ControlResponse { request_id, outcome } => {
                        let waiter = reader_control
                            .pending
                            .lock()
                            .expect("pending lock")
                            .remove(&request_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(outcome);
                        }
                    }
                    // Nothing downstream reads untyped messages, but they show the turn has begun.
                    AgentMessage::Other(_) => {
                        if let Some(turn) = reader_sink.lock().expect("sink lock").as_mut() {
                            turn.tracker.note_output();
                        }
                    }
                    message => {
                        let cost_total = match &message {
                            AgentMessage::Result(result) => Some(result.total_cost_usd),
                            _ => None,
                        };
                        let mut sink = reader_sink.lock().expect("sink lock");
                        let Some(turn) = sink.as_mut() else { continue };
                        for event in turn.tracker.on_message(message) {
                            if event.is_terminal() {
                                *sink = None;
                                let _ = events_tx.send(AgentEvent::Finished {
                                    terminal: event,
                                    cost_total,
                                });
                                break;
                            }
                            if let Some(turn) = sink.as_ref() {
                                // A client that went away does not stop the turn.
                                let _ = turn.client.send(event);
                            }
                        }
                    }
                }
            }
            let info = loop {
                if let Some(info) = *exit_for_reader.borrow_and_update() {
                    break info;
                }
                if exit_for_reader.changed().await.is_err() {
                    break ExitInfo {
                        code: None,
                        signal: None,
                    };
                }
            };
            reader_control.close_stdin().await;
            let _ = events_tx.send(AgentEvent::Exited(info));
        });

        Ok(AgentProcess {
            session: spec.session,
            pid,
            control,
            events: events_rx,
            exit: exit_rx,
            stderr_tail,
            cost_total: 0.0,
            owned_pids,
            sink,
        })
    }

    /// The CLI's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle for control requests while the turn reads events.
    pub fn control(&self) -> AgentControl {
        self.control.clone()
    }

    /// Starts a turn: its client events go to `client` as the CLI prints them; then writes the
    /// user's message.
    pub async fn start_turn(
        &self,
        text: &str,
        client: mpsc::UnboundedSender<TurnEvent>,
    ) -> Result<(), AgentError> {
        *self.sink.lock().expect("sink lock") = Some(TurnSink {
            tracker: TurnTracker::new(self.cost_total),
            client,
        });
        self.control.write_line(&protocol::user_line(text)).await
    }

    /// Records that the service is stopping the running turn, which decides its error code.
    pub fn stop_turn_as(&self, code: TurnErrorCode) {
        if let Some(turn) = self.sink.lock().expect("sink lock").as_mut() {
            turn.tracker.stopped_by(code);
        }
    }

    /// Whether the CLI has printed nothing yet for the running turn.
    pub fn turn_silent(&self) -> bool {
        self.sink
            .lock()
            .expect("sink lock")
            .as_ref()
            .is_none_or(|t| !t.tracker.has_seen_output())
    }

    /// Whether the service asked the running turn to stop.
    pub fn turn_stopped(&self) -> bool {
        self.sink
            .lock()
            .expect("sink lock")
            .as_ref()
            .is_some_and(|t| t.tracker.stop_reason().is_some())
    }

    /// The terminal event of a turn whose process exited before its result.
    pub fn end_turn_on_exit(&self, exit: ExitInfo) -> TurnEvent {
        let turn = self.sink.lock().expect("sink lock").take();
        turn.map(|t| t.tracker).unwrap_or_default().on_exit(exit)
    }

    /// The next event; `None` once `Exited` was delivered.
    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.events.recv().await
    }

    /// The CLI's running cost total as of its last result.
    pub fn cost_total(&self) -> f64 {
        self.cost_total
    }

    /// Records the running cost total a result reported.
    pub fn set_cost_total(&mut self, total: f64) {
        self.cost_total = total;
    }

    /// The last lines the CLI wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .expect("tail lock")
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether the process is gone: it exited, or it is dead and tokio has not collected it yet.
    pub fn is_gone(&self) -> bool {
        self.has_exited() || !tree::is_alive(self.pid)
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let mut exit = self.exit.clone();
        tokio::time::timeout(limit, exit.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn signal(&self, signal: Signal) {
        if !self.has_exited()
            && let Some(pid) = Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Stops the process: `end_session` and EOF, `grace` to flush its transcript and exit, then
    /// SIGTERM, then SIGKILL; finally every process of the session still alive is killed.
    pub async fn stop(mut self, grace: Duration) {
        let members = self.members();
        if !self.has_exited() {
            let control = self.control.clone();
            // end_session makes the CLI exit at once; EOF does the same for older versions.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let _ = control.request("end_session", Duration::from_millis(400)).await;
            })
            .await;
            control.close_stdin().await;
            if !self.wait_exit(grace).await {
                tracing::warn!(session.id = %self.session, agent.pid = self.pid, "agent ignored EOF; SIGTERM");
                self.signal(Signal::TERM);
                if !self.wait_exit(Duration::from_secs(2)).await {
                    tracing::warn!(session.id = %self.session, agent.pid = self.pid, "agent ignored SIGTERM; SIGKILL");
                    self.signal(Signal::KILL);
                    self.wait_exit(Duration::from_secs(2)).await;
                }
            }
        }
        self.kill_leftovers(members).await;
    }

    /// Kills the process and everything it started at once (the session is being deleted or the
    /// process is unresponsive).
    pub async fn kill(mut self) {
        let members = self.members();
        self.signal(Signal::KILL);
        self.wait_exit(Duration::from_secs(2)).await;
        self.kill_leftovers(members).await;
    }

    /// Sends SIGKILL now; the turn sees the exit as its next event.
    pub fn force_kill(&self) {
        self.signal(Signal::KILL);
    }

    /// Cleans up after a CLI that already died (its tools may still run, adopted by us).
    pub async fn reap_after_crash(self) {
        self.kill_leftovers(HashSet::new()).await;
    }

    fn members(&self) -> HashSet<u32> {
        let mut members: HashSet<u32> = tree::descendants(self.pid).into_iter().collect();
        members.extend(tree::marked(&self.session.to_string()));
        members.remove(&self.pid);
        members
    }

    async fn kill_leftovers(&self, mut members: HashSet<u32>) {
        let session = self.session.to_string();
        for _ in 0..10 {
            members.extend(tree::marked(&session));
            members.remove(&self.pid);
            let owned = self.owned_pids.lock().expect("pids lock").clone();
            members.retain(|pid| !owned.contains(pid));
            let alive: HashSet<u32> = members
                .iter()
                .copied()
                .filter(|pid| tree::is_alive(*pid))
                .collect();
            if alive.is_empty() {
                break;
            }
            tracing::debug!(session.id = %session, count = alive.len(), "killing leftover agent processes");
            tree::kill_all(&alive);
            tokio::time::sleep(Duration::from_millis(20)).await;
            tree::reap_zombie_children(&owned);
        }
    }
}

fn answer_control_request(policy: &Policy, request_id: &str, request: &Value) -> String {
    match request["subtype"].as_str().unwrap_or_default() {
        "can_use_tool" => protocol::control_success_line(request_id, policy.answer(request)),
        // No hooks are registered; answering "continue" keeps a hook from hanging the turn.
        "hook_callback" => protocol::control_success_line(request_id, json!({})),
        other => protocol::control_error_line(request_id, &format!("unsupported control request: {other}")),
    }
}

/// The files the CLI keeps about one session inside a config dir (transcripts, todos, env).
pub fn session_files(config_dir: &Path, session: SessionId) -> Vec<PathBuf> {
    fn walk(dir: &Path, prefix: &str, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(prefix) {
                found.push(entry.path());
            } else if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), prefix, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(config_dir, &session.to_string(), 3, &mut found);
    found
}

/// Whether the CLI has a transcript for this session (so it must be resumed, not started).
pub fn has_transcript(config_dir: &Path, session: SessionId) -> bool {
    let name = format!("{session}.jsonl");
    std::fs::read_dir(config_dir.join("projects"))
        .map(|dirs| dirs.flatten().any(|dir| dir.path().join(&name).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn args_carry_the_session_options_in_equals_form() {
        let mut options = AgentOptions::from_config(&Config::default());
        options.system_prompt = Some("--evil".into());
        options.max_turns = Some(3);
        let id = SessionId::new();
        let args = cli_args(id, false, &options);
        assert!(args.contains(&format!("--session-id={id}")));
        assert!(args.contains(&"--system-prompt=--evil".to_string()));
        assert!(args.contains(&"--max-turns=3".to_string()));
        assert!(args.contains(&"--include-partial-messages".to_string()));
        let resumed = cli_args(id, true, &options);
        assert!(resumed.contains(&format!("--resume={id}")));
        assert!(!resumed.iter().any(|a| a.starts_with("--session-id")));
    }

    #[test]
    fn policy_allows_listed_tools_and_explains_denials() {
        let mut options = AgentOptions::from_config(&Config::default());
        options.allowed_tools = vec!["Read".into(), "Bash(git *)".into()];
        let policy = Policy::new(&options);
        let allow = policy.answer(&json!({"tool_name": "Read", "input": {"file_path": "x"}}));
        assert_eq!(allow["behavior"], "allow");
        assert_eq!(allow["updatedInput"], json!({"file_path": "x"}));
        let deny = policy.answer(&json!({"tool_name": "Bash", "input": {"command": "rm -rf /"}}));
        assert_eq!(deny["behavior"], "deny");
        assert!(deny["message"].as_str().unwrap().contains("Bash"));
        options.permission_mode = PermissionMode::BypassPermissions;
        assert_eq!(
            Policy::new(&options).answer(&json!({"tool_name": "Bash"}))["behavior"],
            "allow"
        );
    }
}
