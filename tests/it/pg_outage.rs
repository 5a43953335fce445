//! The database going away is an outage, not a crash: against a PostgreSQL server of the test's own,
//! stopped the hard way (`pg_ctl stop -m immediate`) under the running service and started again.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::TestServer;
use crate::support::pg::{PrivateCluster, server_env};

/// The longest any request may take while the database is down.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);

/// Runs one request, failing the test if it takes longer than [`ANSWER_WITHIN`].
async fn bounded(what: &str, request: impl Future<Output = Response>) -> (StatusCode, Value) {
    let started = Instant::now();
    let response = tokio::time::timeout(ANSWER_WITHIN, request)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {ANSWER_WITHIN:?}"));
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    eprintln!("{what}: {status} after {:?}", started.elapsed());
    (status, body)
}

#[tokio::test]
async fn requests_answer_503_while_postgresql_is_down_and_the_service_recovers_by_itself() {
    let mut cluster = PrivateCluster::start().await;
    let server = TestServer::start_with_env("", server_env(&cluster.url())).await;
    let alice = server.user("alice");
    let id = alice.create_session(None).await["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let session = format!("/api/v1/sessions/{id}");

    cluster.stop_immediately();
    let requests = [
        ("GET the session", server.client.get(server.url(&session))),
        (
            "list sessions",
            server.client.get(server.url("/api/v1/sessions?user_id=alice")),
        ),
        (
            "create a session",
            server
                .client
                .post(server.url("/api/v1/sessions"))
                .json(&json!({"user_id": "alice"})),
        ),
        (
            "resume the session",
            server.client.post(server.url(&format!("{session}/resume"))),
        ),
        ("delete the session", server.client.delete(server.url(&session))),
    ];
    // All at once: each may wait for the store's connect timeout.
    let answers = futures_util::future::join_all(requests.into_iter().map(|(what, request)| async move {
        (
            what,
            bounded(what, async { request.send().await.expect(what) }).await,
        )
    }));
    let (answers, health) = tokio::join!(answers, bounded("GET /health", server.get("/health")));
    for (what, (status, body)) in answers {
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {body}\n{}",
            server.log()
        );
        assert_eq!(body["code"], "store_unavailable", "{what}: {body}");
    }
    let (status, body) = health;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    let (status, _) = bounded("GET /livez", server.get("/livez")).await;
    assert_eq!(status, StatusCode::OK, "the process itself is fine");

    cluster.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = bounded("GET the session", server.get(&session)).await;
        if status == StatusCode::OK {
            assert_eq!(body["session_id"], id.as_str(), "the session outlived the outage");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            Instant::now() < deadline,
            "the service did not recover within 30 s:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = bounded("GET /health", server.get("/health")).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("healthy")),
        "{body}"
    );
    alice.create_session(None).await;
    assert_eq!(alice.session_ids().await.len(), 2);
}
