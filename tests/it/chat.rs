//! Chat stories: sync and streamed turns over the real CLI, against the model stand-in.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use claude_agent_http::agent::cli;

use crate::support::agent::{AgentServer, TEST_CLI_VARIABLE, cli_path, delta_text};
use crate::support::expect_json;

#[tokio::test]
async fn sync_and_stream_echo_and_the_count_advances() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    // (Its agent may already be starting: runtime::a_new_sessions_agent_starts_before_its_first_message.)
    assert_eq!(app.model.requests(), 0, "creating a session calls no model");

    let answer = app.chat_ok(&id, "hello there").await;
    assert_eq!(answer["session_id"], id);
    assert_eq!(answer["text"], "echo: hello there");
    assert_eq!(answer["tool_calls"], json!([]));
    assert_eq!(answer["stop_reason"], "end_turn");
    assert!(answer["num_turns"].as_u64().unwrap() >= 1);
    assert!(answer["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(answer["timestamp"].is_string());
    assert_eq!(app.session_json(&id).await["message_count"], 1);

    let events = app.stream(&id, "second one").await.collect().await;
    assert_eq!(delta_text(&events), "echo: second one");
    let last = events.last().unwrap();
    assert_eq!(last.data["type"], "done", "{events:?}");
    assert_eq!(last.data["text"], "echo: second one");
    assert_eq!(last.data["stop_reason"], "end_turn");
    assert_eq!(
        events
            .iter()
            .filter(|e| ["done", "error"].contains(&e.data["type"].as_str().unwrap()))
            .count(),
        1
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids increase: {ids:?}");
    assert_eq!(app.session_json(&id).await["message_count"], 2);
    let health: serde_json::Value = app.server.get("/health").await.json().await.unwrap();
    assert_eq!(health["in_memory_clients"], 1);
    assert_eq!(health["agent_cli"]["status"], "ready");
    // The pinned CLI, whatever `claude` the developer has on PATH (unless chosen on purpose).
    let cli = tokio::task::spawn_blocking(cli_path).await.unwrap();
    let version = cli::version(&cli).expect("the test CLI answers --version");
    if std::env::var_os(TEST_CLI_VARIABLE).is_none() {
        assert_eq!(version, cli::TESTED_CLI_VERSION, "{}", cli.display());
    }
    assert_eq!(
        health["agent_cli"]["version"], version,
        "the version is known once the CLI answered"
    );
}

#[tokio::test]
async fn a_write_tool_call_creates_the_file_in_the_cwd_and_is_reported() {
    let app = AgentServer::start("").await;
    let (id, cwd) = app.session("alice").await;
    let target = cwd.join("hello.txt");
    let input = json!({"file_path": target, "content": "hi from the agent\n"});
    let answer = app.chat_ok(&id, &format!("tool Write {input}")).await;
    assert_eq!(
        std::fs::read_to_string(&target).ok().as_deref(),
        Some("hi from the agent\n"),
        "{answer}"
    );
    let call = &answer["tool_calls"][0];
    assert_eq!(call["tool"], "Write");
    assert_eq!(call["input"], input);
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(call["is_error"], false, "{answer}");
    assert!(
        call["result"].is_string() || call["result"].is_array(),
        "{answer}"
    );
    assert!(
        answer["text"].as_str().unwrap().starts_with("tool result: "),
        "{answer}"
    );

    // Streamed, the call and its result arrive as events; Bash runs in the session's cwd.
    let events = app
        .stream(&id, "tool Bash {\"command\": \"pwd; cat hello.txt\"}")
        .await
        .collect()
        .await;
    let tool_use = events
        .iter()
        .find(|e| e.data["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use: {events:?}"));
    assert_eq!(tool_use.data["tool_name"], "Bash");
    assert_eq!(tool_use.data["tool_input"]["command"], "pwd; cat hello.txt");
    let result = events
        .iter()
        .find(|e| e.data["type"] == "tool_result")
        .expect("tool_result event");
    assert_eq!(result.data["tool_use_id"], tool_use.data["tool_use_id"]);
    assert_eq!(result.data["is_error"], false);
    let output = result.data["content"].to_string();
    assert!(
        output.contains(cwd.to_str().unwrap()) && output.contains("hi from the agent"),
        "{output}"
    );
    assert_eq!(events.last().unwrap().data["type"], "done");
}

#[tokio::test]
async fn tools_outside_the_policy_are_denied_with_a_reason() {
    let app = AgentServer::start("  allowed_tools: [Read]\n").await;
    let (id, cwd) = app.session("alice").await;
    let target = cwd.join("nope.txt");
    let answer = app
        .chat_ok(
            &id,
            &format!("tool Write {}", json!({"file_path": target, "content": "x"})),
        )
        .await;
    assert!(!target.exists(), "a denied tool must not run");
    assert_eq!(answer["tool_calls"][0]["is_error"], true, "{answer}");
    assert!(
        answer["tool_calls"][0]["result"]
            .to_string()
            .contains("not allowed"),
        "{answer}"
    );
}

#[tokio::test]
async fn deltas_stream_before_the_model_finishes_and_add_up_to_the_text() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let events = app.stream(&id, "words 20 80").await.collect().await;
    let deltas: Vec<_> = events.iter().filter(|e| e.data["type"] == "text_delta").collect();
    assert!(deltas.len() >= 10, "token-level deltas, got {}", deltas.len());
    let done = events.last().unwrap();
    assert_eq!(done.data["type"], "done");
    let expected: String = (1..=20)
        .map(|i| {
            if i == 1 {
                "w1".to_string()
            } else {
                format!(" w{i}")
            }
        })
        .collect();
    assert_eq!(delta_text(&events), expected);
    assert_eq!(done.data["text"], expected);
    // The model takes 20 x 80 ms; the first word must reach us long before the last.
    let lead = done.at.duration_since(deltas[0].at);
    assert!(
        lead >= Duration::from_millis(800),
        "first delta only {lead:?} before done"
    );
}

#[tokio::test]
async fn the_agent_remembers_earlier_turns() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "my name is Ada").await;
    app.chat_ok(&id, "I like tea").await;
    let answer = app.chat_ok(&id, "recall").await;
    assert_eq!(answer["text"], "recall: my name is Ada | I like tea");
}

