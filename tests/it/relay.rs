//! The model relay: the model key stays in the service. Each CLI gets a token of its own and the
//! relay's address; the relay takes only a live token, forwards only the Messages API, puts the real
//! key on what it forwards, streams the answer back as it comes and records each request's usage.
//! The stories run the real server and CLI against the stand-in, and the relay on its own (in this
//! process) where a story needs to look inside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_agent_http::domain::SessionId;
use claude_agent_http::relay::{Relay, RelaySettings, TOKEN_PREFIX, UpstreamCredential};
use claude_agent_http::store::{MemoryStore, UsageQuery, UsageRecord, UsageStore};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::agent::{AgentServer, eventually, wait_no_processes};
use crate::support::model::{
    CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, ModelStandIn, OUTPUT_TOKENS,
};
use crate::support::procs;
use crate::support::server::plain_client;

/// The key the test servers hold (`AgentServer` puts it in the service's environment).
const REAL_KEY: &str = "sk-test-stand-in";

/// A request body the stand-in answers `echo: <text>`.
fn message(text: &str) -> Value {
    json!({
        "model": "claude-relay-test",
        "max_tokens": 64,
        "stream": true,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    })
}

/// The session's one CLI process, once it exists.
async fn the_cli(session: &str) -> u32 {
    eventually("the session's CLI process", Duration::from_secs(20), || {
        procs::clis(session).len() == 1
    })
    .await;
    procs::clis(session)[0]
}

/// The relay address and token a CLI process was given.
fn relay_access(pid: u32) -> (String, String) {
    let base = procs::env_var(pid, "ANTHROPIC_BASE_URL").expect("the CLI has a base URL");
    let token = procs::env_var(pid, "ANTHROPIC_API_KEY").expect("the CLI has a key");
    (base, token)
}

/// The relay's log lines about the requests of `session` (the server logs each at debug).
fn relayed_lines(log: &str, session: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("model request relayed") && line.contains(session))
        .map(str::to_string)
        .collect()
}

