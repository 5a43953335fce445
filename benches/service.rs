//! The benchmark: the release service (SQLite; PostgreSQL in sections 10 and 11) against the bare
//! Claude Code CLI, side by side, on the model stand-in from the test support.
//! `cargo bench --bench service` runs it in full and prints a table; `-- --markdown PATH` also
//! writes it as markdown; `-- --quick` (and plain `cargo test --bench service`) runs a short smoke
//! of every measurement.

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_agent_http::agent::command::{CliFeatures, ModelAccess, SpawnSpec};
use claude_agent_http::agent::{cli, protocol, tree};
use claude_agent_http::config::Config;
use claude_agent_http::domain::{SessionId, TurnId};
use claude_agent_http::store::{EventStore, SqliteStore, StoredEvent, TurnStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use support::agent::{AgentServer, cli_path};
use support::model::ModelStandIn;
use support::pg::TestDatabase;
use support::server::Storage;

/// How much of each measurement to run.
#[derive(Clone, Copy)]
struct Plan {
    creates_sequential: usize,
    creates_concurrent: usize,
    reads_sequential: usize,
    reads_concurrent: usize,
    turns: usize,
    streams: usize,
    floods: usize,
    resumes: usize,
    crowds: &'static [usize],
    stored_for_memory: usize,
    live_for_memory: usize,
    /// Section 9: sessions whose first turn is measured (a and b), the burst (c), the 2000-word
    /// answers (d) and the prewarmed crowd (e).
    first_turns: usize,
    burst: usize,
    big_answers: usize,
    warm_crowd: usize,
    /// Section 11: the events stored in the replayed session, and how many times it is replayed.
    replay_events: usize,
    replays: usize,
    /// Section 12: cold first turns per isolation profile (alternating), and the sessions kept
    /// live on each for the memory figure.
    isolation_turns: usize,
}

const FULL: Plan = Plan {
    creates_sequential: 500,
    creates_concurrent: 500,
    reads_sequential: 2000,
    reads_concurrent: 20_000,
    turns: 100,
    streams: 10,
    floods: 15,
    resumes: 5,
    crowds: &[20, 50],
    stored_for_memory: 1000,
    live_for_memory: 20,
    first_turns: 10,
    burst: 20,
    big_answers: 15,
    warm_crowd: 20,
    replay_events: 10_000,
    replays: 5,
    isolation_turns: 20,
};

const QUICK: Plan = Plan {
    creates_sequential: 20,
    creates_concurrent: 32,
    reads_sequential: 20,
    reads_concurrent: 64,
    turns: 2,
    streams: 1,
    floods: 1,
    resumes: 1,
    crowds: &[3],
    stored_for_memory: 52,
    live_for_memory: 3,
    first_turns: 1,
    burst: 3,
    big_answers: 1,
    warm_crowd: 3,
    replay_events: 1000,
    replays: 1,
    isolation_turns: 2,
};

const CONCURRENCY: usize = 16;

/// One line of the result table.
struct Row {
    figure: String,
    service: Option<f64>,
    bare: Option<f64>,
    unit: &'static str,
    target: String,
}

impl Row {
    fn new(
        figure: impl Into<String>,
        service: Option<f64>,
        bare: Option<f64>,
        unit: &'static str,
        target: impl Into<String>,
    ) -> Row {
        Row {
            figure: figure.into(),
            service,
            bare,
            unit,
            target: target.into(),
        }
    }
}

/// Whose rows a measurement writes: the section they belong to and the storage of the server
/// measured. SQLite rows keep their plain names (`3. warm turn ...`); another storage's rows carry
/// its name (`10. PostgreSQL: warm turn ...`) and their own targets.
#[derive(Clone, Copy)]
struct On {
    section: &'static str,
    storage: Storage,
}

impl On {
    const fn sqlite(section: &'static str) -> On {
        On {
            section,
            storage: Storage::Sqlite,
        }
    }

    /// The row's name.
    fn name(self, figure: impl std::fmt::Display) -> String {
        match self.storage {
            Storage::Sqlite => format!("{}. {figure}", self.section),
            other => format!("{}. {}: {figure}", self.section, storage_name(other)),
        }
    }

    /// The target that applies on this storage.
    fn target(self, sqlite: &'static str, postgresql: &'static str) -> &'static str {
        match self.storage {
            Storage::Postgresql => postgresql,
            _ => sqlite,
        }
    }
}

fn storage_name(storage: Storage) -> &'static str {
    match storage {
        Storage::Sqlite => "SQLite",
        Storage::Postgresql => "PostgreSQL",
        Storage::Memory => "memory",
    }
}

