//! The rows of the PostgreSQL tables, private to the backend: how each domain value is held at
//! rest and read back. JSON columns are read as text (`::text`) and parsed here; the options
//! column holds the versioned [`StoredOptions`] shared with the SQLite store.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::super::rows::StoredOptions;
use super::super::{ApiKeyRecord, AuditRecord, StoreError, StoredEvent, TurnRecord, TurnStatus};
use crate::domain::{Role, SessionId, SessionRecord, TurnId, TurnUsage};

/// The columns of `sessions`, in [`SessionRow`]'s order (a macro so queries stay `&'static str`).
macro_rules! session_columns {
    () => {
        "session_id, user_id, subdir, cwd, options::text AS options, metadata::text AS metadata, \
         created_at, last_active_at, message_count"
    };
}

/// The columns of `turns`, in [`TurnRow`]'s order.
macro_rules! turn_columns {
    () => {
        "turn_id, session_id, user_message::text AS user_message, status, error_code, \
         assistant_text::text AS assistant_text, tool_calls::text AS tool_calls, input_tokens, \
         output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd, started_at, \
         finished_at"
    };
}

/// The columns of `api_keys`, in [`KeyRow`]'s order.
macro_rules! key_columns {
    () => {
        "id, name, role, user_id, hash, prefix, created_at, revoked_at, last_used_at"
    };
}

/// The columns of `audit_log`, in [`AuditRow`]'s order.
macro_rules! audit_columns {
    () => {
        "id, at, action, principal, key_id, user_id, session_id, remote_addr, request_id, \
         detail::text AS detail"
    };
}

pub(super) use {audit_columns, key_columns, session_columns, turn_columns};

/// A count as PostgreSQL stores it (`bigint`).
pub(super) fn to_sql_count(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is too large to store")))
}

fn from_sql_count(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value}")))
}

/// Free text as a JSON string (PostgreSQL's `text` cannot hold NUL).
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

fn parse_json_string(column: &str, what: &str) -> Result<String, StoreError> {
    serde_json::from_str(column).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// One row of `sessions`.
#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    pub session_id: Uuid,
    pub user_id: String,
    pub subdir: Option<String>,
    pub cwd: String,
    pub options: String,
    pub metadata: String,
    pub created_at: DateTime<Utc>,
    pub last_active_at: DateTime<Utc>,
    pub message_count: i64,
}

impl TryFrom<&SessionRecord> for SessionRow {
    type Error = StoreError;

    fn try_from(record: &SessionRecord) -> Result<Self, StoreError> {
        Ok(SessionRow {
            session_id: record.session_id.0,
            user_id: record.user_id.clone(),
            subdir: record.subdir.clone(),
            cwd: record.cwd.to_string_lossy().into_owned(),
            options: StoredOptions::from(&record.options).to_json(),
            metadata: serde_json::to_string(&record.metadata).expect("metadata serializes"),
            created_at: record.created_at,
            last_active_at: record.last_active_at,
            message_count: to_sql_count(record.message_count, "message_count")?,
        })
    }
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        Ok(SessionRecord {
            session_id: SessionId(row.session_id),
            user_id: row.user_id,
            subdir: row.subdir,
            cwd: PathBuf::from(row.cwd),
            options: StoredOptions::parse(&row.options)?.try_into()?,
            metadata: serde_json::from_str(&row.metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
            created_at: row.created_at,
            last_active_at: row.last_active_at,
            message_count: from_sql_count(row.message_count, "message_count")?,
        })
    }
}

pub(super) fn session_records(rows: Vec<SessionRow>) -> Result<Vec<SessionRecord>, StoreError> {
    rows.into_iter().map(SessionRecord::try_from).collect()
}

/// One row of `turns`.
#[derive(sqlx::FromRow)]
pub(super) struct TurnRow {
    pub turn_id: Uuid,
    pub session_id: Uuid,
    pub user_message: String,
    pub status: String,
    pub error_code: Option<String>,
    pub assistant_text: String,
    pub tool_calls: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cost_usd: f64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<&TurnRecord> for TurnRow {
    type Error = StoreError;

    fn try_from(turn: &TurnRecord) -> Result<Self, StoreError> {
        // Destructured so that a new field is a compile error here until it is stored.
        let TurnRecord {
            turn_id,
            session_id,
            user_message,
            status,
            error_code,
            text,
            tool_calls,
            usage,
            cost_usd,
            started_at,
            finished_at,
        } = turn;
        let TurnUsage {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
        } = usage;
        Ok(TurnRow {
            turn_id: turn_id.0,
            session_id: session_id.0,
            user_message: json_string(user_message),
            status: status.as_str().to_string(),
            error_code: error_code.clone(),
            assistant_text: json_string(text),
            tool_calls: serde_json::to_string(tool_calls).expect("tool calls serialize"),
            input_tokens: to_sql_count(*input_tokens, "input_tokens")?,
            output_tokens: to_sql_count(*output_tokens, "output_tokens")?,
            cache_creation_input_tokens: to_sql_count(
                *cache_creation_input_tokens,
                "cache_creation_input_tokens",
            )?,
            cache_read_input_tokens: to_sql_count(*cache_read_input_tokens, "cache_read_input_tokens")?,
            cost_usd: *cost_usd,
            started_at: *started_at,
            finished_at: *finished_at,
        })
    }
}

impl TryFrom<TurnRow> for TurnRecord {
    type Error = StoreError;

