//! The benchmark: the release service (SQLite) against the bare Claude Code CLI, side by side, on
//! the model stand-in from the test support. `cargo bench --bench service` runs it in full and
//! prints a table; `-- --markdown PATH` also writes it as markdown; `-- --quick` (and plain
//! `cargo test --bench service`) runs a short smoke of every measurement.

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_agent_http::agent::{cli, command::cli_args, tree};
use claude_agent_http::config::Config;
use claude_agent_http::domain::SessionId;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use support::agent::{AgentServer, cli_path};
use support::model::ModelStandIn;

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

fn fmt(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "-".into(),
        Some(v) if unit == "req/s" || unit == "events/s" || unit == "sessions" => format!("{v:.0} {unit}"),
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
    let yaml = "api:\n  max_sessions: 1000000\n  max_sessions_per_user: 1000000\n  max_live_agents: 128\n  \
                max_concurrent_requests: 128\n  idle_session_timeout: 3600\n";
    let app = AgentServer::start_with_env(yaml, quiet.clone()).await;
    let service_pid = app.server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = service_rss(service_pid);

    let mut stored = 0;
    if wanted(1) {
        eprintln!("1. session create");
        rows.extend(bench_create(&app, plan).await);
        stored = plan.creates_sequential + plan.creates_concurrent;
    }
    if wanted(8) {
        create_sessions(&app, plan.stored_for_memory.saturating_sub(stored)).await;
        stored = stored.max(plan.stored_for_memory);
    }
    let rss_stored = service_rss(service_pid);
    if wanted(2) {
        eprintln!("2. reads");
        rows.extend(bench_reads(&app, plan).await);
    }
    let bare_home = tempfile::tempdir().expect("tempdir");
    if wanted(3) {
        eprintln!("3. warm turn");
        rows.extend(bench_warm_turn(&app, bare_home.path(), plan).await);
    }
    if wanted(4) {
        eprintln!("4. streaming latency");
        rows.extend(bench_stream(&app, bare_home.path(), plan).await);
    }
    if wanted(5) {
        eprintln!("5. streaming throughput");
        rows.extend(bench_flood(&app, bare_home.path(), plan).await);
    }
    if wanted(7) {
        eprintln!("7. concurrency");
        for &crowd in plan.crowds {
            rows.extend(bench_crowd(&app, crowd).await);
        }
    }
    if !wanted(8) {
        drop(app);
        if wanted(6) {
            eprintln!("6. cold resume");
            rows.extend(bench_cold_resume(bare_home.path(), plan, quiet).await);
        }
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
    if wanted(6) {
        eprintln!("6. cold resume");
        rows.extend(bench_cold_resume(bare_home.path(), plan, quiet).await);
    }
    rows
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

async fn bench_create(app: &AgentServer, plan: Plan) -> Vec<Row> {
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
            format!("1. create latency p50 ({} sequential)", plan.creates_sequential),
            Some(percentile(&latencies, 50.0)),
            None,
            "ms",
            "<= 2 ms",
        ),
        Row::new(
            "1. create latency p99",
            Some(percentile(&latencies, 99.0)),
            None,
            "ms",
            "",
        ),
        Row::new(
            format!("1. create throughput, concurrency {CONCURRENCY}"),
            Some(rate),
            None,
            "req/s",
            "",
        ),
    ]
}

async fn bench_reads(app: &AgentServer, plan: Plan) -> Vec<Row> {
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
            format!("2. {name} p50, concurrency 1"),
            Some(percentile(&latencies, 50.0)),
            None,
            "ms",
            "",
        ));
        rows.push(Row::new(
            format!("2. {name} throughput, concurrency {CONCURRENCY}"),
            Some(rate),
            None,
            "req/s",
            ">= 10000 req/s",
        ));
    }
    rows
}

