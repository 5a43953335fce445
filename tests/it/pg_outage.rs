//! The database going away is an outage, not a crash: against a PostgreSQL server of the test's own,
//! stopped the hard way (`pg_ctl stop -m immediate`) under the running service and started again,
//! between turns and in the middle of one.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::agent::AgentServer;
use crate::support::pg::{PrivateCluster, server_env};
use crate::support::{TestServer, expect_json};

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

/// A turn running when the database goes away streams on; its end, which cannot be stored, is told
/// to its client within seconds as `store_unavailable`. Nothing is lost: once the database is back,
/// every event (the ones streamed during the outage too) is stored in order, as the client saw it,
/// and the session goes on remembering the conversation.
#[tokio::test]
async fn a_turn_running_when_postgresql_goes_away_ends_cleanly_and_loses_nothing() {
    let mut cluster = PrivateCluster::start().await;
    let app = AgentServer::start_with_env("", server_env(&cluster.url())).await;
    let (id, cwd) = app.session("alice").await;
    app.chat_ok(&id, "before the outage").await;
    // A tool that waits for the test: the turn is surely running when the database stops.
    let command = "python3 -c \"import os, time\nwhile not os.path.exists('go'): time.sleep(0.05)\"";
    let message = format!("tool Bash {}", json!({ "command": command }));
    let mut stream = app.stream(&id, &message).await;
    let mut seen = vec![stream.until("tool_use").await];

    cluster.stop_immediately();
    std::fs::write(cwd.join("go"), "").unwrap();
    let started = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(30), stream.collect())
        .await
        .expect("the turn ended while the database was down");
    eprintln!(
        "the turn ended {:?} after the database stopped",
        started.elapsed()
    );
    seen.extend(rest);
    let end = &seen.last().unwrap().data;
    assert_eq!(end["type"], "error", "{seen:?}");
    assert_eq!(end["code"], "store_unavailable", "{end}");
    assert!(
        seen.iter().any(|e| e.data["type"] == "tool_result"),
        "the turn streamed on during the outage: {seen:?}"
    );

    cluster.restart().await;
    let turns = format!("/api/v1/sessions/{id}/turns");
    let deadline = Instant::now() + Duration::from_secs(30);
    let turn = loop {
        let (status, body) = bounded("GET the turns", app.server.get(&turns)).await;
        if status == StatusCode::OK && body["turns"][1]["status"] != "running" {
            break body["turns"][1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the turn's end was not stored within 30 s of the database's return: {body}\n{}",
            app.server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(turn["status"], "failed", "{turn}");
    assert_eq!(turn["error_code"], "store_unavailable");
    // Stored exactly as streamed: same numbers, same events, no gap.
    let page = expect_json(
        app.server
            .get(&format!("/api/v1/sessions/{id}/events?follow=false&limit=1000"))
            .await,
        StatusCode::OK,
    )
    .await;
    let stored: Vec<(u64, Value)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"].clone()))
        .collect();
    let numbers: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let streamed: Vec<(u64, Value)> = seen
        .iter()
        .map(|e| (e.id.as_deref().unwrap().parse().unwrap(), e.data.clone()))
        .collect();
    assert_eq!(&stored[stored.len() - streamed.len()..], &streamed[..]);
    // The session goes on, and the agent remembers the turn before the outage.
    let answer = app.chat_ok(&id, "recall").await;
    assert!(
        answer["text"].as_str().unwrap().contains("before the outage"),
        "{answer}"
    );
}