    fn try_from(row: TurnRow) -> Result<Self, StoreError> {
        let tool_calls: Value = serde_json::from_str(&row.tool_calls)
            .map_err(|e| StoreError::Corrupt(format!("tool_calls: {e}")))?;
        Ok(TurnRecord {
            turn_id: TurnId(row.turn_id),
            session_id: SessionId(row.session_id),
            user_message: parse_json_string(&row.user_message, "user_message")?,
            status: TurnStatus::parse(&row.status)
                .ok_or_else(|| StoreError::Corrupt(format!("turn status {:?}", row.status)))?,
            error_code: row.error_code,
            text: parse_json_string(&row.assistant_text, "assistant_text")?,
            tool_calls,
            usage: TurnUsage {
                input_tokens: from_sql_count(row.input_tokens, "input_tokens")?,
                output_tokens: from_sql_count(row.output_tokens, "output_tokens")?,
                cache_creation_input_tokens: from_sql_count(
                    row.cache_creation_input_tokens,
                    "cache_creation_input_tokens",
                )?,
                cache_read_input_tokens: from_sql_count(
                    row.cache_read_input_tokens,
                    "cache_read_input_tokens",
                )?,
            },
            cost_usd: row.cost_usd,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

pub(super) fn turn_records(rows: Vec<TurnRow>) -> Result<Vec<TurnRecord>, StoreError> {
    rows.into_iter().map(TurnRecord::try_from).collect()
}

/// One row of `events` (without its session).
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub seq: i64,
    pub turn_id: Uuid,
    pub data: String,
    pub at: DateTime<Utc>,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(StoredEvent {
            seq: from_sql_count(row.seq, "event seq")?,
            turn_id: TurnId(row.turn_id),
            data: row.data,
            at: row.at,
        })
    }
}

/// A batch of events as the columns `UNNEST` spreads into rows: one round trip for any number.
#[derive(Default)]
pub(super) struct EventColumns {
    pub seqs: Vec<i64>,
    pub turn_ids: Vec<Uuid>,
    pub data: Vec<String>,
    pub ats: Vec<DateTime<Utc>>,
}

impl TryFrom<&[StoredEvent]> for EventColumns {
    type Error = StoreError;

    fn try_from(events: &[StoredEvent]) -> Result<Self, StoreError> {
        let mut columns = EventColumns::default();
        for event in events {
            columns.seqs.push(to_sql_count(event.seq, "event seq")?);
            columns.turn_ids.push(event.turn_id.0);
            columns.data.push(event.data.clone());
            columns.ats.push(event.at);
        }
        Ok(columns)
    }
}

/// One row of `api_keys`.
#[derive(sqlx::FromRow)]
pub(super) struct KeyRow {
    pub id: String,
    pub name: Option<String>,
    pub role: String,
    pub user_id: Option<String>,
    pub hash: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&ApiKeyRecord> for KeyRow {
    fn from(key: &ApiKeyRecord) -> Self {
        // Destructured so that a new field is a compile error here until it is stored.
        let ApiKeyRecord {
            id,
            name,
            role,
            user_id,
            hash,
            prefix,
            created_at,
            revoked_at,
            last_used_at,
        } = key;
        KeyRow {
            id: id.clone(),
            name: name.clone(),
            role: role.as_str().to_string(),
            user_id: user_id.clone(),
            hash: hash.clone(),
            prefix: prefix.clone(),
            created_at: *created_at,
            revoked_at: *revoked_at,
            last_used_at: *last_used_at,
        }
    }
}

impl TryFrom<KeyRow> for ApiKeyRecord {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        Ok(ApiKeyRecord {
            role: Role::parse(&row.role)
                .ok_or_else(|| StoreError::Corrupt(format!("api key {}: role {:?}", row.id, row.role)))?,
            id: row.id,
            name: row.name,
            user_id: row.user_id,
            hash: row.hash,
            prefix: row.prefix,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
        })
    }
}

/// One row of `audit_log`.
#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    pub principal: Option<String>,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
    pub detail: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        Ok(AuditRecord {
            detail: serde_json::from_str(&row.detail)
                .map_err(|e| StoreError::Corrupt(format!("audit record {}: detail: {e}", row.id)))?,
            id: row.id,
            at: row.at,
            action: row.action,
            principal: row.principal,
            key_id: row.key_id,
            user_id: row.user_id,
            session_id: row.session_id.map(SessionId),
            remote_addr: row.remote_addr,
            request_id: row.request_id,
        })
    }
}

/// A batch of audit records as the columns `UNNEST` spreads into rows: one round trip for any
/// number.
#[derive(Default)]
pub(super) struct AuditColumns {
    pub ats: Vec<DateTime<Utc>>,
    pub actions: Vec<String>,
    pub principals: Vec<Option<String>>,
    pub key_ids: Vec<Option<String>>,
    pub user_ids: Vec<Option<String>>,
    pub session_ids: Vec<Option<Uuid>>,
    pub remote_addrs: Vec<Option<String>>,
    pub request_ids: Vec<Option<String>>,
    pub details: Vec<String>,
}

impl From<&[AuditRecord]> for AuditColumns {
    fn from(records: &[AuditRecord]) -> Self {
        let mut columns = AuditColumns::default();
        for record in records {
            // Destructured so that a new field is a compile error here until it is stored.
            let AuditRecord {
                id: _, // given by the store
                at,
                action,
                principal,
                key_id,
                user_id,
                session_id,
                remote_addr,
                request_id,
                detail,
            } = record;
            columns.ats.push(*at);
            columns.actions.push(action.clone());
            columns.principals.push(principal.clone());
            columns.key_ids.push(key_id.clone());
            columns.user_ids.push(user_id.clone());
            columns.session_ids.push(session_id.map(|id| id.0));
            columns.remote_addrs.push(remote_addr.clone());
            columns.request_ids.push(request_id.clone());
            columns.details.push(detail.to_string());
        }
        columns
    }
}
