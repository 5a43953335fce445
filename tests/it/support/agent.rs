//! Agent-backed servers: the real CLI (the pinned version, installed once per checkout by the
//! service's own installer), pointed at the model stand-in; SSE reading; inspecting a session's
//! processes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use claude_agent_http::agent::cli;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub use super::procs::cmdline;

use super::model::ModelStandIn;
use super::procs;
use super::server::{Storage, TestServer};

/// Names a CLI to test with instead of the pinned one (on purpose: a `claude` on PATH is ignored).
pub const TEST_CLI_VARIABLE: &str = "CLAUDE_AGENT_TEST_CLI";

/// The CLI every test uses: the one `CLAUDE_AGENT_TEST_CLI` names, else the pinned, tested version,
/// installed once into `target/claude-cli` (under the installer's file lock, so parallel tests share
/// one copy).
pub fn cli_path() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        if let Some(chosen) = std::env::var_os(TEST_CLI_VARIABLE) {
            let chosen = PathBuf::from(chosen);
            assert!(
                chosen.is_file(),
                "{TEST_CLI_VARIABLE}={} is not a file",
                chosen.display()
            );
            return chosen;
        }
        // One folder per pinned version, so a new pin is installed rather than an old copy reused.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("claude-cli-{}", cli::TESTED_CLI_VERSION));
        // `install` returns the copy already in `dir` without running npm; a bare `npm` is looked
        // up on PATH only when it does run.
        cli::install(Path::new("npm"), &dir).expect("the pinned Claude Code CLI is needed for agent tests")
    })
    .clone()
}

/// A server whose agents talk to a fresh model stand-in.
pub struct AgentServer {
    pub server: TestServer,
    pub model: ModelStandIn,
}

impl AgentServer {
    /// Starts the stand-in and a server using it; `extra_yaml` is appended to the config.
    pub async fn start(extra_yaml: &str) -> AgentServer {
        Self::start_with_env(extra_yaml, Vec::new()).await
    }

    /// Like `start`, with extra environment variables for the server (they win over ours).
    pub async fn start_with_env(extra_yaml: &str, extra_env: Vec<(String, String)>) -> AgentServer {
        Self::start_wrapped(&[], extra_yaml, extra_env).await
    }

    /// Starts the server binary under `wrapper` (see `TestServer::start_wrapped`).
    pub async fn start_wrapped(
        wrapper: &[&str],
        extra_yaml: &str,
        extra_env: Vec<(String, String)>,
    ) -> AgentServer {
        Self::start_on(Storage::of_run(), wrapper, extra_yaml, extra_env).await
    }

    /// Starts a server for a story that restarts it and expects its sessions back (see
    /// `TestServer::start_durable`).
    pub async fn start_durable(extra_yaml: &str) -> AgentServer {
        Self::start_on(Storage::durable_of_run(), &[], extra_yaml, Vec::new()).await
    }

    /// Starts a server on `storage` (see `TestServer::start_on`).
    pub async fn start_on(
        storage: Storage,
        wrapper: &[&str],
        extra_yaml: &str,
        extra_env: Vec<(String, String)>,
    ) -> AgentServer {
        let model = ModelStandIn::start().await;
        let cli = tokio::task::spawn_blocking(cli_path).await.expect("cli lookup");
        let yaml = format!(
            "defaults:\n  cli_path: {cli}\n  env:\n    CLAUDE_CODE_MAX_RETRIES: '0'\n{extra_yaml}",
            cli = cli.display()
        );
        let mut env = vec![
            ("ANTHROPIC_BASE_URL".to_string(), model.base_url()),
            ("ANTHROPIC_API_KEY".to_string(), "sk-test-stand-in".to_string()),
        ];
        env.extend(extra_env);
        let server = TestServer::start_on(storage, wrapper, &yaml, env).await;
        AgentServer { server, model }
    }

    /// Starts a server that must find the CLI itself: no `cli_path` (and, as for every test server,
    /// no `claude` on its PATH).
    pub async fn start_self_installing() -> AgentServer {
        let model = ModelStandIn::start().await;
        let env = vec![
            ("ANTHROPIC_BASE_URL".to_string(), model.base_url()),
            ("ANTHROPIC_API_KEY".to_string(), "sk-test-stand-in".to_string()),
            (
                "CLAUDE_AGENT_DEFAULTS__CLI_AUTO_INSTALL".to_string(),
                "true".to_string(),
            ),
        ];
        let yaml = "defaults:\n  env:\n    CLAUDE_CODE_MAX_RETRIES: '0'\n";
        let server = TestServer::start_with_env(yaml, env).await;
        AgentServer { server, model }
    }

    /// Restarts the server on the same data, keeping the stand-in.
    pub async fn restart(self) -> AgentServer {
        AgentServer {
            server: self.server.restart().await,
            model: self.model,
        }
    }

    /// Kills the server with SIGKILL and starts a new one on the same data, keeping the stand-in.
    pub async fn crash_and_restart(self) -> AgentServer {
        AgentServer {
            server: self.server.crash_and_restart().await,
            model: self.model,
        }
    }

