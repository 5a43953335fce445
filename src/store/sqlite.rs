//! The embedded SQLite store (the default): one file in WAL mode, migrations compiled in. The file
//! and its `-wal`/`-shm` are readable by the service's user only. API keys (`keys.rs`), the
//! audit log (`audit.rs`), users' uids (`uids.rs`), model usage with budget overrides (`usage.rs`)
//! and webhook deliveries (`webhooks.rs`) are in modules of their own.

mod audit;
mod keys;
mod uids;
mod usage;
mod webhooks;

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
use super::{
    EventStore, Expiry, LimitScope, Limits, SessionStore, StoreError, StoredEvent, Transcript,
    TranscriptStore, TurnRecord, TurnStatus,
};
use crate::domain::{SessionId, SessionRecord, TurnId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

// Every write transaction here begins with `BEGIN IMMEDIATE`: it takes the write lock (waiting for it
// under the busy timeout) before it reads anything, so a commit by another writer in between (the
// usage, audit and webhook writers run beside the event writer) can never leave it holding a stale
// snapshot that fails with "database is locked" instead of waiting.

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
            // A small page cache per connection (SQLite's default is 2 MiB): the service's memory
            // stays flat while long turns are stored.
            .pragma("cache_size", "-512")
            // Deleting a session removes its turns and events.
            .foreign_keys(true)
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

/// A turn as SQLite stores it.
#[derive(sqlx::FromRow)]
struct TurnRow {
    session_id: String,
    turn_id: String,
    user_message: String,
    status: String,
    error_code: Option<String>,
    text: String,
    tool_calls: String,
    usage: String,
    cost_usd: f64,
    started_at: i64,
    finished_at: Option<i64>,
}

/// The columns of a turn, in `TurnRow`'s order.
macro_rules! turn_columns {
    () => {
        "session_id, turn_id, user_message, status, error_code, text, tool_calls, usage, cost_usd, started_at, finished_at"
    };
}

impl TryFrom<TurnRow> for TurnRecord {
    type Error = StoreError;

    fn try_from(row: TurnRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("turn {}: {what}", row.turn_id));
        Ok(TurnRecord {
            turn_id: TurnId(uuid::Uuid::parse_str(&row.turn_id).map_err(|_| corrupt("id"))?),
            session_id: SessionId::parse(&row.session_id).ok_or_else(|| corrupt("session id"))?,
            user_message: row.user_message.clone(),
            status: TurnStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            error_code: row.error_code.clone(),
            text: row.text.clone(),
            tool_calls: serde_json::from_str(&row.tool_calls).map_err(|_| corrupt("tool calls"))?,
            usage: serde_json::from_str(&row.usage).map_err(|_| corrupt("usage"))?,
            cost_usd: row.cost_usd,
            started_at: from_micros(row.started_at)?,
            finished_at: row.finished_at.map(from_micros).transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    turn_id: String,
    data: String,
    at: i64,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(StoredEvent {
            seq: u64::try_from(row.seq)
                .map_err(|_| StoreError::Corrupt(format!("event number {}", row.seq)))?,
            turn_id: TurnId(
                uuid::Uuid::parse_str(&row.turn_id)
                    .map_err(|_| StoreError::Corrupt(format!("event {}: turn id", row.seq)))?,
            ),
            data: row.data,
            at: from_micros(row.at)?,
        })
    }
}

/// Events per INSERT statement: one statement per batch of deltas, not one per delta (each
/// statement is a round trip to SQLite's worker thread).
const EVENTS_PER_STATEMENT: usize = 200;

async fn insert_events(
    tx: &mut sqlx::SqliteConnection,
    session: SessionId,
    events: &[StoredEvent],
) -> Result<(), StoreError> {
    let id = session.to_string();
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let rows: Vec<(i64, String, &str, i64)> = chunk
            .iter()
            .map(|e| {
                Ok((
                    to_sql_count(e.seq, "event number")?,
                    e.turn_id.to_string(),
                    e.data.as_str(),
                    micros(e.at),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let mut insert = sqlx::QueryBuilder::new("INSERT INTO events (session_id, seq, turn_id, data, at) ");
        insert.push_values(rows, |mut row, (seq, turn, data, at)| {
            row.push_bind(&id)
                .push_bind(seq)
                .push_bind(turn)
                .push_bind(data)
                .push_bind(at);
        });
        match insert.build().execute(&mut *tx).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Duplicate(session));
            }
            // The session was deleted: its events go with it.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn begin_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        let sql = concat!(
            "INSERT INTO turns (",
            turn_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        );
        let inserted = sqlx::query(sql)
            .bind(turn.session_id.to_string())
            .bind(turn.turn_id.to_string())
            .bind(&turn.user_message)
            .bind(turn.status.as_str())
            .bind(&turn.error_code)
            .bind(&turn.text)
            .bind(turn.tool_calls.to_string())
            .bind(serde_json::to_string(&turn.usage).expect("usage serializes"))
            .bind(turn.cost_usd)
            .bind(micros(turn.started_at))
            .bind(turn.finished_at.map(micros))
            .execute(&self.pool)
            .await;
        match inserted {
            // The session was deleted: its turns go with it.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    async fn append_events(&self, session: SessionId, events: &[StoredEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        insert_events(&mut tx, session, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_turn(
        &self,
        turn: &TurnRecord,
        events: &[StoredEvent],
        completed: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let touched = sqlx::query(
            "UPDATE sessions SET last_active_at = MAX(last_active_at, ?2), message_count = message_count + ?3 \
             WHERE session_id = ?1 AND last_active_at >= ?4",
        )
        .bind(turn.session_id.to_string())
        .bind(micros(turn.finished_at.unwrap_or_else(Utc::now)))
        .bind(i64::from(completed))
        .bind(cutoff_micros(&self.expiry))
        .execute(&mut *tx)
        .await?;
        if touched.rows_affected() != 1 {
            return Ok(false);
        }
        insert_events(&mut tx, turn.session_id, events).await?;
        sqlx::query(
            "UPDATE turns SET status = ?3, error_code = ?4, text = ?5, tool_calls = ?6, usage = ?7, cost_usd = ?8, \
             finished_at = ?9 WHERE session_id = ?1 AND turn_id = ?2",
        )
        .bind(turn.session_id.to_string())
        .bind(turn.turn_id.to_string())
        .bind(turn.status.as_str())
        .bind(&turn.error_code)
        .bind(&turn.text)
        .bind(turn.tool_calls.to_string())
        .bind(serde_json::to_string(&turn.usage).expect("usage serializes"))
        .bind(turn.cost_usd)
        .bind(turn.finished_at.map(micros))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn events_after(
        &self,
        session: SessionId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, turn_id, data, at FROM events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(session.to_string())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn last_seq(&self, session: SessionId) -> Result<u64, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE session_id = ?1")
            .bind(session.to_string())
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(last.unwrap_or(0)).map_err(|_| StoreError::Corrupt(format!("event number {last:?}")))
    }

    async fn turns(
        &self,
        session: SessionId,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        let sql = concat!(
            "SELECT * FROM (SELECT ",
            turn_columns!(),
            " FROM turns WHERE session_id = ?1 AND started_at < ?2 ORDER BY started_at DESC LIMIT ?3) ORDER BY started_at"
        );
        let rows: Vec<TurnRow> = sqlx::query_as(sql)
            .bind(session.to_string())
            .bind(before.map(micros).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(TurnRecord::try_from).collect()
    }

    async fn turn(&self, session: SessionId, turn: TurnId) -> Result<Option<TurnRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            turn_columns!(),
            " FROM turns WHERE session_id = ?1 AND turn_id = ?2"
        );
        let row: Option<TurnRow> = sqlx::query_as(sql)
            .bind(session.to_string())
            .bind(turn.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(TurnRecord::try_from).transpose()
    }

    async fn running_turns(&self) -> Result<Vec<TurnRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            turn_columns!(),
            " FROM turns WHERE status = 'running' ORDER BY started_at"
        );
        let rows: Vec<TurnRow> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
        rows.into_iter().map(TurnRecord::try_from).collect()
    }
}

#[async_trait]
impl TranscriptStore for SqliteStore {
    async fn append_transcript(
        &self,
        session: SessionId,
        path: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let next: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(n), 0) FROM transcript_lines WHERE session_id = ?1")
                .bind(session.to_string())
                .fetch_one(&mut *tx)
                .await?;
        for (offset, line) in lines.iter().enumerate() {
            let inserted = sqlx::query(
                "INSERT INTO transcript_lines (session_id, n, path, line) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(session.to_string())
            .bind(next + 1 + offset as i64)
            .bind(path)
            .bind(line)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                // The session was deleted: its transcript goes with it.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn transcript(&self, session: SessionId) -> Result<Option<Transcript>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT path, line FROM transcript_lines WHERE session_id = ?1 ORDER BY n")
                .bind(session.to_string())
                .fetch_all(&self.pool)
                .await?;
        Ok(Transcript::from_rows(rows))
    }
}
