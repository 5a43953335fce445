//! Process lifecycle stories: interrupt, crash, disconnect, delete, idle eviction, the live cap,
//! restart and shutdown. Nothing may outlive its session.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::agent::{AgentServer, cmdline, eventually, session_processes, sleeps, wait_no_processes};
use crate::support::{expect_json, procs};

#[tokio::test]
async fn interrupt_stops_a_running_tool_and_the_session_stays_usable() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let stream = app.stream_a_running_sleep(&id).await;
    let answer = app.interrupt(&id).await;
    assert_eq!(answer["interrupted"], true);
    // The 60 s sleeping tool must not be waited for; how quickly the turn ends under load is not the point.
    let events = tokio::time::timeout(Duration::from_secs(30), stream.collect())
        .await
        .expect("the interrupted turn ended");
    let last = events.last().unwrap();
    assert_eq!(last.data["type"], "error", "{events:?}");
    assert_eq!(last.data["code"], "interrupted");
    eventually("sleep to be gone", Duration::from_secs(10), || {
        sleeps(&id).is_empty()
    })
    .await;
    assert_eq!(app.chat_ok(&id, "still here").await["text"], "echo: still here");
    // Nothing to interrupt now.
    let answer = app.interrupt(&id).await;
    assert_eq!(answer["interrupted"], false);
}

