//! One Claude Code CLI process, owned by exactly one value: `AgentProcess`. It has a single stdin
//! writer (a task fed by a queue, so nobody ever awaits the pipe while holding anything), a stdout
//! reader that parses lines into typed messages (a bad line is logged and skipped) and hands them
//! to the owner on a bounded channel, and a stderr drain that keeps the tail for the log.
//! Dropping it kills the session's every process (its cgroup, or its process group and marked
//! processes where no cgroup exists); `stop` is the graceful way (end_session, EOF, grace,
//! SIGTERM, SIGKILL) that lets the CLI flush its transcript first.
//! It decides nothing about turns or permissions: the owner does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::cgroup::SessionCgroup;
use super::command::SpawnSpec;
use super::launch::{Launch, LaunchError, Launcher};
use super::protocol::{self, AgentMessage};
use super::tree;
use crate::domain::SessionId;

/// Lines of stderr kept for the log when a process fails.
const STDERR_TAIL_LINES: usize = 40;
/// Messages read ahead of the owner; beyond this the CLI waits (its stdout pipe fills).
const OUTPUT_BUFFER: usize = 256;
/// How long stdout is still read after the CLI exited (a tool may hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// An exit whose status is unknown.
    pub const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
    };
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

/// What the process reports to its owner, in order; `Exited` is always last.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A message the CLI printed (consecutive text deltas that arrived together are one).
    Message(AgentMessage),
    /// The process exited (and its stdout was read to the end, or for a short while after).
    Exited(ExitInfo),
}

/// A live CLI process for one session.
pub struct AgentProcess {
    session: SessionId,
    pid: u32,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    output: mpsc::Receiver<Output>,
    exit: watch::Receiver<Option<ExitInfo>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    cgroup: Option<SessionCgroup>,
    /// Where the CLI keeps `sessions/<pid>.json` while it runs (left behind when it is killed).
    config_dir: std::path::PathBuf,
    /// Leftovers have been killed (by `kill` or `stop`).
    cleaned: bool,
    next_request: u64,
}

