//! `AuditStore` on SQLite: the `audit_log` table. Its ids are `AUTOINCREMENT` rowids, given while
//! the appending transaction holds SQLite's single write lock: they increase in commit order and are
//! never given twice.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{SqliteStore, from_micros, micros};
use crate::domain::SessionId;
use crate::store::{AuditQuery, AuditRecord, AuditStore, StoreError};

/// The columns of `audit_log`, in [`AuditRow`]'s order.
macro_rules! audit_columns {
    () => {
        "id, at, action, principal, key_id, user_id, session_id, remote_addr, request_id, detail"
    };
}

/// Records per INSERT statement (9 bound values each, far below SQLite's limit of variables).
const RECORDS_PER_STATEMENT: usize = 200;

/// One row of `audit_log`, as SQLite holds it.
#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    action: String,
    principal: Option<String>,
    key_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    remote_addr: Option<String>,
    request_id: Option<String>,
    detail: String,
}

impl From<&AuditRecord> for AuditRow {
    fn from(record: &AuditRecord) -> Self {
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
        AuditRow {
            id: 0,
            at: micros(*at),
            action: action.clone(),
            principal: principal.clone(),
            key_id: key_id.clone(),
            user_id: user_id.clone(),
            session_id: session_id.map(|id| id.to_string()),
            remote_addr: remote_addr.clone(),
            request_id: request_id.clone(),
            detail: detail.to_string(),
        }
    }
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("audit record {}: {what}", row.id));
        Ok(AuditRecord {
            id: row.id,
            at: from_micros(row.at)?,
            session_id: match &row.session_id {
                Some(id) => Some(SessionId::parse(id).ok_or_else(|| corrupt("session id"))?),
                None => None,
            },
            detail: serde_json::from_str(&row.detail).map_err(|_| corrupt("detail"))?,
            action: row.action,
            principal: row.principal,
            key_id: row.key_id,
            user_id: row.user_id,
            remote_addr: row.remote_addr,
            request_id: row.request_id,
        })
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in records.chunks(RECORDS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (at, action, principal, key_id, user_id, session_id, remote_addr, \
                 request_id, detail) ",
            );
            // Rows of one statement are numbered in their order.
            insert.push_values(chunk.iter().map(AuditRow::from), |mut values, row| {
                values
                    .push_bind(row.at)
                    .push_bind(row.action)
                    .push_bind(row.principal)
                    .push_bind(row.key_id)
                    .push_bind(row.user_id)
                    .push_bind(row.session_id)
                    .push_bind(row.remote_addr)
                    .push_bind(row.request_id)
                    .push_bind(row.detail);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Only the filters asked for, so each keeps its index (`user_id, id` or `at`).
        let mut select =
            sqlx::QueryBuilder::new(concat!("SELECT ", audit_columns!(), " FROM audit_log WHERE 1"));
        if let Some(user_id) = &query.user_id {
            select.push(" AND user_id = ").push_bind(user_id.clone());
        }
        if let Some(since) = query.since {
            select.push(" AND at >= ").push_bind(micros(since));
        }
        if let Some(after_id) = query.after_id {
            select.push(" AND id > ").push_bind(after_id);
        }
        select
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows: Vec<AuditRow> = select.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(AuditRecord::try_from).collect()
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit_log WHERE at < ?1")
            .bind(micros(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