#[tokio::test]
async fn a_killed_cli_fails_its_turn_and_the_next_turn_resumes_the_conversation() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "remember the number 42").await;
    let stream = app.stream_a_running_sleep(&id).await;
    let cli = session_processes(&id)
        .into_iter()
        .find(|pid| {
            let argv = cmdline(*pid);
            argv.contains("--session-id=") || argv.contains("--resume=")
        })
        .expect("the CLI");
    assert!(cmdline(cli).contains("claude"), "{}", cmdline(cli));
    std::process::Command::new("kill")
        .args(["-9", &cli.to_string()])
        .status()
        .unwrap();
    let events = stream.collect().await;
    let last = events.last().unwrap();
    assert_eq!(last.data["type"], "error", "{events:?}");
    assert_eq!(last.data["code"], "agent_crashed");
    wait_no_processes(&id, Duration::from_secs(5)).await;
    let answer = app.chat_ok(&id, "recall").await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("remember the number 42"),
        "{answer}"
    );
    let log = app.server.log();
    assert!(log.contains("agent died mid-turn"), "the crash is logged");
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_stop_its_turn_and_nothing_leaks() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let mut stream = app.stream(&id, "words 20 50").await;
    stream.until("text_delta").await;
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.session_json(&id).await["message_count"] != 1 {
        assert!(Instant::now() < deadline, "the abandoned turn never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = app.chat_ok(&id, "next").await;
    assert_eq!(
        answer["text"], "echo: next",
        "the abandoned turn leaked: {answer}"
    );
    let answer = app.chat_ok(&id, "recall").await;
    assert_eq!(answer["text"], "recall: words 20 50 | next");
}

#[tokio::test]
async fn a_deleted_session_is_gone_for_good_with_its_process_and_transcript() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "secret plans").await;
    let config_dir = app.server.data_dir().join("agents/alice");
    let transcript_exists = || {
        std::fs::read_dir(config_dir.join("projects"))
            .map(|dirs| {
                dirs.flatten()
                    .any(|d| d.path().join(format!("{id}.jsonl")).exists())
            })
            .unwrap_or(false)
    };
    eventually("the transcript", Duration::from_secs(10), transcript_exists).await;
    assert!(!session_processes(&id).is_empty());
    assert_eq!(
        app.server
            .delete(&format!("/api/v1/sessions/{id}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        session_processes(&id).is_empty(),
        "delete returns after the process is gone"
    );
    assert!(!transcript_exists(), "the transcript is removed");
    for response in [
        app.server
            .post(&format!("/api/v1/sessions/{id}/resume"), json!({}))
            .await,
        app.chat(&id, "hello?").await,
    ] {
        assert_eq!(
            expect_json(response, StatusCode::NOT_FOUND).await["code"],
            "session_not_found"
        );
    }
    app.wait_live_agents(0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idle_agents_are_stopped_and_the_conversation_resumes() {
    let app = AgentServer::start("api:\n  idle_session_timeout: 1\n").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "first words").await;
    app.wait_live_agents(0, Duration::from_secs(15)).await;
    wait_no_processes(&id, Duration::from_secs(5)).await;
    let answer = app.chat_ok(&id, "recall").await;
    assert_eq!(answer["text"], "recall: first words");
}

#[tokio::test]
async fn the_live_cap_evicts_the_least_recently_used_idle_agent() {
    let app = AgentServer::start("api:\n  max_live_agents: 1\n").await;
    let (a, _) = app.session("alice").await;
    let (b, _) = app.session("bob").await;
    app.chat_ok(&a, "alpha").await;
    app.chat_ok(&b, "beta").await;
    app.wait_live_agents(1, Duration::from_secs(5)).await;
    assert!(session_processes(&a).is_empty(), "a was evicted for b");
    assert_eq!(app.chat_ok(&a, "recall").await["text"], "recall: alpha");
    assert!(session_processes(&b).is_empty(), "b was evicted for a");
}

#[tokio::test]
async fn resume_starts_the_process_and_a_restart_keeps_every_conversation() {
    let app = AgentServer::start_durable("").await;
    let (id, _) = app.session("alice").await;
    let (untouched, _) = app.session("alice").await;
    app.chat_ok(&id, "before restart").await;
    let app = app.restart().await;
    assert!(session_processes(&id).is_empty(), "shutdown stopped the agent");
    let resumed = expect_json(
        app.server
            .post(&format!("/api/v1/sessions/{id}/resume"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resumed["message_count"], 1);
    app.wait_live_agents(1, Duration::from_secs(5)).await;
    assert_eq!(app.chat_ok(&id, "recall").await["text"], "recall: before restart");
    assert_eq!(app.chat_ok(&untouched, "fresh").await["text"], "echo: fresh");
}

#[tokio::test]
async fn shutdown_leaves_no_agent_or_tool_process_behind() {
    let mut app = AgentServer::start("").await;
    let (idle, _) = app.session("alice").await;
    let (busy, _) = app.session("bob").await;
    app.chat_ok(&idle, "hello").await;
    let stream = app.stream_a_running_sleep(&busy).await;
    let server_pid = app.server.pid();
    assert_eq!(app.server.stop(), Some(0));
    let events = stream.collect().await;
    assert_eq!(events.last().unwrap().data["type"], "error", "{events:?}");
    for session in [&idle, &busy] {
        assert!(
            session_processes(session).is_empty(),
            "{session} left {:?}",
            session_processes(session)
        );
    }
    assert!(procs::descendants(server_pid).is_empty());
}

#[tokio::test]
async fn quiet_streams_get_keep_alive_comments() {
    let app = AgentServer::start("api:\n  keepalive_seconds: 1\n").await;
    let (id, _) = app.session("alice").await;
    let mut stream = app.stream(&id, "words 3 1500").await;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    assert_eq!(events.last().unwrap().data["type"], "done");
    assert!(stream.comments >= 1, "no keep-alive during 4.5 s of silence");
}

#[tokio::test]
async fn max_concurrent_requests_bounds_turns_across_the_service() {
    let app = AgentServer::start("api:\n  max_concurrent_requests: 1\n").await;
    let (a, _) = app.session("alice").await;
    let (b, _) = app.session("bob").await;
    let mut first = app.stream(&a, "words 10 100").await;
    first.until("text_delta").await;
    let second = app.chat_ok(&b, "waiting my turn");
    let first_done = async {
        let done = first.until("done").await;
        done.at
    };
    let (first_done_at, second_answer) = tokio::join!(first_done, async {
        let answer = second.await;
        (answer, Instant::now())
    });
    assert_eq!(second_answer.0["text"], "echo: waiting my turn");
    assert!(
        second_answer.1 > first_done_at,
        "the second turn ran while the only slot was taken"
    );
}

#[tokio::test]
async fn above_the_memory_limit_idle_agents_are_stopped() {
    // One CLI process alone takes well over 100 MB, so any idle agent must go.
    let app = AgentServer::start("api:\n  memory_limit_mb: 100\n").await;
    let (a, _) = app.session("alice").await;
    app.chat_ok(&a, "one").await;
    app.wait_live_agents(0, Duration::from_secs(10)).await;
    wait_no_processes(&a, Duration::from_secs(5)).await;
    assert_eq!(app.chat_ok(&a, "recall").await["text"], "recall: one");
}

#[tokio::test]
async fn after_a_hard_crash_the_next_start_kills_what_was_left_and_conversations_go_on() {
    let app = AgentServer::start_durable("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "before the crash").await;
    let stream = app.stream_a_running_sleep(&id).await;
    let orphan = sleeps(&id)[0];
    let app = app.crash_and_restart().await;
    drop(stream);
    eventually("the orphaned tool to be killed", Duration::from_secs(5), || {
        sleeps(&id).is_empty()
    })
    .await;
    assert!(!procs::is_alive(orphan));
    // Any running instance sweeps such orphans (here the restarted one, or another test's server).
    let answer = app.chat_ok(&id, "recall").await;
    assert!(
        answer["text"].as_str().unwrap().contains("before the crash"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_cli_killed_while_idle_is_replaced_on_the_next_message() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "remember me").await;
    // The CLI writes its transcript lazily (protocol reference, section 8): a CLI killed right after a
    // turn can lose that turn, or keep only the user's half of it (then `--resume` finds a dangling
    // user message and adds a synthetic "continue" turn). Graceful stops flush it; a kill -9 does
    // not, so wait until the assistant's reply is on disk.
    let projects = app.server.data_dir().join("agents/alice/projects");
    eventually(
        "the transcript to hold the reply",
        Duration::from_secs(10),
        || {
            std::fs::read_dir(&projects)
                .into_iter()
                .flatten()
                .flatten()
                .any(|dir| {
                    std::fs::read_to_string(dir.path().join(format!("{id}.jsonl")))
                        .is_ok_and(|t| t.contains("echo: remember me"))
                })
        },
    )
    .await;
    let cli = session_processes(&id)[0];
    std::process::Command::new("kill")
        .args(["-9", &cli.to_string()])
        .status()
        .unwrap();
    eventually("the CLI to die", Duration::from_secs(5), || {
        session_processes(&id).is_empty()
    })
    .await;
    assert_eq!(app.chat_ok(&id, "recall").await["text"], "recall: remember me");
    // Noticed before the message was written, or when it died as it was written: either way replaced.
    let log = app.server.log();
    assert!(
        log.contains("agent had exited while idle") || log.contains("agent died before the turn began"),
        "{log}"
    );
}