fn fmt(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "-".into(),
        Some(v) if matches!(unit, "req/s" | "words/s" | "events" | "sessions") => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --bench` does not: then it is a smoke run.
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let markdown = args
        .iter()
        .position(|a| a == "--markdown")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let plan = if quick { QUICK } else { FULL };
    // `--only 3,5` runs just those sections (for profiling one figure).
    let only: Vec<u32> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows = runtime.block_on(run(plan, &only));
    let report = render(&rows, quick);
    println!("{report}");
    if let Some(path) = markdown {
        std::fs::write(&path, &report).expect("write markdown");
        println!("written to {}", path.display());
    }
}

async fn run(plan: Plan, only: &[u32]) -> Vec<Row> {
    let wanted = |section: u32| only.is_empty() || only.contains(&section);
    let mut rows = Vec::new();
    let mut quiet = vec![("RUST_LOG".to_string(), "warn".to_string())];
    if let Ok(threads) = std::env::var("BENCH_SERVICE_THREADS") {
        quiet.push(("TOKIO_WORKER_THREADS".to_string(), threads));
    }
    // Sections 1-8 keep their old meaning: creating a session starts no process (`prewarm: false`;
    // otherwise the 1000 sessions created for sections 1 and 8 would start up to 128 CLIs in the
    // background). Section 9 measures prewarming on a server of its own. SQLite whatever
    // `CLAUDE_AGENT_TEST_STORAGE` says: sections 10 and 11 name PostgreSQL themselves.
    let app = AgentServer::start_on(Storage::Sqlite, &[], &service_yaml(false), quiet.clone()).await;
    let service_pid = app.server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = service_rss(service_pid);

    let mut stored = 0;
    if wanted(1) {
        eprintln!("1. session create");
        rows.extend(bench_create(&app, plan, On::sqlite("1")).await);
        stored = plan.creates_sequential + plan.creates_concurrent;
    }
    if wanted(8) {
        create_sessions(&app, plan.stored_for_memory.saturating_sub(stored)).await;
        stored = stored.max(plan.stored_for_memory);
    }
    let rss_stored = service_rss(service_pid);
    if wanted(2) {
        eprintln!("2. reads");
        rows.extend(bench_reads(&app, plan, On::sqlite("2")).await);
    }
    let bare_home = tempfile::tempdir().expect("tempdir");
    if wanted(3) {
        eprintln!("3. warm turn");
        rows.extend(bench_warm_turn(&app, bare_home.path(), plan, On::sqlite("3")).await);
    }
    if wanted(4) {
        eprintln!("4. streaming latency");
        rows.extend(bench_stream(&app, bare_home.path(), plan).await);
    }
    if wanted(5) {
        eprintln!("5. streaming throughput");
        rows.extend(bench_flood(&app, bare_home.path(), plan, On::sqlite("5")).await);
    }
    if wanted(7) {
        eprintln!("7. concurrency");
        for &crowd in plan.crowds {
            rows.extend(bench_crowd(&app, crowd).await);
        }
    }
    if !wanted(8) {
        drop(app);
        rows.extend(run_last(plan, bare_home.path(), &quiet, &wanted).await);
        return rows;
    }
    eprintln!("8. memory");
    // Stop every agent so the live measurement starts from none.
    let restarted = app.restart().await;
    let service_pid = restarted.server.pid();
    let rss_restarted = service_rss(service_pid);
    let mut live = Vec::new();
    for _ in 0..plan.live_for_memory {
        let (id, _) = restarted.session("memory").await;
        live.push(id);
    }
    let warm = live.iter().map(|id| restarted.chat_ok(id, "warm up"));
    futures_util::future::join_all(warm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_live = service_rss(service_pid);
    let cli_total: u64 = tree::descendants(service_pid)
        .into_iter()
        .filter_map(tree::rss_bytes)
        .sum();
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    rows.push(Row::new(
        "8. service RSS, idle",
        Some(mb(rss_idle)),
        None,
        "MB",
        "<= 30 MB",
    ));
    rows.push(Row::new(
        format!(
            "8. service RSS, {} stored sessions",
            plan.stored_for_memory.max(stored)
        ),
        Some(mb(rss_stored)),
        None,
        "MB",
        "<= 30 MB",
    ));
    rows.push(Row::new(
        format!("8. service RSS, {} live sessions", plan.live_for_memory),
        Some(mb(rss_live)),
        None,
        "MB",
        "",
    ));
    rows.push(Row::new(
        "8. service RSS per live session (beyond the CLI)",
        Some(mb(rss_live.saturating_sub(rss_restarted)) / plan.live_for_memory as f64),
        None,
        "MB",
        "<= 1 MB",
    ));
    rows.push(Row::new(
        format!("8. CLI processes' RSS, {} live sessions", plan.live_for_memory),
        Some(mb(cli_total)),
        None,
        "MB",
        "",
    ));
    drop(restarted);
    rows.extend(run_last(plan, bare_home.path(), &quiet, &wanted).await);
    rows
}

/// The server config of the benchmark: no limit in the way; `prewarm` as asked.
fn service_yaml(prewarm: bool) -> String {
    format!(
        "api:\n  max_sessions: 1000000\n  max_sessions_per_user: 1000000\n  max_live_agents: 128\n  \
         max_concurrent_requests: 128\n  idle_session_timeout: 3600\n  prewarm: {prewarm}\n"
    )
}

/// The sections that run on servers of their own, once the main one is gone (no idle CLI of the
/// earlier sections left running).
async fn run_last(
    plan: Plan,
    home: &Path,
    env: &[(String, String)],
    wanted: &impl Fn(u32) -> bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    if wanted(6) {
        eprintln!("6. cold resume");
        rows.extend(bench_cold_resume(home, plan, env.to_vec()).await);
    }
    if wanted(9) {
        eprintln!("9. warm first turns");
        rows.extend(bench_first_turns(home, plan, env.to_vec()).await);
    }
    if wanted(10) {
        eprintln!("10. PostgreSQL");
        rows.extend(bench_postgresql(home, plan, env.to_vec()).await);
    }
    if wanted(11) {
        eprintln!("11. replay");
        for storage in [Storage::Sqlite, Storage::Postgresql] {
            rows.extend(bench_replay(storage, plan, env.to_vec()).await);
        }
    }
    if wanted(12) {
        eprintln!("12. isolation");
        rows.extend(bench_isolation(plan, env.to_vec()).await);
    }
    rows
}

/// Section 12: what the strict sandbox costs over profile none, on two servers side by side (both
/// SQLite, `prewarm: false`, the relay in both paths): a cold first turn (the CLI started by the
/// turn: under strict through the launcher, namespaces, Landlock and seccomp), alternating, paired;
/// the memory of a live session (every process of it: under strict the launcher, the sandbox's
/// init with its forwarder, and the CLI); and a 2000-word answer's text rate, strict against none
/// (the forwarder's hop).
async fn bench_isolation(plan: Plan, env: Vec<(String, String)>) -> Vec<Row> {
    let with_profile = |profile: &str| {
        let mut env = env.clone();
        env.push(("CLAUDE_AGENT_ISOLATION__PROFILE".into(), profile.into()));
        env
    };
    let strict =
        AgentServer::start_on(Storage::Sqlite, &[], &service_yaml(false), with_profile("strict")).await;
    let none = AgentServer::start_on(Storage::Sqlite, &[], &service_yaml(false), with_profile("none")).await;
    let (mut s_cold, mut n_cold, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut s_ids, mut n_ids) = (Vec::new(), Vec::new());
    for i in 0..plan.isolation_turns {
        let mut pair = [0.0; 2];
        for (k, app) in [&strict, &none].into_iter().enumerate() {
            let (id, _) = app.session(&format!("cold{i}")).await;
            let started = Instant::now();
            app.chat_ok(&id, "hello").await;
            pair[k] = ms(started.elapsed());
            if k == 0 { s_ids.push(id) } else { n_ids.push(id) }
        }
        s_cold.push(pair[0]);
        n_cold.push(pair[1]);
        overheads.push(pair[0] - pair[1]);
    }
    // Every live session's processes, over the service's own: MB per session.
    let per_session = |app: &AgentServer, live: usize| {
        let total: u64 = tree::descendants(app.server.pid())
            .into_iter()
            .filter_map(tree::rss_bytes)
            .sum();
        total as f64 / (1024.0 * 1024.0) / live.max(1) as f64
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s_rss, n_rss) = (per_session(&strict, s_ids.len()), per_session(&none, n_ids.len()));
    // The text rate of a 2000-word answer on one warm session of each, alternating.
    let (s_id, n_id) = (s_ids[0].clone(), n_ids[0].clone());
    let mut ratios = Vec::new();
    for _ in 0..plan.floods {
        let mut rate = [0.0; 2];
        for (k, (app, id)) in [(&strict, &s_id), (&none, &n_id)].into_iter().enumerate() {
            let started = Instant::now();
            let events = app.stream(id, "words 2000 0").await.collect().await;
            let last = events
                .iter()
                .rev()
                .find(|e| e.data["type"] == "text_delta")
                .expect("deltas")
                .at;
            assert_eq!(word_count(&support::agent::delta_text(&events)), 2000);
            rate[k] = 2000.0 / (last - started).as_secs_f64();
        }
        ratios.push(rate[0] / rate[1]);
    }
    vec![
        Row::new(
            format!(
                "12. cold first turn (CLI started by the turn) p50, strict vs none ({} alternating)",
                plan.isolation_turns
            ),
            Some(percentile(&s_cold, 50.0)),
            Some(percentile(&n_cold, 50.0)),
            "ms",
            "",
        ),
        Row::new(
            "12. strict spawn overhead p50 (paired strict - none)",
            Some(percentile(&overheads, 50.0)),
            None,
            "ms",
            "<= 20 ms",
        ),
        Row::new(
            format!(
                "12. RSS per live session, every process of it, strict vs none ({} each)",
                s_ids.len()
            ),
            Some(s_rss),
            Some(n_rss),
            "MB",
            "",
        ),
        Row::new(
            format!(
                "12. 2000 words text rate, paired strict / none, p50 ({} alternating)",
                plan.floods
            ),
            Some(percentile(&ratios, 50.0)),
            None,
            "x",
            "",
        ),
    ]
}

/// A server of sections 10 and 11 on `storage`, whose database the benchmark can reach too: on
/// PostgreSQL a fresh database of the benchmark's own on the machine's server (127.0.0.1:5432),
/// dropped after the server; on SQLite the server's own file.
struct StoredServer {
    // Declared first: dropped (the server killed) before the database.
    app: AgentServer,
    database: Option<TestDatabase>,
}

impl StoredServer {
    /// `BENCH_PG_SYNCHRONOUS_COMMIT` (`off`, ...) sets the PostgreSQL database's
    /// `synchronous_commit` before the server connects: how much of a figure is the commit's
    /// flush to disk.
    async fn start(storage: Storage, mut env: Vec<(String, String)>) -> StoredServer {
        let database = match storage {
            Storage::Postgresql => Some(TestDatabase::create().await),
            _ => None,
        };
        if let Some(database) = &database {
            env.extend(support::pg::server_env(&database.url()));
            if let Ok(value) = std::env::var("BENCH_PG_SYNCHRONOUS_COMMIT") {
                assert!(
                    ["on", "off", "local", "remote_write", "remote_apply"].contains(&value.as_str()),
                    "BENCH_PG_SYNCHRONOUS_COMMIT={value}"
                );
                let mut connection = database.connect().await;
                let name: String = sqlx::query_scalar("SELECT current_database()")
                    .fetch_one(&mut connection)
                    .await
                    .unwrap();
                let alter = format!("ALTER DATABASE {name} SET synchronous_commit = {value}");
                sqlx::query(sqlx::AssertSqlSafe(alter))
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
        }
        let app = AgentServer::start_on(storage, &[], &service_yaml(false), env).await;
        StoredServer { app, database }
    }

    /// The server's turns and events, opened beside it.
    async fn events(&self) -> Arc<dyn EventStore> {
        match &self.database {
            Some(database) => Arc::new(database.store(0).await),
            None => Arc::new(
                SqliteStore::open(&self.app.server.data_dir().join("sessions.db"), 0)
                    .await
                    .expect("the server's SQLite database"),
            ),
        }
    }
}

/// Section 10: sections 1, 2, 3 and 5 again on a server storing its sessions, turns and events in
/// PostgreSQL.
async fn bench_postgresql(home: &Path, plan: Plan, env: Vec<(String, String)>) -> Vec<Row> {
    let server = StoredServer::start(Storage::Postgresql, env).await;
    let app = &server.app;
    let on = On {
        section: "10",
        storage: Storage::Postgresql,
    };
    let mut rows = bench_create(app, plan, on).await;
    rows.extend(bench_reads(app, plan, on).await);
    rows.extend(bench_warm_turn(app, home, plan, on).await);
    rows.extend(bench_flood(app, home, plan, on).await);
    rows
}

/// The real turn whose stored events are the pattern of the replayed session: 200 words, 5 ms
/// apart (more than `api.stream_coalesce_ms`, so about one event per word, as a model streams).
const REPLAY_TURN: &str = "words 200 5";

/// Section 11: a session with `plan.replay_events` stored events replayed by
/// `GET /api/v1/sessions/{id}/events`, as SSE from the start until the last event arrives, and as
/// JSON pages of 1000. The session's first turn is real (`REPLAY_TURN` through the service); the
/// rest are copies of it written through the library's `EventStore` into the database the server
/// uses (its events' wire form byte for byte, the copy's own turn id in place of the first's), the
/// last copy cut short so that the session holds exactly `plan.replay_events` events.
async fn bench_replay(storage: Storage, plan: Plan, env: Vec<(String, String)>) -> Vec<Row> {
    let server = StoredServer::start(storage, env).await;
    let app = &server.app;
    let store = server.events().await;
    let (id, _) = app.session("replay").await;
    app.chat_ok(&id, REPLAY_TURN).await;
    let session = SessionId::parse(&id).expect("session id");
    let total = plan.replay_events as u64;
    let turns = seed_events(store.as_ref(), session, total).await;
    assert_eq!(store.last_seq(session).await.unwrap(), total);

    let (mut sse, mut pages) = (Vec::new(), Vec::new());
    let mut cpu = Duration::ZERO;
    for _ in 0..plan.replays {
        let cpu_before = cpu_time(app.server.pid());
        let started = Instant::now();
        let response = app.server.get(&format!("/api/v1/sessions/{id}/events")).await;
        assert_eq!(response.status(), StatusCode::OK);
        // The stream follows live events after the stored ones until the client leaves: read until
        // the last stored one, then leave.
        let mut stream = support::agent::EventStream::from_response(response);
        let mut received = 0u64;
        loop {
            let event = stream.next().await.expect("the replay ended early");
            received += 1;
            if event.id.as_deref() == Some(total.to_string().as_str()) {
                break;
            }
        }
        sse.push(ms(started.elapsed()));
        cpu += cpu_time(app.server.pid()) - cpu_before;
        drop(stream);
        assert_eq!(received, total, "events replayed");

        let started = Instant::now();
        let (mut after, mut received) = (0u64, 0usize);
        while after < total {
            let path = format!("/api/v1/sessions/{id}/events?follow=false&limit=1000&after={after}");
            let response = app.server.get(&path).await;
            assert_eq!(response.status(), StatusCode::OK);
            let page: Value = response.json().await.expect("a page");
            received += page["events"].as_array().map_or(0, Vec::len);
            let next_after = page["next_after"].as_u64().expect("next_after");
            assert!(next_after > after, "the pages stopped at {after} of {total}");
            after = next_after;
        }
        pages.push(ms(started.elapsed()));
        assert_eq!(received as u64, total, "events paged");
    }
    drop(store);
    drop(server);
    let runs = plan.replays;
    // Both storages side by side: SQLite named too.
    let name = storage_name(storage);
    vec![
        Row::new(
            format!(
                "11. {name}: replay of {total} stored events ({turns} turns) over SSE, GET .../events to the last id, p50 of {runs}"
            ),
            Some(percentile(&sse, 50.0)),
            None,
            "ms",
            "< 300 ms",
        ),
        Row::new(
            format!("11. {name}: replay over SSE, max"),
            Some(percentile(&sse, 100.0)),
            None,
            "ms",
            "",
        ),
        Row::new(
            format!("11. {name}: service CPU time per SSE replay"),
            Some(ms(cpu) / runs.max(1) as f64),
            None,
            "ms",
            "",
        ),
        Row::new(
            format!("11. {name}: the same events as JSON pages of 1000 (follow=false), all pages p50"),
            Some(percentile(&pages, 50.0)),
            None,
            "ms",
            "",
        ),
    ]
}

/// Writes copies of the session's first (real, finished) turn through `store` until the session
/// holds `total` events: each copy a turn of its own, begun, appended to and finished as the
/// service does it, its events numbered on; the last copy cut short, keeping its terminal event.
/// Returns how many turns the session then has.
async fn seed_events(store: &dyn EventStore, session: SessionId, total: u64) -> usize {
    let pattern = store
        .turns(session, None, 1)
        .await
        .unwrap()
        .pop()
        .expect("the real turn");
    let events = store.events_after(session, 0, u32::MAX).await.unwrap();
    assert!(
        events.len() >= 2 && events.iter().all(|e| e.turn_id == pattern.turn_id),
        "one real turn of events: {}",
        events.len()
    );
    assert!(
        events.len() as u64 <= total,
        "the real turn alone has {} events",
        events.len()
    );
    let pattern_id = pattern.turn_id.to_string();
    let mut next = events.len() as u64 + 1;
    let mut turns = 1;
    while next <= total {
        let left = (total - next + 1) as usize;
        let kept: Vec<&StoredEvent> = if left >= events.len() {
            events.iter().collect()
        } else {
            // The first `left - 1` events and the terminal one.
            events[..left - 1].iter().chain(events.last()).collect()
        };
        let mut turn = pattern.clone();
        turn.turn_id = TurnId::new();
        turn.status = TurnStatus::Running;
        turn.started_at = chrono::Utc::now();
        turn.finished_at = None;
        store.begin_turn(&turn).await.unwrap();
        let turn_id = turn.turn_id.to_string();
        let copies: Vec<StoredEvent> = kept
            .iter()
            .map(|event| {
                let copy = StoredEvent {
                    seq: next,
                    turn_id: turn.turn_id,
                    data: event.data.replace(&pattern_id, &turn_id),
                    at: chrono::Utc::now(),
                };
                next += 1;
                copy
            })
            .collect();
        let (last, body) = copies.split_last().expect("events");
        store.append_events(session, body).await.unwrap();
        turn.status = pattern.status;
        turn.finished_at = Some(chrono::Utc::now());
        assert!(
            store
                .finish_turn(&turn, std::slice::from_ref(last), true)
                .await
                .unwrap(),
            "the session is gone"
        );
        turns += 1;
    }
    turns
}

fn service_rss(pid: u32) -> u64 {
    tree::rss_bytes(pid).unwrap_or_default()
}

async fn create_sessions(app: &AgentServer, count: usize) {
    for i in 0..count {
        let response = app
            .server
            .post(
                "/api/v1/sessions",
                json!({"user_id": format!("stored{}", i % 100)}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// Runs `total` requests from `CONCURRENCY` workers; returns requests per second.
async fn throughput<F, Fut>(total: usize, request: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let request = request.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    assert!(request(i).await, "request {i} failed");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn bench_create(app: &AgentServer, plan: Plan, on: On) -> Vec<Row> {
    let client = app.server.client.clone();
    let url = app.server.url("/api/v1/sessions");
    let mut latencies = Vec::new();
    for i in 0..plan.creates_sequential {
        let started = Instant::now();
        let response = client
            .post(&url)
            .json(&json!({"user_id": format!("create{}", i % 100)}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.bytes().await.unwrap();
        latencies.push(ms(started.elapsed()));
    }
    let rate = throughput(plan.creates_concurrent, move |i| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(&url)
                .json(&json!({"user_id": format!("burst{}", i % 100)}))
                .send()
                .await
                .unwrap();
            response.status() == StatusCode::CREATED && response.bytes().await.is_ok()
        }
    })
    .await;
    vec![
        Row::new(
            on.name(format!(
                "create latency p50 ({} sequential)",
                plan.creates_sequential
            )),
            Some(percentile(&latencies, 50.0)),
            None,
            "ms",
            on.target("<= 2 ms", "<= 3 ms"),
        ),
        Row::new(
            on.name("create latency p99"),
            Some(percentile(&latencies, 99.0)),
            None,
            "ms",
            "",
        ),
        Row::new(
            on.name(format!("create throughput, concurrency {CONCURRENCY}")),
            Some(rate),
            None,
            "req/s",
            "",
        ),
    ]
}

async fn bench_reads(app: &AgentServer, plan: Plan, on: On) -> Vec<Row> {
    let (id, _) = app.session("reader").await;
    for _ in 0..9 {
        app.session("reader").await;
    }
    let mut rows = Vec::new();
    for (name, path) in [
        ("GET /api/v1/sessions/{id}", format!("/api/v1/sessions/{id}")),
        (
            "GET /api/v1/sessions?user_id= (10 sessions)",
            "/api/v1/sessions?user_id=reader".to_string(),
        ),
    ] {
        let client = app.server.client.clone();
        let url = app.server.url(&path);
        let mut latencies = Vec::new();
        for _ in 0..plan.reads_sequential {
            let started = Instant::now();
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes().await.unwrap();
            latencies.push(ms(started.elapsed()));
        }
        let rate = throughput(plan.reads_concurrent, move |_| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = client.get(&url).send().await.unwrap();
                response.status() == StatusCode::OK && response.bytes().await.is_ok()
            }
        })
        .await;
        rows.push(Row::new(
            on.name(format!("{name} p50, concurrency 1")),
            Some(percentile(&latencies, 50.0)),
            None,
            "ms",
            "",
        ));
        rows.push(Row::new(
            on.name(format!("{name} throughput, concurrency {CONCURRENCY}")),
            Some(rate),
            None,
            "req/s",
            on.target(">= 10000 req/s", ""),
        ));
    }
    rows
}

/// A bare CLI process driven over stdin exactly as the service drives it: the service's own
/// command line and environment shape (`SpawnSpec::command_line`: `cli_args` plus `--settings`,
/// `--await-initialize` and `--system-prompt-snapshot=off` on CLI 2.1.332), `initialize` as the
/// first stdin line, user lines from `protocol::user_line` (`client_composed`).
struct Bare {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    /// The `initialize` request has not been answered yet.
    initializing: bool,
}

/// What one bare turn took, from writing the message.
struct BareTurn {
    first_delta: Option<Duration>,
    result: Duration,
    last_delta: Option<Duration>,
    /// The text of the answer's deltas.
    text: String,
}

/// The pinned CLI's version (asked once: it runs the CLI).
fn cli_version() -> Option<String> {
    static VERSION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| cli::version(&cli_path())).clone()
}

const BARE_INIT_ID: &str = "bench_init";

impl Bare {
    /// Starts a bare CLI and waits until it has answered `initialize` (a warm process).
    async fn start(model: &ModelStandIn, home: &Path, session: SessionId, resume: bool) -> Bare {
        let mut bare = Bare::spawn(model, home, session, resume).await;
        bare.ready().await;
        bare
    }

    /// Spawns the CLI and writes `initialize`, as the service does at spawn; does not wait.
    async fn spawn(model: &ModelStandIn, home: &Path, session: SessionId, resume: bool) -> Bare {
        let workdir = home.join("work");
        let config_dir = home.join("config");
        let runtime_dir = config_dir.join("run");
        std::fs::create_dir_all(&workdir).unwrap();
        std::fs::create_dir_all(&runtime_dir).unwrap();
        let spec = SpawnSpec {
            cli: cli_path(),
            session,
            resume,
            // The same shape as the service: HOME is the user's directory, which is also the cwd.
            cwd: workdir.clone(),
            config_dir,
            home: workdir.clone(),
            options: Config::default().agent_options(),
            mcp_config: None,
            runtime_dir,
            env: vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                // What the test servers' `defaults.env` gives their agents.
                ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
            ],
            // The bare CLI talks to the stand-in directly (the service's CLIs go through its relay).
            model: ModelAccess {
                base_url: model.base_url(),
                token: Some("sk-test-stand-in".into()),
                proxy: None,
                socket: None,
                proxy_socket: None,
            },
            marker: false,
            features: CliFeatures::of(cli_version().as_deref()),
        };
        let command = spec.command_line();
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .env_clear()
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the bare CLI");
        let mut stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let init =
            protocol::control_request_line(BARE_INIT_ID, json!({"subtype": "initialize", "hooks": null}));
        stdin.write_all(format!("{init}\n").as_bytes()).await.unwrap();
        Bare {
            child,
            stdin,
            lines,
            initializing: true,
        }
    }

    /// Waits for the answer to `initialize`.
    async fn ready(&mut self) {
        while self.initializing {
            let line = self
                .lines
                .next_line()
                .await
                .unwrap()
                .expect("the bare CLI exited before answering initialize");
            self.note(&line);
        }
    }

    /// Notes an `initialize` answer; returns the parsed line.
    fn note(&mut self, line: &str) -> Option<Value> {
        let message = serde_json::from_str::<Value>(line).ok()?;
        if message["type"] == "control_response" && message["response"]["request_id"] == BARE_INIT_ID {
            assert_eq!(
                message["response"]["subtype"], "success",
                "the bare CLI refused initialize: {message}"
            );
            self.initializing = false;
        }
        Some(message)
    }

    /// One turn; timed from writing the message.
    async fn turn(&mut self, text: &str) -> BareTurn {
        let started = Instant::now();
        self.turn_from(text, started).await
    }

    /// One turn; timed from `started` (e.g. before the spawn, for a cold start).
    async fn turn_from(&mut self, text: &str, started: Instant) -> BareTurn {
        self.stdin
            .write_all(format!("{}\n", protocol::user_line(text)).as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let mut turn = BareTurn {
            first_delta: None,
            result: Duration::ZERO,
            last_delta: None,
            text: String::new(),
        };
        while let Some(line) = self.lines.next_line().await.unwrap() {
            let Some(message) = self.note(&line) else {
                continue;
            };
            match message["type"].as_str() {
                Some("stream_event") if message["event"]["delta"]["type"] == "text_delta" => {
                    turn.first_delta.get_or_insert(started.elapsed());
                    turn.last_delta = Some(started.elapsed());
                    turn.text
                        .push_str(message["event"]["delta"]["text"].as_str().unwrap_or_default());
                }
                Some("result") => {
                    turn.result = started.elapsed();
                    assert_eq!(message["is_error"], false, "bare turn failed: {message}");
                    return turn;
                }
                _ => {}
            }
        }
        panic!("the bare CLI exited mid-turn");
    }

    async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A warm service session and a warm bare CLI, each past its first turn.
async fn warm_pair(app: &AgentServer, home: &Path, user: &str) -> (String, Bare) {
    let (id, _) = app.session(user).await;
    app.chat_ok(&id, "warm up").await;
    let mut bare = Bare::start(&app.model, home, SessionId::new(), false).await;
    bare.turn("warm up").await;
    (id, bare)
}

async fn bench_warm_turn(app: &AgentServer, home: &Path, plan: Plan, on: On) -> Vec<Row> {
    let (id, mut bare) = warm_pair(app, home, "turns").await;
    let (mut service, mut cli) = (Vec::new(), Vec::new());
    for i in 0..plan.turns {
        let message = format!("turn {i}");
        let started = Instant::now();
        let answer = app.chat_ok(&id, &message).await;
        service.push(ms(started.elapsed()));
        assert_eq!(answer["text"], format!("echo: {message}"));
        cli.push(ms(bare.turn(&message).await.result));
    }
    bare.close().await;
    // Overhead per alternating pair: the two turns of a pair ran under the same machine conditions.
    let overhead: Vec<f64> = service.iter().zip(&cli).map(|(s, c)| s - c).collect();
    vec![
        Row::new(
            on.name(format!("warm turn p50 ({} alternating)", plan.turns)),
            Some(percentile(&service, 50.0)),
            Some(percentile(&cli, 50.0)),
            "ms",
            "",
        ),
        Row::new(
            on.name("warm turn p95"),
            Some(percentile(&service, 95.0)),
            Some(percentile(&cli, 95.0)),
            "ms",
            "",
        ),
        Row::new(
            on.name("warm turn overhead p50 (paired service - bare)"),
            Some(percentile(&overhead, 50.0)),
            None,
            "ms",
            on.target("<= 2 ms", "<= 5 ms"),
        ),
        Row::new(
            on.name("warm turn overhead p95 (paired service - bare)"),
            Some(percentile(&overhead, 95.0)),
            None,
            "ms",
            "",
        ),
    ]
}

async fn bench_stream(app: &AgentServer, home: &Path, plan: Plan) -> Vec<Row> {
    let (id, mut bare) = warm_pair(app, home, "streams").await;
    let (mut s_first, mut s_done, mut c_first, mut c_done) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.streams {
        let started = Instant::now();
        let mut stream = app.stream(&id, "words 200 5").await;
        let first = stream.until("text_delta").await;
        let done = stream.until("done").await;
        s_first.push(ms(first.at - started));
        s_done.push(ms(done.at - started));
        let turn = bare.turn("words 200 5").await;
        c_first.push(ms(turn.first_delta.expect("bare delta")));
        c_done.push(ms(turn.result));
    }
    bare.close().await;
    let (sf, cf) = (percentile(&s_first, 50.0), percentile(&c_first, 50.0));
    vec![
        Row::new(
            format!(
                "4. 200 words @5 ms: first text_delta p50 ({} alternating)",
                plan.streams
            ),
            Some(sf),
            Some(cf),
            "ms",
            "",
        ),
        Row::new(
            "4. first-delta overhead p50 (service - bare)",
            Some(sf - cf),
            None,
            "ms",
            "<= 5 ms",
        ),
        Row::new(
            "4. 200 words @5 ms: done / result p50",
            Some(percentile(&s_done, 50.0)),
            Some(percentile(&c_done, 50.0)),
            "ms",
            "",
        ),
    ]
}

/// Words in a text (the stand-in's `words N` answer has N).
fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

async fn bench_flood(app: &AgentServer, home: &Path, plan: Plan, on: On) -> Vec<Row> {
    let (id, mut bare) = warm_pair(app, home, "floods").await;
    let (mut s_rate, mut c_rate, mut s_done, mut c_done) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sse_events = Vec::new();
    let (mut cpu, mut words) = (Duration::ZERO, 0usize);
    for _ in 0..plan.floods {
        let started = Instant::now();
        let cpu_before = cpu_time(app.server.pid());
        let events = app.stream(&id, "words 2000 0").await.collect().await;
        cpu += cpu_time(app.server.pid()) - cpu_before;
        let done = events.last().expect("events");
        assert_eq!(done.data["type"], "done", "the stream ended with {}", done.data);
        let text = support::agent::delta_text(&events);
        assert_eq!(word_count(&text), 2000);
        words += 2000;
        sse_events.push(events.iter().filter(|e| e.data["type"] == "text_delta").count() as f64);
        let last = events
            .iter()
            .rev()
            .find(|e| e.data["type"] == "text_delta")
            .expect("deltas")
            .at;
        // Text delivered per second, up to the last piece of text (comparable with the bare CLI
        // whatever the number of SSE events the deltas were merged into).
        s_rate.push(2000.0 / (last - started).as_secs_f64());
        s_done.push(ms(done.at - started));
        let turn = bare.turn("words 2000 0").await;
        assert_eq!(word_count(&turn.text), 2000);
        c_rate.push(2000.0 / turn.last_delta.expect("bare deltas").as_secs_f64());
        c_done.push(ms(turn.result));
    }
    bare.close().await;
    // Each alternating pair compared within the pair (machine noise cancels out).
    let rate_ratios: Vec<f64> = s_rate.iter().zip(&c_rate).map(|(s, c)| s / c).collect();
    let done_ratios: Vec<f64> = s_done.iter().zip(&c_done).map(|(s, c)| s / c).collect();
    let cpu_per_word = cpu.as_secs_f64() * 1e6 / words.max(1) as f64;
    vec![
        Row::new(
            on.name(format!(
                "2000 words, no delay: text rate p50 ({} alternating)",
                plan.floods
            )),
            Some(percentile(&s_rate, 50.0)),
            Some(percentile(&c_rate, 50.0)),
            "words/s",
            "",
        ),
        Row::new(
            on.name("text rate, paired service / bare, p50"),
            Some(percentile(&rate_ratios, 50.0)),
            None,
            "x",
            ">= 0.9x",
        ),
        Row::new(
            on.name("2000 words: done / result p50"),
            Some(percentile(&s_done, 50.0)),
            Some(percentile(&c_done, 50.0)),
            "ms",
            "",
        ),
        Row::new(
            on.name("done / result, paired service / bare, p50"),
            Some(percentile(&done_ratios, 50.0)),
            None,
            "x",
            "",
        ),
        Row::new(
            on.name("SSE text_delta events per 2000-word answer, p50 (merged)"),
            Some(percentile(&sse_events, 50.0)),
            None,
            "events",
            "",
        ),
        Row::new(
            on.name("service CPU time per model delta (word)"),
            Some(cpu_per_word),
            None,
            "us",
            "",
        ),
    ]
}

/// User plus system CPU time a process has used (summed over many turns: a clock tick is 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    let per_second = rustix::param::clock_ticks_per_second();
    Duration::from_micros(ticks * 1_000_000 / per_second.max(1))
}

async fn bench_crowd(app: &AgentServer, crowd: usize) -> Vec<Row> {
    let mut ids = Vec::new();
    for _ in 0..crowd {
        ids.push(app.session("crowd").await.0);
    }
    // Warm every agent first: this measures streaming at once, not process start.
    let warm = ids.iter().map(|id| app.chat_ok(id, "warm up"));
    futures_util::future::join_all(warm).await;
    let started = Instant::now();
    let runs = ids
        .iter()
        .map(|id| stream_first_delta(app, id, "words 50 5", started));
    let results = futures_util::future::join_all(runs).await;
    let wall = started.elapsed();
    let errors = results.iter().filter(|r| r.is_none()).count();
    let firsts: Vec<f64> = results.iter().flatten().map(|d| ms(*d)).collect();
    vec![
        Row::new(
            format!("7. {crowd} sessions streaming at once: wall time"),
            Some(ms(wall)),
            None,
            "ms",
            "",
        ),
        Row::new(
            format!("7. {crowd} sessions: errors"),
            Some(errors as f64),
            None,
            "",
            "0",
        ),
        Row::new(
            format!("7. {crowd} sessions: first text_delta p95"),
            Some(percentile(&firsts, 95.0)),
            None,
            "ms",
            "",
        ),
    ]
}

/// Streams one turn; returns when its first `text_delta` arrived (from `started`), or `None` if
/// the turn did not end with `done`.
async fn stream_first_delta(
    app: &AgentServer,
    id: &str,
    message: &str,
    started: Instant,
) -> Option<Duration> {
    let response = app.stream_response(id, message).await;
    if response.status() != StatusCode::OK {
        eprintln!("   stream refused: {}", response.status());
        return None;
    }
    let mut stream = support::agent::EventStream::from_response(response);
    let mut first = None;
    while let Some(event) = stream.next().await {
        match event.data["type"].as_str() {
            Some("text_delta") => {
                first.get_or_insert(event.at - started);
            }
            Some("done") => return first,
            Some("error") => {
                eprintln!("   turn failed: {}", event.data);
                return None;
            }
            _ => {}
        }
    }
    None
}

async fn bench_cold_resume(home: &Path, plan: Plan, env: Vec<(String, String)>) -> Vec<Row> {
    // `prewarm: false`: the measured first turn after eviction starts the CLI itself, as it did
    // before prewarming (a chat never prewarms; this only keeps the create from starting one).
    let app = AgentServer::start_on(
        Storage::Sqlite,
        &[],
        "api:\n  idle_session_timeout: 1\n  prewarm: false\n",
        env,
    )
    .await;
    let (mut service, mut cli) = (Vec::new(), Vec::new());
    for i in 0..plan.resumes {
        let (id, _) = app.session("cold").await;
        app.chat_ok(&id, &format!("remember {i}")).await;
        app.wait_live_agents(0, Duration::from_secs(20)).await;
        let started = Instant::now();
        let answer = app.chat_ok(&id, "recall").await;
        service.push(ms(started.elapsed()));
        assert_eq!(answer["text"], format!("recall: remember {i}"));

        let session = SessionId::new();
        let mut bare = Bare::start(&app.model, home, session, false).await;
        bare.turn(&format!("remember {i}")).await;
        bare.close().await;
        // As the service does: spawn, `initialize`, and the message at once.
        let started = Instant::now();
        let mut resumed = Bare::spawn(&app.model, home, session, true).await;
        let turn = resumed.turn_from("recall", started).await;
        cli.push(ms(turn.result));
        assert_eq!(turn.text, format!("recall: remember {i}"));
        resumed.close().await;
    }
    let (s, c) = (percentile(&service, 50.0), percentile(&cli, 50.0));
    vec![
        Row::new(
            format!(
                "6. cold resume: first turn after eviction, CLI started by the turn, p50 ({} alternating)",
                plan.resumes
            ),
            Some(s),
            Some(c),
            "ms",
            "",
        ),
        Row::new(
            "6. cold resume overhead p50 (service - bare --resume)",
            Some(s - c),
            None,
            "ms",
            "<= 50 ms",
        ),
    ]
}

/// The previous cold first turn (docs/BENCHMARKS.md, 2026-11-23, CLI 2.1.197): the service's cold
/// resume p50, the only cold-start figure of that run.
const OLD_COLD_FIRST_TURN_MS: f64 = 397.71;
/// The previous 20-session first text_delta p95 (2026-11-23); the Python seed's was about 31x it.
const OLD_CROWD_FIRST_DELTA_MS: f64 = 305.46;

async fn delete_session(app: &AgentServer, id: &str) {
    let response = app.server.delete(&format!("/api/v1/sessions/{id}")).await;
    assert!(response.status().is_success(), "delete: {}", response.status());
}

/// Waits until `live` CLIs run and all of them sit idle (they answered `initialize`): their CPU
/// time together grows by less than a tenth of a core over half a second.
async fn wait_settled(app: &AgentServer, live: u64) {
    app.wait_live_agents(live, Duration::from_secs(60)).await;
    let pid = app.server.pid();
    let cli_cpu = || -> Duration { tree::descendants(pid).into_iter().map(cpu_time).sum() };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = cli_cpu();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cli_cpu();
        let quiet = now.saturating_sub(before) < Duration::from_millis(50);
        if quiet && tree::descendants(pid).len() as u64 >= live {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("   the CLIs did not settle in 60 s; measuring anyway");
            return;
        }
        before = now;
    }
}

/// Section 9: first turns on a server that prewarms (the default): a session's CLI starts, and is
/// sent `initialize`, when the session is created.
async fn bench_first_turns(home: &Path, plan: Plan, env: Vec<(String, String)>) -> Vec<Row> {
    let app = AgentServer::start_on(Storage::Sqlite, &[], &service_yaml(true), env).await;
    let mut rows = Vec::new();
    let n = plan.first_turns;

    // a. Created 1 s before its first message: the CLI is up by then. (`BENCH_PREWARM_WAIT_MS`
    // changes the wait, to tell a start not yet finished from the CLI's own first-turn work.)
    let wait = Duration::from_millis(
        std::env::var("BENCH_PREWARM_WAIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let (mut first, mut warm, mut b_first, mut b_warm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (id, _) = app.session("early").await;
        tokio::time::sleep(wait).await;
        let started = Instant::now();
        let answer = app.chat_ok(&id, &format!("hello {i}")).await;
        first.push(ms(started.elapsed()));
        assert_eq!(answer["text"], format!("echo: hello {i}"));
        let started = Instant::now();
        app.chat_ok(&id, &format!("again {i}")).await;
        warm.push(ms(started.elapsed()));
        delete_session(&app, &id).await;

        let mut bare = Bare::spawn(&app.model, home, SessionId::new(), false).await;
        tokio::time::sleep(wait).await;
        b_first.push(ms(bare.turn(&format!("hello {i}")).await.result));
        b_warm.push(ms(bare.turn(&format!("again {i}")).await.result));
        bare.close().await;
    }
    let gap: Vec<f64> = first.iter().zip(&warm).map(|(f, w)| f - w).collect();
    let b_gap: Vec<f64> = b_first.iter().zip(&b_warm).map(|(f, w)| f - w).collect();
    rows.push(Row::new(
        format!(
            "9a. first turn, session created {:.1} s earlier (prewarmed), p50 ({n} alternating)",
            wait.as_secs_f64()
        ),
        Some(percentile(&first, 50.0)),
        Some(percentile(&b_first, 50.0)),
        "ms",
        "",
    ));
    rows.push(Row::new(
        "9a. second (warm) turn of the same session, p50",
        Some(percentile(&warm, 50.0)),
        Some(percentile(&b_warm, 50.0)),
        "ms",
        "",
    ));
    rows.push(Row::new(
        "9a. first minus warm turn, paired p50",
        Some(percentile(&gap, 50.0)),
        Some(percentile(&b_gap, 50.0)),
        "ms",
        "<= 50 ms",
    ));

    // b. Created and messaged at once: the turn waits for the CLI the create started.
    let (mut service, mut cli) = (Vec::new(), Vec::new());
    for i in 0..n {
        let started = Instant::now();
        let (id, _) = app.session("atonce").await;
        let answer = app.chat_ok(&id, &format!("hi {i}")).await;
        service.push(ms(started.elapsed()));
        assert_eq!(answer["text"], format!("echo: hi {i}"));
        delete_session(&app, &id).await;

        let started = Instant::now();
        let mut bare = Bare::spawn(&app.model, home, SessionId::new(), false).await;
        cli.push(ms(bare.turn_from(&format!("hi {i}"), started).await.result));
        bare.close().await;
    }
    let overhead: Vec<f64> = service.iter().zip(&cli).map(|(s, c)| s - c).collect();
    rows.push(Row::new(
        format!(
            "9b. created and messaged at once: create + first turn p50 (bare: spawn + initialize + result; {n} alternating)"
        ),
        Some(percentile(&service, 50.0)),
        Some(percentile(&cli, 50.0)),
        "ms",
        format!(
            "<= {:.0} ms (half the old cold first turn, {OLD_COLD_FIRST_TURN_MS} ms)",
            OLD_COLD_FIRST_TURN_MS / 2.0
        ),
    ));
    rows.push(Row::new(
        "9b. overhead p50 (paired service - bare)",
        Some(percentile(&overhead, 50.0)),
        None,
        "ms",
        "",
    ));

    // c. A burst: sessions created and messaged at once, all together.
    let burst = plan.burst;
    let started = Instant::now();
    let runs = (0..burst).map(|_| {
        let app = &app;
        async move {
            let (id, _) = app.session("burst").await;
            let first = stream_first_delta(app, &id, "words 50 5", started).await;
            (id, first)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let wall = started.elapsed();
    let firsts: Vec<f64> = results.iter().filter_map(|(_, f)| f.map(ms)).collect();
    rows.push(Row::new(
        format!("9c. burst of {burst} sessions created and streamed at once: first text_delta p50"),
        Some(percentile(&firsts, 50.0)),
        None,
        "ms",
        "",
    ));
    rows.push(Row::new(
        format!("9c. burst of {burst}: first text_delta p95"),
        Some(percentile(&firsts, 95.0)),
        None,
        "ms",
        "",
    ));
    rows.push(Row::new(
        format!("9c. burst of {burst}: first text_delta max"),
        Some(percentile(&firsts, 100.0)),
        None,
        "ms",
        "",
    ));
    rows.push(Row::new(
        format!("9c. burst of {burst}: wall time until all done"),
        Some(ms(wall)),
        None,
        "ms",
        "",
    ));
    rows.push(Row::new(
        format!("9c. burst of {burst}: errors"),
        Some((burst - firsts.len()) as f64),
        None,
        "",
        "0",
    ));
    for (id, _) in &results {
        delete_session(&app, id).await;
    }

    // d. A 2000-word answer, by sync chat and by stream, each paired with a bare turn.
    let (id, _) = app.session("big").await;
    app.chat_ok(&id, "warm up").await;
    let mut bare = Bare::start(&app.model, home, SessionId::new(), false).await;
    bare.turn("warm up").await;
    let (mut sync, mut b_sync, mut stream, mut b_stream) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.big_answers {
        let started = Instant::now();
        let answer = app.chat_ok(&id, "words 2000").await;
        sync.push(ms(started.elapsed()));
        assert_eq!(word_count(answer["text"].as_str().unwrap_or_default()), 2000);
        b_sync.push(ms(bare.turn("words 2000").await.result));

        let started = Instant::now();
        let events = app.stream(&id, "words 2000").await.collect().await;
        let done = events.last().expect("events");
        assert_eq!(done.data["type"], "done", "the stream ended with {}", done.data);
        assert_eq!(word_count(&support::agent::delta_text(&events)), 2000);
        stream.push(ms(done.at - started));
        b_stream.push(ms(bare.turn("words 2000").await.result));
    }
    bare.close().await;
    delete_session(&app, &id).await;
    let sync_ratio: Vec<f64> = sync.iter().zip(&b_sync).map(|(s, c)| s / c).collect();
    let stream_ratio: Vec<f64> = stream.iter().zip(&b_stream).map(|(s, c)| s / c).collect();
    let big = plan.big_answers;
    rows.push(Row::new(
        format!("9d. 2000-word answer by sync chat vs bare result, p50 ({big} alternating)"),
        Some(percentile(&sync, 50.0)),
        Some(percentile(&b_sync, 50.0)),
        "ms",
        "<= 300 ms (the seed's figure)",
    ));
    rows.push(Row::new(
        "9d. sync chat / bare, paired p50",
        Some(percentile(&sync_ratio, 50.0)),
        None,
        "x",
        "",
    ));
    rows.push(Row::new(
        "9d. 2000-word answer by SSE stream (to done) vs bare result, p50",
        Some(percentile(&stream, 50.0)),
        Some(percentile(&b_stream, 50.0)),
        "ms",
        "",
    ));
    rows.push(Row::new(
        "9d. stream / bare, paired p50",
        Some(percentile(&stream_ratio, 50.0)),
        None,
        "x",
        "<= 1.05x",
    ));

    // e. Prewarmed sessions (CLIs up, no turn yet) streaming their first turn at once.
    let crowd = plan.warm_crowd;
    let mut ids = Vec::new();
    for _ in 0..crowd {
        ids.push(app.session("prewarmed").await.0);
    }
    wait_settled(&app, crowd as u64).await;
    let started = Instant::now();
    let runs = ids
        .iter()
        .map(|id| stream_first_delta(&app, id, "words 50 5", started));
    let results = futures_util::future::join_all(runs).await;
    let wall = started.elapsed();
    let firsts: Vec<f64> = results.iter().flatten().map(|d| ms(*d)).collect();
    rows.push(Row::new(
        format!("9e. {crowd} prewarmed sessions streaming at once: wall time"),
        Some(ms(wall)),
        None,
        "ms",
        "<= 2700 ms (the seed's figure)",
    ));
    rows.push(Row::new(
        format!("9e. {crowd} prewarmed sessions: first text_delta p95"),
        Some(percentile(&firsts, 95.0)),
        None,
        "ms",
        format!(
            "report (the seed's / 3: about {:.0} ms)",
            OLD_CROWD_FIRST_DELTA_MS * 31.0 / 3.0
        ),
    ));
    rows.push(Row::new(
        format!("9e. {crowd} prewarmed sessions: errors"),
        Some((crowd - firsts.len()) as f64),
        None,
        "",
        "0",
    ));
    for id in &ids {
        delete_session(&app, id).await;
    }
    rows
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cli_version = cli::version(&cli_path()).unwrap_or_else(|| "unknown".into());
    format!(
        "{cores} cores, {:.1} GiB memory, load average {} (at the end of the run), Claude Code CLI {cli_version}, {} build",
        total_kb as f64 / (1024.0 * 1024.0),
        load.join(" "),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

fn render(rows: &[Row], quick: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!("Machine: {}\n", machine()));
    if quick {
        out.push_str("Mode: --quick (smoke run: tiny counts, figures are not meaningful)\n");
    }
    out.push_str("\n| figure | service | bare CLI | ratio | target |\n|---|---:|---:|---:|---|\n");
    for row in rows {
        let ratio = match (row.service, row.bare) {
            (Some(s), Some(b)) if b != 0.0 => format!("{:.2}x", s / b),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.figure,
            fmt(row.service, row.unit),
            fmt(row.bare, row.unit),
            ratio,
            row.target
        ));
    }
    out
}
