//! `WebhookStore` on SQLite: the `webhook_deliveries` table. A claim is one `UPDATE ... WHERE id IN
//! (SELECT ... LIMIT n) RETURNING` statement, atomic under SQLite's single writer, so two claims
//! (from this pool or another process on the same file) never take the same row.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{SqliteStore, from_micros, micros};
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

/// One row of `webhook_deliveries` (without its lease), as SQLite holds it.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: String,
    event: String,
    url: String,
    payload: String,
    status: String,
    attempts: i64,
    created_at: i64,
    next_attempt_at: i64,
    last_attempt_at: Option<i64>,
    last_http_status: Option<i64>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for WebhookDelivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("webhook delivery {}: {what}", row.id));
        let id = Uuid::parse_str(&row.id).map_err(|_| corrupt("id"))?;
        Ok(WebhookDelivery {
            id,
            event_id: Uuid::parse_str(&row.event_id).map_err(|_| corrupt("event id"))?,
            status: status_from_sql(id, &row.status)?,
            attempts: attempts_from_sql(id, row.attempts)?,
            created_at: from_micros(row.created_at)?,
            next_attempt_at: from_micros(row.next_attempt_at)?,
            last_attempt_at: row.last_attempt_at.map(from_micros).transpose()?,
            last_http_status: http_status_from_sql(id, row.last_http_status)?,
            delivered_at: row.delivered_at.map(from_micros).transpose()?,
            event: row.event,
            url: row.url,
            payload: row.payload,
            last_error: row.last_error,
        })
    }
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
            let inserted = sqlx::query(concat!(
                "INSERT INTO webhook_deliveries (",
                delivery_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))
            .bind(id.to_string())
            .bind(event_id.to_string())
            .bind(event)
            .bind(url)
            .bind(payload)
            .bind(status.as_str())
            .bind(i64::from(*attempts))
            .bind(micros(*created_at))
            .bind(micros(*next_attempt_at))
            .bind(last_attempt_at.map(micros))
            .bind(last_http_status.map(i64::from))
            .bind(last_error)
            .bind(delivered_at.map(micros))
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
            "UPDATE webhook_deliveries SET claim = ?1, claimed_until = ?2 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?3 \
             AND (claimed_until IS NULL OR claimed_until <= ?3) \
             ORDER BY next_attempt_at, created_at LIMIT ?4) RETURNING ",
            delivery_columns!()
        ))
        .bind(claim.to_string())
        .bind(micros(now + lease))
        .bind(micros(now))
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
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = ?3, \
             last_http_status = ?4, last_error = ?5, status = ?6, \
             next_attempt_at = COALESCE(?7, next_attempt_at), delivered_at = ?8, \
             claim = NULL, claimed_until = NULL \
             WHERE id = ?1 AND claim = ?2",
        )
        .bind(id.to_string())
        .bind(claim.to_string())
        .bind(micros(attempt.at))
        .bind(attempt.http_status.map(i64::from))
        .bind(&attempt.error)
        .bind(status.as_str())
        .bind(next_attempt_at.map(micros))
        .bind(delivered_at.map(micros))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut select = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE 1"
        ));
        if let Some(status) = query.status {
            select.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(event) = &query.event {
            select.push(" AND event = ").push_bind(event.clone());
        }
        if let Some(before) = query.before {
            select.push(" AND created_at < ").push_bind(micros(before));
        }
        select
            .push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows: Vec<DeliveryRow> = select.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(WebhookDelivery::try_from).collect()
    }

    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(claimed_until, next_attempt_at))) \
             FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        due.map(from_micros).transpose()
    }

    async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE status <> ?1 AND created_at < ?2")
            .bind(DeliveryStatus::Pending.as_str())
            .bind(micros(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
