//! `UidStore` on SQLite: the `user_uids` table. SQLite has one writer at a time: an allocation
//! is a `BEGIN IMMEDIATE` transaction (it takes the write lock before it reads), so its look for
//! an earlier uid, its choice of the lowest free one and its insert see no other writer between
//! them, from this pool or any other process on the same file.

use async_trait::async_trait;
use chrono::Utc;

use super::{SqliteStore, micros};
use crate::store::uids::{UidRange, uid_from_sql};
use crate::store::{StoreError, UidStore};

/// The uid `user_id` was given, if any.
async fn held_uid(executor: impl sqlx::SqliteExecutor<'_>, user_id: &str) -> Result<Option<u32>, StoreError> {
    let uid: Option<i64> = sqlx::query_scalar("SELECT uid FROM user_uids WHERE user_id = ?1")
        .bind(user_id)
        .fetch_optional(executor)
        .await?;
    uid.map(|uid| uid_from_sql(user_id, uid)).transpose()
}

#[async_trait]
impl UidStore for SqliteStore {
    async fn uid_for(&self, user_id: &str, first: u32, count: u32) -> Result<u32, StoreError> {
        let range = UidRange::new(first, count)?;
        // Most calls find the uid given before: no write lock for them.
        if let Some(uid) = held_uid(&self.pool, user_id).await? {
            return Ok(uid);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Given meanwhile (by another connection or process)?
        if let Some(uid) = held_uid(&mut *tx, user_id).await? {
            return Ok(uid);
        }
        // The lowest uid in `first..end` nobody holds: `first` itself or one past a held uid (a
        // gap starts right after a held uid), each candidate looked up in the unique index.
        let uid: Option<i64> = sqlx::query_scalar(
            "INSERT INTO user_uids (user_id, uid, allocated_at) \
             SELECT ?3, c, ?4 FROM (SELECT ?1 AS c UNION ALL \
             SELECT uid + 1 FROM user_uids WHERE uid >= ?1 AND uid + 1 < ?2) AS candidates \
             WHERE c < ?2 AND NOT EXISTS (SELECT 1 FROM user_uids AS held WHERE held.uid = candidates.c) \
             ORDER BY c LIMIT 1 RETURNING uid",
        )
        .bind(i64::from(range.first))
        .bind(i64::from(range.end))
        .bind(user_id)
        .bind(micros(Utc::now()))
        .fetch_optional(&mut *tx)
        .await?;
        // Nothing inserted: the range is used up (the transaction is rolled back on drop).
        let uid = uid.ok_or_else(|| range.used_up())?;
        tx.commit().await?;
        uid_from_sql(user_id, uid)
    }

    async fn uid_of(&self, user_id: &str) -> Result<Option<u32>, StoreError> {
        held_uid(&self.pool, user_id).await
    }
}
