//! The events a webhook can subscribe to: shared by the config (which names them) and the webhooks
//! component (which emits them).

use serde::{Deserialize, Serialize};

/// A kind of event sent to webhooks, by its wire name (`turn.completed`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum WebhookEvent {
    /// A turn ended normally (its `done` event).
    #[serde(rename = "turn.completed")]
    TurnCompleted,
    /// A turn ended with an error (interrupted, timed out, model error, crashed, ...).
    #[serde(rename = "turn.failed")]
    TurnFailed,
    /// A turn ended because a budget was spent (sent besides its `turn.failed`).
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded,
    /// A session was deleted (by a client, or expired).
    #[serde(rename = "session.deleted")]
    SessionDeleted,
}

impl WebhookEvent {
    /// Every event, in the order the README lists them.
    pub const ALL: [WebhookEvent; 4] = [
        WebhookEvent::TurnCompleted,
        WebhookEvent::TurnFailed,
        WebhookEvent::BudgetExceeded,
        WebhookEvent::SessionDeleted,
    ];

    /// The wire name, as in the payload's `type` and the `X-Webhook-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::TurnCompleted => "turn.completed",
            WebhookEvent::TurnFailed => "turn.failed",
            WebhookEvent::BudgetExceeded => "budget.exceeded",
            WebhookEvent::SessionDeleted => "session.deleted",
        }
    }

    /// The event with this wire name.
    pub fn parse(name: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL.into_iter().find(|event| event.as_str() == name)
    }
}
