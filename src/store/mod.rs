//! Session records at rest: `trait SessionStore` and its backends (memory, SQLite, PostgreSQL). The trait's
//! specification is the conformance story in `tests/it/store.rs`, run against every backend. Each
//! backend also keeps turns and events (`EventStore`), transcripts (`TranscriptStore`), API keys
//! (`KeyStore`), the audit log (`AuditStore`), users' uids (`UidStore`), model usage with budget
//! overrides (`UsageStore`) and webhook deliveries (`WebhookStore`); [`Stores`] is one backend seen
//! through all eight.
//! A store knows nothing of agents, workspaces or HTTP. Database rows have their own private,
//! versioned types (`rows.rs`), never the serde form of a domain type, and hold no secrets.

mod audit;
mod events;
mod keys;
mod memory;
mod postgres;
mod rows;
mod sqlite;
mod transcripts;
mod uids;
mod usage;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::domain::{SessionId, SessionRecord};

pub use audit::{AuditQuery, AuditRecord, AuditStore};
pub use events::{EventStore, StoredEvent, TurnRecord, TurnStatus};
pub use keys::{ApiKeyRecord, KEY_PREFIX_MAX_CHARS, KeyStore};
pub use memory::MemoryStore;
pub use postgres::{PostgresSettings, PostgresStore};
pub use sqlite::SqliteStore;
pub use transcripts::{Transcript, TranscriptStore};
pub use uids::UidStore;
pub use usage::{
    NO_TURN, Spending, Spent, UNKNOWN_MODEL, UsageGroup, UsageQuery, UsageRecord, UsageStore, UsageTotals,
    periods_of,
};
pub use webhooks::{
    AttemptOutcome, ClaimedDelivery, DeliveryQuery, DeliveryStatus, WebhookAttempt, WebhookDelivery,
    WebhookStore,
};

/// One backend seen through each of its traits: the one way the service opens its stores.
#[derive(Clone)]
pub struct Stores {
    /// Session records.
    pub sessions: Arc<dyn SessionStore>,
    /// Turns and their numbered events.
    pub events: Arc<dyn EventStore>,
    /// The CLI's transcripts.
    pub transcripts: Arc<dyn TranscriptStore>,
    /// API keys (hashes only).
    pub keys: Arc<dyn KeyStore>,
    /// The audit log.
    pub audit: Arc<dyn AuditStore>,
    /// Users' uids.
    pub uids: Arc<dyn UidStore>,
    /// Model usage, its totals, and users' budget overrides.
    pub usage: Arc<dyn UsageStore>,
    /// Webhook deliveries.
    pub webhooks: Arc<dyn WebhookStore>,
}

impl Stores {
    /// Every store of one backend.
    pub fn of<T>(store: Arc<T>) -> Stores
    where
        T: SessionStore
            + EventStore
            + TranscriptStore
            + KeyStore
            + AuditStore
            + UidStore
            + UsageStore
            + WebhookStore,
    {
        Stores {
            sessions: store.clone(),
            events: store.clone(),
            transcripts: store.clone(),
            keys: store.clone(),
            audit: store.clone(),
            uids: store.clone(),
            usage: store.clone(),
            webhooks: store,
        }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating the session would exceed a configured limit.
    #[error("{0}")]
    LimitReached(LimitScope),
    /// A session with this id already exists.
    #[error("session {0} already exists")]
    Duplicate(SessionId),
    /// The request clashes with what is stored: a record with this identity already exists (an API
    /// key's id or hash), or a range has nothing left (no free uid). The text says which.
    #[error("{0}")]
    Conflict(String),
    /// The caller asked for something no store can do (e.g. an empty uid range, or one past
    /// `u32::MAX`): a bug or a misconfiguration, refused before anything is read or written.
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// The database failed or is unreachable.
    #[error("session store error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database holds something this version cannot read.
    #[error("session store holds an unreadable record: {0}")]
    Corrupt(String),
    /// Migrations failed at startup.
    #[error("session store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the failure is the database being unreachable or refusing for now (an outage to
    /// retry later: busy, locked, read-only, out of space, shutting down, gone), rather than a bug
    /// or a broken row.
    pub fn is_outage(&self) -> bool {
        let StoreError::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => match db.code() {
                // PostgreSQL's SQLSTATE: connection, resources, operator intervention, conflicts.
                // (SQLite's codes are numbers of at most four digits.)
                Some(code) if code.len() == 5 => {
                    ["08", "53", "57P0", "57014", "40001", "40P01", "55P03", "25006"]
                        .iter()
                        .any(|prefix| code.starts_with(prefix))
                }
                // SQLite: busy, locked, read-only, I/O, full, cannot open.
                _ => db.kind() == sqlx::error::ErrorKind::Other,
            },
            _ => false,
        }
    }
}

/// Which session limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// `api.max_sessions` across all users.
    Total(u32),
    /// `api.max_sessions_per_user` for this user.
    User(u32),
}

impl std::fmt::Display for LimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitScope::Total(max) => write!(f, "the service holds its maximum of {max} sessions"),
            LimitScope::User(max) => write!(f, "this user holds its maximum of {max} sessions"),
        }
    }
}

/// Session-count limits checked atomically with an insert.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unexpired sessions in all.
    pub max_total: u32,
    /// Unexpired sessions per user.
    pub max_per_user: u32,
}

/// Where session records live. Expired records (by the store's TTL) are invisible to every read
/// and to `delete`.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new record unless a limit would be exceeded (checked atomically).
    async fn insert(&self, record: &SessionRecord, limits: Limits) -> Result<(), StoreError>;
    /// The unexpired record with this id.
    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Unexpired records, oldest first: one user's, or everyone's when `user_id` is `None`.
    async fn list(&self, user_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError>;
    /// Marks activity at `at`, adding `turns` to the message count; false if the record is gone.
    async fn touch(&self, id: SessionId, at: DateTime<Utc>, turns: u64) -> Result<bool, StoreError>;
    /// Removes an unexpired record for good and returns it; `None` if there was none (an expired
    /// one is left for `purge_expired`).
    async fn delete(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Removes every expired record and returns them.
    async fn purge_expired(&self) -> Result<Vec<SessionRecord>, StoreError>;
    /// How many unexpired records exist.
    async fn count(&self) -> Result<u64, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The expiry rule shared by all backends.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    ttl: Option<Duration>,
}

impl Expiry {
    /// `ttl_seconds` 0 means records never expire.
    pub fn new(ttl_seconds: u64) -> Self {
        let ttl =
            (ttl_seconds > 0).then(|| Duration::seconds(ttl_seconds.min(i64::MAX as u64 / 1_000_000) as i64));
        Expiry { ttl }
    }

    /// Records last active before this instant are expired; `None` when nothing expires.
    pub fn cutoff(&self) -> Option<DateTime<Utc>> {
        self.ttl.map(|ttl| Utc::now() - ttl)
    }

    fn is_live(&self, record: &SessionRecord, cutoff: Option<DateTime<Utc>>) -> bool {
        cutoff.is_none_or(|cutoff| record.last_active_at >= cutoff)
    }
}
