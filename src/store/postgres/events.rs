//! `EventStore` on PostgreSQL: turns in `turns`, each session's numbered events in `events`
//! (keyed by session and number, so a number stored twice is refused).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::PostgresStore;
use super::rows::{EventColumns, EventRow, TurnRow, turn_columns, turn_records};
use crate::domain::{SessionId, TurnId};
use crate::store::{EventStore, StoreError, StoredEvent, TurnRecord};

/// Inserts `events` of `session` in one statement (`UNNEST` of one array per column).
async fn insert_events(
    connection: &mut PgConnection,
    session: SessionId,
    events: &[StoredEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let columns = EventColumns::try_from(events)?;
    let inserted = sqlx::query(
        // Nothing for a session that is gone (deleted while its turn ran).
        "INSERT INTO events (session_id, seq, turn_id, data, at) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[]) \
         WHERE EXISTS (SELECT 1 FROM sessions WHERE session_id = $1)",
    )
    .bind(session.0)
    .bind(&columns.seqs)
    .bind(&columns.turn_ids)
    .bind(&columns.data)
    .bind(&columns.ats)
    .execute(connection)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Duplicate(session)),
        // Deleted between the check and the insert.
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn begin_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        let row = TurnRow::try_from(turn)?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO turns (turn_id, session_id, user_message, status, error_code, assistant_text, ",
            "tool_calls, input_tokens, output_tokens, cache_creation_input_tokens, ",
            "cache_read_input_tokens, cost_usd, started_at, finished_at) ",
            "SELECT $1, $2, $3::json, $4, $5, $6::json, $7::json, $8, $9, $10, $11, $12, $13, $14 ",
            // Nothing for a session that is gone.
            "WHERE EXISTS (SELECT 1 FROM sessions WHERE session_id = $2)"
        ))
        .bind(row.turn_id)
        .bind(row.session_id)
        .bind(&row.user_message)
        .bind(&row.status)
        .bind(&row.error_code)
        .bind(&row.assistant_text)
        .bind(&row.tool_calls)
        .bind(row.input_tokens)
        .bind(row.output_tokens)
        .bind(row.cache_creation_input_tokens)
        .bind(row.cache_read_input_tokens)
        .bind(row.cost_usd)
        .bind(row.started_at)
        .bind(row.finished_at)
        .execute(&self.pool)
        .await;
        match inserted {
            // Deleted between the check and the insert.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    async fn append_events(&self, session: SessionId, events: &[StoredEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // One statement: all of them or none.
        let mut connection = self.pool.acquire().await?;
        insert_events(&mut connection, session, events).await
    }

    async fn finish_turn(
        &self,
        turn: &TurnRecord,
        events: &[StoredEvent],
        completed: bool,
    ) -> Result<bool, StoreError> {
        let row = TurnRow::try_from(turn)?;
        let mut tx = self.pool.begin().await?;
        let touched = sqlx::query(
            "UPDATE sessions SET last_active_at = GREATEST(last_active_at, $2), \
             message_count = message_count + $3 WHERE session_id = $1 \
             AND last_active_at >= COALESCE($4::timestamptz, '-infinity')",
        )
        .bind(turn.session_id.0)
        .bind(turn.finished_at.unwrap_or_else(chrono::Utc::now))
        .bind(i64::from(completed))
        .bind(self.cutoff())
        .execute(&mut *tx)
        .await?;
        if touched.rows_affected() != 1 {
            return Ok(false);
        }
        insert_events(&mut tx, turn.session_id, events).await?;
        // An update, never an insert: a turn that was never begun (or went with its session)
        // stays absent.
        sqlx::query(concat!(
            "UPDATE turns SET status = $3, error_code = $4, assistant_text = $5::json, ",
            "tool_calls = $6::json, input_tokens = $7, output_tokens = $8, ",
            "cache_creation_input_tokens = $9, cache_read_input_tokens = $10, cost_usd = $11, ",
            "finished_at = $12 WHERE turn_id = $1 AND session_id = $2"
        ))
        .bind(row.turn_id)
        .bind(row.session_id)
        .bind(&row.status)
        .bind(&row.error_code)
        .bind(&row.assistant_text)
        .bind(&row.tool_calls)
        .bind(row.input_tokens)
        .bind(row.output_tokens)
        .bind(row.cache_creation_input_tokens)
        .bind(row.cache_read_input_tokens)
        .bind(row.cost_usd)
        .bind(row.finished_at)
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
            "SELECT seq, turn_id, data, at FROM events WHERE session_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(session.0)
        // Past the largest storable number there is nothing.
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn last_seq(&self, session: SessionId) -> Result<u64, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE session_id = $1")
            .bind(session.0)
            .fetch_one(&self.pool)
            .await?;
        let last = last.unwrap_or(0);
        u64::try_from(last).map_err(|_| StoreError::Corrupt(format!("event seq {last}")))
    }

    async fn turns(
        &self,
        session: SessionId,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        // The newest `limit` before `before`, then put back in order, oldest first.
        let sql = concat!(
            "SELECT * FROM (SELECT ",
            turn_columns!(),
            " FROM turns WHERE session_id = $1 AND started_at < COALESCE($2::timestamptz, 'infinity') ",
            "ORDER BY started_at DESC, turn_id DESC LIMIT $3) AS newest ORDER BY started_at, turn_id"
        );
        let rows: Vec<TurnRow> = sqlx::query_as(sql)
            .bind(session.0)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        turn_records(rows)
    }

    async fn turn(&self, session: SessionId, turn: TurnId) -> Result<Option<TurnRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            turn_columns!(),
            " FROM turns WHERE session_id = $1 AND turn_id = $2"
        );
        let row: Option<TurnRow> = sqlx::query_as(sql)
            .bind(session.0)
            .bind(turn.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(TurnRecord::try_from).transpose()
    }

    async fn running_turns(&self) -> Result<Vec<TurnRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            turn_columns!(),
            " FROM turns WHERE status = 'running' ORDER BY started_at, turn_id"
        );
        let rows: Vec<TurnRow> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
        turn_records(rows)
    }
}
