//! The PostgreSQL store, for several instances sharing one database: a connection pool, migrations
//! compiled in and run at startup (sqlx holds an advisory lock while migrating, so instances
//! starting together take turns), the session limits checked under an advisory lock, turns
//! and events beside the sessions they belong to, and API keys, the audit log and users' uids
//! (`keys.rs`, `audit.rs`, `uids.rs`, the last allocated under an advisory lock), model usage with
//! budget overrides (`usage.rs`) and webhook deliveries (`webhooks.rs`, claimed with `FOR UPDATE SKIP
//! LOCKED`), which belong to no session.
//!
//! An unreachable database is an outage, not a crash: every operation waits at most
//! [`ACQUIRE_TIMEOUT`] for a connection and then fails with a connection-type `sqlx::Error`
//! (`PoolTimedOut`, `Io`, ...), which the HTTP layer answers with 503; the pool reconnects by itself
//! when the database is back.

mod audit;
mod events;
mod keys;
mod rows;
mod transcripts;
mod uids;
mod usage;
mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use self::rows::{SessionRow, session_columns, session_records, to_sql_count};
use super::{Expiry, LimitScope, Limits, SessionStore, StoreError};
use crate::domain::{SessionId, SessionRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long an operation waits for a pooled connection (including connecting) before it fails:
/// short, so that an outage answers quickly instead of piling up requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the first connection at startup may take.
const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock (`pg_advisory_xact_lock(class, object)`) that serializes session inserts
/// across instances. The two-key form lives in a key space of its own, apart from sqlx's
/// one-key migration lock.
const LOCK_CLASS: i32 = 0x4341_4748; // "CAGH"
const LOCK_SESSION_INSERT: i32 = 1;
/// The advisory lock every audit append holds to its commit, so that audit ids increase in commit
/// order (see `audit.rs`).
const LOCK_AUDIT_APPEND: i32 = 2;
/// The advisory lock every uid allocation holds to its commit, so that instances allocating at once
/// never give one uid twice (see `uids.rs`).
const LOCK_UID_ALLOCATE: i32 = 3;

/// Where and how to connect.
#[derive(Clone)]
pub struct PostgresSettings {
    /// A libpq-style URL; when set it wins over the parts below.
    pub url: Option<String>,
    /// Host (or a Unix socket folder, starting with `/`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Connections held at most.
    pub pool_size: u32,
    /// Seconds after the last activity a session expires (0: never).
    pub ttl_seconds: u64,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password, and no URL (it may hold one).
        f.debug_struct("PostgresSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresSettings {
    fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        let options = match &self.url {
            Some(url) => PgConnectOptions::from_str(url)?,
            None => {
                let options = PgConnectOptions::new_without_pgpass();
                let options = if self.host.starts_with('/') {
                    options.socket(&self.host)
                } else {
                    options.host(&self.host)
                };
                options
                    .port(self.port)
                    .database(&self.database)
                    .username(&self.user)
                    .password(&self.password)
            }
        };
        let options = if options.get_application_name().is_none() {
            options.application_name("claude-agent-http")
        } else {
            options
        };
        Ok(options)
    }
}

/// Session records, turns and events in a PostgreSQL database.
pub struct PostgresStore {
    pool: PgPool,
    expiry: Expiry,
}

impl PostgresStore {
    /// Connects, migrates the database to this version, and opens the pool. Fails if the database
    /// cannot be reached at startup (with the cause: refused, authentication, no such database).
    pub async fn connect(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let options = settings.connect_options()?;
        let target = format!(
            "{}:{}/{}",
            options.get_socket().map_or_else(
                || options.get_host().to_string(),
                |socket| socket.display().to_string()
            ),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        // One plain connection first: its error says why (a pool would only say it timed out).
        let connected = tokio::time::timeout(STARTUP_CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {STARTUP_CONNECT_TIMEOUT:?}"),
                )))
            });
        let connection = connected.inspect_err(|e| {
            tracing::error!(store.target = %target, error = %e, "cannot connect to PostgreSQL");
        })?;
        connection.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        MIGRATOR.run(&pool).await?;
        tracing::info!(store.target = %target, store.pool_size = settings.pool_size, "PostgreSQL store ready");
        Ok(PostgresStore {
            pool,
            expiry: Expiry::new(settings.ttl_seconds),
        })
    }

    fn cutoff(&self) -> Option<DateTime<Utc>> {
        self.expiry.cutoff()
    }
}

