//! `UsageStore` on PostgreSQL: `usage_records`, `usage_totals` and `budget_overrides`, shared by
//! every instance on the database. A record and its increments of the totals are one statement (a
//! data-modifying CTE), so they commit together; an increment is `ON CONFLICT DO UPDATE SET
//! x = usage_totals.x + excluded.x`, which PostgreSQL applies under the row's lock: concurrent
//! requests of one user, on any number of instances, never lose one another's spending. Every
//! statement takes the totals' rows in the same order (day, month, session, turn), so two never
//! wait on each other in a cycle.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::PostgresStore;
use super::rows::to_sql_count;
use crate::domain::{BudgetOverride, SessionId, TurnId};
use crate::store::rows::StoredBudget;
use crate::store::usage::{
    NO_TURN, TotalsRow, UNKNOWN_MODEL, UsageGroup, periods_of, sql_count, sql_spending, sql_tokens,
};
use crate::store::{Spending, StoreError, UsageQuery, UsageRecord, UsageStore, UsageTotals};

/// The columns of a record, in `UsageRow`'s order.
const RECORD_COLUMNS: &str = "session_id, user_id, turn_id, model, input_tokens, output_tokens, \
     cache_read_tokens, cache_write_tokens, cost_nanos, status, duration_ms, path, at";

/// Stores one record ($1..$13 in `RECORD_COLUMNS`' order) and adds it to its totals ($14: its
/// tokens, $15: its UTC day, $16: its UTC month); the turn's total only when it has a turn.
const RECORD: &str = "WITH record AS (INSERT INTO usage_records (session_id, user_id, turn_id, model, \
     input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, status, \
     duration_ms, path, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)) \
     INSERT INTO usage_totals (scope, subject, period, cost_nanos, tokens, requests) \
     SELECT scope, subject, period, $9, $14, 1 FROM (VALUES \
     (1, 'user_day', $2, $15), (2, 'user_month', $2, $16), (3, 'session', $1::text, ''), \
     (4, 'turn', $3::text, '')) AS totals (n, scope, subject, period) \
     WHERE subject IS NOT NULL ORDER BY n \
     ON CONFLICT (scope, subject, period) DO UPDATE SET \
     cost_nanos = usage_totals.cost_nanos + excluded.cost_nanos, \
     tokens = usage_totals.tokens + excluded.tokens, requests = usage_totals.requests + 1";

#[derive(sqlx::FromRow)]
struct UsageRow {
    session_id: Uuid,
    user_id: String,
    turn_id: Option<Uuid>,
    model: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
    cost_nanos: i64,
    status: i32,
    duration_ms: i64,
    path: String,
    at: DateTime<Utc>,
}

impl UsageRow {
    fn into_record(self) -> Result<UsageRecord, StoreError> {
        Ok(UsageRecord {
            session_id: SessionId(self.session_id),
            user_id: self.user_id,
            turn_id: self.turn_id.map(TurnId),
            model: self.model,
            usage: sql_tokens(
                self.input_tokens,
                self.output_tokens,
                self.cache_read_tokens,
                self.cache_write_tokens,
            )?,
            cost_nanos: sql_count(self.cost_nanos, "cost")?,
            status: u16::try_from(self.status)
                .map_err(|_| StoreError::Corrupt(format!("usage status {}", self.status)))?,
            duration_ms: sql_count(self.duration_ms, "duration")?,
            path: self.path,
            at: self.at,
        })
    }
}

/// `WHERE ...` for `query` (always a clause: `TRUE` matches all).
fn push_filters(builder: &mut QueryBuilder<Postgres>, query: &UsageQuery) {
    builder.push(" WHERE TRUE");
    if let Some(user) = &query.user_id {
        builder.push(" AND user_id = ").push_bind(user.clone());
    }
    if let Some(session) = query.session_id {
        builder.push(" AND session_id = ").push_bind(session.0);
    }
    if let Some(from) = query.from {
        builder.push(" AND at >= ").push_bind(from);
    }
    if let Some(to) = query.to {
        builder.push(" AND at < ").push_bind(to);
    }
}

/// The SQL of a group's key, matching `usage::group_key`.
fn group_sql(group: UsageGroup) -> String {
    match group {
        UsageGroup::Day => "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')".into(),
        UsageGroup::Model => format!("COALESCE(model, '{UNKNOWN_MODEL}')"),
        UsageGroup::Session => "session_id::text".into(),
        UsageGroup::Turn => format!("COALESCE(turn_id::text, '{NO_TURN}')"),
    }
}

