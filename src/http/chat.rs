//! `/api/v1/chat` (one JSON answer per turn) and `/api/v1/chat/stream` (SSE: token deltas, tool
//! calls and results, then exactly one `done` or `error`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::sessions::parse_id;
use crate::domain::{Caller, SessionEvent, TurnErrorCode, TurnEvent, TurnId, TurnOutcome};

/// A message for a session's agent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    /// The session to talk to.
    pub session_id: String,
    /// What the user says; must not be empty.
    pub message: String,
    /// Seconds after which the turn is interrupted (sync: 504 `turn_timeout`; stream: `error` event).
    pub timeout: Option<f64>,
}

/// The agent's whole answer to one message: the turn's outcome (all text in order, tool calls with
/// their results, usage, this turn's own cost, ...) with the session and a timestamp.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatResponse {
    /// The session.
    pub session_id: String,
    /// What the turn produced.
    #[serde(flatten)]
    pub outcome: TurnOutcome,
    /// When the answer was made.
    pub timestamp: DateTime<Utc>,
}

fn validate(request: &ChatRequest) -> Result<Option<Duration>, ApiError> {
    if request.message.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "message must not be empty",
        ));
    }
    match request.timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "timeout must be a number of seconds between 0 and 86400",
        )),
    }
}

/// Send a message and wait for the whole answer.
#[utoipa::path(post, path = "/api/v1/chat", tag = "chat", request_body = ChatRequest,
    responses(
        (status = 200, body = ChatResponse),
        (status = 404, description = "session_not_found", body = ErrorBody),
        (status = 409, description = "session_busy, or interrupted", body = ErrorBody),
        (status = 422, description = "invalid request; max_turns or budget_exceeded", body = ErrorBody),
        (status = 502, description = "agent_crashed or model_error", body = ErrorBody),
        (status = 503, description = "agent_unavailable, agent_capacity_reached", body = ErrorBody),
        (status = 504, description = "turn_timeout", body = ErrorBody)))]
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Json<ChatResponse>, ApiError> {
    let Json(request) = body?;
    let timeout = validate(&request)?;
    let id = parse_id(&request.session_id)?;
    let ticket = state
        .sessions
        .start_turn(&caller, id, request.message, timeout)
        .await?;
    // Nobody reads the token stream of a synchronous chat.
    drop(ticket.events);
    let terminal = ticket.done.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the turn ended without a result",
        )
    })?;
    match &terminal.event {
        TurnEvent::Done(outcome) => Ok(Json(ChatResponse {
            session_id: id.to_string(),
            outcome: outcome.clone(),
            timestamp: Utc::now(),
        })),
        TurnEvent::Error { code, message, .. } => Err(ApiError::turn_failed(*code, message.clone())),
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the turn ended without a result",
        )),
    }
}

/// Send a message and stream the answer as server-sent events.
///
/// Each event is one `data:` line of JSON with an `id:`; `type` is one of `text_delta {text}`,
/// `tool_use {tool_name, tool_input, tool_use_id}`, `tool_result {tool_use_id, content, is_error}`,
/// `api_retry {attempt, max_retries, retry_delay_ms, error_status}`, and exactly one terminal
/// `done {text, usage, total_cost_usd, duration_ms, num_turns, stop_reason}` or `error {error, code}`.
#[utoipa::path(post, path = "/api/v1/chat/stream", tag = "chat", request_body = ChatRequest,
    responses(
        (status = 200, description = "text/event-stream of turn events", content_type = "text/event-stream"),
        (status = 404, description = "session_not_found", body = ErrorBody),
        (status = 409, description = "session_busy", body = ErrorBody)))]
pub async fn chat_stream(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let timeout = validate(&request)?;
    let id = parse_id(&request.session_id)?;
    let ticket = state
        .sessions
        .start_turn(&caller, id, request.message, timeout)
        .await?;
    let reader = TurnReader {
        events: ticket.events,
        turn: ticket.turn,
        finished: false,
    };
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next_event().await?;
        Some((Ok::<_, Infallible>(event), reader))
    });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(state.keepalive).text("keep-alive"));
    // Proxies must not buffer a token stream.
    Ok(([("x-accel-buffering", "no"), ("cache-control", "no-cache")], sse).into_response())
}

/// One stored or live event as an SSE event: its number as `id`, its wire form as `data`.
pub(super) fn sse_event(event: &SessionEvent) -> Event {
    Event::default().id(event.seq.to_string()).data(&event.data)
}

/// Reads one turn's events off the session's stream for one SSE response: each event with its
/// number as the SSE `id` and its stored wire form as `data`, exactly as a replay shows it. A reader
/// that falls further behind than the session's buffer is dropped with a `stream_lagged` error.
struct TurnReader {
    events: broadcast::Receiver<Arc<SessionEvent>>,
    turn: TurnId,
    finished: bool,
}

impl TurnReader {
    async fn next_event(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            match self.events.recv().await {
                Ok(event) if event.turn == self.turn => {
                    self.finished = event.event.is_terminal();
                    return Some(sse_event(&event));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some(self.lag(missed)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn lag(&mut self, missed: u64) -> Event {
        self.finished = true;
        tracing::warn!(turn.id = %self.turn, events.missed = missed, "a streaming reader fell behind and was dropped");
        Event::default().data(
            json!({
                "type": "error",
                "code": TurnErrorCode::StreamLagged.as_str(),
                "error": format!("this reader fell {missed} events behind and was dropped; the turn goes on"),
            })
            .to_string(),
        )
    }
}
