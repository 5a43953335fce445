//! Turns and their events at rest: `trait EventStore`. Every event a turn emits is kept with its
//! number in the session's stream and its wire form (the exact JSON an SSE client received), so a
//! replay shows the same ids and the same bytes. Deleting a session removes its turns and events.
//! Its specification is the conformance story in `tests/it/event_store.rs`, run on every backend.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::StoreError;
use crate::domain::{SessionId, TurnId, TurnUsage};

/// Where a turn stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnStatus {
    /// Still running (or its instance died: see `EventStore::running_turns`).
    Running,
    /// Ended with `done`.
    Completed,
    /// Stopped by a client.
    Interrupted,
    /// Ended with an error.
    Failed,
    /// Ran past its deadline.
    TimedOut,
}

impl TurnStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Running => "running",
            TurnStatus::Completed => "completed",
            TurnStatus::Interrupted => "interrupted",
            TurnStatus::Failed => "failed",
            TurnStatus::TimedOut => "timed_out",
        }
    }

    /// The status of a stored spelling.
    pub fn parse(text: &str) -> Option<TurnStatus> {
        Some(match text {
            "running" => TurnStatus::Running,
            "completed" => TurnStatus::Completed,
            "interrupted" => TurnStatus::Interrupted,
            "failed" => TurnStatus::Failed,
            "timed_out" => TurnStatus::TimedOut,
            _ => return None,
        })
    }
}

/// One turn: what the user said, what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    /// The turn.
    pub turn_id: TurnId,
    /// Its session.
    pub session_id: SessionId,
    /// The user's message.
    pub user_message: String,
    /// Where it stands.
    pub status: TurnStatus,
    /// The error code of a turn that did not complete.
    pub error_code: Option<String>,
    /// All the assistant's text in the turn.
    pub text: String,
    /// Its tool calls with their results, as the API shows them (a JSON array).
    pub tool_calls: Value,
    /// Tokens used.
    pub usage: TurnUsage,
    /// The turn's own cost.
    pub cost_usd: f64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One event of a session's stream, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its number in the session's stream (gap-free, from 1).
    pub seq: u64,
    /// The turn that emitted it.
    pub turn_id: TurnId,
    /// Its wire form: the JSON text of the SSE `data:` line.
    pub data: String,
    /// When it was emitted.
    pub at: DateTime<Utc>,
}

/// Where turns and events live. Writing for a session that no longer exists (deleted while its turn
/// ran) changes nothing and is not an error.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Records a new running turn.
    async fn begin_turn(&self, turn: &TurnRecord) -> Result<(), StoreError>;
    /// Appends events of one session, in one transaction. Their numbers continue the session's
    /// stream without a gap; a number already stored is refused (`Duplicate`).
    async fn append_events(&self, session: SessionId, events: &[StoredEvent]) -> Result<(), StoreError>;
    /// Appends a turn's last events, records how it ended and marks its session active at
    /// `turn.finished_at` (one more message when `completed`), in one transaction. False when the
    /// session is gone or expired (then nothing is written).
    async fn finish_turn(
        &self,
        turn: &TurnRecord,
        events: &[StoredEvent],
        completed: bool,
    ) -> Result<bool, StoreError>;
    /// The session's events numbered after `after`, in order, at most `limit`.
    async fn events_after(
        &self,
        session: SessionId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// The session's highest event number (0 when it has none).
    async fn last_seq(&self, session: SessionId) -> Result<u64, StoreError>;
    /// The session's turns, oldest first, started before `before` (all when `None`); the newest
    /// `limit` of them.
    async fn turns(
        &self,
        session: SessionId,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<TurnRecord>, StoreError>;
    /// One turn of a session.
    async fn turn(&self, session: SessionId, turn: TurnId) -> Result<Option<TurnRecord>, StoreError>;
    /// Every turn still marked running (after a crash, none of them is).
    async fn running_turns(&self) -> Result<Vec<TurnRecord>, StoreError>;
}
