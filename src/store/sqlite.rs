//! The embedded SQLite store (the default): one file in WAL mode, migrations compiled in. The file
//! and its `-wal`/`-shm` are readable by the service's user only.

use std::fs::{OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::rows::StoredOptions;
use super::{Expiry, LimitScope, Limits, SessionStore, StoreError};
use crate::domain::{SessionId, SessionRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The columns of a record, in `SessionRow`'s order (a macro so queries stay `&'static str`).
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
        let io_error = |e: io::Error| StoreError::Database(sqlx::Error::Io(e));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::workspace::create_private_dir(parent).map_err(io_error)?;
        }
        create_private_file(path).map_err(io_error)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(PathBuf::from(path))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Deleted content (a purged session, a scrubbed column) is overwritten, not left in
            // free pages.
            .pragma("secure_delete", "ON")
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

/// Creates the database file with mode 0600 before SQLite does (SQLite gives its `-wal` and `-shm`
/// the database file's mode), and takes group and other access away from an existing one: it holds
/// every session's options and metadata.
fn create_private_file(path: &Path) -> io::Result<()> {
    let private = Permissions::from_mode(0o600);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => return file.set_permissions(private),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for file in [path.to_owned(), sidecar(path, "-wal"), sidecar(path, "-shm")] {
        let Ok(metadata) = std::fs::metadata(&file) else {
            continue;
        };
        if metadata.permissions().mode() & 0o077 != 0 {
            match std::fs::set_permissions(&file, private.clone()) {
                Ok(()) => tracing::info!(path = %file.display(), "made the session database private (0600)"),
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "cannot make the session database private")
                }
            }
        }
    }
    Ok(())
}

/// `sessions.db` -> `sessions.db-wal`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
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

/// A count as SQLite stores it (a signed 64-bit integer).
fn to_sql_count(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is too large to store")))
}

/// One row of `sessions`, as SQLite holds it.
#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: String,
    user_id: String,
    subdir: Option<String>,
    cwd: String,
    options: String,
    metadata: String,
    created_at: i64,
    last_active_at: i64,
    message_count: i64,
}

impl TryFrom<&SessionRecord> for SessionRow {
    type Error = StoreError;

    fn try_from(record: &SessionRecord) -> Result<Self, StoreError> {
        Ok(SessionRow {
            session_id: record.session_id.to_string(),
            user_id: record.user_id.clone(),
            subdir: record.subdir.clone(),
            cwd: record.cwd.to_string_lossy().into_owned(),
            options: StoredOptions::from(&record.options).to_json(),
            metadata: serde_json::to_string(&record.metadata).expect("metadata serializes"),
            created_at: micros(record.created_at),
            last_active_at: micros(record.last_active_at),
            message_count: to_sql_count(record.message_count, "message_count")?,
        })
    }
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        let id = &row.session_id;
        Ok(SessionRecord {
            session_id: SessionId::parse(id)
                .ok_or_else(|| StoreError::Corrupt(format!("session id {id:?}")))?,
            user_id: row.user_id,
            subdir: row.subdir,
            cwd: PathBuf::from(row.cwd),
            options: StoredOptions::parse(&row.options)?.try_into()?,
            metadata: serde_json::from_str(&row.metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
            created_at: from_micros(row.created_at)?,
            last_active_at: from_micros(row.last_active_at)?,
            message_count: u64::try_from(row.message_count)
                .map_err(|_| StoreError::Corrupt(format!("message_count {}", row.message_count)))?,
        })
    }
}

fn records(rows: Vec<SessionRow>) -> Result<Vec<SessionRecord>, StoreError> {
    rows.into_iter().map(SessionRecord::try_from).collect()
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
        let row = SessionRow::try_from(record)?;
        let result = sqlx::query(sql)
            .bind(&row.session_id)
            .bind(&row.user_id)
            .bind(&row.subdir)
            .bind(&row.cwd)
            .bind(&row.options)
            .bind(&row.metadata)
            .bind(row.created_at)
            .bind(row.last_active_at)
            .bind(row.message_count)
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
        let row: Option<SessionRow> = sqlx::query_as(sql)
            .bind(id.to_string())
            .bind(cutoff_micros(&self.expiry))
            .fetch_optional(&self.pool)
            .await?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn list(&self, user_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let cutoff = cutoff_micros(&self.expiry);
        // Two statements rather than `?1 IS NULL OR ...`, so the per-user one keeps its index.
        let query = match user_id {
            Some(user_id) => sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE user_id = ?1 AND last_active_at >= ?2 ",
                "ORDER BY created_at, session_id"
            ))
            .bind(user_id)
            .bind(cutoff),
            None => sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE last_active_at >= ?1 ORDER BY created_at, session_id"
            ))
            .bind(cutoff),
        };
        records(query.fetch_all(&self.pool).await?)
    }

    async fn touch(&self, id: SessionId, at: DateTime<Utc>, turns: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET last_active_at = MAX(last_active_at, ?2), message_count = message_count + ?3 \
             WHERE session_id = ?1 AND last_active_at >= ?4",
        )
        .bind(id.to_string())
        .bind(micros(at))
        .bind(to_sql_count(turns, "turns")?)
        .bind(cutoff_micros(&self.expiry))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let sql = concat!(
            "DELETE FROM sessions WHERE session_id = ?1 AND last_active_at >= ?2 RETURNING ",
            columns!()
        );
        let row: Option<SessionRow> = sqlx::query_as(sql)
            .bind(id.to_string())
            .bind(cutoff_micros(&self.expiry))
            .fetch_optional(&self.pool)
            .await?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn purge_expired(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let Some(cutoff) = self.expiry.cutoff() else {
            return Ok(Vec::new());
        };
        let sql = concat!(
            "DELETE FROM sessions WHERE last_active_at < ?1 RETURNING ",
            columns!()
        );
        let rows = sqlx::query_as(sql)
            .bind(micros(cutoff))
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE last_active_at >= ?1")
            .bind(cutoff_micros(&self.expiry))
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("count {count}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
