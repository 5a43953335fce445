//! What the service tells its operators besides its answers: every Prometheus metric's name and
//! the one typed function that records it (HTTP requests, turns, agent processes, the relay's
//! requests and tokens, store latency, budget refusals), the recorder that renders them, and the
//! JSON log line format ([`json_log`]).
//!
//! A leaf: it names no other layer, so every layer may call it. Metrics go through the `metrics`
//! facade, whose recorder is process-wide by that crate's design (recording needs no handle passed
//! down through every layer); before [`Metrics::install`] every recording function does nothing,
//! which is what unit tests get. The label sets are bounded: HTTP requests by the matched route
//! template (never the raw path), models by a capped set of names, users only behind
//! `metrics.per_user_labels`.

pub mod json_log;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "claude_agent_http_requests_total";
/// Seconds from a request's arrival to its response's head, by `route` and `method`.
pub const HTTP_REQUEST_DURATION: &str = "claude_agent_http_request_duration_seconds";
/// Turns started (taken by a session's actor).
pub const TURNS_STARTED: &str = "claude_agent_turns_started_total";
/// Turns finished, by `outcome`: `done` or the terminal error's code.
pub const TURNS_FINISHED: &str = "claude_agent_turns_finished_total";
/// Seconds from a turn's start to its terminal event, by `outcome`.
pub const TURN_DURATION: &str = "claude_agent_turn_duration_seconds";
/// Seconds from a turn's start to its first text delta.
pub const TURN_FIRST_DELTA: &str = "claude_agent_turn_first_delta_seconds";
/// Sessions with a live agent process now.
pub const LIVE_AGENTS: &str = "claude_agent_live_agents";
/// Agent processes spawned, by `result` (`ok` or `failed`).
pub const AGENT_SPAWNS: &str = "claude_agent_agent_spawns_total";
/// Idle agent processes stopped to make room for another session's.
pub const AGENT_EVICTIONS: &str = "claude_agent_agent_evictions_total";
/// Agent processes that exited without being asked to.
pub const AGENT_CRASHES: &str = "claude_agent_agent_crashes_total";
/// Model requests through the relay, by `model` and `status`.
pub const RELAY_REQUESTS: &str = "claude_agent_relay_requests_total";
/// Tokens the model reported, by `model` and `kind` (`input`, `output`, `cache_read`, `cache_write`).
pub const RELAY_TOKENS: &str = "claude_agent_relay_tokens_total";
/// US dollars spent on model requests since the start, by `model` (a gauge: the `metrics` facade
/// counts in integers only; it only ever grows).
pub const RELAY_COST: &str = "claude_agent_relay_cost_usd";
/// Seconds a store operation took, by `operation` (e.g. `events.append`, `sessions.get`).
pub const STORE_DURATION: &str = "claude_agent_store_operation_duration_seconds";
/// Model requests refused for a budget, by `limit`.
pub const BUDGET_REFUSALS: &str = "claude_agent_budget_refusals_total";

/// The label a user's id goes under where `metrics.per_user_labels` is on.
const USER_LABEL: &str = "user";
/// Distinct model names kept as labels; any further one is counted as `other`, so a client naming
/// made-up models cannot grow the metrics without bound.
const MAX_MODELS: usize = 32;

const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TURN_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const FIRST_DELTA_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How often histograms' pending samples are folded in between scrapes (so memory stays flat
/// when nobody scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Whether metrics carry the user's id (`metrics.per_user_labels`). Process-wide, like the
/// recorder it configures; set once by [`Metrics::install`].
static PER_USER: AtomicBool = AtomicBool::new(false);
/// The installed recorder's handle: a second install in the same process reuses it.
static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();
/// The model names seen so far, up to [`MAX_MODELS`].
static MODELS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// What the metrics need from the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsSettings {
    /// Label turns, relay requests, tokens and cost with the user's id.
    pub per_user_labels: bool,
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct TelemetryError(#[from] BuildError);

/// The installed recorder: renders every metric in the Prometheus text format.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Installs the Prometheus recorder for this process (once; a second call reuses it) and,
    /// inside a Tokio runtime, its upkeep task.
    pub fn install(settings: MetricsSettings) -> Result<Metrics, TelemetryError> {
        PER_USER.store(settings.per_user_labels, Ordering::Relaxed);
        if let Some(handle) = INSTALLED.get() {
            return Ok(Metrics {
                handle: handle.clone(),
            });
        }
        let builder = [
            (HTTP_REQUEST_DURATION, HTTP_BUCKETS),
            (TURN_DURATION, TURN_BUCKETS),
            (TURN_FIRST_DELTA, FIRST_DELTA_BUCKETS),
            (STORE_DURATION, STORE_BUCKETS),
        ]
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            // Buckets make these true Prometheus histograms (aggregatable), not summaries.
            builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
        })?;
        let handle = builder.install_recorder()?;
        let _ = INSTALLED.set(handle.clone());
        describe();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        Ok(Metrics { handle })
    }

    /// Every metric, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The `# HELP` lines.
fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by matched route, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its response's head (a stream's start), by route and method"
    );
    describe_counter!(TURNS_STARTED, "Turns started");
    describe_counter!(
        TURNS_FINISHED,
        "Turns finished, by outcome (done or the error code)"
    );
    describe_histogram!(
        TURN_DURATION,
        metrics::Unit::Seconds,
        "Turn durations, by outcome"
    );
    describe_histogram!(
        TURN_FIRST_DELTA,
        metrics::Unit::Seconds,
        "Time from a turn's start to its first text delta"
    );
    describe_gauge!(LIVE_AGENTS, "Sessions with a live agent process");
    describe_counter!(AGENT_SPAWNS, "Agent processes spawned, by result");
    describe_counter!(AGENT_EVICTIONS, "Idle agent processes stopped to make room");
    describe_counter!(
        AGENT_CRASHES,
        "Agent processes that exited without being asked to"
    );
    describe_counter!(
        RELAY_REQUESTS,
        "Model requests through the relay, by model and status"
    );
    describe_counter!(RELAY_TOKENS, "Tokens the model reported, by model and kind");
    describe_gauge!(
        RELAY_COST,
        "US dollars spent on model requests since the start, by model"
    );
    describe_histogram!(
        STORE_DURATION,
        metrics::Unit::Seconds,
        "Store operation latency, by operation"
    );
    describe_counter!(BUDGET_REFUSALS, "Model requests refused for a budget, by limit");
}

/// One HTTP request answered: `route` is the matched route template (`None`: no route matched).
pub fn http_request(route: Option<&str>, method: &str, status: u16, elapsed: Duration) {
    let route = route.unwrap_or("unmatched").to_string();
    // Any method is accepted on the wire; only the usual ones are worth a label of their own.
    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_REQUEST_DURATION, "route" => route, "method" => method).record(elapsed.as_secs_f64());
}

/// A turn of `user_id`'s session started.
pub fn turn_started(user_id: &str) {
    counter!(TURNS_STARTED, &user_labels(user_id)).increment(1);
}

/// A turn ended: `outcome` is `done` or its error code; `elapsed` since it started.
pub fn turn_finished(user_id: &str, outcome: &str, elapsed: Duration) {
    let mut labels = user_labels(user_id);
    labels.push(("outcome", outcome.to_string()));
    counter!(TURNS_FINISHED, &labels).increment(1);
    histogram!(TURN_DURATION, "outcome" => outcome.to_string()).record(elapsed.as_secs_f64());
}

/// A turn's first text delta arrived, `elapsed` after the turn started.
pub fn turn_first_delta(elapsed: Duration) {
    histogram!(TURN_FIRST_DELTA).record(elapsed.as_secs_f64());
}

/// How many sessions have a live agent process (set when metrics are rendered).
pub fn live_agents(count: u64) {
    gauge!(LIVE_AGENTS).set(count as f64);
}

/// An agent process was spawned (`ok`), or could not be.
pub fn agent_spawned(ok: bool) {
    counter!(AGENT_SPAWNS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// An idle agent process was stopped to make room.
pub fn agent_evicted() {
    counter!(AGENT_EVICTIONS).increment(1);
}

/// An agent process exited without being asked to.
pub fn agent_crashed() {
    counter!(AGENT_CRASHES).increment(1);
}

/// Tokens of one model request, as the answer reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens (not counting cache reads and writes).
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
}

/// One model request through the relay, for `user_id`: the model it named (if any), the status
/// answered, the tokens reported and what it cost.
pub fn relay_request(user_id: &str, model: Option<&str>, status: u16, tokens: Tokens, cost_usd: f64) {
    let mut labels = user_labels(user_id);
    labels.push(("model", model_label(model)));
    let mut with_status = labels.clone();
    with_status.push(("status", status.to_string()));
    counter!(RELAY_REQUESTS, &with_status).increment(1);
    for (kind, count) in [
        ("input", tokens.input),
        ("output", tokens.output),
        ("cache_read", tokens.cache_read),
        ("cache_write", tokens.cache_write),
    ] {
        let mut with_kind = labels.clone();
        with_kind.push(("kind", kind.to_string()));
        counter!(RELAY_TOKENS, &with_kind).increment(count);
    }
    if cost_usd.is_finite() && cost_usd > 0.0 {
        gauge!(RELAY_COST, &labels).increment(cost_usd);
    }
}

/// A model request was refused because it would start over `limit` (e.g. `user_daily_usd`).
pub fn budget_refused(limit: &str) {
    counter!(BUDGET_REFUSALS, "limit" => limit.to_string()).increment(1);
}

/// Runs one store operation and records how long it took under `operation` (e.g.
/// `sessions.get`); answers what it answered.
pub async fn store_operation<T>(operation: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = work.await;
    histogram!(STORE_DURATION, "operation" => operation).record(started.elapsed().as_secs_f64());
    result
}

/// The `user` label, where `metrics.per_user_labels` is on.
fn user_labels(user_id: &str) -> Vec<(&'static str, String)> {
    match PER_USER.load(Ordering::Relaxed) {
        true => vec![(USER_LABEL, user_id.to_string())],
        false => Vec::new(),
    }
}

/// The model as a label: `unknown` when none was named, `other` for a name that is not a plain
/// model id or once [`MAX_MODELS`] distinct names were seen.
fn model_label(model: Option<&str>) -> String {
    let Some(model) = model else {
        return "unknown".into();
    };
    let plain = !model.is_empty()
        && model.len() <= 100
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'[' | b']')
        });
    if !plain {
        return "other".into();
    }
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    let models = models.get_or_insert_with(HashSet::new);
    if models.contains(model) || models.len() < MAX_MODELS {
        models.insert(model.to_string());
        return model.to_string();
    }
    "other".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_plain_names_and_bounded() {
        assert_eq!(model_label(None), "unknown");
        assert_eq!(model_label(Some("a model\nwith lines")), "other");
        assert_eq!(model_label(Some("claude-sonnet-4-5")), "claude-sonnet-4-5");
        for n in 0..MAX_MODELS * 2 {
            model_label(Some(&format!("made-up-{n}")));
        }
        assert_eq!(model_label(Some("made-up-new")), "other");
        // A name already seen keeps its own label.
        assert_eq!(model_label(Some("claude-sonnet-4-5")), "claude-sonnet-4-5");
    }
}
