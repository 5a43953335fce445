//! Metrics and logs: an operator scrapes `GET /metrics` (as an admin on the API, or without a
//! credential on the `metrics.listen` address) and sees turns, agents, HTTP requests by route, the
//! model's tokens and store latency move as users work; with `--log-json` every line the actor
//! logs during a turn names the request, session, user and turn.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::agent::AgentServer;
use crate::support::model::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, OUTPUT_TOKENS};
use crate::support::server::{client_with_key, plain_client, random_admin_key};
use crate::support::{TestServer, expect_json};

/// One scrape, parsed: every sample as (name, labels, value).
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the Prometheus text format (comments skipped).
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("a value in {line}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').expect("label=value");
                        (key.to_string(), value.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels, value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sum of the samples of `name` that carry every label of `labels` (0 if none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, have, _)| {
                sample == name
                    && labels
                        .iter()
                        .all(|(key, value)| have.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    /// The distinct values of `label` among the samples of `name`.
    fn values_of(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|(sample, _, _)| sample == name)
            .filter_map(|(_, labels, _)| labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

/// Scrapes `url` with `client`; asserts 200 and the Prometheus content type.
async fn scrape_with(client: &reqwest::Client, url: &str) -> Scrape {
    let response = client.get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    Scrape::parse(response.text().await.unwrap())
}

/// Scrapes the server's API as its admin.
async fn scrape(server: &TestServer) -> Scrape {
    scrape_with(&server.client, &server.url("/metrics")).await
}

/// Scrapes until `ready` holds (relay records land as the answer's last byte passes, which may
/// be just after the turn's end); panics with the last scrape after 20 s.
async fn scrape_until(server: &TestServer, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(server).await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "no {what} in:\n{}", scrape.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The model requests the stand-in answered, as the relay's counters must show them.
fn relayed_messages(scrape: &Scrape) -> f64 {
    scrape.sum("claude_agent_relay_requests_total", &[("status", "200")])
}

#[tokio::test]
async fn metrics_move_as_turns_run() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let before = scrape(&app.server).await;
    assert_eq!(before.sum("claude_agent_turns_started_total", &[]), 0.0);
    assert_eq!(
        before.sum(
            "claude_agent_http_requests_total",
            &[
                ("route", "/api/v1/sessions"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        1.0,
        "the session's creation is counted under its route"
    );

    let first = app.chat_ok(&id, "hello there").await;
    let models = app.model.requests() as f64;
    let after = scrape_until(&app.server, "relay records of the turn", |s| {
        relayed_messages(s) >= models
    })
    .await;
    assert_eq!(after.sum("claude_agent_turns_started_total", &[]), 1.0);
    assert_eq!(
        after.sum("claude_agent_turns_finished_total", &[("outcome", "done")]),
        1.0
    );
    assert_eq!(
        after.sum("claude_agent_turn_duration_seconds_count", &[("outcome", "done")]),
        1.0
    );
    assert!(after.sum("claude_agent_turn_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(after.sum("claude_agent_turn_first_delta_seconds_count", &[]), 1.0);
    assert_eq!(
        after.sum("claude_agent_agent_spawns_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(after.sum("claude_agent_agent_crashes_total", &[]), 0.0);
    assert_eq!(after.sum("claude_agent_live_agents", &[]), 1.0);
    assert_eq!(
        after.sum(
            "claude_agent_http_requests_total",
            &[("route", "/api/v1/chat"), ("method", "POST"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        after.sum(
            "claude_agent_http_request_duration_seconds_count",
            &[("route", "/api/v1/chat"), ("method", "POST")]
        ),
        1.0
    );
    // The relay saw exactly what the stand-in answered, and the tokens it reported, by model.
    assert!(models >= 1.0);
    assert_eq!(relayed_messages(&after), models);
    let named = after.values_of("claude_agent_relay_tokens_total", "model");
    assert!(
        !named.is_empty() && named.iter().all(|m| m.starts_with("claude")),
        "models: {named:?}"
    );
    for model in &named {
        let requests = after.sum(
            "claude_agent_relay_requests_total",
            &[("model", model), ("status", "200")],
        );
        for (kind, per_request) in [
            ("input", INPUT_TOKENS),
            ("output", OUTPUT_TOKENS),
            ("cache_read", CACHE_READ_TOKENS),
            ("cache_write", CACHE_WRITE_TOKENS),
        ] {
            assert_eq!(
                after.sum(
                    "claude_agent_relay_tokens_total",
                    &[("model", model), ("kind", kind)]
                ),
                requests * per_request as f64,
                "{kind} tokens of {model}"
            );
        }
    }
    // The event writer's commits and the session reads the API made were timed.
    for operation in ["events.finish_turn", "sessions.get", "sessions.insert"] {
        assert!(
            after.sum(
                "claude_agent_store_operation_duration_seconds_count",
                &[("operation", operation)]
            ) >= 1.0,
            "{operation} was not timed:\n{}",
            after.text
        );
    }

    // A request on a path with an id is counted under its route, never its path.
    let response = app.server.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    app.server.get("/no/such/path").await;
    let second = app.chat_ok(&id, "once more").await;
    let models = app.model.requests() as f64;
    let later = scrape_until(&app.server, "relay records of the second turn", |s| {
        relayed_messages(s) >= models
    })
    .await;
    assert_eq!(later.sum("claude_agent_turns_started_total", &[]), 2.0);
    assert_eq!(
        later.sum("claude_agent_turns_finished_total", &[("outcome", "done")]),
        2.0
    );
    assert_eq!(
        later.sum(
            "claude_agent_http_requests_total",
            &[("route", "/api/v1/sessions/{session_id}"), ("method", "GET")]
        ),
        1.0
    );
    assert_eq!(
        later.sum(
            "claude_agent_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        !later.text.contains(&id) && !later.text.contains("/no/such/path"),
        "a raw path became a label:\n{}",
        later.text
    );
    assert_eq!(
        later.sum("claude_agent_relay_tokens_total", &[("kind", "input")]),
        models * INPUT_TOKENS as f64
    );
    // What the model requests cost is what the turns reported (both from the relay's prices).
    let reported = first["total_cost_usd"].as_f64().unwrap() + second["total_cost_usd"].as_f64().unwrap();
    let counted = later.sum("claude_agent_relay_cost_usd", &[]);
    assert!(reported > 0.0, "{first} {second}");
    assert!(
        (counted - reported).abs() < 1e-9,
        "metrics count ${counted}, the turns reported ${reported}"
    );
    assert!(
        !later.text.contains("user=\""),
        "per-user labels are off by default:\n{}",
        later.text
    );
}

#[tokio::test]
async fn a_failed_turn_is_counted_by_its_error_code() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let body = expect_json(app.chat(&id, "fail 500").await, StatusCode::BAD_GATEWAY).await;
    assert_eq!(body["code"], "model_error");
    let scrape = scrape_until(&app.server, "the failed turn and its model request", |s| {
        s.sum("claude_agent_relay_requests_total", &[("status", "500")]) >= 1.0
    })
    .await;
    assert_eq!(
        scrape.values_of("claude_agent_turns_finished_total", "outcome"),
        vec!["model_error".to_string()]
    );
    assert_eq!(
        scrape.sum("claude_agent_turns_finished_total", &[("outcome", "model_error")]),
        1.0
    );
    assert_eq!(
        scrape.sum(
            "claude_agent_http_requests_total",
            &[("route", "/api/v1/chat"), ("status", "502")]
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_on_the_api_are_for_admins_and_the_scrape_listener_needs_no_credential() {
    let admin_key = random_admin_key();
    let server = TestServer::start_with_env(
        "metrics:\n  listen: 127.0.0.1:0\n",
        vec![
            ("CLAUDE_AGENT_AUTH__MODE".into(), "on".into()),
            ("CLAUDE_AGENT_AUTH__ADMIN_KEY".into(), admin_key.clone()),
        ],
    )
    .await;
    let url = server.url("/metrics");
    let anonymous = plain_client().get(&url).send().await.unwrap();
    expect_json(anonymous, StatusCode::UNAUTHORIZED).await;
    let user_key = server.user_key("alice").await.expect("a user key");
    let user = client_with_key(&user_key).get(&url).send().await.unwrap();
    let body = expect_json(user, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "forbidden", "{body}");
    let scrape = scrape_with(&client_with_key(&admin_key), &url).await;
    assert!(
        scrape.sum(
            "claude_agent_http_requests_total",
            &[("route", "/metrics"), ("status", "403")]
        ) >= 1.0,
        "{}",
        scrape.text
    );

    // The scrape listener: /metrics without a credential, and nothing else.
    let scrape_base = format!("http://{}", scrape_listener(&server).await);
    let open = scrape_with(&plain_client(), &format!("{scrape_base}/metrics")).await;
    assert!(
        open.text
            .contains("# TYPE claude_agent_http_requests_total counter")
    );
    for path in ["/api/v1/sessions", "/health", "/"] {
        let response = plain_client()
            .get(format!("{scrape_base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let api = plain_client()
        .get(server.url("/api/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api.status(),
        StatusCode::UNAUTHORIZED,
        "the API itself still needs a key"
    );
}

/// The `metrics.listen` address the server bound (it logs it before it writes its port file).
async fn scrape_listener(server: &TestServer) -> String {
    let log = server.log();
    let line = log
        .lines()
        .find(|line| line.contains("serving metrics"))
        .unwrap_or_else(|| panic!("no metrics listener in the log:\n{log}"));
    let start = line.find("metrics.listen=").expect("the address") + "metrics.listen=".len();
    line[start..].split_whitespace().next().unwrap().to_string()
}

#[tokio::test]
async fn per_user_labels_appear_only_when_switched_on() {
    let app = AgentServer::start("metrics:\n  per_user_labels: true\n").await;
    let (alice, _) = app.session("alice").await;
    let (bob, _) = app.session("bob").await;
    app.chat_ok(&alice, "hello").await;
    app.chat_ok(&alice, "again").await;
    app.chat_ok(&bob, "hi").await;
    let models = app.model.requests() as f64;
    let scrape = scrape_until(&app.server, "relay records of three turns", |s| {
        relayed_messages(s) >= models
    })
    .await;
    assert_eq!(
        scrape.sum("claude_agent_turns_started_total", &[("user", "alice")]),
        2.0
    );
    assert_eq!(
        scrape.sum(
            "claude_agent_turns_finished_total",
            &[("user", "bob"), ("outcome", "done")]
        ),
        1.0
    );
    assert_eq!(
        scrape.values_of("claude_agent_relay_tokens_total", "user"),
        vec!["alice".to_string(), "bob".to_string()]
    );
    let alice_input = scrape.sum(
        "claude_agent_relay_tokens_total",
        &[("user", "alice"), ("kind", "input")],
    );
    let alice_requests = scrape.sum(
        "claude_agent_relay_requests_total",
        &[("user", "alice"), ("status", "200")],
    );
    assert!(alice_requests >= 2.0);
    assert_eq!(alice_input, alice_requests * INPUT_TOKENS as f64);
}

#[tokio::test]
async fn json_log_lines_of_a_turn_carry_its_request_session_user_and_turn() {
    // `--log-json` goes before the server's own arguments; prewarm off, so the agent starts
    // inside the first turn and its start is logged there too.
    let app = AgentServer::start_wrapped(
        &["sh", "-c", "exec \"$0\" --log-json \"$@\""],
        "api:\n  prewarm: false\n",
        Vec::new(),
    )
    .await;
    let (id, _) = app.session("alice").await;
    let mut asked = Vec::new();
    for message in ["hello", "again"] {
        let response = app.chat(&id, message).await;
        assert_eq!(response.status(), StatusCode::OK);
        asked.push(response.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    let turns = expect_json(
        app.server.get(&format!("/api/v1/sessions/{id}/turns")).await,
        StatusCode::OK,
    )
    .await;

    let log = app.server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}")))
        .collect();
    let positions = |message: &str| -> Vec<usize> {
        (0..lines.len())
            .filter(|&i| lines[i]["message"] == message && lines[i]["session.id"] == id.as_str())
            .collect()
    };
    let (starts, ends) = (positions("turn started"), positions("turn finished"));
    assert_eq!((starts.len(), ends.len()), (2, 2), "two turns logged:\n{log}");
    for (n, request_id) in asked.iter().enumerate() {
        let turn_id = turns["turns"][n]["turn_id"].as_str().unwrap();
        // What the session's actor (and its admission) logged while the turn ran.
        let of_turn: Vec<&Value> = lines[starts[n]..=ends[n]]
            .iter()
            .filter(|line| {
                line["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("claude_agent_http::runtime"))
            })
            .collect();
        for line in &of_turn {
            assert_eq!(line["request.id"], request_id.as_str(), "{line}");
            assert_eq!(line["session.id"], id.as_str(), "{line}");
            assert_eq!(line["user.id"], "alice", "{line}");
            assert_eq!(line["turn.id"], turn_id, "{line}");
            // Not the fields of whichever request happened to start the session's actor.
            assert!(line.get("http.route").is_none(), "{line}");
        }
        if n == 0 {
            assert!(
                of_turn.iter().any(|line| line["message"] == "agent started"),
                "the agent's start was logged during the first turn:\n{log}"
            );
        }
    }
}
