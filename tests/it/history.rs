//! Stories of a session's history: every event is kept with its number, a client that lost its
//! stream gets exactly the rest, several watchers see the same events, and turns survive restarts
//! and crashes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::agent::{AgentServer, EventStream, Received, delta_text};
use crate::support::expect_json;

fn ids(events: &[Received]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.id.as_deref().expect("every event has an id").parse().unwrap())
        .collect()
}

/// Opens `GET .../events`, from the start or after `last_id` (sent as `Last-Event-ID`).
async fn watch(app: &AgentServer, session: &str, last_id: Option<u64>) -> EventStream {
    let mut request = app
        .server
        .client
        .get(app.server.url(&format!("/api/v1/sessions/{session}/events")));
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.expect("GET events");
    assert_eq!(response.status(), StatusCode::OK);
    EventStream::from_response(response)
}

/// Reads until a terminal event (inclusive), within a deadline.
async fn until_terminal(stream: &mut EventStream) -> Vec<Received> {
    let mut events = Vec::new();
    let read = async {
        while let Some(event) = stream.next().await {
            let kind = event.data["type"].as_str().unwrap_or_default().to_string();
            events.push(event);
            if kind == "done" || kind == "error" {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a terminal event in time");
    events
}

async fn stored_page(app: &AgentServer, session: &str) -> Value {
    expect_json(
        app.server
            .get(&format!(
                "/api/v1/sessions/{session}/events?follow=false&limit=1000"
            ))
            .await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test]
async fn a_client_that_lost_its_stream_gets_exactly_the_rest_of_its_turn() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let mut stream = app.stream(&id, "words 60 20").await;
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(stream.next().await.expect("an event"));
    }
    drop(stream); // the connection drops mid-turn
    let last = *ids(&first).last().unwrap();
    let mut resumed = watch(&app, &id, Some(last)).await;
    let rest = until_terminal(&mut resumed).await;
    assert_eq!(rest.last().unwrap().data["type"], "done", "{rest:?}");
    let all: Vec<u64> = ids(&first).into_iter().chain(ids(&rest)).collect();
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no duplicate: {all:?}"
    );
    let mut both = first.clone();
    both.extend(rest.iter().cloned());
    let words: Vec<String> = (1..=60).map(|i| format!("w{i}")).collect();
    assert_eq!(delta_text(&both), words.join(" "));
    // What was streamed is what is stored, byte for byte.
    let page = stored_page(&app, &id).await;
    let stored: Vec<(u64, Value)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"].clone()))
        .collect();
    let seen: Vec<(u64, Value)> = all
        .iter()
        .copied()
        .zip(both.iter().map(|e| e.data.clone()))
        .collect();
    assert_eq!(stored, seen);
}

#[tokio::test]
async fn several_watchers_see_the_same_events_each_at_its_own_pace() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let mut eager = watch(&app, &id, None).await;
    let mut slow = watch(&app, &id, None).await;
    let streamed = app.stream(&id, "words 30 10").await.collect().await;
    let by_eager = until_terminal(&mut eager).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the slow one has not read anything yet
    let by_slow = until_terminal(&mut slow).await;
    let view = |events: &[Received]| -> Vec<(u64, Value)> {
        ids(events)
            .into_iter()
            .zip(events.iter().map(|e| e.data.clone()))
            .collect()
    };
    assert_eq!(view(&by_eager), view(&streamed));
    assert_eq!(view(&by_slow), view(&streamed));
    // A watcher keeps watching: the next turn reaches it too, numbered after the first.
    let next = app.stream(&id, "echo again").await.collect().await;
    let by_eager_next = until_terminal(&mut eager).await;
    assert_eq!(view(&by_eager_next), view(&next));
    assert_eq!(ids(&next)[0], ids(&streamed).last().unwrap() + 1);
}

