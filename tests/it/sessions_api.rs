//! Stories of the session REST API, against the real binary.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Storage, TestServer, expect_json};

#[tokio::test]
async fn a_user_creates_reads_lists_resumes_and_deletes_a_session() {
    let server = TestServer::start("").await;
    let alice = server.user("alice");
    let created = alice.create_session(Some("my-project")).await;
    let id = created["session_id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(created["user_id"], "alice");
    assert_eq!(created["status"], "active");
    assert_eq!(created["message_count"], 0);
    assert_eq!(created["metadata"], json!({}));
    let cwd = created["cwd"].as_str().unwrap();
    assert!(cwd.ends_with("/users/alice/my-project"), "{cwd}");
    assert!(std::path::Path::new(cwd).is_dir());

    let fetched = expect_json(
        server.get(&format!("/api/v1/sessions/{id}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fetched["session_id"], id);
    assert_eq!(fetched["cwd"], created["cwd"]);
    assert_eq!(alice.session_ids().await, vec![id.clone()]);
    assert!(server.user("bob").session_ids().await.is_empty());

    let resumed = expect_json(
        server
            .post(&format!("/api/v1/sessions/{id}/resume"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resumed["session_id"], id);
    assert!(resumed["last_active_at"].as_str() >= created["last_active_at"].as_str());

    assert_eq!(
        server.delete(&format!("/api/v1/sessions/{id}")).await.status(),
        StatusCode::NO_CONTENT
    );
    for (response, _) in [
        (server.get(&format!("/api/v1/sessions/{id}")).await, "get"),
        (server.delete(&format!("/api/v1/sessions/{id}")).await, "delete"),
        (
            server
                .post(&format!("/api/v1/sessions/{id}/resume"), json!({}))
                .await,
            "resume",
        ),
    ] {
        let body = expect_json(response, StatusCode::NOT_FOUND).await;
        assert_eq!(body["code"], "session_not_found");
        assert!(body["detail"].as_str().unwrap().contains(&id));
    }
    assert!(alice.session_ids().await.is_empty());
}

#[tokio::test]
async fn metadata_is_kept_and_a_non_uuid_id_is_not_found() {
    let server = TestServer::start("").await;
    let response = server
        .post(
            "/api/v1/sessions",
            json!({"user_id": "zhangsan", "metadata": {"env": "prod", "n": [1, 2]}}),
        )
        .await;
    let body = expect_json(response, StatusCode::CREATED).await;
    assert_eq!(body["metadata"], json!({"env": "prod", "n": [1, 2]}));
    let body = expect_json(
        server.get("/api/v1/sessions/not-a-uuid").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(body["code"], "session_not_found");
}

#[tokio::test]
async fn sessions_survive_a_restart() {
    let server = TestServer::start_durable("", Vec::new()).await;
    let id = server.user("alice").create_session(None).await["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = server.user("alice").create_session(None).await["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .delete(&format!("/api/v1/sessions/{deleted}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let server = server.restart().await;
    expect_json(
        server.get(&format!("/api/v1/sessions/{id}")).await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        server.get(&format!("/api/v1/sessions/{deleted}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(server.user("alice").session_ids().await, vec![id]);
}

#[tokio::test]
async fn memory_storage_works_and_forgets_on_restart() {
    let server = TestServer::start("session:\n  storage: memory\n").await;
    let id = server.user("alice").create_session(None).await["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let health = expect_json(server.get("/health").await, StatusCode::OK).await;
    assert_eq!(health["storage_type"], "memory");
    assert_eq!(health["active_sessions"], 1);
    let server = server.restart().await;
    expect_json(
        server.get(&format!("/api/v1/sessions/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn limits_answer_429_and_leave_nothing_on_disk() {
    let server = TestServer::start("api:\n  max_sessions: 3\n  max_sessions_per_user: 2\n").await;
    server.user("alice").create_session(None).await;
    server.user("alice").create_session(None).await;
    let body = expect_json(
        server.user("alice").try_create_session(Some("third")).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["code"], "session_limit_reached");
    assert!(!server.data_dir().join("users/alice/third").exists());
    server.user("bob").create_session(None).await;
    let body = expect_json(
        server.user("carol").try_create_session(None).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["code"], "session_limit_reached");
    assert!(
        !server.data_dir().join("users/carol").exists(),
        "a refused create leaves no directory"
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_4xx_never_500() {
    let server = TestServer::start("api:\n  max_body_bytes: 2048\n").await;
    let post_raw = |body: &'static str| {
        server
            .client
            .post(server.url("/api/v1/sessions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: [(&str, StatusCode, &str); 6] = [
        ("{\"user_id\":", StatusCode::BAD_REQUEST, "invalid_json"),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            "{\"user_id\": 5}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "{\"user_id\": \"a\", \"metadata\": [1]}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            "{\"user_id\": \"a\", \"subdir\": 7}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let response = post_raw(body).await.unwrap();
        let json = expect_json(response, status).await;
        assert_eq!(json["code"], code, "{body}");
        assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let big = format!(
        "{{\"user_id\": \"a\", \"metadata\": {{\"x\": \"{}\"}}}}",
        "y".repeat(4096)
    );
    let response = server
        .client
        .post(server.url("/api/v1/sessions"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_json(response, StatusCode::PAYLOAD_TOO_LARGE).await["code"],
        "payload_too_large"
    );
    let response = server
        .client
        .post(server.url("/api/v1/sessions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_json(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await["code"],
        "unsupported_media_type"
    );
    let body = expect_json(
        server.get("/api/v1/sessions?user_id=../x").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "invalid_user_id");
    assert!(!server.data_dir().join("users/a").exists());
}

#[tokio::test]
async fn health_root_openapi_and_docs_answer() {
    let server = TestServer::start("").await;
    let health = expect_json(server.get("/health").await, StatusCode::OK).await;
    for field in [
        "status",
        "version",
        "active_sessions",
        "in_memory_clients",
        "memory_mb",
        "storage_type",
        "uptime_seconds",
    ] {
        assert!(health.get(field).is_some(), "health lacks {field}: {health}");
    }
    assert_eq!(health["status"], "healthy");
    let storage = match Storage::of_run() {
        Storage::Sqlite => "sqlite",
        Storage::Postgresql => "postgresql",
        Storage::Memory => "memory",
    };
    assert_eq!(health["storage_type"], storage);
    // This server has no CLI and may not install one: it says so, and why.
    assert_eq!(health["agent_cli"]["status"], "missing", "{health}");
    assert!(
        health["agent_cli"]["detail"]
            .as_str()
            .unwrap()
            .contains("cli_auto_install"),
        "{health}"
    );
    assert!(health["memory_mb"].as_f64().unwrap() > 1.0);

    // Probes for orchestrators: alive always; ready only with a store and a CLI.
    let live = expect_json(server.get("/livez").await, StatusCode::OK).await;
    assert_eq!(live["status"], "alive");
    let ready = expect_json(server.get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["waiting_for"], json!(["agent_cli"]), "{ready}");

    let root = expect_json(server.get("/").await, StatusCode::OK).await;
    assert_eq!(root["docs"], "/docs");
    let spec = expect_json(server.get("/openapi.json").await, StatusCode::OK).await;
    for path in [
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/resume",
        "/health",
    ] {
        assert!(spec["paths"].get(path).is_some(), "spec lacks {path}");
    }
    let docs = server.get("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "docs page is Swagger UI");
    assert!(
        !html.contains("cdn") && !html.contains("unpkg"),
        "docs must not load from a CDN"
    );
    // The UI's script is served by the binary itself.
    let script = server.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.text().await.unwrap().len() > 100_000);
    let response = server.get("/docs/swagger-initializer.js").await;
    assert!(response.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let server = TestServer::start("api:\n  cors_origins: [\"https://app.example\"]\n").await;
    let ask = |origin: &'static str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url("/api/v1/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = ask("https://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = ask("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let server = TestServer::start("").await;
    let response = server.get("/health").await;
    assert!(response.headers().get("x-request-id").is_some());
    let response = server
        .client
        .get(server.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let _: Value = response.json().await.unwrap();
}

#[tokio::test]
async fn without_user_id_the_list_holds_every_session_as_in_the_seed() {
    let server = TestServer::start("").await;
    let a = server.user("alice").create_session(None).await["session_id"].clone();
    let b = server.user("bob").create_session(None).await["session_id"].clone();
    let all = expect_json(server.get("/api/v1/sessions").await, StatusCode::OK).await;
    assert_eq!(all, serde_json::json!([a, b]));
}
