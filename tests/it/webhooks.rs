//! Webhooks: an operator configures endpoints and the events each wants; the service POSTs each
//! event as signed JSON, retries an endpoint that fails, keeps what it has not delivered through a
//! restart, and shows admins every delivery. The endpoints here are receivers on 127.0.0.1 written
//! below; each checks every signature the way the README tells a receiver to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::agent::AgentServer;
use crate::support::server::{client_with_key, plain_client, random_admin_key};
use crate::support::{TestServer, expect_json};

/// The secret every endpoint of these stories signs with.
const SECRET: &str = "whsec-test-0123456789abcdef";

/// How long a story waits for something the service does in the background.
const PATIENCE: Duration = Duration::from_secs(60);

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    fn event(&self) -> String {
        self.json()["type"].as_str().unwrap().to_string()
    }

    /// Whether `X-Webhook-Signature` is right for this body under `secret`, as the README says to
    /// check it: `t=<unix>,v1=<hex>`, the HMAC-SHA256 of `"<t>.<body>"`, and `t` recent.
    fn signed_with(&self, secret: &str) -> bool {
        let header = self.header("x-webhook-signature");
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", hex)) => signatures.push(hex.to_string()),
                _ => {}
            }
        }
        let Some(timestamp) = timestamp else {
            return false;
        };
        let age = (chrono::Utc::now().timestamp() - timestamp).abs();
        if age > 300 || self.header("x-webhook-timestamp") != timestamp.to_string() {
            return false;
        }
        signatures.iter().any(|hex| {
            let Ok(signature) = hex::decode(hex) else {
                return false;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{timestamp}.{}", self.body).as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
    }
}

/// What a receiver has seen and will answer.
#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer next, in order; then `otherwise`.
    next: Mutex<VecDeque<u16>>,
    otherwise: Mutex<u16>,
}

/// An endpoint on 127.0.0.1 that records every POST and answers as told (200 unless told). It
/// runs on a thread of its own, so it answers while the story waits for a server to stop.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

