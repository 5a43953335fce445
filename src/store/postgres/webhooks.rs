//! `WebhookStore` on PostgreSQL: the `webhook_deliveries` table, shared by every instance on the
//! database. A claim locks the due rows it takes with `FOR UPDATE SKIP LOCKED` (rows another
//! instance is claiming at that moment are passed over, not waited for) and gives them a lease in
//! the same statement; a row under a running lease is not due, so no two instances hold one
//! delivery at once. Only the current claim may record an attempt.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::PostgresStore;
use crate::store::webhooks::{attempts_from_sql, http_status_from_sql, outcome_columns, status_from_sql};
use crate::store::{
    ClaimedDelivery, DeliveryQuery, DeliveryStatus, StoreError, WebhookAttempt, WebhookDelivery, WebhookStore,
};

/// The columns of `webhook_deliveries` a delivery is read from, in [`DeliveryRow`]'s order.
macro_rules! delivery_columns {
    () => {
        "id, event_id, event, url, payload, status, attempts, created_at, next_attempt_at, \
         last_attempt_at, last_http_status, last_error, delivered_at"
    };
}

/// One row of `webhook_deliveries` (without its lease), as PostgreSQL holds it.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    event_id: Uuid,
    event: String,
    url: String,
    payload: String,
    status: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    last_http_status: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
}

impl TryFrom<DeliveryRow> for WebhookDelivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let id = row.id;
        Ok(WebhookDelivery {
            id,
            event_id: row.event_id,
            status: status_from_sql(id, &row.status)?,
            attempts: attempts_from_sql(id, i64::from(row.attempts))?,
            created_at: row.created_at,
            next_attempt_at: row.next_attempt_at,
            last_attempt_at: row.last_attempt_at,
            last_http_status: http_status_from_sql(id, row.last_http_status.map(i64::from))?,
            delivered_at: row.delivered_at,
            event: row.event,
            url: row.url,
            payload: row.payload,
            last_error: row.last_error,
        })
    }
}

/// Text as PostgreSQL's `text` can hold it (no NUL).
fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

#[async_trait]
impl WebhookStore for PostgresStore {
    async fn insert_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for delivery in deliveries {
            // Destructured so that a new field is a compile error here until it is stored.
            let WebhookDelivery {
                id,
                event_id,
                event,
                url,
                payload,
                status,
                attempts,
                created_at,
                next_attempt_at,
                last_attempt_at,
                last_http_status,
                last_error,
                delivered_at,
            } = delivery;
            let attempts = i32::try_from(*attempts)
                .map_err(|_| StoreError::InvalidArgument(format!("webhook delivery {id}: attempts")))?;
            let inserted = sqlx::query(concat!(
                "INSERT INTO webhook_deliveries (",
                delivery_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ))
            .bind(id)
            .bind(event_id)
            .bind(storable_text(event))
            .bind(storable_text(url))
            .bind(storable_text(payload))
            .bind(status.as_str())
            .bind(attempts)
            .bind(created_at)
            .bind(next_attempt_at)
            .bind(last_attempt_at)
            .bind(last_http_status.map(i32::from))
            .bind(last_error.as_deref().map(storable_text))
            .bind(delivered_at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(StoreError::Conflict(format!(
                        "webhook delivery {id} already exists"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let claim = Uuid::new_v4();
        let rows: Vec<DeliveryRow> = sqlx::query_as(concat!(
            "WITH due AS (SELECT id AS due_id FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $3 \
             AND (claimed_until IS NULL OR claimed_until <= $3) \
             ORDER BY next_attempt_at, created_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE webhook_deliveries SET claim = $1, claimed_until = $2 FROM due WHERE id = due_id \
             RETURNING ",
            delivery_columns!()
        ))
        .bind(claim)
        .bind(now + lease)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = rows
            .into_iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    delivery: WebhookDelivery::try_from(row)?,
                    claim,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING keeps no order.
        claimed.sort_by_key(|c| (c.delivery.next_attempt_at, c.delivery.created_at));
        Ok(claimed)
    }

    async fn record_webhook_attempt(
        &self,
        id: Uuid,
        claim: Uuid,
        attempt: &WebhookAttempt,
    ) -> Result<bool, StoreError> {
        let (status, next_attempt_at, delivered_at) = outcome_columns(attempt);
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $3, \
             last_http_status = $4, last_error = $5, status = $6, \
             next_attempt_at = COALESCE($7, next_attempt_at), delivered_at = $8, \
             claim = NULL, claimed_until = NULL \
             WHERE id = $1 AND claim = $2",
        )
        .bind(id)
        .bind(claim)
        .bind(attempt.at)
        .bind(attempt.http_status.map(i32::from))
        .bind(attempt.error.as_deref().map(storable_text))
        .bind(status.as_str())
        .bind(next_attempt_at)
        .bind(delivered_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut select = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE TRUE"
        ));
        if let Some(status) = query.status {
            select.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(event) = &query.event {
            select.push(" AND event = ").push_bind(storable_text(event));
        }
        if let Some(before) = query.before {
            select.push(" AND created_at < ").push_bind(before);
        }
        select
            .push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows: Vec<DeliveryRow> = select.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(WebhookDelivery::try_from).collect()
    }

    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_attempt_at, COALESCE(claimed_until, next_attempt_at))) \
             FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE status <> $1 AND created_at < $2")
            .bind(DeliveryStatus::Pending.as_str())
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
