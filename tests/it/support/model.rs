//! A scripted stand-in for the Anthropic Messages API on a random loopback port: the only fake in
//! the suite. The newest user text is the script:
//!
//! - `tool <Name> <json input>`: call that tool; the request that brings its result back is
//!   answered `tool result: <content>` (so a tool is called once, never in a loop).
//! - `words <N> [<delay ms>]`: stream `w1 w2 … wN`, one word per delta, sleeping between them.
//! - `recall`: answer `recall: ` and every earlier user text, joined by ` | `.
//! - `fail <status>`: answer with that HTTP error (429 rate limit, 500 api error, 529 overloaded,
//!   400 invalid request).
//! - `system <marker>`: answer `system: <characters in the system prompt> chars, marker <yes|no>`.
//! - `model`: answer `model: <the model the request named>`.
//! - anything else: answer `echo: <text>`.
//!
//! Every answer reports the same usage ([`INPUT_TOKENS`] and the others), and every request that
//! reaches it is noted ([`ModelStandIn::seen`]): its method, path and credential headers, so a story
//! can tell what a relay in front of it let through and with which key.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{head, post};
use serde_json::{Value, json};

/// The usage every answer reports: `message_start` carries the input and cache counts (and one
/// output token), `message_delta` the final output count.
pub const INPUT_TOKENS: u64 = 10;
pub const CACHE_WRITE_TOKENS: u64 = 20;
pub const CACHE_READ_TOKENS: u64 = 300;
pub const OUTPUT_TOKENS: u64 = 5;

/// A request that reached the stand-in.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The path with its query.
    pub target: String,
    pub api_key: Option<String>,
    pub authorization: Option<String>,
}

/// A running stand-in.
pub struct ModelStandIn {
    pub addr: SocketAddr,
    state: Arc<StandInState>,
}

#[derive(Default)]
struct StandInState {
    requests: AtomicU64,
    seen: Mutex<Vec<SeenRequest>>,
    /// Tool calls issued and not yet followed up, with the count of user texts when issued.
    issued: Mutex<HashMap<String, usize>>,
}

impl ModelStandIn {
    /// Starts the stand-in on 127.0.0.1 with a random port.
    pub async fn start() -> ModelStandIn {
        let state = Arc::new(StandInState::default());
        let app = Router::new()
            .route(
                "/",
                head(|| async { StatusCode::OK }).get(|| async { StatusCode::OK }),
            )
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(state.clone(), note))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("stand-in serves") });
        ModelStandIn { addr, state }
    }

    /// The `ANTHROPIC_BASE_URL` the CLI must use.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `POST /v1/messages` it answered.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Every request that reached it, whatever its path, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().expect("seen lock").clone()
    }
}

/// Notes every request that arrives (a layer over every route, unknown paths included).
async fn note(State(state): State<Arc<StandInState>>, request: Request, next: Next) -> Response {
    let seen = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        SeenRequest {
            method: request.method().to_string(),
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().path().to_string(), |p| p.to_string()),
            api_key: header("x-api-key"),
            authorization: header("authorization"),
        }
    };
    state.seen.lock().expect("seen lock").push(seen);
    next.run(request).await
}

/// `count_tokens`: the input tokens of any request.
async fn count_tokens() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"input_tokens": INPUT_TOKENS}).to_string(),
    )
        .into_response()
}