/// Told as a status: the request is never answered.
const HANG: u16 = 0;

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        *state.otherwise.lock().unwrap() = 200;
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap()
            })
        });
        Receiver { url, state }
    }

    /// Answers these statuses to the next requests, in order.
    fn answer_next(&self, statuses: &[u16]) {
        self.state.next.lock().unwrap().extend(statuses);
    }

    /// Answers this status from now on (after any told with `answer_next`).
    fn answer_always(&self, status: u16) {
        *self.state.otherwise.lock().unwrap() = status;
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Polls until a request of `event` that was answered 2xx has arrived; returns it.
    async fn delivered(&self, event: &str) -> Received {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = self
                .received()
                .into_iter()
                .find(|r| r.event() == event && (200..300).contains(&r.answered))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} delivered; received {:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answer = state
        .next
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(*state.otherwise.lock().unwrap());
    state.received.lock().unwrap().push(Received {
        headers,
        body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
        answered: answer,
    });
    if answer == HANG {
        std::future::pending::<()>().await;
    }
    StatusCode::from_u16(answer).unwrap()
}

/// The config of endpoints, each as (receiver, events), and quick retries.
fn webhooks_yaml(endpoints: &[(&Receiver, &[&str])]) -> String {
    let mut yaml = String::from("webhooks:\n");
    for (receiver, events) in endpoints {
        yaml.push_str(&format!(
            "  - url: {}\n    events: [{}]\n    secret: {SECRET}\n",
            receiver.url,
            events.join(", ")
        ));
    }
    yaml.push_str("webhook_delivery:\n  retry_backoff_ms: 50\n  retry_backoff_max_seconds: 1\n");
    yaml
}

const ALL_EVENTS: &[&str] = &[
    "turn.completed",
    "turn.failed",
    "budget.exceeded",
    "session.deleted",
];

/// The deliveries listing (as an admin), with `query` (e.g. `&status=pending`).
async fn deliveries(server: &TestServer, query: &str) -> Vec<Value> {
    let page = expect_json(
        server
            .get(&format!("/api/v1/admin/webhooks/deliveries?limit=1000{query}"))
            .await,
        StatusCode::OK,
    )
    .await;
    page["deliveries"].as_array().unwrap().clone()
}

/// Polls the listing until `check` holds for the deliveries of event `event_id`; returns them.
async fn deliveries_of(server: &TestServer, event_id: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found: Vec<Value> = deliveries(server, "")
            .await
            .into_iter()
            .filter(|d| d["event_id"] == event_id)
            .collect();
        if check(&found) {
            return found;
        }
        assert!(Instant::now() < deadline, "deliveries of {event_id}: {found:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The session's turns, oldest first.
async fn turns(server: &TestServer, session: &str) -> Vec<Value> {
    let page = expect_json(
        server.get(&format!("/api/v1/sessions/{session}/turns")).await,
        StatusCode::OK,
    )
    .await;
    page["turns"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_completed_turn_is_posted_signed_and_listed_as_delivered() {
    let receiver = Receiver::start().await;
    let app = AgentServer::start(&webhooks_yaml(&[(&receiver, &["turn.completed"])])).await;
    let (session, _) = app.session("alice").await;
    assert_eq!(app.chat_ok(&session, "hello").await["text"], "echo: hello");

    let delivery = receiver.delivered("turn.completed").await;
    assert!(delivery.signed_with(SECRET), "{:?}", delivery.headers);
    assert!(
        !delivery.signed_with("another secret of 16+"),
        "the signature is the secret's"
    );
    let mut tampered = delivery.clone();
    tampered.body = tampered.body.replace("alice", "mallory");
    assert!(!tampered.signed_with(SECRET), "the signature covers the body");
    assert!(
        delivery.header("content-type").starts_with("application/json"),
        "{:?}",
        delivery.headers
    );
    assert_eq!(delivery.header("x-webhook-event"), "turn.completed");
    assert_eq!(delivery.header("x-webhook-attempt"), "1");
    let body = delivery.json();
    assert_eq!(delivery.header("x-webhook-id"), body["id"]);
    assert_eq!(body["type"], "turn.completed");
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    let turn = turns(&app.server, &session).await.pop().unwrap();
    let data = &body["data"];
    assert_eq!(data["session_id"], session.as_str());
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["turn_id"], turn["turn_id"]);
    assert_eq!(data["status"], "completed");
    assert_eq!(data["usage"], turn["usage"], "{data}");
    assert!(data["usage"]["output_tokens"].as_u64().unwrap() > 0, "{data}");
    assert_eq!(data["total_cost_usd"], turn["total_cost_usd"]);
    assert!(
        data["duration_ms"].is_u64() && data["num_turns"].is_u64(),
        "{data}"
    );
    assert!(
        !delivery.body.contains("hello"),
        "neither the message nor the answer is sent"
    );

    let listed = deliveries_of(&app.server, body["id"].as_str().unwrap(), |found| {
        found.first().is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let listed = &listed[0];
    assert_eq!(listed["event"], "turn.completed");
    assert_eq!(listed["url"], receiver.url.as_str());
    assert_eq!(listed["attempts"], 1);
    assert_eq!(listed["last_http_status"], 200);
    assert_eq!(listed["id"], delivery.header("x-webhook-delivery"));
    assert_eq!(listed["payload"], body);
    assert!(listed["delivered_at"].is_string() && listed["next_attempt_at"].is_null());
    let page = app
        .server
        .get("/api/v1/admin/webhooks/deliveries")
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains(SECRET), "no secret is ever shown: {page}");
}

#[tokio::test]
async fn failed_and_interrupted_turns_are_posted_as_turn_failed() {
    let receiver = Receiver::start().await;
    let app = AgentServer::start(&webhooks_yaml(&[(&receiver, &["turn.failed"])])).await;
    let (session, _) = app.session("alice").await;

    let events = app.stream(&session, "fail 500").await.collect().await;
    assert_eq!(events.last().unwrap().data["code"], "model_error");
    let failed = receiver.delivered("turn.failed").await;
    assert!(failed.signed_with(SECRET));
    let data = failed.json()["data"].clone();
    assert_eq!(data["session_id"], session.as_str());
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["status"], "failed");
    assert_eq!(data["error"]["code"], "model_error");
    assert!(!data["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(data["turn_id"], turns(&app.server, &session).await[0]["turn_id"]);

    let mut running = app.stream_a_running_sleep(&session).await;
    assert_eq!(app.interrupt(&session).await["interrupted"], true);
    running.until("error").await;
    let deadline = Instant::now() + PATIENCE;
    let interrupted = loop {
        let found = receiver
            .received()
            .into_iter()
            .find(|r| r.json()["data"]["error"]["code"] == "interrupted");
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "{:?}", receiver.received());
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(interrupted.signed_with(SECRET));
    let data = interrupted.json()["data"].clone();
    assert_eq!(data["status"], "interrupted");
    assert_eq!(data["turn_id"], turns(&app.server, &session).await[1]["turn_id"]);
    assert!(
        receiver.received().iter().all(|r| r.event() == "turn.failed"),
        "only the subscribed event is posted"
    );
}

#[tokio::test]
async fn a_request_the_relay_refused_for_a_budget_is_posted_naming_the_limit() {
    let receiver = Receiver::start().await;
    // A daily budget of nothing: the turn's first model request is refused.
    let yaml = format!(
        "{}budgets:\n  user_daily_usd: 0\n",
        webhooks_yaml(&[(&receiver, ALL_EVENTS)])
    );
    let app = AgentServer::start(&yaml).await;
    let (session, _) = app.session("alice").await;
    let events = app.stream(&session, "hello").await.collect().await;
    assert_eq!(
        events.last().unwrap().data["code"],
        "budget_exceeded",
        "{events:?}"
    );
    let budget = receiver.delivered("budget.exceeded").await;
    assert!(budget.signed_with(SECRET));
    let data = budget.json()["data"].clone();
    assert_eq!(data["limit"], "user_daily_usd", "{data}");
    assert_eq!(data["scope"], "user_daily");
    assert_eq!(data["limit_usd"], 0.0);
    assert_eq!(data["spent_usd"], 0.0);
    assert_eq!(data["user_id"], "alice");
    assert!(
        data["message"].as_str().unwrap().contains("user_daily_usd"),
        "{data}"
    );
    assert_eq!(app.model.requests(), 0, "the refused request reached no model");
}

#[tokio::test]
async fn a_spent_budget_is_posted_as_budget_exceeded_beside_turn_failed() {
    let receiver = Receiver::start().await;
    let app = AgentServer::start_with_env(
        &webhooks_yaml(&[(&receiver, ALL_EVENTS)]),
        vec![("CLAUDE_AGENT_DEFAULTS__MAX_BUDGET_USD".into(), "0.000001".into())],
    )
    .await;
    let (session, _) = app.session("alice").await;
    let events = app.stream(&session, "hello").await.collect().await;
    assert_eq!(
        events.last().unwrap().data["code"],
        "budget_exceeded",
        "{events:?}"
    );

    let budget = receiver.delivered("budget.exceeded").await;
    assert!(budget.signed_with(SECRET));
    let data = budget.json()["data"].clone();
    assert_eq!(data["session_id"], session.as_str());
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["limit"], "max_budget_usd");
    assert_eq!(data["limit_usd"], 0.000001);
    let turn = turns(&app.server, &session).await.pop().unwrap();
    assert_eq!(data["turn_id"], turn["turn_id"]);
    assert_eq!(data["spent_usd"], turn["total_cost_usd"]);
    assert!(data["spent_usd"].as_f64().unwrap() >= 0.000001, "{data}");
    let failed = receiver.delivered("turn.failed").await;
    assert_eq!(failed.json()["data"]["error"]["code"], "budget_exceeded");
    assert_eq!(failed.json()["data"]["turn_id"], turn["turn_id"]);
    assert_ne!(failed.json()["id"], budget.json()["id"], "two events, two ids");
}

#[tokio::test]
async fn deleting_a_session_is_posted_to_the_endpoints_that_asked_for_it() {
    let turns_only = Receiver::start().await;
    let deletions = Receiver::start().await;
    let server = TestServer::start(&webhooks_yaml(&[
        (&turns_only, &["turn.completed", "turn.failed"]),
        (&deletions, &["session.deleted"]),
    ]))
    .await;
    let alice = server.user("alice");
    let created = alice
        .client()
        .await
        .post(server.url("/api/v1/sessions"))
        .json(&json!({"user_id": "alice", "subdir": "project", "metadata": {"ticket": "T-42"}}))
        .send()
        .await
        .unwrap();
    let created = expect_json(created, StatusCode::CREATED).await;
    let session = created["session_id"].as_str().unwrap();
    let deleted = alice
        .client()
        .await
        .delete(server.url(&format!("/api/v1/sessions/{session}")))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    let delivery = deletions.delivered("session.deleted").await;
    assert!(delivery.signed_with(SECRET));
    let body = delivery.json();
    let data = &body["data"];
    assert_eq!(data["session_id"], session);
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["reason"], "deleted");
    assert_eq!(data["session"]["subdir"], "project");
    assert_eq!(data["session"]["metadata"], json!({"ticket": "T-42"}));
    let micros = |at: &Value| {
        chrono::DateTime::parse_from_rfc3339(at.as_str().unwrap())
            .unwrap()
            .timestamp_micros()
    };
    assert_eq!(
        micros(&data["session"]["created_at"]),
        micros(&created["created_at"]),
        "as kept (to the microsecond)"
    );
    // One event makes its deliveries at once: only the endpoint that asked for it got one.
    let listed = deliveries_of(&server, body["id"].as_str().unwrap(), |found| !found.is_empty()).await;
    let urls: Vec<&str> = listed.iter().map(|d| d["url"].as_str().unwrap()).collect();
    assert_eq!(urls, vec![deletions.url.as_str()]);
    assert!(turns_only.received().is_empty());
}

#[tokio::test]
async fn an_endpoint_that_fails_gets_the_same_event_again_until_it_answers_2xx() {
    let receiver = Receiver::start().await;
    receiver.answer_next(&[500, 503]);
    let server = TestServer::start(&webhooks_yaml(&[(&receiver, ALL_EVENTS)])).await;
    let session = server.user("alice").create_session(None).await;
    let session = session["session_id"].as_str().unwrap();
    let deleted = server.delete(&format!("/api/v1/sessions/{session}")).await;
    assert!(deleted.status().is_success());

    let delivered = receiver.delivered("session.deleted").await;
    let attempts = receiver.received();
    assert_eq!(
        attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    for (number, attempt) in attempts.iter().enumerate() {
        assert!(attempt.signed_with(SECRET), "attempt {number}");
        assert_eq!(attempt.body, delivered.body, "the same body every time");
        assert_eq!(attempt.header("x-webhook-id"), delivered.header("x-webhook-id"));
        assert_eq!(attempt.header("x-webhook-attempt"), (number + 1).to_string());
    }
    let event_id = delivered.json()["id"].as_str().unwrap().to_string();
    let listed = deliveries_of(&server, &event_id, |found| {
        found.first().is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(listed[0]["attempts"], 3);
    assert_eq!(listed[0]["last_http_status"], 200);
    assert!(listed[0]["last_error"].is_null());
}

#[tokio::test]
async fn an_endpoint_that_never_answers_2xx_is_given_up_on_after_the_last_attempt() {
    let receiver = Receiver::start().await;
    receiver.answer_always(500);
    let yaml = format!(
        "{}  max_attempts: 2\n",
        webhooks_yaml(&[(&receiver, &["session.deleted"])])
    );
    let server = TestServer::start(&yaml).await;
    let session = server.user("alice").create_session(None).await;
    let session = session["session_id"].as_str().unwrap();
    assert!(
        server
            .delete(&format!("/api/v1/sessions/{session}"))
            .await
            .status()
            .is_success()
    );
    let deadline = Instant::now() + PATIENCE;
    let failed = loop {
        let failed = deliveries(&server, "&status=failed").await;
        if !failed.is_empty() {
            break failed;
        }
        assert!(Instant::now() < deadline, "{:?}", deliveries(&server, "").await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(failed[0]["attempts"], 2);
    assert_eq!(failed[0]["last_http_status"], 500);
    assert!(
        failed[0]["last_error"].as_str().unwrap().contains("500"),
        "{failed:?}"
    );
    assert_eq!(receiver.received().len(), 2, "no attempt after the last");
    assert!(deliveries(&server, "&status=pending").await.is_empty());
}

#[tokio::test]
async fn a_delivery_pending_while_the_service_is_stopped_is_delivered_after_a_restart() {
    let receiver = Receiver::start().await;
    receiver.answer_always(503);
    let server = TestServer::start_durable(&webhooks_yaml(&[(&receiver, ALL_EVENTS)]), Vec::new()).await;
    let session = server.user("alice").create_session(None).await;
    let session = session["session_id"].as_str().unwrap().to_string();
    assert!(
        server
            .delete(&format!("/api/v1/sessions/{session}"))
            .await
            .status()
            .is_success()
    );
    // Tried and refused at least once: pending.
    let deadline = Instant::now() + PATIENCE;
    let pending = loop {
        let pending = deliveries(&server, "&status=pending").await;
        if pending.first().is_some_and(|d| d["attempts"].as_u64() >= Some(1)) {
            break pending;
        }
        assert!(Instant::now() < deadline, "{:?}", deliveries(&server, "").await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(pending[0]["last_http_status"], 503);
    let event_id = pending[0]["event_id"].as_str().unwrap().to_string();

    let mut server = server;
    server.stop();
    // Only the restarted service can get a 2xx: the first one is gone.
    receiver.answer_always(200);
    let server = server.restart().await;
    let delivered = receiver.delivered("session.deleted").await;
    assert!(delivered.signed_with(SECRET));
    assert_eq!(delivered.json()["id"], event_id.as_str());
    assert_eq!(delivered.json()["data"]["session_id"], session.as_str());
    let listed = deliveries_of(&server, &event_id, |found| {
        found.first().is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    assert!(listed[0]["attempts"].as_u64().unwrap() >= 2, "{listed:?}");
    assert_eq!(
        receiver.received().iter().filter(|r| r.answered == 200).count(),
        1,
        "delivered once"
    );
}

#[tokio::test]
async fn a_turn_cut_short_by_a_crash_is_posted_as_turn_failed_by_the_next_run() {
    let receiver = Receiver::start().await;
    let app = AgentServer::start_durable(&webhooks_yaml(&[(&receiver, &["turn.failed"])])).await;
    let (session, _) = app.session("alice").await;
    let running = app.stream_a_running_sleep(&session).await;
    let app = app.crash_and_restart().await;
    drop(running);
    let failed = receiver.delivered("turn.failed").await;
    assert!(failed.signed_with(SECRET));
    let data = failed.json()["data"].clone();
    assert_eq!(data["error"]["code"], "service_restarted");
    assert_eq!(data["status"], "failed");
    assert_eq!(data["session_id"], session.as_str());
    assert_eq!(data["turn_id"], turns(&app.server, &session).await[0]["turn_id"]);
}

#[tokio::test]
async fn a_turn_ended_by_a_shutdown_is_posted_by_this_run_or_the_next() {
    let receiver = Receiver::start().await;
    let app = AgentServer::start_durable(&webhooks_yaml(&[(&receiver, &["turn.failed"])])).await;
    let (session, _) = app.session("alice").await;
    let running = app.stream_a_running_sleep(&session).await;
    // A graceful stop ends the turn and writes its event out before the service exits.
    let app = app.restart().await;
    drop(running);
    let failed = receiver.delivered("turn.failed").await;
    assert!(failed.signed_with(SECRET));
    let data = failed.json()["data"].clone();
    assert_eq!(data["error"]["code"], "service_shutdown");
    assert_eq!(data["turn_id"], turns(&app.server, &session).await[0]["turn_id"]);
}

#[tokio::test]
async fn an_attempt_under_way_at_a_stop_is_cut_short_recorded_and_made_again_by_the_next_run() {
    let receiver = Receiver::start().await;
    // The first request is never answered, and the service would wait long for it: longer than a
    // stop may take (the test support gives it 30 s).
    receiver.answer_next(&[HANG]);
    let yaml = format!(
        "{}  timeout_seconds: 300\n",
        webhooks_yaml(&[(&receiver, &["session.deleted"])])
    );
    let server = TestServer::start_durable(&yaml, Vec::new()).await;
    let session = server.user("alice").create_session(None).await;
    let session = session["session_id"].as_str().unwrap();
    assert!(
        server
            .delete(&format!("/api/v1/sessions/{session}"))
            .await
            .status()
            .is_success()
    );
    let deadline = Instant::now() + PATIENCE;
    while receiver.received().is_empty() {
        assert!(Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let server = server.restart().await;
    let delivered = receiver.delivered("session.deleted").await;
    // Attempt 1 was recorded when the stop cut it short: the next run makes attempt 2 (had it
    // been left claimed, its lease would run out first and the attempt would be 1 again).
    assert_eq!(delivered.header("x-webhook-attempt"), "2");
    assert_eq!(receiver.received()[0].header("x-webhook-attempt"), "1");
    let event_id = delivered.json()["id"].as_str().unwrap().to_string();
    let listed = deliveries_of(&server, &event_id, |found| {
        found.first().is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(listed[0]["attempts"], 2);
}

#[tokio::test]
async fn only_admins_see_the_deliveries() {
    let admin_key = random_admin_key();
    let server = TestServer::start_with_env(
        "auth:\n  mode: on\n",
        vec![("CLAUDE_AGENT_AUTH__ADMIN_KEY".into(), admin_key.clone())],
    )
    .await;
    let path = "/api/v1/admin/webhooks/deliveries";
    let user_key = server.user_key("alice").await.unwrap();
    let as_user = client_with_key(&user_key)
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_json(as_user, StatusCode::FORBIDDEN).await["code"],
        "forbidden"
    );
    let anonymous = plain_client().get(server.url(path)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let admin = client_with_key(&admin_key);
    let page = expect_json(admin.get(server.url(path)).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(page["deliveries"], json!([]));
    for bad in ["?status=lost", "?event=turn.done", "?limit=0", "?limit=1001"] {
        let answer = admin
            .get(server.url(&format!("{path}{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}
