//! `AuditStore` on PostgreSQL: the `audit_log` table, tied to no session.
//!
//! Ids come from the table's identity sequence. A sequence alone gives numbers in the order
//! transactions ask for them, not in the order they commit: a reader paging with `after_id` could
//! see number 6 committed before 5 and never see 5. So every append (of every instance sharing the
//! database) takes one transaction-scoped advisory lock before it inserts and holds it until its
//! commit, which PostgreSQL makes visible before it releases the lock: numbers are taken and made
//! visible in one order. Appends are serialized across instances; each is one short statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::rows::{AuditColumns, AuditRow, audit_columns};
use super::{LOCK_AUDIT_APPEND, LOCK_CLASS, PostgresStore};
use crate::store::{AuditQuery, AuditRecord, AuditStore, StoreError};

#[async_trait]
impl AuditStore for PostgresStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let columns = AuditColumns::from(records);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(LOCK_AUDIT_APPEND)
            .execute(&mut *tx)
            .await?;
        // One statement for the batch. The ORDER BY keeps the subquery apart (it is not pulled up
        // into the insert), so the ids, drawn as its sorted rows are inserted, follow the records'
        // order.
        sqlx::query(
            "INSERT INTO audit_log (at, action, principal, key_id, user_id, session_id, remote_addr, \
             request_id, detail) \
             SELECT at, action, principal, key_id, user_id, session_id, remote_addr, request_id, detail::json \
             FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], \
             $7::text[], $8::text[], $9::text[]) WITH ORDINALITY \
             AS r (at, action, principal, key_id, user_id, session_id, remote_addr, request_id, detail, n) \
             ORDER BY n",
        )
        .bind(&columns.ats)
        .bind(&columns.actions)
        .bind(&columns.principals)
        .bind(&columns.key_ids)
        .bind(&columns.user_ids)
        .bind(&columns.session_ids)
        .bind(&columns.remote_addrs)
        .bind(&columns.request_ids)
        .bind(&columns.details)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Only the filters asked for, so each keeps its index (`user_id, id` or `at`).
        let mut select =
            sqlx::QueryBuilder::new(concat!("SELECT ", audit_columns!(), " FROM audit_log WHERE TRUE"));
        if let Some(user_id) = &query.user_id {
            select.push(" AND user_id = ").push_bind(user_id.clone());
        }
        if let Some(since) = query.since {
            select.push(" AND at >= ").push_bind(since);
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
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