    /// Creates a session for `user` and returns its id and cwd.
    pub async fn session(&self, user: &str) -> (String, PathBuf) {
        let created = self.server.user(user).create_session(None).await;
        (
            created["session_id"].as_str().unwrap().to_string(),
            PathBuf::from(created["cwd"].as_str().unwrap()),
        )
    }

    /// Sends a message and waits for the whole answer.
    pub async fn chat(&self, session: &str, message: &str) -> reqwest::Response {
        self.server
            .post("/api/v1/chat", json!({"session_id": session, "message": message}))
            .await
    }

    /// Sends a message and returns the answer's JSON, asserting 200.
    pub async fn chat_ok(&self, session: &str, message: &str) -> Value {
        let response = self.chat(session, message).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            StatusCode::OK,
            "chat {message:?} failed: {body}\n{}",
            self.server.log()
        );
        body
    }

    /// Opens a stream for a message; asserts it started.
    pub async fn stream(&self, session: &str, message: &str) -> EventStream {
        let response = self.stream_response(session, message).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        EventStream::from_response(response)
    }

    pub async fn stream_response(&self, session: &str, message: &str) -> reqwest::Response {
        self.server
            .post(
                "/api/v1/chat/stream",
                json!({"session_id": session, "message": message}),
            )
            .await
    }

    /// Asks the session to stop its running turn; returns the answer's JSON.
    pub async fn interrupt(&self, session: &str) -> Value {
        let response = self
            .server
            .post(&format!("/api/v1/sessions/{session}/interrupt"), json!({}))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Starts a turn whose Bash tool sleeps for 60 s (in python: newer CLIs refuse a bare long
    /// `sleep`); returns once the sleep is running.
    pub async fn stream_a_running_sleep(&self, session: &str) -> EventStream {
        let mut stream = self
            .stream(
                session,
                "tool Bash {\"command\": \"python3 -c 'import time; time.sleep(60)' long-tool\"}",
            )
            .await;
        stream.until("tool_use").await;
        eventually("sleep to start", Duration::from_secs(10), || {
            !sleeps(session).is_empty()
        })
        .await;
        stream
    }

    /// The session's JSON.
    pub async fn session_json(&self, session: &str) -> Value {
        self.server
            .get(&format!("/api/v1/sessions/{session}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Polls `/health` until `in_memory_clients` equals `count`.
    pub async fn wait_live_agents(&self, count: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let health: Value = self.server.get("/health").await.json().await.unwrap();
            if health["in_memory_clients"] == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "live agents stayed {} (wanted {count})",
                health["in_memory_clients"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One received SSE event and when it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: Option<String>,
    pub data: Value,
    pub at: Instant,
}

/// A parsed SSE response.
pub struct EventStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    ready: std::collections::VecDeque<Received>,
    pub comments: usize,
}

impl EventStream {
    /// Reads the events of an SSE response.
    pub fn from_response(response: reqwest::Response) -> Self {
        EventStream {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            ready: std::collections::VecDeque::new(),
            comments: 0,
        }
    }

    /// The next data event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Received> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.body.next())
                .await
                .expect("stream stalled")?;
            let at = Instant::now();
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
            // Every complete event in the buffer arrived with this chunk.
            let mut consumed = 0;
            while let Some(end) = self.buffer[consumed..].find("\n\n") {
                let block = &self.buffer[consumed..consumed + end];
                consumed += end + 2;
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(rest) = line.strip_prefix("data:") {
                        data = Some(rest.trim_start());
                    } else if let Some(rest) = line.strip_prefix("id:") {
                        id = Some(rest.trim_start().to_string());
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    }
                }
                if let Some(data) = data {
                    let data =
                        serde_json::from_str(data).unwrap_or_else(|_| panic!("data is not JSON: {data}"));
                    self.ready.push_back(Received { id, data, at });
                }
            }
            self.buffer.drain(..consumed);
        }
    }

    /// Reads to the end; returns every event (the last one terminal).
    pub async fn collect(mut self) -> Vec<Received> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    /// Reads until an event of `kind` arrives.
    pub async fn until(&mut self, kind: &str) -> Received {
        loop {
            let event = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before {kind}"));
            if event.data["type"] == kind {
                return event;
            }
        }
    }
}

/// The processes that belong to a session (they carry its marker), as the test sees them.
pub fn session_processes(session: &str) -> Vec<u32> {
    procs::marked(session)
}

/// Pids of the 60 s sleeping tool processes belonging to a session.
pub fn sleeps(session: &str) -> Vec<u32> {
    session_processes(session)
        .into_iter()
        .filter(|pid| {
            let argv = cmdline(*pid);
            let program = argv.split(' ').next().unwrap_or_default();
            program.ends_with("python3") && argv.contains("long-tool")
        })
        .collect()
}

/// Polls until no process of the session is left.
pub async fn wait_no_processes(session: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = session_processes(session);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of {session} still alive: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `check` holds.
pub async fn eventually<F: Fn() -> bool>(what: &str, limit: Duration, check: F) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The text of all `text_delta` events, concatenated.
pub fn delta_text(events: &[Received]) -> String {
    events
        .iter()
        .filter(|e| e.data["type"] == "text_delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect()
}