impl AgentProcess {
    /// Starts the CLI in `cgroup` (or, without one, in its own process group with the session
    /// marker). Nothing is printed by it until the first line is written.
    pub fn spawn(
        launcher: &dyn Launcher,
        spec: &SpawnSpec,
        cwd_dir: std::os::fd::OwnedFd,
        cgroup: Option<SessionCgroup>,
        identity: Option<super::launch::Identity>,
        coalesce: Duration,
    ) -> Result<Self, LaunchError> {
        let mut child = launcher.launch(Launch {
            command: spec.command_line(),
            cwd: spec.cwd.clone(),
            cwd_dir,
            cgroup: cgroup.as_ref(),
            identity,
            relay_socket: spec.model.socket.clone(),
            egress_socket: spec.model.proxy_socket.clone(),
        })?;
        let pid = child.id().unwrap_or_default();
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait().await.ok();
            let _ = exit_tx.send(Some(ExitInfo {
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
            }));
        });

        let (stdin_tx, mut stdin_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            // The only writer of stdin. Its queue is unbounded because only the owner feeds it,
            // a line per user message or control exchange; a full pipe must never block the owner
            // (who also drains stdout: blocking here could deadlock with a CLI blocked writing).
            let mut stdin = stdin;
            while let Some(line) = stdin_rx.recv().await {
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
            let _ = stdin.shutdown().await;
        });

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(drain_stderr(stderr, stderr_tail.clone()));

        let (output_tx, output_rx) = mpsc::channel(OUTPUT_BUFFER);
        tokio::spawn(read_stdout(
            stdout,
            output_tx,
            exit_rx.clone(),
            spec.session,
            coalesce,
        ));

        Ok(AgentProcess {
            session: spec.session,
            pid,
            stdin: Some(stdin_tx),
            output: output_rx,
            exit: exit_rx,
            stderr_tail,
            cgroup,
            config_dir: spec.config_dir.clone(),
            cleaned: false,
            next_request: 1,
        })
    }

    /// The CLI's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Queues one line for stdin; false if stdin is closed.
    pub fn write_line(&self, line: &str) -> bool {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.stdin.as_ref().is_some_and(|tx| tx.send(bytes).is_ok())
    }

    /// Sends one of our control requests; returns its id (the answer arrives as a message).
    pub fn request(&mut self, request: Value) -> String {
        let id = format!("req_{}", self.next_request);
        self.next_request += 1;
        self.write_line(&protocol::control_request_line(&id, request));
        id
    }

    /// Closes stdin (the CLI exits when idle).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next output; `None` after `Exited` was delivered.
    pub async fn next_output(&mut self) -> Option<Output> {
        self.output.recv().await
    }

    /// The last lines the CLI wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Memory charged to the session's processes (0 without a cgroup).
    pub fn memory_bytes(&self) -> u64 {
        self.cgroup
            .as_ref()
            .map(SessionCgroup::memory_bytes)
            .unwrap_or_default()
    }

    /// Sends a signal to the CLI (not its tools) if it still runs.
    pub fn signal(&self, signal: Signal) {
        if !self.has_exited()
            && let Some(pid) = Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Waits up to `limit` for the process to exit, discarding what it prints meanwhile.
    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let mut exit = self.exit.clone();
        let output = &mut self.output;
        let drain = async {
            while output.recv().await.is_some() {}
            std::future::pending::<()>().await
        };
        tokio::select! {
            exited = tokio::time::timeout(limit, exit.wait_for(Option::is_some)) => exited.is_ok(),
            () = drain => false,
        }
    }

    /// Stops the process gracefully: `end_session` and EOF, `grace` to flush its transcript and
    /// exit, then SIGTERM, then SIGKILL; then everything else in the session is killed (drop).
    pub async fn stop(mut self, grace: Duration) {
        if !self.has_exited() {
            self.request(serde_json::json!({"subtype": "end_session"}));
            self.close_stdin();
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
        // Stopped means nothing of the session runs any more.
        self.clean_up().await;
    }
}

impl AgentProcess {
    /// Kills the CLI and everything it started; returns once none of it runs.
    pub async fn kill(mut self) {
        self.signal(Signal::KILL);
        self.clean_up().await;
    }

    /// Kills what is left of the session (tools a CLI that exited left running) and waits for it;
    /// the cgroup's removal goes on in the background.
    async fn clean_up(&mut self) {
        let Some(job) = self.cleanup_job() else {
            return;
        };
        if let Err(e) = tokio::task::spawn_blocking(job).await {
            tracing::warn!(session.id = %self.session, error = %e, "cleaning up after the agent failed");
        }
    }

    /// The (blocking) work of killing leftovers, once: cgroup or /proc reads, signals, reaping.
    fn cleanup_job(&mut self) -> Option<impl FnOnce() + Send + 'static> {
        if self.cleaned {
            return None;
        }
        self.cleaned = true;
        let cgroup = self.cgroup.take();
        let session = self.session;
        let pid = self.pid;
        let pid_file = self.config_dir.join("sessions").join(format!("{pid}.json"));
        Some(move || {
            match cgroup {
                Some(cgroup) => {
                    cgroup.kill_all();
                    // The CLI is reaped by tokio; what remains are zombies of adopted tools.
                    tree::reap_zombie_children(&[pid].into_iter().collect());
                    // Removal may wait for the last reaps: never hold the caller for it.
                    std::thread::spawn(move || cgroup.remove_when_empty());
                }
                None => tree::kill_session_processes(&session.to_string(), pid),
            }
            // A killed CLI cannot remove its own record of itself.
            let _ = std::fs::remove_file(pid_file);
        })
    }
}

