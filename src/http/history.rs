//! A session's history: `GET /api/v1/sessions/{id}/events` (its numbered event stream: stored
//! events after the client's position, then live ones, as SSE; or a JSON page), `.../turns`,
//! `.../turns/{turn_id}` and `.../messages` (the conversation as the user saw it).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::AppState;
use super::chat::sse_event;
use super::error::ApiError;
use super::sessions::{SessionIdPath, parse_id};
use crate::domain::{Caller, SessionEvent, TurnErrorCode, TurnId, TurnUsage};
use crate::sessions::{StoredEvent, TurnRecord, Watch};

/// Stored events read per page while catching up.
const PAGE: u32 = 500;
/// How long a watcher waits for an event that was published but is not stored yet.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// Where to start and how to answer.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Events numbered after this one (else the `Last-Event-ID` header, else from the start).
    pub after: Option<u64>,
    /// `false`: one JSON page of stored events instead of a stream.
    pub follow: Option<bool>,
    /// The page size for `follow=false` (1 to 1000, default 100).
    pub limit: Option<u32>,
}

/// One stored event in a JSON page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventEntry {
    /// Its number in the session's stream (the SSE `id`).
    pub seq: u64,
    /// The turn that emitted it.
    pub turn_id: String,
    /// The event, as the SSE `data` carried it.
    #[schema(value_type = Object)]
    pub data: Value,
    /// When it was emitted.
    pub at: DateTime<Utc>,
}

/// A page of stored events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// The events, in order.
    pub events: Vec<EventEntry>,
    /// The position asked for.
    pub after: u64,
    /// Where the next page starts (`after` of the next request).
    pub next_after: u64,
}

fn start_position(query: &EventsQuery, headers: &HeaderMap) -> Result<u64, ApiError> {
    if let Some(after) = query.after {
        return Ok(after);
    }
    match headers.get("last-event-id") {
        None => Ok(0),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event number")),
    }
}

/// A session's events: the stored ones after the client's position, then the live ones.
///
/// SSE by default: each event's `id` is its number, its `data` exactly what `chat/stream` sent;
/// after the stored events come those of the running turn and of later turns, until the client
/// leaves. A reconnecting client sends `Last-Event-ID` (or `?after=N`) and gets exactly what it
/// missed. A watcher that falls too far behind gets `stream_lagged` and can reconnect.
/// `?follow=false` answers one JSON page of stored events instead.
#[utoipa::path(get, path = "/api/v1/sessions/{session_id}/events", tag = "history",
    params(SessionIdPath, EventsQuery),
    responses(
        (status = 200, description = "text/event-stream of the session's events, or an EventPage with follow=false", body = EventPage),
        (status = 404, description = "session_not_found", body = super::error::ErrorBody)))]
pub async fn session_events(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let after = start_position(&query, &headers)?;
    if query.follow == Some(false) {
        let limit = query.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid("limit must be between 1 and 1000"));
        }
        let events = state.sessions.events_after(&caller, id, after, limit).await?;
        let next_after = events.last().map(|e| e.seq).unwrap_or(after);
        return Ok(Json(EventPage {
            events: events.into_iter().map(entry).collect(),
            after,
            next_after,
        })
        .into_response());
    }
    let watch = state.sessions.watch(&caller, id).await?;
    let watcher = Watcher {
        watch,
        last_sent: after,
        backlog: VecDeque::new(),
        held: None,
        caught_up: false,
        finished: false,
    };
    let stream = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let event = watcher.next_event().await?;
        Some((Ok::<_, Infallible>(event), watcher))
    });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(state.keepalive).text("keep-alive"));
    Ok(([("x-accel-buffering", "no"), ("cache-control", "no-cache")], sse).into_response())
}

fn entry(event: StoredEvent) -> EventEntry {
    EventEntry {
        seq: event.seq,
        turn_id: event.turn_id.to_string(),
        data: serde_json::from_str(&event.data).unwrap_or(Value::String(event.data)),
        at: event.at,
    }
}

