//! The bodies sent to webhooks: `{id, type, created_at, data}`, with `data` made from what the
//! service knows when the event happens. Never a prompt, an answer's text, a tool's input or a
//! secret: a receiver that needs more reads the turn or session through the API.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{SessionRecord, TurnErrorCode, TurnEvent, TurnId, TurnOutcome, WebhookEvent};
use crate::store::TurnStatus;

/// One event, before it is addressed to endpoints.
#[derive(Debug, Clone)]
pub(super) struct Event {
    /// The payload's `id` (the same on every attempt and for every endpoint).
    pub id: Uuid,
    /// What happened.
    pub kind: WebhookEvent,
    /// When.
    pub at: DateTime<Utc>,
    /// The payload's `data`.
    pub data: Value,
}

impl Event {
    fn new(kind: WebhookEvent, data: Value) -> Event {
        // To the microsecond: what every store keeps of `created_at`.
        let now = Utc::now();
        let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Event {
            id: Uuid::new_v4(),
            kind,
            at,
            data,
        }
    }

    /// The JSON body, exactly as sent.
    pub fn body(&self) -> String {
        json!({
            "id": self.id.to_string(),
            "type": self.kind.as_str(),
            "created_at": self.at,
            "data": self.data,
        })
        .to_string()
    }
}

/// The events a turn's terminal event makes: `turn.completed` for `done`; `turn.failed` for an
/// `error`, and `budget.exceeded` besides when the error is `budget_exceeded`. Anything else makes
/// none.
pub(super) fn turn_ended(
    session: &SessionRecord,
    turn: TurnId,
    status: TurnStatus,
    terminal: &TurnEvent,
) -> Vec<Event> {
    let ids = |mut data: Value| {
        data["session_id"] = json!(session.session_id.to_string());
        data["user_id"] = json!(session.user_id);
        data["turn_id"] = json!(turn.to_string());
        data
    };
    match terminal {
        TurnEvent::Done(outcome) => vec![Event::new(
            WebhookEvent::TurnCompleted,
            ids(json!({
                "status": status.as_str(),
                "usage": outcome.usage,
                "total_cost_usd": outcome.total_cost_usd,
                "duration_ms": outcome.duration_ms,
                "num_turns": outcome.num_turns,
                "stop_reason": outcome.stop_reason,
            })),
        )],
        TurnEvent::Error {
            code,
            message,
            partial,
        } => {
            // An error terminal is never a completed turn (a turn that ended while the store was
            // unavailable is recorded with the terminal it had, and reported as what clients saw).
            let status = match status {
                TurnStatus::Completed | TurnStatus::Running => TurnStatus::Failed,
                other => other,
            };
            let mut events = vec![Event::new(
                WebhookEvent::TurnFailed,
                ids(json!({
                    "status": status.as_str(),
                    "error": {"code": code.as_str(), "message": message},
                    "usage": partial.usage,
                    "total_cost_usd": partial.total_cost_usd,
                })),
            )];
            if *code == TurnErrorCode::BudgetExceeded {
                events.push(Event::new(
                    WebhookEvent::BudgetExceeded,
                    ids(budget_data(session, partial, message)),
                ));
            }
            events
        }
        _ => Vec::new(),
    }
}

/// What a `budget.exceeded` event says: the limit the relay refused the turn's next model request
/// for (`user_daily_usd`, ..., with what it allows and what was spent against it), else the
/// session's own per-message budget (the CLI's `--max-budget-usd`) when the turn spent it; the
/// message says which in every case.
fn budget_data(session: &SessionRecord, partial: &TurnOutcome, message: &str) -> Value {
    if let Some(refusal) = &partial.budget_refusal {
        let tokens = refusal.limit.ends_with("_tokens");
        return json!({
            "limit": refusal.limit,
            "scope": refusal.scope,
            "limit_usd": (!tokens).then_some(refusal.allowed),
            "limit_tokens": tokens.then_some(refusal.allowed as u64),
            "spent_usd": if tokens { partial.total_cost_usd } else { refusal.spent },
            "spent_tokens": tokens.then_some(refusal.spent as u64),
            "message": message,
        });
    }
    let own_budget = session
        .options
        .max_budget_usd
        .filter(|limit| partial.total_cost_usd >= *limit);
    json!({
        "limit": own_budget.map(|_| "max_budget_usd"),
        "limit_usd": own_budget,
        "spent_usd": partial.total_cost_usd,
        "message": message,
    })
}

/// Why a session went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionReason {
    /// A client deleted it.
    Deleted,
    /// It expired (`session.ttl` after its last activity).
    Expired,
}

impl DeletionReason {
    fn as_str(self) -> &'static str {
        match self {
            DeletionReason::Deleted => "deleted",
            DeletionReason::Expired => "expired",
        }
    }
}

/// The `session.deleted` event of `session`.
pub(super) fn session_deleted(session: &SessionRecord, reason: DeletionReason) -> Event {
    Event::new(
        WebhookEvent::SessionDeleted,
        json!({
            "session_id": session.session_id.to_string(),
            "user_id": session.user_id,
            "reason": reason.as_str(),
            "session": {
                "subdir": session.subdir,
                "created_at": session.created_at,
                "last_active_at": session.last_active_at,
                "message_count": session.message_count,
                "metadata": session.metadata,
            },
        }),
    )
}