/// A `name=value` field of a log line (quotes removed).
fn field(line: &str, name: &str) -> String {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[start..]
        .split(' ')
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// Sends `body` to the relay at `base` with `headers`; answers the status and the JSON body.
async fn send(
    base: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = plain_client().request(method, format!("{base}{path}")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the relay answers");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An answer in the Messages API's error shape, of `kind`.
fn assert_api_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn the_cli_holds_a_relay_token_and_the_model_sees_the_real_key() {
    let app = AgentServer::start("").await;
    let (id, _) = app.session("alice").await;
    let answer = app
        .chat_ok(&id, &format!("tool Bash {}", json!({"command": "env"})))
        .await;
    let output = answer["tool_calls"][0]["result"].to_string();
    assert!(output.contains(TOKEN_PREFIX), "the tool sees the token: {output}");
    assert!(!output.contains(REAL_KEY), "a tool sees the real key: {output}");

    let cli = the_cli(&id).await;
    let (base, token) = relay_access(cli);
    assert!(
        token.starts_with(TOKEN_PREFIX) && token.len() > TOKEN_PREFIX.len() + 32,
        "{token}"
    );
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_ne!(
        base,
        app.model.base_url(),
        "the CLI reaches the relay, not the model"
    );
    assert_eq!(procs::env_var(cli, "ANTHROPIC_AUTH_TOKEN"), None);
    // Nothing of the session, the CLI or any tool, holds the real key anywhere.
    let mut processes = procs::of_session(&id);
    processes.push(cli);
    for pid in processes {
        let environ = procs::environ(pid).join("\n");
        assert!(
            !environ.contains(REAL_KEY),
            "pid {pid} holds the real key in its environment"
        );
        assert!(
            !procs::cmdline(pid).contains(REAL_KEY),
            "pid {pid} has the real key on its command line"
        );
    }
    assert!(
        procs::mentioning(REAL_KEY).is_empty(),
        "the real key is on a command line"
    );

    // The model got every request with the real key, never with the token.
    let seen = app.model.seen();
    let messages: Vec<_> = seen
        .iter()
        .filter(|r| r.target.starts_with("/v1/messages"))
        .collect();
    assert!(messages.len() >= 2, "the tool call and its result: {seen:?}");
    for request in &seen {
        assert_eq!(request.method, "POST", "{request:?}");
        assert_eq!(request.api_key.as_deref(), Some(REAL_KEY), "{request:?}");
        assert_eq!(request.authorization, None, "{request:?}");
    }
}

#[tokio::test]
async fn the_relay_refuses_what_is_not_a_live_token_on_the_messages_api() {
    let app = AgentServer::start("").await;
    let (a, _) = app.session("alice").await;
    let (b, _) = app.session("bob").await;
    assert_eq!(app.chat_ok(&a, "hello").await["text"], "echo: hello");
    assert_eq!(app.chat_ok(&b, "hello").await["text"], "echo: hello");
    let (base, token_a) = relay_access(the_cli(&a).await);
    let (base_b, token_b) = relay_access(the_cli(&b).await);
    assert_eq!(base, base_b, "one relay for every session");
    assert_ne!(token_a, token_b, "each session has its own token");

    let before = app.model.seen().len();
    let body = message("hello");
    let path = "/v1/messages?beta=true";
    let wrong = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
    let bearer_wrong = format!("Bearer {wrong}");
    let bearer_real = format!("Bearer {REAL_KEY}");
    for headers in [
        vec![],
        vec![("x-api-key", wrong.as_str())],
        vec![("authorization", bearer_wrong.as_str())],
        // The real key is not a relay token either.
        vec![("x-api-key", REAL_KEY)],
        vec![("authorization", bearer_real.as_str())],
    ] {
        let (status, answer) = send(&base, reqwest::Method::POST, path, &headers, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}: {answer}");
        assert_api_error(&answer, "authentication_error");
    }
    // A live token, on anything but the Messages API.
    for (method, path) in [
        (reqwest::Method::GET, "/v1/models"),
        (reqwest::Method::POST, "/v1/complete"),
        (reqwest::Method::POST, "/v1/messages/batches"),
        (reqwest::Method::GET, "/v1/messages"),
        (reqwest::Method::POST, "/v1/files"),
        (reqwest::Method::GET, "/"),
    ] {
        let (status, answer) = send(
            &base,
            method.clone(),
            path,
            &[("x-api-key", token_a.as_str())],
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_api_error(&answer, "permission_error");
    }
    assert_eq!(
        app.model.seen().len(),
        before,
        "nothing refused reached the model"
    );

    // A live token works as either header, on count_tokens too, and reaches the model with the key.
    let bearer_a = format!("Bearer {token_a}");
    let (status, answer) = send(
        &base,
        reqwest::Method::POST,
        "/v1/messages/count_tokens?beta=true",
        &[("authorization", bearer_a.as_str())],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["input_tokens"], INPUT_TOKENS);
    let last = app.model.seen().pop().expect("the request arrived");
    assert_eq!(last.target, "/v1/messages/count_tokens?beta=true");
    assert_eq!(last.api_key.as_deref(), Some(REAL_KEY));
    assert_eq!(last.authorization, None, "the token does not travel on");

    // A deleted session's token is dead at once; the other session's still works.
    let deleted = app.server.delete(&format!("/api/v1/sessions/{a}")).await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    wait_no_processes(&a, Duration::from_secs(10)).await;
    let before = app.model.seen().len();
    let (status, answer) = send(
        &base,
        reqwest::Method::POST,
        path,
        &[("x-api-key", token_a.as_str())],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_api_error(&answer, "authentication_error");
    assert_eq!(app.model.seen().len(), before, "the dead token reached the model");
    assert_eq!(app.chat_ok(&b, "still here").await["text"], "echo: still here");
}

#[tokio::test]
async fn a_stopped_cli_s_token_is_dead_and_the_next_cli_gets_a_new_one() {
    let app = AgentServer::start("api:\n  idle_session_timeout: 3\n").await;
    let (id, _) = app.session("alice").await;
    app.chat_ok(&id, "first words").await;
    let (base, old) = relay_access(the_cli(&id).await);
    app.wait_live_agents(0, Duration::from_secs(15)).await;
    wait_no_processes(&id, Duration::from_secs(5)).await;
    let before = app.model.seen().len();
    let (status, answer) = send(
        &base,
        reqwest::Method::POST,
        "/v1/messages?beta=true",
        &[("x-api-key", old.as_str())],
        &message("after the stop"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(
        app.model.seen().len(),
        before,
        "the stopped CLI's token reached the model"
    );
    assert_eq!(app.chat_ok(&id, "recall").await["text"], "recall: first words");
    let (_, new) = relay_access(the_cli(&id).await);
    assert_ne!(new, old, "a new process, a new token");
}

#[tokio::test]
async fn each_relayed_request_is_recorded_with_its_session_user_model_and_usage() {
    let app = AgentServer::start("  model: claude-stand-in-model\n").await;
    let (id, _) = app.session("alice").await;
    let (other, _) = app.session("bob").await;
    assert_eq!(
        app.chat_ok(&id, "model").await["text"],
        "model: claude-stand-in-model"
    );
    app.chat_ok(&other, "hello").await;
    eventually("the relay's records", Duration::from_secs(5), || {
        !relayed_lines(&app.server.log(), &id).is_empty()
    })
    .await;
    let lines = relayed_lines(&app.server.log(), &id);
    let messages: Vec<&String> = lines
        .iter()
        .filter(|line| field(line, "relay.path") == "/v1/messages")
        .collect();
    assert_eq!(messages.len(), 1, "one model call for the turn: {lines:#?}");
    let line = messages[0];
    assert_eq!(field(line, "session.id"), id);
    assert_eq!(field(line, "user.id"), "alice");
    assert_eq!(field(line, "relay.model"), "claude-stand-in-model");
    assert_eq!(field(line, "relay.status"), "200");
    assert_eq!(field(line, "usage.input_tokens"), INPUT_TOKENS.to_string());
    assert_eq!(field(line, "usage.output_tokens"), OUTPUT_TOKENS.to_string());
    assert_eq!(
        field(line, "usage.cache_read_tokens"),
        CACHE_READ_TOKENS.to_string()
    );
    assert_eq!(
        field(line, "usage.cache_write_tokens"),
        CACHE_WRITE_TOKENS.to_string()
    );
    assert!(field(line, "relay.duration_ms").parse::<u64>().is_ok(), "{line}");
    assert!(
        !line.contains(TOKEN_PREFIX) && !line.contains(REAL_KEY),
        "no credential is logged: {line}"
    );
    let others = relayed_lines(&app.server.log(), &other);
    assert!(!others.is_empty(), "bob's call is recorded as bob's");
    assert!(
        others.iter().all(|line| field(line, "user.id") == "bob"),
        "{others:#?}"
    );
}

/// A relay in this process in front of `upstream`, recording usage in a store of its own.
async fn start_relay(
    upstream: String,
    credential: UpstreamCredential,
    run_dir: std::path::PathBuf,
) -> Result<Relay, claude_agent_http::relay::RelayError> {
    let settings = RelaySettings {
        upstream,
        credential,
        run_dir,
        pricing: Default::default(),
        budgets: Default::default(),
    };
    let store: Arc<dyn UsageStore> = Arc::new(MemoryStore::new(0));
    let relay = Relay::start(settings, store.clone()).await?;
    STORES.lock().unwrap().push((relay.base_url().to_string(), store));
    Ok(relay)
}

/// The usage stores of the relays started in this process, by relay address.
static STORES: std::sync::Mutex<Vec<(String, Arc<dyn UsageStore>)>> = std::sync::Mutex::new(Vec::new());

/// The usage records of `relay`, oldest first.
async fn records_of(relay: &Relay) -> Vec<UsageRecord> {
    assert!(
        relay.flush(Duration::from_secs(10)).await,
        "the records are stored"
    );
    let store = STORES
        .lock()
        .unwrap()
        .iter()
        .find(|(url, _)| url == relay.base_url())
        .map(|(_, store)| store.clone())
        .expect("a relay of this process");
    let mut records = store.usage_records(&UsageQuery::default(), 1000).await.unwrap();
    records.reverse();
    records
}

/// A relay in this process, in front of a stand-in, with its run folder.
async fn relay_before(model: &ModelStandIn) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(
        model.base_url(),
        UpstreamCredential {
            api_key: Some(REAL_KEY.into()),
            auth_token: None,
        },
        dir.path().join("run"),
    )
    .await
    .expect("the relay starts");
    (relay, dir)
}

#[tokio::test]
async fn the_relay_streams_the_answer_as_it_comes_and_meters_it() {
    let model = ModelStandIn::start().await;
    let (relay, _dir) = relay_before(&model).await;
    let session = SessionId::new();
    let token = relay.issue(session, "carol");
    // Four words, 400 ms apart: the first must come through long before the last is written.
    let response = plain_client()
        .post(format!("{}/v1/messages?beta=true", relay.base_url()))
        .header("x-api-key", token.secret())
        .header("anthropic-version", "2023-06-01")
        .json(&message("words 4 400"))
        .send()
        .await
        .expect("the relay answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut first_word = None;
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
        if first_word.is_none() && text.contains("\"w1\"") {
            first_word = Some(Instant::now());
        }
    }
    let ended = Instant::now();
    let first_word = first_word.expect("w1 came through");
    assert!(
        ended - first_word >= Duration::from_millis(800),
        "the first word arrived only with the end of the answer: the relay held it back"
    );
    assert!(text.contains("message_stop"), "the whole answer: {text}");
    let seen = model.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].api_key.as_deref(), Some(REAL_KEY));
    assert_eq!(seen[0].target, "/v1/messages?beta=true");
    eventually("the record", Duration::from_secs(5), || relay.records_seen() == 1).await;
    let record = records_of(&relay).await.pop().expect("a record");
    assert_eq!(record.session_id, session);
    assert_eq!(record.user_id, "carol");
    assert_eq!(record.model.as_deref(), Some("claude-relay-test"));
    assert_eq!(record.status, 200);
    assert_eq!(record.path, "/v1/messages");
    assert_eq!(record.usage.input_tokens, INPUT_TOKENS);
    assert_eq!(record.usage.output_tokens, OUTPUT_TOKENS);
    assert_eq!(record.usage.cache_read_input_tokens, CACHE_READ_TOKENS);
    assert_eq!(record.usage.cache_creation_input_tokens, CACHE_WRITE_TOKENS);
    assert!(
        record.duration_ms >= 1200,
        "it lasted the whole answer: {record:?}"
    );
    // A model error passes through as it is, and is recorded with its status.
    let (status, answer) = send(
        relay.base_url(),
        reqwest::Method::POST,
        "/v1/messages",
        &[("x-api-key", token.secret())],
        &message("fail 429"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_api_error(&answer, "rate_limit_error");
    eventually("the error's record", Duration::from_secs(5), || {
        relay.records_seen() == 2
    })
    .await;
    assert_eq!(records_of(&relay).await.pop().unwrap().status, 429);
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_nothing_refused_is_recorded() {
    let model = ModelStandIn::start().await;
    let (relay, _dir) = relay_before(&model).await;
    let token = relay.issue(SessionId::new(), "dave");
    let kept = relay.issue(SessionId::new(), "erin");
    assert_eq!(relay.live_tokens(), 2);
    let secret = token.secret().to_string();
    relay.revoke(&token);
    assert_eq!(relay.live_tokens(), 1);
    let (status, answer) = send(
        relay.base_url(),
        reqwest::Method::POST,
        "/v1/messages",
        &[("x-api-key", secret.as_str())],
        &message("hello"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    drop(token);
    drop(kept);
    assert_eq!(relay.live_tokens(), 0, "a dropped token is revoked");
    // The preflight older CLIs send (without a key) is answered by the relay itself.
    let preflight = plain_client()
        .head(format!("{}/", relay.base_url()))
        .send()
        .await
        .expect("HEAD /");
    assert_eq!(preflight.status(), StatusCode::OK);
    assert!(
        model.seen().is_empty(),
        "nothing reached the model: {:?}",
        model.seen()
    );
    assert_eq!(relay.records_seen(), 0);
}

#[tokio::test]
async fn an_unreachable_model_is_a_502_and_an_oversized_request_a_413() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        format!("http://127.0.0.1:{port}"),
        UpstreamCredential {
            api_key: None,
            auth_token: Some("real-token".into()),
        },
        dir.path().join("run"),
    )
    .await
    .unwrap();
    let token = relay.issue(SessionId::new(), "frank");
    let (status, answer) = send(
        relay.base_url(),
        reqwest::Method::POST,
        "/v1/messages",
        &[("x-api-key", token.secret())],
        &message("hello"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_api_error(&answer, "api_error");
    let huge = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(33 << 20)}]});
    let (status, answer) = send(
        relay.base_url(),
        reqwest::Method::POST,
        "/v1/messages",
        &[("x-api-key", token.secret())],
        &huge,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_api_error(&answer, "request_too_large");
    let statuses: Vec<u16> = records_of(&relay).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![502, 413]);
}

/// A `POST /v1/messages` with `key`, over the unix socket at `socket`; the raw answer.
async fn ask_over(socket: &std::path::Path, key: &str, probe: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = message("hello").to_string();
    let mut stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let request = format!(
        "POST /v1/messages?probe={probe} HTTP/1.1\r\nhost: relay\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn a_bound_token_s_socket_takes_that_token_only_and_goes_with_it() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let model = ModelStandIn::start().await;
    let (relay, dir) = relay_before(&model).await;
    let alice = relay
        .issue_bound(SessionId::new(), "alice")
        .expect("a bound token");
    let bob = relay.issue_bound(SessionId::new(), "bob").expect("a bound token");
    let unbound = relay.issue(SessionId::new(), "carol");
    assert!(unbound.socket().is_none(), "an unbound token has no socket");
    let (alice_socket, bob_socket) = (
        alice.socket().unwrap().to_path_buf(),
        bob.socket().unwrap().to_path_buf(),
    );
    assert_ne!(alice_socket, bob_socket);
    assert_eq!(
        alice_socket.parent(),
        Some(dir.path().join("run/relay").as_path())
    );
    let meta = std::fs::metadata(&alice_socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the service's user only"
    );
    let folder = std::fs::metadata(dir.path().join("run/relay")).unwrap();
    assert_eq!(folder.permissions().mode() & 0o777, 0o700);

    let own = ask_over(&alice_socket, alice.secret(), "own").await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
    for (key, probe) in [
        (bob.secret(), "bobs"),
        (unbound.secret(), "unbound"),
        ("cah_relay_x", "none"),
    ] {
        let refused = ask_over(&alice_socket, key, probe).await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{probe}: {refused}");
    }
    let seen: Vec<String> = model.seen().into_iter().map(|r| r.target).collect();
    assert_eq!(
        seen,
        vec!["/v1/messages?probe=own".to_string()],
        "only the own token's request"
    );

    // Dropped: the token is dead and its socket closed and gone; the other one still works.
    drop(alice);
    assert!(!alice_socket.exists(), "the socket is removed with its token");
    assert!(tokio::net::UnixStream::connect(&alice_socket).await.is_err());
    let still = ask_over(&bob_socket, bob.secret(), "bob-own").await;
    assert!(still.starts_with("HTTP/1.1 200"), "{still}");
    relay.revoke(&bob);
    assert!(!bob_socket.exists(), "revoking removes the socket too");

    // A restarted relay clears sockets a previous instance left.
    std::os::unix::net::UnixListener::bind(dir.path().join("run/relay/stale.sock")).unwrap();
    drop(relay);
    let _again = start_relay(
        model.base_url(),
        UpstreamCredential {
            api_key: Some(REAL_KEY.into()),
            auth_token: None,
        },
        dir.path().join("run"),
    )
    .await
    .expect("the relay starts again");
    assert!(!dir.path().join("run/relay/stale.sock").exists());
}

#[tokio::test]
async fn the_unix_socket_serves_the_same_relay_to_any_uid_with_a_token() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let model = ModelStandIn::start().await;
    let (relay, dir) = relay_before(&model).await;
    let socket = relay.socket_path().to_path_buf();
    assert_eq!(socket, dir.path().join("run/relay.sock"));
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let run = std::fs::metadata(dir.path().join("run")).unwrap();
    assert_eq!(run.permissions().mode() & 0o777, 0o711);

    let token = relay.issue(SessionId::new(), "grace");
    let ask = |key: String| {
        let socket = socket.clone();
        async move {
            let body = message("hello").to_string();
            let mut stream = tokio::net::UnixStream::connect(&socket).await.expect("connect");
            let request = format!(
                "POST /v1/messages?beta=true HTTP/1.1\r\nhost: relay\r\nx-api-key: {key}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    let answer = ask(token.secret().to_string()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("echo: hello"), "{answer}");
    let refused = ask("cah_relay_nothing".into()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert_eq!(
        model.seen().len(),
        1,
        "only the live token's request reached the model"
    );

    // A second relay on the same data (a restarted service) takes over the socket it left.
    drop(relay);
    let again = start_relay(
        model.base_url(),
        UpstreamCredential {
            api_key: Some(REAL_KEY.into()),
            auth_token: None,
        },
        dir.path().join("run"),
    )
    .await
    .expect("a stale socket does not stop a new relay");
    assert_eq!(again.socket_path(), socket);
}