/// One watcher's position: stored events first, then live ones, never a gap or a duplicate.
struct Watcher {
    watch: Watch,
    last_sent: u64,
    backlog: VecDeque<StoredEvent>,
    /// A live event that arrived ahead of events not yet read from the store.
    held: Option<Arc<SessionEvent>>,
    caught_up: bool,
    finished: bool,
}

impl Watcher {
    async fn next_event(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(stored) = self.backlog.pop_front() {
                if stored.seq <= self.last_sent {
                    continue;
                }
                self.last_sent = stored.seq;
                return Some(Event::default().id(stored.seq.to_string()).data(stored.data));
            }
            if let Some(held) = self.held.take() {
                if held.seq <= self.last_sent {
                    continue;
                }
                if held.seq == self.last_sent + 1 {
                    self.last_sent = held.seq;
                    return Some(sse_event(&held));
                }
                // Published before it was stored: read the store until the gap is filled.
                self.fill_gap_before(held.seq).await;
                self.held = Some(held);
                continue;
            }
            if !self.caught_up {
                match self
                    .watch
                    .events
                    .events_after(self.watch.session, self.last_sent, PAGE)
                    .await
                {
                    Ok(page) if !page.is_empty() => {
                        self.backlog.extend(page);
                        continue;
                    }
                    Ok(_) => self.caught_up = true,
                    Err(e) => {
                        tracing::error!(session.id = %self.watch.session, error = %e, "cannot read stored events");
                        self.finished = true;
                        return Some(error_event(
                            "store_unavailable",
                            "the stored events cannot be read now; reconnect with Last-Event-ID",
                        ));
                    }
                }
            }
            match self.watch.live.recv().await {
                Ok(event) => self.held = Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.finished = true;
                    tracing::warn!(session.id = %self.watch.session, events.missed = missed, "a watcher fell behind and was dropped");
                    return Some(error_event(
                        TurnErrorCode::StreamLagged.as_str(),
                        &format!(
                            "this watcher fell {missed} events behind and was dropped; reconnect with Last-Event-ID"
                        ),
                    ));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Reads stored events after `last_sent` until the one before `seq` is among them (the writer
    /// stores within milliseconds), or gives up after a while (the gap is then logged).
    async fn fill_gap_before(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + STORE_WAIT;
        loop {
            if let Ok(page) = self
                .watch
                .events
                .events_after(self.watch.session, self.last_sent, PAGE)
                .await
            {
                let reaches = page.iter().any(|e| e.seq + 1 >= seq);
                self.backlog.extend(page.into_iter().filter(|e| e.seq < seq));
                if reaches || !self.backlog.is_empty() {
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(session.id = %self.watch.session, after = self.last_sent, next = seq, "events missing from the store; the watcher skips them");
                self.last_sent = seq - 1;
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn error_event(code: &str, message: &str) -> Event {
    Event::default().data(json!({"type": "error", "code": code, "error": message}).to_string())
}

/// Paging through turns: the newest `limit` before `before`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TurnsQuery {
    /// Only turns started before this time (RFC 3339); the next page of older turns.
    pub before: Option<DateTime<Utc>>,
    /// How many (1 to 500, default 50).
    pub limit: Option<u32>,
}

/// One turn.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnResponse {
    /// The turn.
    pub turn_id: String,
    /// What the user said.
    pub user_message: String,
    /// `running`, `completed`, `interrupted`, `failed` or `timed_out`.
    pub status: &'static str,
    /// Why it did not complete.
    pub error_code: Option<String>,
    /// All the assistant's text in the turn.
    pub text: String,
    /// Tool calls with inputs and results.
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Value,
    /// Tokens used.
    pub usage: TurnUsage,
    /// The turn's own cost.
    pub total_cost_usd: f64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<TurnRecord> for TurnResponse {
    fn from(turn: TurnRecord) -> Self {
        TurnResponse {
            turn_id: turn.turn_id.to_string(),
            user_message: turn.user_message,
            status: turn.status.as_str(),
            error_code: turn.error_code,
            text: turn.text,
            tool_calls: turn.tool_calls,
            usage: turn.usage,
            total_cost_usd: turn.cost_usd,
            started_at: turn.started_at,
            finished_at: turn.finished_at,
        }
    }
}

/// A page of turns, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnsResponse {
    /// The turns.
    pub turns: Vec<TurnResponse>,
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(50);
    if (1..=500).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid("limit must be between 1 and 500"))
    }
}

/// The session's turns, oldest first (the newest `limit` before `before`).
#[utoipa::path(get, path = "/api/v1/sessions/{session_id}/turns", tag = "history",
    params(SessionIdPath, TurnsQuery),
    responses((status = 200, body = TurnsResponse), (status = 404, description = "session_not_found", body = super::error::ErrorBody)))]
pub async fn list_turns(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
    query: Result<Query<TurnsQuery>, QueryRejection>,
) -> Result<Json<TurnsResponse>, ApiError> {
    let Query(query) = query?;
    let turns = state
        .sessions
        .turns(&caller, id, query.before, page_limit(query.limit)?)
        .await?;
    Ok(Json(TurnsResponse {
        turns: turns.into_iter().map(TurnResponse::from).collect(),
    }))
}

/// One turn of the session.
#[utoipa::path(get, path = "/api/v1/sessions/{session_id}/turns/{turn_id}", tag = "history",
    params(("session_id" = String, Path, description = "The session"), ("turn_id" = String, Path, description = "The turn")),
    responses((status = 200, body = TurnResponse), (status = 404, description = "session_not_found or turn_not_found", body = super::error::ErrorBody)))]
