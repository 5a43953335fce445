//! Webhook deliveries at rest: one row per event and endpoint, kept from the moment the event
//! happens until it is delivered or given up on (and then until pruned), so a restart loses no
//! pending delivery. Its specification is the conformance story in `tests/it/webhook_store.rs`,
//! run on every backend.
//!
//! Claiming: an instance takes due deliveries with [`WebhookStore::claim_webhooks`], which gives
//! each a lease (`claimed_until`) and a fresh claim id. Until the lease runs out no other claim
//! returns the delivery (on PostgreSQL, instances sharing the database claim with `FOR UPDATE SKIP
//! LOCKED`), and only the holder of the current claim can record its attempt, so one delivery is
//! never sent twice at the same time as long as an attempt ends within its lease. A holder that dies
//! leaves the lease to run out, and the delivery is claimed again. Rows hold the exact body sent
//! (no secret: the signature is made at each attempt from the configured secret).

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::StoreError;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not yet delivered; tried again at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up on: out of attempts, or its endpoint is no longer configured.
    Failed,
}

impl DeliveryStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The status with this name.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

/// One event for one endpoint, and how its delivery went so far.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// The delivery's own id.
    pub id: Uuid,
    /// The event's id (the payload's `id`; the same for every endpoint the event goes to).
    pub event_id: Uuid,
    /// The event's type (`turn.completed`, ...).
    pub event: String,
    /// Where it goes.
    pub url: String,
    /// The exact JSON body sent on every attempt.
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (meaningful while pending).
    pub next_attempt_at: DateTime<Utc>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last answer, if there was one.
    pub last_http_status: Option<u16>,
    /// Why the last attempt failed (no answer, or a non-2xx), if it did.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl WebhookDelivery {
    /// A new pending delivery of `event` to `url`, due at once.
    pub fn new(event_id: Uuid, event: &str, url: &str, payload: String, at: DateTime<Utc>) -> Self {
        WebhookDelivery {
            id: Uuid::new_v4(),
            event_id,
            event: event.to_string(),
            url: url.to_string(),
            payload,
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: at,
            next_attempt_at: at,
            last_attempt_at: None,
            last_http_status: None,
            last_error: None,
            delivered_at: None,
        }
    }
}

/// A delivery handed to one claimant: the delivery as it was when claimed, and the claim that
/// alone may record its attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    /// The delivery.
    pub delivery: WebhookDelivery,
    /// This claim's id.
    pub claim: Uuid,
}

/// How an attempt ended, and what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered: no further attempt.
    Delivered,
    /// Not delivered; try again at this time.
    RetryAt(DateTime<Utc>),
    /// Not delivered, and given up on.
    Failed,
}

/// One attempt's result, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAttempt {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status, if it answered.
    pub http_status: Option<u16>,
    /// Why it failed, if it did (for people; never a secret).
    pub error: Option<String>,
    /// What comes next.
    pub outcome: AttemptOutcome,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Only deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Only deliveries of this event type.
    pub event: Option<String>,
    /// Only deliveries created before this time (paging back, newest first).
    pub before: Option<DateTime<Utc>>,
    /// At most this many, newest first (0: none).
    pub limit: u32,
}

/// Where webhook deliveries live.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores new deliveries (all of them or none); a delivery id already stored is a
    /// `StoreError::Conflict`.
    async fn insert_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError>;
    /// Claims at most `limit` pending deliveries due at `now` (`next_attempt_at <= now`) whose
    /// lease, if any, has run out: oldest due first, each leased until `now + lease` under a new
    /// claim id. A delivery is returned by at most one claim while its lease runs.
    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Records an attempt of a claimed delivery: counts it, keeps its result, sets the status
    /// (and the next attempt's time) from its outcome, and ends the lease. False (and nothing
    /// changes) when `claim` is no longer the delivery's claim (its lease ran out and another
    /// claim took it) or the delivery is gone.
    async fn record_webhook_attempt(
        &self,
        id: Uuid,
        claim: Uuid,
        attempt: &WebhookAttempt,
    ) -> Result<bool, StoreError>;
    /// The deliveries matching `query`, newest first (by creation, then id).
    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// The earliest time a pending delivery is due or its lease runs out (whichever is later for
    /// each), if any is pending: when a worker should look again.
    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Removes delivered and failed deliveries created before `before`; returns how many.
    async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// An attempt count as read from a database column.
pub(super) fn attempts_from_sql(id: Uuid, attempts: i64) -> Result<u32, StoreError> {
    u32::try_from(attempts)
        .map_err(|_| StoreError::Corrupt(format!("webhook delivery {id}: attempts {attempts}")))
}

/// An HTTP status as read from a database column.
pub(super) fn http_status_from_sql(id: Uuid, status: Option<i64>) -> Result<Option<u16>, StoreError> {
    status
        .map(|status| {
            u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("webhook delivery {id}: http status {status}")))
        })
        .transpose()
}

/// A status as read from a database column.
pub(super) fn status_from_sql(id: Uuid, status: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt(format!("webhook delivery {id}: status {status:?}")))
}

/// The status, next attempt time and delivery time an attempt's outcome leaves.
pub(super) fn outcome_columns(
    attempt: &WebhookAttempt,
) -> (DeliveryStatus, Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    match attempt.outcome {
        AttemptOutcome::Delivered => (DeliveryStatus::Delivered, None, Some(attempt.at)),
        AttemptOutcome::RetryAt(at) => (DeliveryStatus::Pending, Some(at), None),
        AttemptOutcome::Failed => (DeliveryStatus::Failed, None, None),
    }
}
