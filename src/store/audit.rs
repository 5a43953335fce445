//! The audit log: append-only records of security-relevant acts. Records belong to no session
//! (deleting a session keeps its records); they go only when pruned by age. Its specification is
//! the conformance story in `tests/it/audit_store.rs`, run on every backend.
//!
//! Numbering: the store numbers records in the order they are appended, records of one call in
//! their order, and never reuses a number (pruning the newest records included). Numbers may skip
//! (an append that fails still uses its numbers). On every backend a record becomes visible only
//! after every record with a smaller number is visible (appends are serialized: the memory store's
//! lock, SQLite's single writer, on PostgreSQL a transaction-scoped advisory lock that every
//! instance sharing the database takes), so a reader paging with `after_id` never skips a record
//! appended while it reads.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::StoreError;
use crate::domain::SessionId;

/// One security-relevant act.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Its number, increasing in the order records were appended (given by the store; ignored
    /// on append).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened: `key.created`, `key.revoked`, `auth.failed`, `session.created`,
    /// `session.deleted`, `turn.started`, `tool.used`, `turn.interrupted`.
    pub action: String,
    /// Who did it (`Principal::label`: `user:alice`, `admin:<key id>`, `anonymous`, ...), if known.
    pub principal: Option<String>,
    /// The API key that authenticated it, if one did.
    pub key_id: Option<String>,
    /// The user whose object it touched, if any.
    pub user_id: Option<String>,
    /// The session it touched, if any.
    pub session_id: Option<SessionId>,
    /// The client's address.
    pub remote_addr: Option<String>,
    /// The request's id (`x-request-id`).
    pub request_id: Option<String>,
    /// What else matters for this action (never a secret), e.g. a tool's name and input digest.
    pub detail: Value,
}

/// Which audit records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only records about this user.
    pub user_id: Option<String>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records numbered after this (paging).
    pub after_id: Option<i64>,
    /// At most this many, oldest first (0: none; `AuditQuery::default()` reads nothing).
    pub limit: u32,
}

/// Where the audit log lives: records are appended and pruned by age, never changed.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends records in order, in one transaction (all of them or none), numbering them after
    /// every record appended before.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;
    /// The records matching `query`, oldest first (by id).
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Removes records older than `before` (`at < before`); returns how many.
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}