pub async fn get_turn(
    State(state): State<AppState>,
    caller: Caller,
    Path((session, turn)): Path<(String, String)>,
) -> Result<Json<TurnResponse>, ApiError> {
    let id = parse_id(&session)?;
    let turn = uuid::Uuid::parse_str(&turn)
        .map(TurnId)
        .map_err(|_| ApiError::from(crate::sessions::SessionError::TurnNotFound(turn.clone())))?;
    Ok(Json(state.sessions.turn(&caller, id, turn).await?.into()))
}

/// One exchange of the conversation: what the user said and what the assistant answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageEntry {
    /// The turn.
    pub turn_id: String,
    /// What the user said, and when.
    #[schema(value_type = Object)]
    pub user: Value,
    /// What the assistant said and did (text, tool calls with results), and when it finished.
    #[schema(value_type = Object)]
    pub assistant: Value,
    /// How the turn ended (`running` while it runs).
    pub status: &'static str,
    /// Tokens used.
    pub usage: TurnUsage,
}

/// The conversation, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagesResponse {
    /// One entry per turn.
    pub messages: Vec<MessageEntry>,
}

/// The conversation as the user saw it, one entry per turn, oldest first.
#[utoipa::path(get, path = "/api/v1/sessions/{session_id}/messages", tag = "history",
    params(SessionIdPath, TurnsQuery),
    responses((status = 200, body = MessagesResponse), (status = 404, description = "session_not_found", body = super::error::ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
    query: Result<Query<TurnsQuery>, QueryRejection>,
) -> Result<Json<MessagesResponse>, ApiError> {
    let Query(query) = query?;
    let turns = state
        .sessions
        .turns(&caller, id, query.before, page_limit(query.limit)?)
        .await?;
    let messages = turns
        .into_iter()
        .map(|turn| MessageEntry {
            turn_id: turn.turn_id.to_string(),
            user: json!({"text": turn.user_message, "at": turn.started_at}),
            assistant: json!({
                "text": turn.text,
                "tool_calls": turn.tool_calls,
                "error_code": turn.error_code,
                "at": turn.finished_at,
            }),
            status: turn.status.as_str(),
            usage: turn.usage,
        })
        .collect();
    Ok(Json(MessagesResponse { messages }))
}
