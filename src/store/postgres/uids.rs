//! `UidStore` on PostgreSQL: the `user_uids` table, shared by every instance on the database.
//!
//! An allocation must be atomic across instances: two users asking at once on two instances must
//! not both take the lowest free uid, and one user asking at once on two instances must get one
//! uid. Under READ COMMITTED two transactions could both see the same uid free; the unique indexes
//! would then refuse one of them, which would have to retry (`INSERT ... ON CONFLICT DO NOTHING`
//! and look again, in a loop). Instead, every allocation (of every instance) takes one
//! transaction-scoped advisory lock before it looks, as the session limits do: it holds it to its
//! commit, which PostgreSQL makes visible before it releases the lock, so the next holder's
//! statements see it. Allocations are serialized, with no retry loop and no failed statement in the
//! logs; they are rare (once per user, ever) and short. A uid given before is read without the
//! lock. The unique indexes stay as the backstop (a writer bypassing the lock would fail, not
//! share a uid).

use async_trait::async_trait;
use chrono::Utc;

use super::{LOCK_CLASS, LOCK_UID_ALLOCATE, PostgresStore};
use crate::store::uids::{UidRange, uid_from_sql};
use crate::store::{StoreError, UidStore};

/// The uid `user_id` was given, if any.
async fn held_uid(executor: impl sqlx::PgExecutor<'_>, user_id: &str) -> Result<Option<u32>, StoreError> {
    let uid: Option<i64> = sqlx::query_scalar("SELECT uid FROM user_uids WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(executor)
        .await?;
    uid.map(|uid| uid_from_sql(user_id, uid)).transpose()
}

#[async_trait]
impl UidStore for PostgresStore {
    async fn uid_for(&self, user_id: &str, first: u32, count: u32) -> Result<u32, StoreError> {
        let range = UidRange::new(first, count)?;
        if let Some(uid) = held_uid(&self.pool, user_id).await? {
            return Ok(uid);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(LOCK_UID_ALLOCATE)
            .execute(&mut *tx)
            .await?;
        // Given meanwhile (by another instance, or another task of this one)?
        if let Some(uid) = held_uid(&mut *tx, user_id).await? {
            return Ok(uid);
        }
        // The lowest uid in `first..end` nobody holds: `first` itself or one past a held uid (a
        // gap starts right after a held uid), each candidate looked up in the unique index.
        let uid: Option<i64> = sqlx::query_scalar(
            "INSERT INTO user_uids (user_id, uid, allocated_at) \
             SELECT $3, c, $4 FROM (SELECT $1::bigint AS c UNION ALL \
             SELECT uid + 1 FROM user_uids WHERE uid >= $1 AND uid + 1 < $2) AS candidates \
             WHERE c < $2 AND NOT EXISTS (SELECT 1 FROM user_uids AS held WHERE held.uid = candidates.c) \
             ORDER BY c LIMIT 1 RETURNING uid",
        )
        .bind(i64::from(range.first))
        .bind(i64::from(range.end))
        .bind(user_id)
        .bind(Utc::now())
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
