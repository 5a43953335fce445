//! Usage and budgets, through the real CLI and the model stand-in: every model request the relay
//! passes is recorded with the tokens the model reported and the cost from the service's price
//! table; a turn's `done` reports them; a budget stops the next model request (never an answer
//! mid-stream), ends the turn with `budget_exceeded`, and the conversation goes on once an admin
//! raises the budget.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::agent::AgentServer;
use crate::support::model::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, OUTPUT_TOKENS};
use crate::support::server::{client_with_key, random_admin_key};
use crate::support::{Storage, expect_json};

/// Every model the CLI names is priced alike: a request of the stand-in (10 input, 5 output, 300
/// cache-read and 20 cache-write tokens) costs 10*1 + 5*2 + 300*3 + 20*4 = 1000 millionths of a
/// dollar, so $0.001.
const PRICING: &str = "pricing:\n  models:\n    claude: {input: 1, output: 2, cache_read: 3, cache_write: 4}\n    claude-sonnet: {input: 1, output: 2, cache_read: 3, cache_write: 4}\n    claude-haiku: {input: 1, output: 2, cache_read: 3, cache_write: 4}\n    claude-opus: {input: 1, output: 2, cache_read: 3, cache_write: 4}\n  fallback: {input: 1, output: 2, cache_read: 3, cache_write: 4}\n";
const REQUEST_USD: f64 = 0.001;

/// A server with authentication on, the test prices and `extra_yaml`; its admin key.
async fn start(extra_yaml: &str) -> (AgentServer, reqwest::Client) {
    let admin = random_admin_key();
    let app = AgentServer::start_on(
        Storage::of_run(),
        &[],
        &format!("auth:\n  mode: on\n{PRICING}{extra_yaml}"),
        vec![("CLAUDE_AGENT_AUTH__ADMIN_KEY".into(), admin.clone())],
    )
    .await;
    (app, client_with_key(&admin))
}