#[tokio::test]
async fn a_second_message_while_one_runs_is_refused_with_409() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let mut running = app.stream(&id, "words 30 100").await;
    running.until("text_delta").await;
    let body = expect_json(app.chat(&id, "me too").await, StatusCode::CONFLICT).await;
    assert_eq!(body["code"], "session_busy");
    let response = app.stream_response(&id, "me too").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let events = running.collect().await;
    assert_eq!(events.last().unwrap().data["type"], "done");
    assert_eq!(app.chat_ok(&id, "now").await["text"], "echo: now");
    // Another session of the same user is not blocked by it.
    let (other, _) = app.session("alice").await;
    assert_eq!(app.chat_ok(&other, "parallel").await["text"], "echo: parallel");
}

#[tokio::test]
async fn unknown_sessions_and_bad_messages_are_refused_before_any_stream() {
    let app = AgentServer::start("").await;
    let missing = uuid::Uuid::new_v4().to_string();
    for path in ["/api/v1/chat", "/api/v1/chat/stream"] {
        let body = expect_json(
            app.server
                .post(path, json!({"session_id": missing, "message": "hi"}))
                .await,
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(body["code"], "session_not_found");
    }
    let (id, _) = app.session("alice").await;
    for bad in [
        json!({"session_id": id, "message": ""}),
        json!({"session_id": id}),
        json!({"session_id": id, "message": "x", "timeout": -1}),
    ] {
        let body = expect_json(
            app.server.post("/api/v1/chat", bad.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["code"], "invalid_request", "{bad}");
    }
    assert_eq!(app.model.requests(), 0);
}

#[tokio::test]
async fn upstream_model_errors_surface_as_model_error() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    for status in [400, 429, 500, 529] {
        let events = app.stream(&id, &format!("fail {status}")).await.collect().await;
        let last = events.last().unwrap();
        assert_eq!(last.data["type"], "error", "fail {status}: {events:?}");
        assert_eq!(last.data["code"], "model_error", "fail {status}");
        assert!(!last.data["error"].as_str().unwrap().is_empty());
    }
    let body = expect_json(app.chat(&id, "fail 500").await, StatusCode::BAD_GATEWAY).await;
    assert_eq!(body["code"], "model_error");
    // The session is still usable.
    assert_eq!(app.chat_ok(&id, "fine now").await["text"], "echo: fine now");
}

#[tokio::test]
async fn a_timeout_interrupts_the_turn_with_504_and_the_session_goes_on() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let response = app
        .server
        .post(
            "/api/v1/chat",
            json!({"session_id": id, "message": "words 100 100", "timeout": 1.5}),
        )
        .await;
    let body = expect_json(response, StatusCode::GATEWAY_TIMEOUT).await;
    assert_eq!(body["code"], "turn_timeout");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("the turn exceeded its timeout and was interrupted"),
        "{body}"
    );
    assert_eq!(
        app.chat_ok(&id, "after timeout").await["text"],
        "echo: after timeout"
    );
}

