//! Who is calling: with `auth.mode: on` every request but the public ones needs a credential (an API
//! key or a JWT); a user reaches nothing of another's (another user's session looks exactly like
//! an unknown one, and nothing changes); an admin acts for anyone; keys are made, listed and
//! revoked through the admin API and the command line, and a revoked key stops working at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::support::server::{client_with_key, plain_client, random_admin_key};
use crate::support::{Storage, TestServer, expect_json};

/// A server that requires authentication, with a known admin key, plus `extra_yaml`.
async fn server_with_auth(extra_yaml: &str) -> (TestServer, String) {
    let admin = random_admin_key();
    let server = TestServer::start_with_env(
        &format!("auth:\n  mode: on\n{extra_yaml}"),
        vec![("CLAUDE_AGENT_AUTH__ADMIN_KEY".into(), admin.clone())],
    )
    .await;
    (server, admin)
}

/// Makes a key through the admin API; returns (key, its JSON).
async fn make_key(server: &TestServer, admin: &Client, body: Value) -> (String, Value) {
    let response = admin
        .post(server.url("/api/v1/admin/keys"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let created = expect_json(response, StatusCode::CREATED).await;
    (created["key"].as_str().unwrap().to_string(), created)
}

async fn user_client(server: &TestServer, admin: &Client, user: &str) -> Client {
    let (key, _) = make_key(server, admin, json!({"role": "user", "user_id": user})).await;
    client_with_key(&key)
}

/// Every request naming one session, as (what, method, path, body).
fn session_requests(id: &str) -> Vec<(&'static str, reqwest::Method, String, Option<Value>)> {
    use reqwest::Method;
    let turn = uuid::Uuid::new_v4();
    vec![
        ("get", Method::GET, format!("/api/v1/sessions/{id}"), None),
        (
            "resume",
            Method::POST,
            format!("/api/v1/sessions/{id}/resume"),
            None,
        ),
        (
            "interrupt",
            Method::POST,
            format!("/api/v1/sessions/{id}/interrupt"),
            None,
        ),
        (
            "events",
            Method::GET,
            format!("/api/v1/sessions/{id}/events?follow=false"),
            None,
        ),
        (
            "events (SSE)",
            Method::GET,
            format!("/api/v1/sessions/{id}/events"),
            None,
        ),
        ("turns", Method::GET, format!("/api/v1/sessions/{id}/turns"), None),
        (
            "turn",
            Method::GET,
            format!("/api/v1/sessions/{id}/turns/{turn}"),
            None,
        ),
        (
            "messages",
            Method::GET,
            format!("/api/v1/sessions/{id}/messages"),
            None,
        ),
        (
            "chat",
            Method::POST,
            "/api/v1/chat".into(),
            Some(json!({"session_id": id, "message": "hello"})),
        ),
        (
            "chat/stream",
            Method::POST,
            "/api/v1/chat/stream".into(),
            Some(json!({"session_id": id, "message": "hello"})),
        ),
        ("delete", Method::DELETE, format!("/api/v1/sessions/{id}"), None),
    ]
}

async fn send(
    server: &TestServer,
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn another_users_session_is_answered_exactly_as_an_unknown_one_and_nothing_changes() {
    let (server, admin_key) = server_with_auth("").await;
    let admin = client_with_key(&admin_key);
    let alice = user_client(&server, &admin, "alice").await;
    let bob = user_client(&server, &admin, "bob").await;

    // Alice leaves user_id out: the session is hers.
    let (status, created) = send(
        &server,
        &alice,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({"subdir": "proj"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["user_id"], "alice");
    let id = created["session_id"].as_str().unwrap().to_string();
    let before = send(
        &server,
        &alice,
        reqwest::Method::GET,
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;

    let unknown = uuid::Uuid::new_v4().to_string();
    for ((what, method, path, body), (_, unknown_method, unknown_path, unknown_body)) in
        session_requests(&id).into_iter().zip(session_requests(&unknown))
    {
        let (status, answer) = send(&server, &bob, method, &path, body).await;
        let (unknown_status, unknown_answer) =
            send(&server, &bob, unknown_method, &unknown_path, unknown_body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "bob {what}: {answer}");
        assert_eq!(unknown_status, StatusCode::NOT_FOUND, "unknown {what}");
        assert_eq!(answer["code"], "session_not_found", "bob {what}: {answer}");
        assert_eq!(
            answer["detail"].as_str().unwrap().replace(&id, "ID"),
            unknown_answer["detail"].as_str().unwrap().replace(&unknown, "ID"),
            "{what}: the same words as for an unknown id"
        );
    }
    // Nothing of Alice's changed: not even its last activity.
    let after = send(
        &server,
        &alice,
        reqwest::Method::GET,
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(after, before);

    // Lists: each their own; another user's list is forbidden; an admin sees all.
    let (_, own) = send(&server, &bob, reqwest::Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(own, json!([]));
    let (status, body) = send(
        &server,
        &bob,
        reqwest::Method::GET,
        "/api/v1/sessions?user_id=alice",
        None,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
    let (_, hers) = send(&server, &alice, reqwest::Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(hers, json!([id]));
    let (_, all) = send(&server, &admin, reqwest::Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(all, json!([id]));

    // Bob cannot create a session for Alice, and nothing is left on disk.
    let (status, body) = send(
        &server,
        &bob,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({"user_id": "alice", "subdir": "bobs-doing"})),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
    assert!(!server.data_dir().join("users/alice/bobs-doing").exists());
    assert!(!server.data_dir().join("users/bob").exists());
    let (_, hers) = send(&server, &alice, reqwest::Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(hers, json!([id]));

    // An admin acts for anyone: reads and deletes Alice's session, creates one for Bob.
    let (status, _) = send(
        &server,
        &admin,
        reqwest::Method::GET,
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(
        &server,
        &admin,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_request")),
        "an admin must say for whom: {body}"
    );
    let (status, body) = send(
        &server,
        &admin,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({"user_id": "bob"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, bobs) = send(&server, &bob, reqwest::Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(bobs, json!([body["session_id"]]));
    let (status, _) = send(
        &server,
        &admin,
        reqwest::Method::DELETE,
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_bad_credential_of_any_kind_gets_the_same_401_and_public_routes_stay_open() {
    let (server, admin_key) = server_with_auth("").await;
    let admin = client_with_key(&admin_key);
    let (alice_key, alice_json) =
        make_key(&server, &admin, json!({"role": "user", "user_id": "alice"})).await;
    let plain = plain_client();
    let url = server.url("/api/v1/sessions");
    let mut unknown_key = alice_key.clone();
    unknown_key.replace_range(10..12, if &alice_key[10..12] == "00" { "11" } else { "00" });
    let attempts: Vec<(&str, Option<(&str, String)>)> = vec![
        ("no credential", None),
        (
            "another scheme",
            Some(("authorization", format!("Basic {alice_key}"))),
        ),
        ("an empty bearer", Some(("authorization", "Bearer ".into()))),
        ("garbage", Some(("authorization", "Bearer not-a-key".into()))),
        (
            "an unknown key",
            Some(("authorization", format!("Bearer {unknown_key}"))),
        ),
        ("an unknown X-API-Key", Some(("x-api-key", unknown_key.clone()))),
        (
            "a JWT where none is accepted",
            Some(("authorization", "Bearer a.b.c".into())),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, header) in attempts {
        let mut request = plain.get(&url);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{what}");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "one body for all: {bodies:?}"
    );

    // The key works by either header, and stops working the moment it is revoked.
    let by_bearer = plain.get(&url).bearer_auth(&alice_key).send().await.unwrap();
    assert_eq!(by_bearer.status(), StatusCode::OK);
    let by_header = plain
        .get(&url)
        .header("x-api-key", &alice_key)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), StatusCode::OK);
    let id = alice_json["id"].as_str().unwrap();
    let revoked = admin
        .delete(server.url(&format!("/api/v1/admin/keys/{id}")))
        .send()
        .await
        .unwrap();
    let revoked = expect_json(revoked, StatusCode::OK).await;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let after = plain.get(&url).bearer_auth(&alice_key).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(after.json::<Value>().await.unwrap(), bodies[0]);

    // Every endpoint, crossed with no credential, an unknown key and a revoked one: 401, and the
    // session they name is untouched.
    let (status, created) = send(
        &server,
        &admin,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({"user_id": "alice"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let session = created["session_id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/sessions/{session}");
    let before = send(&server, &admin, reqwest::Method::GET, &path, None).await;
    let mut endpoints = session_requests(&session);
    endpoints.push((
        "create",
        reqwest::Method::POST,
        "/api/v1/sessions".into(),
        Some(json!({"user_id": "alice"})),
    ));
    endpoints.push(("list", reqwest::Method::GET, "/api/v1/sessions".into(), None));
    endpoints.push(("keys", reqwest::Method::GET, "/api/v1/admin/keys".into(), None));
    endpoints.push(("audit", reqwest::Method::GET, "/api/v1/admin/audit".into(), None));
    endpoints.push((
        "webhook deliveries",
        reqwest::Method::GET,
        "/api/v1/admin/webhooks/deliveries".into(),
        None,
    ));
    let credentials = [
        ("none", plain.clone()),
        ("unknown", client_with_key(&unknown_key)),
        ("revoked", client_with_key(&alice_key)),
    ];
    for (what, method, path, body) in endpoints {
        for (credential, client) in &credentials {
            let (status, answer) = send(&server, client, method.clone(), &path, body.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what} with {credential}: {answer}"
            );
            assert_eq!(answer, bodies[0], "{what} with {credential}");
        }
    }
    assert_eq!(
        send(&server, &admin, reqwest::Method::GET, &path, None).await,
        before
    );
    let (_, all) = send(&server, &admin, reqwest::Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(all, json!([session]), "no denied create made a session");

    // Public routes need nothing; /health tells strangers only that it lives.
    for path in ["/", "/livez", "/openapi.json", "/docs/"] {
        let response = plain.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let health: Value = plain
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut fields: Vec<&str> = health.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["status", "version"], "{health}");
    // A credential tried on /health is checked like any other: a bad one shows nothing more, and is
    // recorded as a failed authentication.
    let failures = |records: &Value| {
        records["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "auth.failed")
            .count()
    };
    let audit_url = server.url("/api/v1/admin/audit?limit=1000");
    let before: Value = admin.get(&audit_url).send().await.unwrap().json().await.unwrap();
    let probed: Value = plain
        .get(server.url("/health"))
        .bearer_auth(&unknown_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(probed.get("active_sessions").is_none(), "{probed}");
    let mut recorded = false;
    for _ in 0..100 {
        let after: Value = admin.get(&audit_url).send().await.unwrap().json().await.unwrap();
        if failures(&after) > failures(&before) {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recorded, "a bad credential on /health is audited");
    let full: Value = admin
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        full["active_sessions"].is_u64(),
        "an admin sees everything: {full}"
    );
    let openapi: Value = plain
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn keys_are_shown_once_listed_without_secrets_and_admin_endpoints_are_for_admins() {
    let (server, admin_key) = server_with_auth("").await;
    let admin = client_with_key(&admin_key);
    let (alice_key, created) = make_key(
        &server,
        &admin,
        json!({"role": "user", "user_id": "alice", "name": "alice's laptop"}),
    )
    .await;
    assert!(
        alice_key.starts_with("cah_") && alice_key.len() == 68,
        "{alice_key}"
    );
    assert!(alice_key.starts_with(created["prefix"].as_str().unwrap()));
    let (second_admin, _) = make_key(&server, &admin, json!({"role": "admin", "name": "backend"})).await;
    let listed = expect_json(
        admin.get(server.url("/api/v1/admin/keys")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let text = listed.to_string();
    assert!(
        !text.contains(&alice_key[4..]) && !text.contains(&second_admin[4..]),
        "{text}"
    );
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    assert_eq!(listed["keys"][0]["name"], "alice's laptop");
    assert_eq!(listed["keys"][0]["role"], "user");
    assert_eq!(listed["keys"][1]["role"], "admin");

    // A made admin key is an admin; a user key may not touch keys.
    let listed_by_second = client_with_key(&second_admin)
        .get(server.url("/api/v1/admin/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed_by_second.status(), StatusCode::OK);
    let alice = client_with_key(&alice_key);
    for (method, path, body) in [
        (reqwest::Method::GET, "/api/v1/admin/keys".to_string(), None),
        (
            reqwest::Method::POST,
            "/api/v1/admin/keys".to_string(),
            Some(json!({"role": "admin"})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/admin/keys/{}", created["id"].as_str().unwrap()),
            None,
        ),
    ] {
        let (status, body) = send(&server, &alice, method, &path, body).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::FORBIDDEN, &json!("forbidden")),
            "{path}"
        );
    }
    // Bad requests say what is wrong and make nothing.
    for body in [
        json!({"role": "user"}),
        json!({"role": "admin", "user_id": "alice"}),
        json!({"role": "user", "user_id": "../etc"}),
        json!({"role": "root", "user_id": "alice"}),
    ] {
        let (status, answer) = send(
            &server,
            &admin,
            reqwest::Method::POST,
            "/api/v1/admin/keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    let (status, body) = send(
        &server,
        &admin,
        reqwest::Method::DELETE,
        "/api/v1/admin/keys/key_nope",
        None,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("key_not_found"))
    );
    let listed = expect_json(
        admin.get(server.url("/api/v1/admin/keys")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        2,
        "nothing made by a bad request"
    );
}

/// The command line manages keys in the configured store, also while the server runs; the running
/// server honours a new key and a revocation at once.
#[tokio::test]
async fn keys_made_and_revoked_on_the_command_line_work_on_the_running_server() {
    // The command line works on a store that outlives it: on a memory run, SQLite.
    let server = TestServer::start_on(
        Storage::durable_of_run(),
        &[],
        "auth:\n  mode: on\n",
        vec![("CLAUDE_AGENT_AUTH__ADMIN_KEY".into(), random_admin_key())],
    )
    .await;
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_claude-agent-http"))
            .arg("--config")
            .arg(server.config_path())
            .args(args)
            .current_dir(server.dir())
            .env_remove("CLAUDE_AGENT_SESSION_STORAGE")
            .env_remove("CLAUDE_AGENT_TEST_STORAGE")
            .env_remove("CLAUDE_AGENT_TEST_AUTH")
            .env_remove("CLAUDE_AGENT_TEST_ISOLATION")
            .envs(server.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run the binary");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {stdout}\n{stderr}");
        stdout
    };
    let created: Value = serde_json::from_str(&run(&[
        "keys", "create", "--user", "alice", "--name", "cli", "--json",
    ]))
    .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let alice = client_with_key(&key);
    let response = alice.get(server.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let listed = run(&["keys", "list"]);
    assert!(listed.contains(created["id"].as_str().unwrap()), "{listed}");
    assert!(
        !listed.contains(&key[4..]),
        "the list never shows a key: {listed}"
    );
    run(&["keys", "revoke", created["id"].as_str().unwrap()]);
    let response = alice.get(server.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let admin: Value = serde_json::from_str(&run(&["keys", "create", "--admin", "--json"])).unwrap();
    let response = client_with_key(admin["key"].as_str().unwrap())
        .get(server.url("/api/v1/admin/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_user_over_its_rate_is_told_when_to_retry_and_an_admin_is_not_limited() {
    let (server, admin_key) = server_with_auth("  rate_limit_per_second: 1\n  rate_limit_burst: 3\n").await;
    let admin = client_with_key(&admin_key);
    let alice = user_client(&server, &admin, "alice").await;
    let mut limited = None;
    for _ in 0..20 {
        let response = alice.get(server.url("/api/v1/sessions")).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    let limited = limited.expect("20 requests at once exceed 1 a second with a burst of 3");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(limited.json::<Value>().await.unwrap()["code"], "rate_limited");
    // Guessing credentials is limited too (per client address), so it cannot flood the audit log.
    let mut refused = Vec::new();
    for _ in 0..20 {
        let response = plain_client()
            .get(server.url("/api/v1/sessions"))
            .bearer_auth("cah_guess")
            .send()
            .await
            .unwrap();
        refused.push(response.status());
    }
    assert!(refused.contains(&StatusCode::UNAUTHORIZED), "{refused:?}");
    assert!(refused.contains(&StatusCode::TOO_MANY_REQUESTS), "{refused:?}");
    // Bob has his own allowance; the admin (the trusted backend) has none to exhaust.
    let bob = user_client(&server, &admin, "bob").await;
    assert_eq!(
        bob.get(server.url("/api/v1/sessions"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for _ in 0..20 {
        let response = admin.get(server.url("/api/v1/sessions")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_public_address_without_authentication_refuses_to_start_unless_none_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_claude-agent-http"))
        .arg("print-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_claude-agent-http"))
        .args(["serve", "--port-file", "port"])
        .current_dir(dir.path())
        .env("CLAUDE_AGENT_API_HOST", "0.0.0.0")
        .env("CLAUDE_AGENT_API_PORT", "0")
        .env("CLAUDE_AGENT_DEFAULTS__CLI_AUTO_INSTALL", "false")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("auth.mode"),
        "the message says how to turn auth on: {stderr}"
    );
    assert!(!dir.path().join("port").exists(), "it never listened");
    // Explicitly open: it starts (with the loud warning).
    let server = TestServer::start_with_env("api:\n  host: 0.0.0.0\nauth:\n  mode: none\n", Vec::new()).await;
    assert!(
        server.log().contains("WITHOUT AUTHENTICATION"),
        "{}",
        server.log()
    );
}

/// JWTs from an identity provider with a shared HS256 secret: the claims decide who it is; every
/// check (signature, algorithm, issuer, audience, expiry, not-before, user id) is enforced.
#[tokio::test]
async fn jwts_with_a_shared_secret_are_checked_claim_by_claim() {
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    let (server, _) = server_with_auth(&format!(
        "  jwt:\n    issuer: https://id.example\n    audience: agents\n    hs256_secret: '{secret}'\n    admin_claim: roles\n    admin_value: agent-admin\n"
    ))
    .await;
    let now = chrono::Utc::now().timestamp();
    let claims = |extra: Value| {
        let mut claims = json!({"sub": "alice", "iss": "https://id.example", "aud": "agents", "exp": now + 600, "iat": now});
        for (key, value) in extra.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    };
    let sign = |claims: &Value, key: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let status_with = |token: String| status_with_token(&server, token);
    assert_eq!(
        status_with(sign(&claims(json!({})), secret)).await,
        StatusCode::OK
    );
    let unsigned = {
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64url(claims(json!({})).to_string().as_bytes());
        format!("{header}.{body}.")
    };
    let bad = [
        (
            "another secret",
            sign(&claims(json!({})), "another-secret-of-at-least-32-bytes!!"),
        ),
        ("wrong audience", sign(&claims(json!({"aud": "others"})), secret)),
        (
            "wrong issuer",
            sign(&claims(json!({"iss": "https://evil.example"})), secret),
        ),
        ("expired", sign(&claims(json!({"exp": now - 3600})), secret)),
        ("not yet valid", sign(&claims(json!({"nbf": now + 3600})), secret)),
        ("no expiry", {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            sign(&c, secret)
        }),
        (
            "a user id that is a path",
            sign(&claims(json!({"sub": "../bob"})), secret),
        ),
        ("alg none", unsigned),
        ("HS512 where HS256 is configured", {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &claims(json!({})),
                &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
            )
            .unwrap()
        }),
    ];
    for (what, token) in bad {
        assert_eq!(status_with(token).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    // An admin must have a subject (the audit log names it by it).
    let nameless = {
        let mut c = claims(json!({"roles": "agent-admin"}));
        c.as_object_mut().unwrap().remove("sub");
        sign(&c, secret)
    };
    assert_eq!(
        status_with(nameless).await,
        StatusCode::UNAUTHORIZED,
        "an admin JWT without sub"
    );
    // The admin claim makes an admin; without it, the subject is a user scoped to itself.
    let admin = sign(
        &claims(json!({"sub": "ops", "roles": ["x", "agent-admin"]})),
        secret,
    );
    let keys = plain_client()
        .get(server.url("/api/v1/admin/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), StatusCode::OK);
    let alice = sign(&claims(json!({})), secret);
    let created = plain_client()
        .post(server.url("/api/v1/sessions"))
        .bearer_auth(&alice)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let created = expect_json(created, StatusCode::CREATED).await;
    assert_eq!(created["user_id"], "alice");
    let forbidden = plain_client()
        .get(server.url("/api/v1/admin/keys"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
}

/// The status of listing sessions with `token` as the bearer credential.
async fn status_with_token(server: &TestServer, token: String) -> StatusCode {
    plain_client()
        .get(server.url("/api/v1/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// Ed25519 test keys made for this story only (they sign nothing anywhere else).
const SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTMEB2ZVlDjfRKFOod8Kosu0zcje+39iVkUCElHG5zk\n-----END PRIVATE KEY-----\n";
const SIGNING_KEY_X: &str = "g2HhX38a1WCRDmMAGm1JLEKkMUSvuiatyMhXWZfkc-k";
const PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAg2HhX38a1WCRDmMAGm1JLEKkMUSvuiatyMhXWZfkc+k=\n-----END PUBLIC KEY-----\n";
const OTHER_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIMHPitAOM5UxE9jX2KysRSYv8UQBazRQ37rG4vTdR4mK\n-----END PRIVATE KEY-----\n";

fn base64url(bytes: &[u8]) -> String {
    use std::fmt::Write;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let _ = out.write_char(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// JWTs signed by an issuer that publishes its keys as a JWKS (served here on loopback): the key is
/// chosen by `kid`, the set is fetched once and cached, and a token that tries to pass the public
/// key off as an HMAC secret (algorithm confusion) is refused.
#[tokio::test]
async fn jwts_are_checked_against_the_issuers_jwks_by_kid() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": SIGNING_KEY_X, "kid": "k1", "alg": "EdDSA", "use": "sig"}]});
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (server, _) = server_with_auth(&format!(
        "  jwt:\n    issuer: https://id.example\n    audience: agents\n    jwks_url: {jwks_url}\n"
    ))
    .await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "carol", "iss": "https://id.example", "aud": "agents", "exp": now + 600});
    let sign = |kid: Option<&str>, pem: &str| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let status_with = |token: String| status_with_token(&server, token);
    for _ in 0..3 {
        assert_eq!(status_with(sign(Some("k1"), SIGNING_KEY)).await, StatusCode::OK);
    }
    assert_eq!(
        status_with(sign(None, SIGNING_KEY)).await,
        StatusCode::OK,
        "the only key"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once, then cached");
    assert_eq!(
        status_with(sign(Some("k1"), OTHER_KEY)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_with(sign(Some("k9"), SIGNING_KEY)).await,
        StatusCode::UNAUTHORIZED
    );
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(PUBLIC_KEY_PEM.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        status_with(confused).await,
        StatusCode::UNAUTHORIZED,
        "algorithm confusion"
    );
    // An unknown kid may refetch, but not more than once a minute.
    assert!(fetches.load(Ordering::SeqCst) <= 2);
}

/// Fields that would widen what the agent may do are not the client's to set: in a create body
/// they are ignored, and the session is exactly what it would be without them.
#[tokio::test]
async fn fields_that_would_widen_the_agent_are_ignored() {
    let (server, admin_key) = server_with_auth("").await;
    let alice = user_client(&server, &client_with_key(&admin_key), "alice").await;
    let widening = json!({
        "permission_mode": "bypassPermissions",
        "allowed_tools": ["*"],
        "cwd": "/",
        "env": {"LD_PRELOAD": "/tmp/x.so"},
        "mcp_servers": {"evil": {"command": "/bin/sh"}},
        "user_id": "alice",
    });
    let (status, created) = send(
        &server,
        &alice,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(widening),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, plain) = send(
        &server,
        &alice,
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({})),
    )
    .await;
    let shape = |session: &Value| {
        let mut session = session.clone();
        for volatile in ["session_id", "created_at", "last_active_at"] {
            session.as_object_mut().unwrap().remove(volatile);
        }
        session
    };
    assert_eq!(shape(&created), shape(&plain));
    assert!(
        created["cwd"].as_str().unwrap().ends_with("/users/alice"),
        "{created}"
    );
}
