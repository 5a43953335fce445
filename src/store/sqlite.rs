//! The embedded SQLite store (the default): one file in WAL mode, migrations compiled in.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::{Expiry, LimitScope, Limits, SessionStore, StoreError};
use crate::domain::{SessionId, SessionRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The columns of a record, in `record_from_row`'s order (a macro so queries stay `&'static str`).
macro_rules! columns {
    () => {
        "session_id, user_id, subdir, cwd, options, metadata, created_at, last_active_at, message_count"
    };
}

/// Session records in a SQLite file.
pub struct SqliteStore {
    pool: SqlitePool,
    expiry: Expiry,
}

impl SqliteStore {
    /// Opens (creating it and its folder if needed) and migrates the database at `path`.
    pub async fn open(path: &Path, ttl_seconds: u64) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(PathBuf::from(path))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            pool,
            expiry: Expiry::new(ttl_seconds),
        })
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The expiry cutoff as stored micros; `i64::MIN` when nothing expires.
fn cutoff_micros(expiry: &Expiry) -> i64 {
    expiry.cutoff().map(micros).unwrap_or(i64::MIN)
}

fn from_micros(value: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_micros(value)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {value}")))
}

fn record_from_row(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let id: String = row.try_get("session_id")?;
    let options: String = row.try_get("options")?;
    let metadata: String = row.try_get("metadata")?;
    let cwd: String = row.try_get("cwd")?;
    let count: i64 = row.try_get("message_count")?;
    Ok(SessionRecord {
        session_id: SessionId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("session id {id:?}")))?,
        user_id: row.try_get("user_id")?,
        subdir: row.try_get("subdir")?,
        cwd: PathBuf::from(cwd),
        options: serde_json::from_str(&options).map_err(|e| corrupt("options", &e))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("metadata", &e))?,
        created_at: from_micros(row.try_get("created_at")?)?,
        last_active_at: from_micros(row.try_get("last_active_at")?)?,
        message_count: u64::try_from(count).unwrap_or_default(),
    })
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert(&self, record: &SessionRecord, limits: Limits) -> Result<(), StoreError> {
        let cutoff = cutoff_micros(&self.expiry);
        // One statement, so the limit check and the insert are atomic (SQLite serializes writers).
        let sql = concat!(
            "INSERT INTO sessions (",
            columns!(),
            ") SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 ",
            "WHERE (SELECT COUNT(*) FROM sessions WHERE last_active_at >= ?10) < ?11 ",
            "AND (SELECT COUNT(*) FROM sessions WHERE user_id = ?2 AND last_active_at >= ?10) < ?12"
        );
        let result = sqlx::query(sql)
            .bind(record.session_id.to_string())
            .bind(&record.user_id)
            .bind(&record.subdir)
            .bind(record.cwd.to_string_lossy().into_owned())
            .bind(serde_json::to_string(&record.options).expect("options serialize"))
            .bind(serde_json::to_string(&record.metadata).expect("metadata serializes"))
            .bind(micros(record.created_at))
            .bind(micros(record.last_active_at))
            .bind(record.message_count as i64)
            .bind(cutoff)
            .bind(i64::from(limits.max_total))
            .bind(i64::from(limits.max_per_user))
            .execute(&self.pool)
            .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => Ok(()),
            Ok(_) => {
                let mine: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM sessions WHERE user_id = ?1 AND last_active_at >= ?2",
                )
                .bind(&record.user_id)
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await?;
                Err(StoreError::LimitReached(
                    if mine >= i64::from(limits.max_per_user) {
                        LimitScope::User(limits.max_per_user)
                    } else {
                        LimitScope::Total(limits.max_total)
                    },
                ))
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Duplicate(record.session_id))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM sessions WHERE session_id = ?1 AND last_active_at >= ?2"
        );
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .bind(cutoff_micros(&self.expiry))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn list(&self, user_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let cutoff = cutoff_micros(&self.expiry);
        // Two statements rather than `?1 IS NULL OR ...`, so the per-user one keeps its index.
        let query = match user_id {
            Some(user_id) => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE user_id = ?1 AND last_active_at >= ?2 ",
                "ORDER BY created_at, session_id"
            ))
            .bind(user_id)
            .bind(cutoff),
            None => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE last_active_at >= ?1 ORDER BY created_at, session_id"
            ))
            .bind(cutoff),
        };
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn touch(&self, id: SessionId, at: DateTime<Utc>, turns: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET last_active_at = MAX(last_active_at, ?2), message_count = message_count + ?3 \
             WHERE session_id = ?1 AND last_active_at >= ?4",
        )
        .bind(id.to_string())
        .bind(micros(at))
        .bind(turns as i64)
        .bind(cutoff_micros(&self.expiry))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, id: SessionId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE session_id = ?1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_expired(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let Some(cutoff) = self.expiry.cutoff() else {
            return Ok(Vec::new());
        };
        let sql = concat!(
            "DELETE FROM sessions WHERE last_active_at < ?1 RETURNING ",
            columns!()
        );
        let rows = sqlx::query(sql)
            .bind(micros(cutoff))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE last_active_at >= ?1")
            .bind(cutoff_micros(&self.expiry))
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
