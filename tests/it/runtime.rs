//! Runtime stories: what one live session's agent must do whatever the service's own situation
//! (PID 1 of a container, a delete racing a turn, tools that try to escape, slow readers, stuck or
//! silent CLIs, no capacity left), and what every turn's events look like on the wire.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::agent::{AgentServer, EventStream, Received, eventually};
use crate::support::{expect_json, procs};

/// A string no other test uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The session's one CLI process, once it exists.
async fn the_cli(session: &str) -> u32 {
    eventually("the session's CLI process", Duration::from_secs(20), || {
        procs::clis(session).len() == 1
    })
    .await;
    procs::clis(session)[0]
}

/// Each process with its command line, for failure messages.
fn described(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .map(|pid| format!("{pid}: {}", procs::cmdline(*pid)))
        .collect()
}

/// The numeric SSE id of an event; every event must have one.
fn numeric_id(event: &Received) -> u64 {
    event
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("an event without a numeric id: {event:?}"))
}

/// Reads a stream to its end within `limit` (a stream that never ends fails the story).
async fn collect_within(stream: EventStream, limit: Duration, what: &str) -> Vec<Received> {
    tokio::time::timeout(limit, stream.collect())
        .await
        .unwrap_or_else(|_| panic!("{what}: the stream did not end within {limit:?}"))
}