/// A bare CLI process driven over stdin with the service's own flags.
struct Bare {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// What one bare turn took, from writing the message.
struct BareTurn {
    first_delta: Option<Duration>,
    result: Duration,
    deltas: usize,
    last_delta: Option<Duration>,
}

impl Bare {
    async fn start(model: &ModelStandIn, home: &Path, session: SessionId, resume: bool) -> Bare {
        let options = Config::default().agent_options();
        let workdir = home.join("work");
        std::fs::create_dir_all(&workdir).unwrap();
        let mut child = Command::new(cli_path())
            .args(cli_args(session, resume, &options, None))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // The same shape as the service: HOME is the user's directory, which is also the cwd.
            .env("HOME", &workdir)
            .env("PWD", &workdir)
            .env("CLAUDE_CONFIG_DIR", home.join("config"))
            .env("ANTHROPIC_BASE_URL", model.base_url())
            .env("ANTHROPIC_API_KEY", "sk-test-stand-in")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .current_dir(&workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the bare CLI");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Bare { child, stdin, lines }
    }

    async fn turn(&mut self, text: &str) -> BareTurn {
        let line = json!({"type": "user", "message": {"role": "user", "content": text}, "parent_tool_use_id": null, "session_id": "default"});
        let started = Instant::now();
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let mut turn = BareTurn {
            first_delta: None,
            result: Duration::ZERO,
            deltas: 0,
            last_delta: None,
        };
        while let Some(line) = self.lines.next_line().await.unwrap() {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match message["type"].as_str() {
                Some("stream_event") if message["event"]["delta"]["type"] == "text_delta" => {
                    turn.deltas += 1;
                    turn.first_delta.get_or_insert(started.elapsed());
                    turn.last_delta = Some(started.elapsed());
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

async fn bench_warm_turn(app: &AgentServer, home: &Path, plan: Plan) -> Vec<Row> {
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
            format!("3. warm turn p50 ({} alternating)", plan.turns),
            Some(percentile(&service, 50.0)),
            Some(percentile(&cli, 50.0)),
            "ms",
            "",
        ),
        Row::new(
            "3. warm turn p95",
            Some(percentile(&service, 95.0)),
            Some(percentile(&cli, 95.0)),
            "ms",
            "",
        ),
        Row::new(
            "3. warm turn overhead p50 (paired service - bare)",
            Some(percentile(&overhead, 50.0)),
            None,
            "ms",
            "<= 2 ms",
        ),
        Row::new(
            "3. warm turn overhead p95 (paired service - bare)",
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

async fn bench_flood(app: &AgentServer, home: &Path, plan: Plan) -> Vec<Row> {
    let (id, mut bare) = warm_pair(app, home, "floods").await;
    let (mut service, mut cli) = (Vec::new(), Vec::new());
    let (mut cpu, mut streamed) = (Duration::ZERO, 0usize);
    for _ in 0..plan.floods {
        let started = Instant::now();
        let cpu_before = cpu_time(app.server.pid());
        let events = app.stream(&id, "words 2000 0").await.collect().await;
        cpu += cpu_time(app.server.pid()) - cpu_before;
        let deltas = events.iter().filter(|e| e.data["type"] == "text_delta").count();
        streamed += events.len();
        let last = events
            .iter()
            .rev()
            .find(|e| e.data["type"] == "text_delta")
            .expect("deltas")
            .at;
        service.push(deltas as f64 / (last - started).as_secs_f64());
        let turn = bare.turn("words 2000 0").await;
        cli.push(turn.deltas as f64 / turn.last_delta.expect("bare deltas").as_secs_f64());
    }
    bare.close().await;
    let (s, c) = (percentile(&service, 50.0), percentile(&cli, 50.0));
    // The rate of each alternating pair, compared within the pair (machine noise cancels out).
    let ratios: Vec<f64> = service.iter().zip(&cli).map(|(s, c)| s / c).collect();
    let cpu_per_event = cpu.as_secs_f64() * 1e6 / streamed.max(1) as f64;
    vec![
        Row::new(
            format!(
                "5. 2000 words, no delay: text_delta events/s p50 ({} alternating)",
                plan.floods
            ),
            Some(s),
            Some(c),
            "events/s",
            "",
        ),
        Row::new(
            "5. stream rate, paired service / bare, p50",
            Some(percentile(&ratios, 50.0)),
            None,
            "x",
            ">= 0.9x",
        ),
        Row::new(
            "5. service CPU time per streamed event",
            Some(cpu_per_event),
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
    let runs = ids.iter().map(|id| async move {
        let response = app.stream_response(id, "words 50 5").await;
        if response.status() != StatusCode::OK {
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
                Some("error") => return None,
                _ => {}
            }
        }
        None
    });
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

async fn bench_cold_resume(home: &Path, plan: Plan, env: Vec<(String, String)>) -> Vec<Row> {
    let app = AgentServer::start_with_env("api:\n  idle_session_timeout: 1\n", env).await;
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
        let started = Instant::now();
        let mut resumed = Bare::start(&app.model, home, session, true).await;
        resumed.turn("recall").await;
        cli.push(ms(started.elapsed()));
        resumed.close().await;
    }
    let (s, c) = (percentile(&service, 50.0), percentile(&cli, 50.0));
    vec![
        Row::new(
            format!(
                "6. cold resume: first turn after eviction p50 ({} alternating)",
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
