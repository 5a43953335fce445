//! The CLI's transcripts in PostgreSQL, line by line.

use async_trait::async_trait;

use super::PostgresStore;
use crate::domain::SessionId;
use crate::store::{StoreError, Transcript, TranscriptStore};

#[async_trait]
impl TranscriptStore for PostgresStore {
    async fn append_transcript(
        &self,
        session: SessionId,
        path: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // One writer per session (its actor), so numbering after the current maximum is safe.
        let next: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(n), 0) FROM transcript_lines WHERE session_id = $1")
                .bind(session.0)
                .fetch_one(&mut *tx)
                .await?;
        let numbers: Vec<i64> = (1..=lines.len() as i64).map(|i| next + i).collect();
        let inserted = sqlx::query(
            "INSERT INTO transcript_lines (session_id, n, path, line) \
             SELECT $1, n, $2, line FROM UNNEST($3::bigint[], $4::text[]) AS t (n, line) \
             WHERE EXISTS (SELECT 1 FROM sessions WHERE session_id = $1)",
        )
        .bind(session.0)
        .bind(path)
        .bind(&numbers)
        .bind(lines)
        .execute(&mut *tx)
        .await;
        match inserted {
            // The session was deleted: its transcript goes with it.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => return Ok(()),
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn transcript(&self, session: SessionId) -> Result<Option<Transcript>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT path, line FROM transcript_lines WHERE session_id = $1 ORDER BY n")
                .bind(session.0)
                .fetch_all(&self.pool)
                .await?;
        Ok(Transcript::from_rows(rows))
    }
}