#[tokio::test]
async fn a_service_that_is_pid_1_of_its_pid_namespace_keeps_its_agents() {
    // As in a container started without `--init`: every agent the service spawns has parent 1.
    let app = AgentServer::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        "",
        Vec::new(),
    )
    .await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.server.pid())).unwrap();
    let namespaced = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        namespaced.ends_with("\t1"),
        "the server is PID 1 of its namespace: {namespaced}"
    );
    let (id, _) = app.session("alice").await;
    assert_eq!(app.chat_ok(&id, "hello").await["text"], "echo: hello");
    let cli = the_cli(&id).await;
    // Well past the old 3 s orphan sweep, which took its own agents for a dead instance's.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        procs::is_alive(cli),
        "the service killed its own idle agent:\n{}",
        app.server.log()
    );
    assert_eq!(app.chat_ok(&id, "again").await["text"], "echo: again");
    assert_eq!(
        procs::clis(&id),
        vec![cli],
        "the same CLI answered the second message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_a_turn_never_leaks_a_process() {
    let app = AgentServer::start("").await;
    let mut sessions = Vec::new();
    for round in 0..25u64 {
        let (id, _) = app.session("alice").await;
        // From "at once" to 6 ms later: across the turn's claim, the CLI's start and its first words.
        let offset = Duration::from_micros(250 * round);
        let streamed = round % 2 == 1;
        let turn = async {
            if streamed {
                let response = app.stream_response(&id, "words 30 20").await;
                if response.status() == StatusCode::OK {
                    let stream = EventStream::from_response(response);
                    collect_within(stream, Duration::from_secs(60), "a streamed turn racing a delete").await;
                }
            } else {
                let _ = app.chat(&id, "words 30 20").await.bytes().await;
            }
        };
        let delete = async {
            let start = Instant::now();
            // Finer than a timer: yield to the turn until the offset has passed.
            while start.elapsed() < offset {
                tokio::task::yield_now().await;
            }
            app.server
                .delete(&format!("/api/v1/sessions/{id}"))
                .await
                .status()
        };
        let ((), deleted) =
            tokio::time::timeout(Duration::from_secs(90), async { tokio::join!(turn, delete) })
                .await
                .unwrap_or_else(|_| panic!("round {round}: a turn racing a delete never ended"));
        assert_eq!(deleted, StatusCode::NO_CONTENT, "round {round}");
        sessions.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<u32> = sessions.iter().flat_map(|id| procs::of_session(id)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of deleted sessions still alive: {:#?}",
            described(&left)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_detached_tool_that_drops_the_marker_dies_with_its_session() {
    let app = AgentServer::start("  permission_mode: bypassPermissions\n").await;
    let (id, _) = app.session("alice").await;
    let tag = unique("d3");
    let _cleanup = procs::KillOnDrop(tag.clone());
    // Newer CLIs refuse a bare long `sleep`; python sleeps as well.
    let command = format!(
        "env -u {marker} setsid sh -c 'exec python3 -c \"import time; time.sleep(600)\" {tag}' >/dev/null 2>&1 &",
        marker = procs::SESSION_MARKER
    );
    let answer = app
        .chat_ok(&id, &format!("tool Bash {}", json!({"command": command})))
        .await;
    assert_eq!(answer["tool_calls"][0]["is_error"], false, "{answer}");
    let escaped = || {
        procs::mentioning(&tag)
            .into_iter()
            .filter(|pid| procs::cmdline(*pid).contains("time.sleep"))
            .collect::<Vec<_>>()
    };
    eventually("the detached tool to run", Duration::from_secs(15), || {
        !escaped().is_empty()
    })
    .await;
    for pid in escaped() {
        assert!(
            !procs::marked(&id).contains(&pid),
            "the tool dropped the session's marker"
        );
    }
    assert_eq!(
        app.server
            .delete(&format!("/api/v1/sessions/{id}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs::mentioning(&tag).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the detached tool outlived its session: {:#?}",
            described(&procs::mentioning(&tag))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sse_ids_are_the_sessions_event_numbers() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let mut last_of_previous_turn = None;
    for turn in ["words 5", "words 7"] {
        let events = app.stream(&id, turn).await.collect().await;
        let ids: Vec<u64> = events.iter().map(numeric_id).collect();
        assert!(
            ids.windows(2).all(|w| w[1] > w[0]),
            "{turn}: ids increase: {ids:?}"
        );
        if let Some(previous) = last_of_previous_turn {
            assert!(
                ids[0] > previous,
                "{turn}: the turn's first id {} follows the previous turn's last {previous}",
                ids[0]
            );
        }
        last_of_previous_turn = ids.last().copied();
        let terminal: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.data["type"] == "done" || e.data["type"] == "error")
            .map(|(index, _)| index)
            .collect();
        assert_eq!(terminal, vec![events.len() - 1], "{turn}: {events:?}");
        assert_eq!(events.last().unwrap().data["type"], "done");
    }
}

/// How many words the slow reader's turn streams: each is one `text_delta` event of about 57 bytes
/// on the wire, 11 MB in all, well beyond what loopback TCP absorbs from a reader that reads nothing
/// (about 4.5 MB: the server's send buffer grows to `net.ipv4.tcp_wmem`'s 4 MB, the client's receive
/// buffer stays near its initial 128 KB, plus the HTTP layers' own buffers). The CLI is the slow
/// part (about 25 µs of CPU a word), so this is a few seconds on an idle machine.
const SLOW_READER_WORDS: usize = 200_000;

/// How much the server may grow while one reader stalls. The answer's text is 1.5 MB; the service
/// holds it a few times over (the accumulated text, the CLI's final lines and their parsed form, the
/// turn's record and its stored `done` event) and the store keeps a bounded write queue and page
/// cache: about 22 MB measured. Queuing the unread rest instead (200 000 events) takes about 40 MB
/// more (measured on the code of a096a6f: 29 MB for 100 000 words, 50 MB for 300 000).
const SLOW_READER_GROWTH_MB: u64 = 36;

#[tokio::test]
async fn a_slow_stream_reader_is_dropped_not_buffered() {
    // No time window: the answer stays many events, well beyond what TCP absorbs.
    let app = AgentServer::start("api:\n  stream_buffer_events: 16\n  stream_coalesce_ms: 0\n").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "warm up").await;
    let server = app.server.pid();
    let before = procs::rss_bytes(server).unwrap();
    let count_before = app.session_json(&id).await["message_count"].as_u64().unwrap();

    // Open the stream and read nothing until the turn is over.
    let stalled = app
        .stream_response(&id, &format!("words {SLOW_READER_WORDS}"))
        .await;
    assert_eq!(stalled.status(), StatusCode::OK);
    let mut peak = before;
    // Generous for a loaded machine; a few seconds on an idle one.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        peak = peak.max(procs::rss_bytes(server).unwrap());
        let count = app.session_json(&id).await["message_count"].as_u64().unwrap();
        if count > count_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the turn did not end while its reader stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(procs::rss_bytes(server).unwrap());
    let growth_mb = (peak.saturating_sub(before)) / (1024 * 1024);
    assert!(
        growth_mb < SLOW_READER_GROWTH_MB,
        "the server grew by {growth_mb} MB while one reader stalled (from {} MB)",
        before / (1024 * 1024)
    );

    let events = collect_within(
        EventStream::from_response(stalled),
        Duration::from_secs(30),
        "the stalled stream",
    )
    .await;
    let last = events.last().expect("some events");
    assert_eq!(last.data["type"], "error", "ends with: {:?}", last.data);
    assert_eq!(last.data["code"], "stream_lagged");
    assert!(
        events.iter().all(|e| e.data["type"] != "done"),
        "a lagged reader gets no done"
    );
    let ids: Vec<u64> = events.iter().filter(|e| e.id.is_some()).map(numeric_id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids increase");
    let deltas = events.iter().filter(|e| e.data["type"] == "text_delta").count();
    assert!(
        deltas > 0 && deltas < SLOW_READER_WORDS,
        "the reader got {deltas} of {SLOW_READER_WORDS} words: some, then a gap"
    );
    // The session itself is unharmed.
    assert_eq!(app.chat_ok(&id, "after").await["text"], "echo: after");
}

#[tokio::test]
async fn a_turn_cannot_outlive_the_servers_deadline() {
    let app = AgentServer::start("  turn_timeout: 2\n").await;
    let (id, _) = app.session("alice").await;
    let started = Instant::now();
    // 10 s of words, streamed; nobody asked for a timeout but the server's own applies.
    let events = collect_within(
        app.stream(&id, "words 100 100").await,
        Duration::from_secs(30),
        "a turn past the server's deadline",
    )
    .await;
    let last = events.last().unwrap();
    assert_eq!(last.data["type"], "error", "ends with: {:?}", last.data);
    assert_eq!(last.data["code"], "turn_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the 2 s deadline ended a 10 s turn only after {:?}",
        started.elapsed()
    );
    assert_eq!(app.chat_ok(&id, "next").await["text"], "echo: next");
}

#[tokio::test]
async fn a_cli_that_goes_silent_mid_turn_is_stopped() {
    let app = AgentServer::start("  turn_silence_timeout: 2\n").await;
    let (id, _) = app.session("alice").await;
    let mut stream = app.stream(&id, "words 200 50").await;
    stream.until("text_delta").await;
    let cli = the_cli(&id).await;
    procs::signal(cli, "-STOP");
    eventually("the CLI to stop", Duration::from_secs(5), || {
        procs::is_stopped(cli)
    })
    .await;
    let events = collect_within(stream, Duration::from_secs(20), "a turn whose CLI was stopped").await;
    let last = events.last().unwrap();
    assert_eq!(last.data["type"], "error", "ends with: {:?}", last.data);
    assert_eq!(last.data["code"], "agent_unresponsive");
    eventually("the stopped CLI to be killed", Duration::from_secs(10), || {
        !procs::is_alive(cli)
    })
    .await;
    assert_eq!(app.chat_ok(&id, "next").await["text"], "echo: next");
    assert_ne!(the_cli(&id).await, cli, "a fresh CLI answered");
}

#[tokio::test]
async fn lack_of_capacity_says_so() {
    let app = AgentServer::start("api:\n  max_live_agents: 1\n").await;
    let (a, _) = app.session("alice").await;
    let (b, _) = app.session("bob").await;
    let mut running = app.stream(&a, "words 100 50").await;
    running.until("text_delta").await;
    let body = expect_json(app.chat(&b, "me too").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["code"], "agent_capacity_reached", "{body}");
    let events = collect_within(running, Duration::from_secs(30), "the running turn").await;
    assert_eq!(events.last().unwrap().data["type"], "done");
}

#[tokio::test]
async fn a_new_sessions_agent_starts_before_its_first_message() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let cli = the_cli(&id).await;
    assert_eq!(app.model.requests(), 0, "starting the agent calls no model");
    assert_eq!(app.chat_ok(&id, "hello").await["text"], "echo: hello");
    assert_eq!(procs::clis(&id), vec![cli], "the started agent answered");
}

#[tokio::test]
async fn with_prewarm_off_no_agent_starts_before_the_first_message() {
    let app = AgentServer::start("api:\n  prewarm: false\n").await;
    let (id, _) = app.session("alice").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(procs::clis(&id), Vec::<u32>::new(), "no agent before a message");
    assert_eq!(app.chat_ok(&id, "hello").await["text"], "echo: hello");
    the_cli(&id).await;
}

#[tokio::test]
async fn no_secret_is_on_any_command_line() {
    let token = unique("tok-secret");
    let yaml =
        format!("mcp_servers:\n  probe:\n    command: /bin/true\n    env:\n      PROBE_TOKEN: {token}\n");
    let app = AgentServer::start(&yaml).await;
    let (id, _) = app.session("alice").await;
    assert_eq!(app.chat_ok(&id, "hello").await["text"], "echo: hello");
    assert!(!procs::clis(&id).is_empty(), "the agent is still running");
    let exposed = procs::mentioning(&token);
    assert!(
        exposed.is_empty(),
        "the secret is on command lines: {:#?}",
        described(&exposed)
    );
}

#[tokio::test]
async fn without_credentials_the_service_says_so_and_turns_name_the_setting() {
    let empty = |name: &str| (name.to_string(), String::new());
    let app = AgentServer::start_with_env(
        "",
        vec![empty("ANTHROPIC_API_KEY"), empty("ANTHROPIC_AUTH_TOKEN")],
    )
    .await;
    let health = expect_json(app.server.get("/health").await, StatusCode::OK).await;
    assert_eq!(health["agent_cli"]["credentials"], "missing", "{health}");
    assert!(
        app.server.log().contains("no model API credentials"),
        "a warning at startup"
    );
    let (id, _) = app.session("alice").await;
    let body = expect_json(app.chat(&id, "hello").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["code"], "credentials_missing", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("ANTHROPIC_API_KEY"),
        "{body}"
    );
}