/// A user's key, made by the admin.
async fn user_client(app: &AgentServer, admin: &reqwest::Client, user: &str) -> reqwest::Client {
    let made = expect_json(
        admin
            .post(app.server.url("/api/v1/admin/keys"))
            .json(&json!({"role": "user", "user_id": user}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    client_with_key(made["key"].as_str().unwrap())
}

async fn new_session(app: &AgentServer, client: &reqwest::Client) -> String {
    let created = expect_json(
        client
            .post(app.server.url("/api/v1/sessions"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    created["session_id"].as_str().unwrap().to_string()
}

/// Sends `message` and answers the status and body.
async fn chat(
    app: &AgentServer,
    client: &reqwest::Client,
    session: &str,
    message: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(app.server.url("/api/v1/chat"))
        .json(&json!({"session_id": session, "message": message}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(app: &AgentServer, client: &reqwest::Client, path: &str) -> Value {
    expect_json(
        client.get(app.server.url(path)).send().await.unwrap(),
        StatusCode::OK,
    )
    .await
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn usage_totals_equal_the_tokens_the_model_reported_and_done_reports_the_turn_s_own() {
    let (app, admin) = start("").await;
    let alice = user_client(&app, &admin, "alice").await;
    let session = new_session(&app, &alice).await;
    let (status, first) = chat(&app, &alice, &session, "hello").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let after_first = app.model.requests();
    let (status, second) = chat(&app, &alice, &session, "tool Bash {\"command\": \"echo hi\"}").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let requests = app.model.requests();
    assert!(requests >= after_first + 2, "a tool turn takes two model calls");

    // The session's totals are exactly what the stand-in reported, request by request.
    let usage = get(&app, &alice, &format!("/api/v1/sessions/{session}/usage")).await;
    let totals = &usage["totals"];
    assert_eq!(totals["requests"], requests, "{usage}");
    assert_eq!(totals["input_tokens"], requests * INPUT_TOKENS);
    assert_eq!(totals["output_tokens"], requests * OUTPUT_TOKENS);
    assert_eq!(totals["cache_read_input_tokens"], requests * CACHE_READ_TOKENS);
    assert_eq!(
        totals["cache_creation_input_tokens"],
        requests * CACHE_WRITE_TOKENS
    );
    assert!(
        close(
            totals["cost_usd"].as_f64().unwrap(),
            requests as f64 * REQUEST_USD
        ),
        "{usage}"
    );

    // Each turn's done reports its own requests, priced by the service.
    let mut turns_total = 0;
    for (answer, calls) in [(&first, after_first), (&second, requests - after_first)] {
        assert_eq!(answer["usage"]["input_tokens"], calls * INPUT_TOKENS, "{answer}");
        assert_eq!(
            answer["usage"]["cache_read_input_tokens"],
            calls * CACHE_READ_TOKENS
        );
        assert!(
            close(
                answer["total_cost_usd"].as_f64().unwrap(),
                calls as f64 * REQUEST_USD
            ),
            "{answer}"
        );
        turns_total += calls;
    }
    assert_eq!(turns_total, requests, "no request outside a turn");
    let by_turn = usage["by_turn"].as_array().unwrap();
    assert_eq!(by_turn.len(), 2, "{usage}");
    // The turn records (history) carry the same figures.
    let turns = get(&app, &alice, &format!("/api/v1/sessions/{session}/turns")).await;
    let recorded: u64 = turns["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["usage"]["input_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(recorded, requests * INPUT_TOKENS, "{turns}");

    // Reports: alice's own by day; an admin's of everyone by session; bob sees nothing of alice's.
    let report = get(&app, &alice, "/api/v1/usage?group_by=day").await;
    assert_eq!(report["user_id"], "alice");
    assert_eq!(report["totals"]["requests"], requests);
    assert_eq!(report["groups"].as_array().unwrap().len(), 1, "{report}");
    let everyone = get(&app, &admin, "/api/v1/usage?group_by=session").await;
    assert_eq!(everyone["user_id"], Value::Null);
    assert_eq!(everyone["groups"][0]["key"], session.as_str());
    let bob = user_client(&app, &admin, "bob").await;
    let of_bob = get(&app, &bob, "/api/v1/usage").await;
    assert_eq!(of_bob["totals"]["requests"], 0);
    let peek = bob
        .get(app.server.url(&format!("/api/v1/sessions/{session}/usage")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        peek.status(),
        StatusCode::NOT_FOUND,
        "another user's session is not found"
    );
    let other = bob
        .get(app.server.url("/api/v1/usage?user_id=alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let bad = alice
        .get(app.server.url("/api/v1/usage?group_by=week"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// Sends messages until one is refused for its budget; answers how many went through and the
/// refusal's body.
async fn spend_until_refused(app: &AgentServer, client: &reqwest::Client, session: &str) -> (u32, Value) {
    for done in 0..10 {
        let (status, body) = chat(app, client, session, &format!("message {done}")).await;
        if status == StatusCode::OK {
            continue;
        }
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        return (done, body);
    }
    panic!("ten messages and no refusal");
}

#[tokio::test]
async fn two_users_spend_against_their_budgets_at_once_and_go_on_after_a_raise() {
    // Each user may spend $0.0025 a day: two requests ($0.002) start under it, the third does not.
    let (app, admin) = start("budgets:\n  user_daily_usd: 0.0025\n").await;
    let alice = user_client(&app, &admin, "alice").await;
    let bob = user_client(&app, &admin, "bob").await;
    let (alice_session, bob_session) = (new_session(&app, &alice).await, new_session(&app, &bob).await);
    let ((alice_turns, alice_refusal), (bob_turns, bob_refusal)) = tokio::join!(
        spend_until_refused(&app, &alice, &alice_session),
        spend_until_refused(&app, &bob, &bob_session),
    );
    for (turns, refusal) in [(alice_turns, &alice_refusal), (bob_turns, &bob_refusal)] {
        assert_eq!(refusal["code"], "budget_exceeded", "{refusal}");
        let detail = refusal.to_string();
        assert!(detail.contains("user_daily_usd"), "which limit: {detail}");
        assert!(detail.contains("0.003"), "what was spent: {detail}");
        assert_eq!(
            turns, 3,
            "three one-request turns, the third over the limit: {detail}"
        );
    }
    // What each spent: three requests, $0.003, not a cent of the other's.
    for user in ["alice", "bob"] {
        let budget = get(&app, &admin, &format!("/api/v1/admin/users/{user}/budget")).await;
        assert!(
            close(budget["spent_today"]["cost_usd"].as_f64().unwrap(), 0.003),
            "{budget}"
        );
        assert!(close(
            budget["effective"]["user_daily_usd"].as_f64().unwrap(),
            0.0025
        ));
        assert_eq!(budget["override"], Value::Null);
    }
    let calls = app.model.requests();
    // Refused turns reached no model, and their record says why.
    let turns = get(&app, &alice, &format!("/api/v1/sessions/{alice_session}/turns")).await;
    let last = turns["turns"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "failed", "{turns}");
    assert_eq!(last["error_code"], "budget_exceeded");

    // The admin raises alice's budget: her next message goes on with the same conversation.
    let raised = expect_json(
        admin
            .put(app.server.url("/api/v1/admin/users/alice/budget"))
            .json(&json!({"user_daily_usd": 1.0}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(raised["override"], json!({"user_daily_usd": 1.0}));
    let (status, answer) = chat(&app, &alice, &alice_session, "recall").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("message 0") && text.contains("message 1"),
        "the conversation went on: {text}"
    );
    assert_eq!(app.model.requests(), calls + 1);
    // Bob's did not change.
    let (status, refused) = chat(&app, &bob, &bob_session, "again").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["code"], "budget_exceeded");
    assert_eq!(
        app.model.requests(),
        calls + 1,
        "bob's refused turn reached no model"
    );

    // Removing the override brings the default back for alice.
    let removed = expect_json(
        admin
            .delete(app.server.url("/api/v1/admin/users/alice/budget"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(removed["override"], Value::Null);
    let (status, _) = chat(&app, &alice, &alice_session, "once more").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_turn_budget_stops_the_next_model_request_not_the_answer_and_the_next_turn_starts_afresh() {
    // One request's tokens (335) fit a turn; a tool call's second request does not start.
    let (app, admin) = start("budgets:\n  turn_tokens: 300\n").await;
    let alice = user_client(&app, &admin, "alice").await;
    let session = new_session(&app, &alice).await;
    let response = alice
        .post(app.server.url("/api/v1/chat/stream"))
        .json(&json!({"session_id": session, "message": "tool Bash {\"command\": \"echo hi\"}"}))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        kinds.contains(&"tool_use"),
        "the first answer came whole: {kinds:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error", "{body}");
    assert_eq!(last["code"], "budget_exceeded");
    assert!(last["error"].as_str().unwrap().contains("turn_tokens"), "{last}");
    // A new turn has a budget of its own.
    let (status, answer) = chat(&app, &alice, &session, "hello").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn only_admins_set_budgets_and_bad_amounts_change_nothing() {
    let (app, admin) = start("budgets:\n  session_usd: 5\n").await;
    let alice = user_client(&app, &admin, "alice").await;
    let refused = alice
        .put(app.server.url("/api/v1/admin/users/alice/budget"))
        .json(&json!({"user_daily_usd": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let looked = alice
        .get(app.server.url("/api/v1/admin/users/alice/budget"))
        .send()
        .await
        .unwrap();
    assert_eq!(looked.status(), StatusCode::FORBIDDEN);
    for bad in [
        json!({"user_daily_usd": -1}),
        json!({"weekly_usd": 3}),
        json!({"turn_tokens": 1.5}),
    ] {
        let response = admin
            .put(app.server.url("/api/v1/admin/users/alice/budget"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let response = admin
        .put(app.server.url("/api/v1/admin/users/..%2Fetc/budget"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let budget = get(&app, &admin, "/api/v1/admin/users/alice/budget").await;
    assert_eq!(budget["override"], Value::Null, "nothing was stored: {budget}");
    assert!(close(budget["effective"]["session_usd"].as_f64().unwrap(), 5.0));
    // null lifts a default for one user.
    let lifted = expect_json(
        admin
            .put(app.server.url("/api/v1/admin/users/alice/budget"))
            .json(&json!({"session_usd": null}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(lifted["effective"]["session_usd"], Value::Null, "{lifted}");
    assert_eq!(lifted["override"], json!({"session_usd": null}));
}