impl Drop for AgentProcess {
    /// Kills every process of the session at once (unless `kill` or `stop` already did).
    fn drop(&mut self) {
        let Some(job) = self.cleanup_job() else {
            return;
        };
        self.signal(Signal::KILL);
        // Reading cgroup or /proc files blocks; keep it off the async workers.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

async fn drain_stderr(stderr: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    // Always drain: a CLI whose stderr pipe fills or closes dies on its next write.
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Reads stdout to its end (or shortly after the CLI exits), parsing each line. Text deltas that
/// one pipe read delivered together are merged into one message: the first delta is never held
/// back, but a burst costs one event downstream instead of hundreds.
async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    output: mpsc::Sender<Output>,
    mut exit: watch::Receiver<Option<ExitInfo>>,
    session: SessionId,
    coalesce: Duration,
) {
    // Text deltas within `coalesce` of the last one handed over are merged (one event per window
    // while text flows); the first after a pause goes at once, so time to first token is untouched.
    let mut window_end: Option<tokio::time::Instant> = None;
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    let mut delta: Option<String> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut receiver_gone = false;
    let mut send = async |message: Output| {
        // A dropped owner has killed the process; keep reading so the pipe never blocks it.
        if !receiver_gone && output.send(message).await.is_err() {
            receiver_gone = true;
        }
    };
    loop {
        let deadline = async {
            match drain_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let window = async {
            match window_end {
                Some(at) if delta.is_some() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = window => {
                send(Output::Message(AgentMessage::TextDelta(delta.take().expect("held"))))
                    .await;
                window_end = Some(tokio::time::Instant::now() + coalesce);
                continue;
            }
            read = reader.read_until(b'\n', &mut line) => match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session.id = %session, error = %e, "agent stdout unreadable");
                    break;
                }
            },
            Ok(()) = exit.changed(), if drain_until.is_none() => {
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                continue;
            }
            () = deadline => break,
        }
        let text = String::from_utf8_lossy(&line);
        let trimmed = text.trim();
        let parsed = if trimmed.is_empty() {
            None
        } else {
            match protocol::parse_line(trimmed) {
                Ok(message) => Some(message),
                Err(_) => {
                    tracing::debug!(session.id = %session, "skipping a non-JSON line from the agent");
                    None
                }
            }
        };
        line.clear();
        match parsed {
            Some(AgentMessage::TextDelta(text)) => {
                let now = tokio::time::Instant::now();
                if delta.is_none() && !coalesce.is_zero() && window_end.is_none_or(|end| now >= end) {
                    // The first delta after a pause: at once, and a window opens for the next ones.
                    send(Output::Message(AgentMessage::TextDelta(text))).await;
                    window_end = Some(now + coalesce);
                } else {
                    delta.get_or_insert_with(String::new).push_str(&text);
                }
            }
            Some(message) => {
                if let Some(text) = delta.take() {
                    send(Output::Message(AgentMessage::TextDelta(text))).await;
                }
                send(Output::Message(message)).await;
            }
            None => {}
        }
        // Without a window: hand over what one pipe read delivered, merged.
        if coalesce.is_zero() && delta.is_some() && !reader.buffer().contains(&b'\n') {
            send(Output::Message(AgentMessage::TextDelta(
                delta.take().expect("checked"),
            )))
            .await;
        }
    }
    if let Some(text) = delta.take() {
        send(Output::Message(AgentMessage::TextDelta(text))).await;
    }
    let info = match exit.wait_for(Option::is_some).await {
        Ok(info) => info.unwrap_or(ExitInfo::UNKNOWN),
        Err(_) => ExitInfo::UNKNOWN,
    };
    send(Output::Exited(info)).await;
}

/// The files the CLI keeps about one session inside a config dir (transcripts, todos, env).
pub fn session_files(config_dir: &std::path::Path, session: SessionId) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, prefix: &str, depth: usize, found: &mut Vec<std::path::PathBuf>) {
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
pub fn has_transcript(config_dir: &std::path::Path, session: SessionId) -> bool {
    let name = format!("{session}.jsonl");
    std::fs::read_dir(config_dir.join("projects"))
        .map(|dirs| dirs.flatten().any(|dir| dir.path().join(&name).is_file()))
        .unwrap_or(false)
}