/// The user's own texts (not the CLI's `<system-reminder>` blocks), oldest first.
fn user_texts(messages: &[Value]) -> Vec<String> {
    let mut texts = Vec::new();
    for message in messages.iter().filter(|m| m["role"] == "user") {
        match &message["content"] {
            Value::String(text) => texts.push(text.clone()),
            Value::Array(blocks) => texts.extend(
                blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .filter(|t| !t.starts_with("<system-reminder>"))
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    texts
}

/// The result of a tool call this stand-in issued for the newest user text, not answered yet.
/// (The CLI reorders merged user content, so position cannot tell a follow-up from a new message;
/// ids and the count of user texts can. A call interrupted before its result is never followed up.)
fn follow_up(messages: &[Value], texts: usize, issued: &Mutex<HashMap<String, usize>>) -> Option<String> {
    let mut issued = issued.lock().expect("issued lock");
    let blocks = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default());
    for block in blocks.filter(|b| b["type"] == "tool_result") {
        let id = block["tool_use_id"].as_str().unwrap_or_default();
        if issued.get(id) == Some(&texts) {
            issued.remove(id);
            return Some(match &block["content"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            });
        }
    }
    None
}

enum Step {
    Text(Vec<String>, Duration),
    Tool(String, String, Value),
    Fail(u16),
}

fn script(request: &Value, issued: &Mutex<HashMap<String, usize>>) -> Step {
    let messages = request["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let texts = user_texts(messages);
    if let Some(result) = follow_up(messages, texts.len(), issued) {
        return Step::Text(vec![format!("tool result: {result}")], Duration::ZERO);
    }
    let newest = texts.last().cloned().unwrap_or_default();
    let mut words = newest.split_whitespace();
    match words.next() {
        Some("tool") => {
            let name = words.next().unwrap_or("Bash").to_string();
            let input_text = newest.splitn(3, ' ').nth(2).unwrap_or("{}");
            let id = format!("toolu_{:016x}", rand_id());
            issued
                .lock()
                .expect("issued lock")
                .insert(id.clone(), texts.len());
            Step::Tool(
                id,
                name,
                serde_json::from_str(input_text).unwrap_or_else(|_| json!({})),
            )
        }
        Some("words") => {
            let count: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(10);
            let delay = Duration::from_millis(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            let pieces = (1..=count)
                .map(|i| if i == 1 { format!("w{i}") } else { format!(" w{i}") })
                .collect();
            Step::Text(pieces, delay)
        }
        Some("recall") => {
            let earlier = &texts[..texts.len().saturating_sub(1)];
            Step::Text(vec![format!("recall: {}", earlier.join(" | "))], Duration::ZERO)
        }
        Some("fail") => Step::Fail(words.next().and_then(|n| n.parse().ok()).unwrap_or(500)),
        Some("system") => {
            let system = system_text(&request["system"]);
            let marker = words.next().unwrap_or("\u{0}");
            let found = if system.contains(marker) { "yes" } else { "no" };
            Step::Text(
                vec![format!(
                    "system: {} chars, marker {found}",
                    system.chars().count()
                )],
                Duration::ZERO,
            )
        }
        Some("model") => Step::Text(
            vec![format!("model: {}", request["model"].as_str().unwrap_or(""))],
            Duration::ZERO,
        ),
        _ => Step::Text(vec![format!("echo: {newest}")], Duration::ZERO),
    }
}

/// The system prompt of a request: a string, or a list of text blocks.
fn system_text(system: &Value) -> String {
    match system {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn sse(name: &str, mut data: Value) -> Bytes {
    data["type"] = json!(name);
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// One `content_block_delta` event carrying `text`.
fn text_delta(text: &str) -> String {
    let text = serde_json::to_string(text).expect("a string serializes");
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}\n\n"
    )
}

async fn messages(State(state): State<Arc<StandInState>>, body: Bytes) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let step = script(&request, &state.issued);
    if let Step::Fail(status) = step {
        let kind = match status {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            400 => "invalid_request_error",
            _ => "api_error",
        };
        let body = json!({"type": "error", "error": {"type": kind, "message": format!("stand-in failure {status}")}});
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let stream = async_stream::stream! {
        yield Ok::<_, Infallible>(sse("message_start", json!({"message": {
            "id": "msg_standin", "type": "message", "role": "assistant", "model": "stand-in",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
                "cache_read_input_tokens": CACHE_READ_TOKENS, "output_tokens": 1}}})));
        let stop_reason = match step {
            Step::Tool(id, name, input) => {
                yield Ok(sse("content_block_start", json!({"index": 0, "content_block": {
                    "type": "tool_use", "id": id, "name": name, "input": {}}})));
                yield Ok(sse("content_block_delta", json!({"index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": input.to_string()}})));
                yield Ok(sse("content_block_stop", json!({"index": 0})));
                "tool_use"
            }
            Step::Text(pieces, delay) => {
                yield Ok(sse("content_block_start", json!({"index": 0, "content_block": {"type": "text", "text": ""}})));
                if delay.is_zero() {
                    // Undelayed answers can be huge (a slow-reader story streams 100 000 words):
                    // send them in batches, formatted without building a `Value` per word.
                    for batch in pieces.chunks(1000) {
                        let mut bytes = String::new();
                        for piece in batch {
                            bytes.push_str(&text_delta(piece));
                        }
                        yield Ok(Bytes::from(bytes));
                    }
                } else {
                    for piece in pieces {
                        tokio::time::sleep(delay).await;
                        yield Ok(Bytes::from(text_delta(&piece)));
                    }
                }
                yield Ok(sse("content_block_stop", json!({"index": 0})));
                "end_turn"
            }
            Step::Fail(_) => unreachable!("answered above"),
        };
        yield Ok(sse("message_delta", json!({"delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": OUTPUT_TOKENS}})));
        yield Ok(sse("message_stop", json!({})));
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn rand_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