/// Unexpired: last active at or after the cutoff (`$n` is the cutoff, NULL when nothing expires).
macro_rules! live {
    ($n:literal) => {
        concat!("last_active_at >= COALESCE($", $n, "::timestamptz, '-infinity')")
    };
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn insert(&self, record: &SessionRecord, limits: Limits) -> Result<(), StoreError> {
        let row = SessionRow::try_from(record)?;
        let mut tx = self.pool.begin().await?;
        // READ COMMITTED alone would let two inserts both see room: one lock for every insert (the
        // total limit orders them all anyway), held to the end of the transaction, taken before the
        // counts so that each statement after it sees every insert committed before.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(LOCK_SESSION_INSERT)
            .execute(&mut *tx)
            .await?;
        let (total, mine): (i64, i64) = sqlx::query_as(concat!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE user_id = $1) FROM sessions WHERE ",
            live!(2)
        ))
        .bind(&row.user_id)
        .bind(self.cutoff())
        .fetch_one(&mut *tx)
        .await?;
        if mine >= i64::from(limits.max_per_user) {
            return Err(StoreError::LimitReached(LimitScope::User(limits.max_per_user)));
        }
        if total >= i64::from(limits.max_total) {
            return Err(StoreError::LimitReached(LimitScope::Total(limits.max_total)));
        }
        let inserted = sqlx::query(concat!(
            "INSERT INTO sessions (session_id, user_id, subdir, cwd, options, metadata, created_at, ",
            "last_active_at, message_count) VALUES ($1, $2, $3, $4, $5::json, $6::json, $7, $8, $9)"
        ))
        .bind(row.session_id)
        .bind(&row.user_id)
        .bind(&row.subdir)
        .bind(&row.cwd)
        .bind(&row.options)
        .bind(&row.metadata)
        .bind(row.created_at)
        .bind(row.last_active_at)
        .bind(row.message_count)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Duplicate(record.session_id));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE session_id = $1 AND ",
            live!(2)
        );
        let row: Option<SessionRow> = sqlx::query_as(sql)
            .bind(id.0)
            .bind(self.cutoff())
            .fetch_optional(&self.pool)
            .await?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn list(&self, user_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        // Two statements rather than `$1 IS NULL OR ...`, so the per-user one keeps its index.
        let query = match user_id {
            Some(user_id) => sqlx::query_as(concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE user_id = $1 AND ",
                live!(2),
                " ORDER BY created_at, session_id"
            ))
            .bind(user_id)
            .bind(self.cutoff()),
            None => sqlx::query_as(concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE ",
                live!(1),
                " ORDER BY created_at, session_id"
            ))
            .bind(self.cutoff()),
        };
        session_records(query.fetch_all(&self.pool).await?)
    }

    async fn touch(&self, id: SessionId, at: DateTime<Utc>, turns: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE sessions SET last_active_at = GREATEST(last_active_at, $2), ",
            "message_count = message_count + $3 WHERE session_id = $1 AND ",
            live!(4)
        ))
        .bind(id.0)
        .bind(at)
        .bind(to_sql_count(turns, "turns")?)
        .bind(self.cutoff())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        // Its turns and events go with it (ON DELETE CASCADE).
        let sql = concat!(
            "DELETE FROM sessions WHERE session_id = $1 AND ",
            live!(2),
            " RETURNING ",
            session_columns!()
        );
        let row: Option<SessionRow> = sqlx::query_as(sql)
            .bind(id.0)
            .bind(self.cutoff())
            .fetch_optional(&self.pool)
            .await?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn purge_expired(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let Some(cutoff) = self.cutoff() else {
            return Ok(Vec::new());
        };
        let sql = concat!(
            "DELETE FROM sessions WHERE last_active_at < $1 RETURNING ",
            session_columns!()
        );
        let rows = sqlx::query_as(sql).bind(cutoff).fetch_all(&self.pool).await?;
        session_records(rows)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(concat!("SELECT COUNT(*) FROM sessions WHERE ", live!(1)))
            .bind(self.cutoff())
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("count {count}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