/// The sums of a totals query (`SUM` of `bigint` is `numeric` in PostgreSQL: cast back).
const SUMS: &str = "COUNT(*) AS requests, COALESCE(SUM(input_tokens), 0)::bigint AS input_tokens, \
     COALESCE(SUM(output_tokens), 0)::bigint AS output_tokens, \
     COALESCE(SUM(cache_read_tokens), 0)::bigint AS cache_read_tokens, \
     COALESCE(SUM(cache_write_tokens), 0)::bigint AS cache_write_tokens, \
     COALESCE(SUM(cost_nanos), 0)::bigint AS cost_nanos";

#[async_trait]
impl UsageStore for PostgresStore {
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for record in records {
            let usage = &record.usage;
            let (day, month) = periods_of(record.at);
            sqlx::query(RECORD)
                .bind(record.session_id.0)
                .bind(&record.user_id)
                .bind(record.turn_id.map(|t| t.0))
                .bind(&record.model)
                .bind(to_sql_count(usage.input_tokens, "input tokens")?)
                .bind(to_sql_count(usage.output_tokens, "output tokens")?)
                .bind(to_sql_count(usage.cache_read_input_tokens, "cache read tokens")?)
                .bind(to_sql_count(
                    usage.cache_creation_input_tokens,
                    "cache write tokens",
                )?)
                .bind(to_sql_count(record.cost_nanos, "cost")?)
                .bind(i32::from(record.status))
                .bind(to_sql_count(record.duration_ms, "duration")?)
                .bind(&record.path)
                .bind(record.at)
                .bind(to_sql_count(usage.total(), "tokens")?)
                .bind(day)
                .bind(month)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn spending(
        &self,
        user_id: &str,
        session: SessionId,
        turn: Option<TurnId>,
        at: DateTime<Utc>,
    ) -> Result<Spending, StoreError> {
        let (day, month) = periods_of(at);
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT scope, cost_nanos, tokens FROM usage_totals WHERE \
             (scope = 'user_day' AND subject = $1 AND period = $2) OR \
             (scope = 'user_month' AND subject = $1 AND period = $3) OR \
             (scope = 'session' AND subject = $4 AND period = '') OR \
             (scope = 'turn' AND subject = $5 AND period = '')",
        )
        .bind(user_id)
        .bind(day)
        .bind(month)
        .bind(session.to_string())
        .bind(turn.map(|t| t.to_string()))
        .fetch_all(&self.pool)
        .await?;
        sql_spending(rows)
    }

    async fn usage_totals(
        &self,
        query: &UsageQuery,
        group_by: Option<UsageGroup>,
    ) -> Result<(UsageTotals, Vec<(String, UsageTotals)>), StoreError> {
        let mut builder = QueryBuilder::<Postgres>::new(format!(
            "SELECT NULL::text AS group_key, {SUMS} FROM usage_records"
        ));
        push_filters(&mut builder, query);
        let (_, totals) = builder
            .build_query_as::<TotalsRow>()
            .fetch_one(&self.pool)
            .await?
            .into_totals()?;
        let Some(group) = group_by else {
            return Ok((totals, Vec::new()));
        };
        let key = group_sql(group);
        let mut builder =
            QueryBuilder::<Postgres>::new(format!("SELECT {key} AS group_key, {SUMS} FROM usage_records"));
        push_filters(&mut builder, query);
        builder.push(" GROUP BY 1 ORDER BY 1");
        let groups = builder
            .build_query_as::<TotalsRow>()
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(TotalsRow::into_totals)
            .collect::<Result<_, _>>()?;
        Ok((totals, groups))
    }

    async fn usage_records(&self, query: &UsageQuery, limit: u32) -> Result<Vec<UsageRecord>, StoreError> {
        let mut builder =
            QueryBuilder::<Postgres>::new(format!("SELECT {RECORD_COLUMNS} FROM usage_records"));
        push_filters(&mut builder, query);
        builder
            .push(" ORDER BY at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit));
        builder
            .build_query_as::<UsageRow>()
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(UsageRow::into_record)
            .collect()
    }

    async fn budget_override(&self, user_id: &str) -> Result<Option<BudgetOverride>, StoreError> {
        let limits: Option<String> =
            sqlx::query_scalar("SELECT limits::text FROM budget_overrides WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        limits
            .map(|text| BudgetOverride::try_from(StoredBudget::parse(&text)?))
            .transpose()
    }

    async fn set_budget_override(&self, user_id: &str, budget: &BudgetOverride) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO budget_overrides (user_id, limits, updated_at) VALUES ($1, $2::jsonb, $3) \
             ON CONFLICT (user_id) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(StoredBudget::from(budget).to_json())
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_budget_override(&self, user_id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM budget_overrides WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }
}