#[tokio::test]
async fn max_turns_ends_the_turn_with_its_code() {
    let app = AgentServer::start("  max_turns: 1\n").await;
    let (id, _) = app.session("alice").await;
    let events = app
        .stream(&id, "tool Bash {\"command\": \"echo one\"}")
        .await
        .collect()
        .await;
    let last = events.last().unwrap();
    assert_eq!(last.data["type"], "error", "{events:?}");
    assert_eq!(last.data["code"], "max_turns");
}

#[tokio::test]
async fn bypass_permissions_works_as_root_and_allows_every_tool() {
    // As root the CLI refuses bypassPermissions unless the service marks it sandboxed.
    let app = AgentServer::start("  permission_mode: bypassPermissions\n  allowed_tools: []\n").await;
    let (id, cwd) = app.session("alice").await;
    let target = cwd.join("bypass.txt");
    let answer = app
        .chat_ok(
            &id,
            &format!("tool Write {}", json!({"file_path": target, "content": "ok"})),
        )
        .await;
    assert_eq!(answer["tool_calls"][0]["is_error"], false, "{answer}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "ok");
}

#[tokio::test]
async fn a_fresh_server_installs_the_pinned_cli_itself_while_it_already_serves() {
    let app = AgentServer::start_self_installing().await;
    // It listens at once: sessions work while npm runs; turns say why they cannot start yet.
    let (id, _) = app.session("alice").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let answer = loop {
        let response = app.chat(&id, "hello").await;
        if response.status() == StatusCode::OK {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        let body = expect_json(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(body["code"], "agent_unavailable", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("being installed"),
            "{body}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the CLI was not installed in time:\n{}",
            app.server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(answer["text"], "echo: hello");
    assert!(
        app.server
            .data_dir()
            .join(format!(
                "cli/{}/node_modules/.bin/claude",
                cli::TESTED_CLI_VERSION
            ))
            .exists()
    );
    let health: serde_json::Value = app.server.get("/health").await.json().await.unwrap();
    assert_eq!(health["agent_cli"]["status"], "ready", "{health}");
    let pinned = cli::TESTED_CLI_VERSION;
    assert_eq!(health["agent_cli"]["version"], pinned, "{health}");
    let log = app.server.log();
    assert!(
        log.contains(&format!("installing {}@{pinned}", cli::CLI_PACKAGE)),
        "{log}"
    );
    assert!(log.contains(&format!("cli.version={pinned}")), "{log}");
}