#[tokio::test]
async fn turns_and_the_conversation_survive_a_restart_and_numbering_goes_on() {
    let app = AgentServer::start_durable("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "first message").await;
    app.chat_ok(&id, "tool Bash {\"command\": \"echo hi\"}").await;
    let before = stored_page(&app, &id).await;
    let app = app.restart().await;
    let turns = expect_json(
        app.server.get(&format!("/api/v1/sessions/{id}/turns")).await,
        StatusCode::OK,
    )
    .await;
    let turns = turns["turns"].as_array().unwrap().clone();
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[0]["user_message"], "first message");
    assert_eq!(turns[0]["status"], "completed");
    assert_eq!(turns[0]["text"], "echo: first message");
    assert!(turns[0]["finished_at"].is_string());
    assert_eq!(turns[1]["tool_calls"][0]["tool"], "Bash", "{turns:?}");
    let one = expect_json(
        app.server
            .get(&format!(
                "/api/v1/sessions/{id}/turns/{}",
                turns[0]["turn_id"].as_str().unwrap()
            ))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(one["text"], "echo: first message");
    let messages = expect_json(
        app.server.get(&format!("/api/v1/sessions/{id}/messages")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(messages["messages"][0]["user"]["text"], "first message");
    assert_eq!(
        messages["messages"][0]["assistant"]["text"],
        "echo: first message"
    );
    // The stored stream is intact, and the next turn's events continue its numbering.
    assert_eq!(stored_page(&app, &id).await, before);
    let last = before["next_after"].as_u64().unwrap();
    let next = app.stream(&id, "after the restart").await.collect().await;
    assert_eq!(ids(&next)[0], last + 1, "{next:?}");
    // Unknown turns are 404.
    let missing = app
        .server
        .get(&format!("/api/v1/sessions/{id}/turns/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(
        expect_json(missing, StatusCode::NOT_FOUND).await["code"],
        "turn_not_found"
    );
}

#[tokio::test]
async fn a_turn_cut_short_by_a_crash_is_marked_failed_and_the_session_goes_on() {
    let app = AgentServer::start_durable("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "before the crash").await;
    let stream = app.stream_a_running_sleep(&id).await;
    let app = app.crash_and_restart().await;
    drop(stream);
    let turns = expect_json(
        app.server.get(&format!("/api/v1/sessions/{id}/turns")).await,
        StatusCode::OK,
    )
    .await;
    let cut = turns["turns"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(cut["status"], "failed", "{turns}");
    assert_eq!(cut["error_code"], "service_restarted");
    let page = stored_page(&app, &id).await;
    let events = page["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["data"]["type"], "error");
    assert_eq!(last["data"]["code"], "service_restarted");
    let numbers: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    let answer = app.chat_ok(&id, "recall").await;
    assert!(
        answer["text"].as_str().unwrap().contains("before the crash"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_session_resumes_from_the_store_when_its_disk_is_wiped() {
    let app = AgentServer::start_durable("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "remember the blue door").await;
    let mut app = app;
    app.server.stop();
    // Keep the database; lose everything else the service had on disk (transcripts, workspaces).
    let data = app.server.data_dir();
    let kept = tempfile::tempdir().unwrap();
    for file in ["sessions.db", "sessions.db-wal", "sessions.db-shm"] {
        if data.join(file).exists() {
            std::fs::rename(data.join(file), kept.path().join(file)).unwrap();
        }
    }
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    for file in ["sessions.db", "sessions.db-wal", "sessions.db-shm"] {
        if kept.path().join(file).exists() {
            std::fs::rename(kept.path().join(file), data.join(file)).unwrap();
        }
    }
    let app = app.restart().await;
    let answer = app.chat_ok(&id, "recall").await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("remember the blue door"),
        "the model saw the earlier turn again: {answer}"
    );
    let turns = expect_json(
        app.server.get(&format!("/api/v1/sessions/{id}/turns")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(turns["turns"][0]["user_message"], "remember the blue door");
    assert!(
        app.server
            .log()
            .contains("restored the agent's transcript from the store")
    );
}
