//! `UsageStore` on SQLite: `usage_records`, `usage_totals` and `budget_overrides`. A record and its
//! increments of the totals are one `BEGIN IMMEDIATE` transaction (the write lock is taken first,
//! so nothing is read stale and no upgrade can deadlock); an increment is `ON CONFLICT DO UPDATE
//! SET x = x + excluded.x`, never a read and a write.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite};

use super::{SqliteStore, from_micros, micros, to_sql_count};
use crate::domain::{BudgetOverride, SessionId, TurnId};
use crate::store::rows::StoredBudget;
use crate::store::usage::{
    NO_TURN, TotalsRow, UNKNOWN_MODEL, UsageGroup, periods_of, sql_count, sql_spending, sql_tokens,
};
use crate::store::{Spending, StoreError, UsageQuery, UsageRecord, UsageStore, UsageTotals};

/// The columns of a record, in `UsageRow`'s order.
const RECORD_COLUMNS: &str = "session_id, user_id, turn_id, model, input_tokens, output_tokens, \
     cache_read_tokens, cache_write_tokens, cost_nanos, status, duration_ms, path, at";

/// Adds one record's share to a total (creating it at zero).
const INCREMENT: &str = "INSERT INTO usage_totals (scope, subject, period, cost_nanos, tokens, requests) \
     VALUES (?1, ?2, ?3, ?4, ?5, 1) ON CONFLICT (scope, subject, period) DO UPDATE SET \
     cost_nanos = cost_nanos + excluded.cost_nanos, tokens = tokens + excluded.tokens, \
     requests = requests + 1";

#[derive(sqlx::FromRow)]
struct UsageRow {
    session_id: String,
    user_id: String,
    turn_id: Option<String>,
    model: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
    cost_nanos: i64,
    status: i64,
    duration_ms: i64,
    path: String,
    at: i64,
}

impl UsageRow {
    fn into_record(self) -> Result<UsageRecord, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("usage record {what}"));
        Ok(UsageRecord {
            session_id: SessionId::parse(&self.session_id).ok_or_else(|| corrupt("session id"))?,
            user_id: self.user_id,
            turn_id: self
                .turn_id
                .map(|t| {
                    uuid::Uuid::parse_str(&t)
                        .map(TurnId)
                        .map_err(|_| corrupt("turn id"))
                })
                .transpose()?,
            model: self.model,
            usage: sql_tokens(
                self.input_tokens,
                self.output_tokens,
                self.cache_read_tokens,
                self.cache_write_tokens,
            )?,
            cost_nanos: sql_count(self.cost_nanos, "cost")?,
            status: u16::try_from(self.status).map_err(|_| corrupt("status"))?,
            duration_ms: sql_count(self.duration_ms, "duration")?,
            path: self.path,
            at: from_micros(self.at)?,
        })
    }
}

/// `WHERE ...` for `query` (always a clause: `1 = 1` matches all).
fn push_filters(builder: &mut QueryBuilder<Sqlite>, query: &UsageQuery) {
    builder.push(" WHERE 1 = 1");
    if let Some(user) = &query.user_id {
        builder.push(" AND user_id = ").push_bind(user.clone());
    }
    if let Some(session) = query.session_id {
        builder.push(" AND session_id = ").push_bind(session.to_string());
    }
    if let Some(from) = query.from {
        builder.push(" AND at >= ").push_bind(micros(from));
    }
    if let Some(to) = query.to {
        builder.push(" AND at < ").push_bind(micros(to));
    }
}

/// The SQL of a group's key, matching `usage::group_key`.
fn group_sql(group: UsageGroup) -> String {
    match group {
        UsageGroup::Day => "strftime('%Y-%m-%d', at / 1000000, 'unixepoch')".into(),
        UsageGroup::Model => format!("COALESCE(model, '{UNKNOWN_MODEL}')"),
        UsageGroup::Session => "session_id".into(),
        UsageGroup::Turn => format!("COALESCE(turn_id, '{NO_TURN}')"),
    }
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for record in records {
            let usage = &record.usage;
            let cost = to_sql_count(record.cost_nanos, "cost")?;
            let tokens = to_sql_count(usage.total(), "tokens")?;
            sqlx::query(
                "INSERT INTO usage_records (session_id, user_id, turn_id, model, input_tokens, \
                 output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, status, \
                 duration_ms, path, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .bind(record.session_id.to_string())
            .bind(&record.user_id)
            .bind(record.turn_id.map(|t| t.to_string()))
            .bind(&record.model)
            .bind(to_sql_count(usage.input_tokens, "input tokens")?)
            .bind(to_sql_count(usage.output_tokens, "output tokens")?)
            .bind(to_sql_count(usage.cache_read_input_tokens, "cache read tokens")?)
            .bind(to_sql_count(
                usage.cache_creation_input_tokens,
                "cache write tokens",
            )?)
            .bind(cost)
            .bind(i64::from(record.status))
            .bind(to_sql_count(record.duration_ms, "duration")?)
            .bind(&record.path)
            .bind(micros(record.at))
            .execute(&mut *tx)
            .await?;
            let (day, month) = periods_of(record.at);
            let session = record.session_id.to_string();
            let turn = record.turn_id.map(|t| t.to_string());
            let mut totals = vec![
                ("user_day", record.user_id.as_str(), day.as_str()),
                ("user_month", record.user_id.as_str(), month.as_str()),
                ("session", session.as_str(), ""),
            ];
            if let Some(turn) = &turn {
                totals.push(("turn", turn.as_str(), ""));
            }
            for (scope, subject, period) in totals {
                sqlx::query(INCREMENT)
                    .bind(scope)
                    .bind(subject)
                    .bind(period)
                    .bind(cost)
                    .bind(tokens)
                    .execute(&mut *tx)
                    .await?;
            }
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
             (scope = 'user_day' AND subject = ?1 AND period = ?2) OR \
             (scope = 'user_month' AND subject = ?1 AND period = ?3) OR \
             (scope = 'session' AND subject = ?4 AND period = '') OR \
             (scope = 'turn' AND subject = ?5 AND period = '')",
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
        let sums = "COUNT(*) AS requests, COALESCE(SUM(input_tokens), 0) AS input_tokens, \
                    COALESCE(SUM(output_tokens), 0) AS output_tokens, \
                    COALESCE(SUM(cache_read_tokens), 0) AS cache_read_tokens, \
                    COALESCE(SUM(cache_write_tokens), 0) AS cache_write_tokens, \
                    COALESCE(SUM(cost_nanos), 0) AS cost_nanos";
        let mut builder =
            QueryBuilder::<Sqlite>::new(format!("SELECT NULL AS group_key, {sums} FROM usage_records"));
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
            QueryBuilder::<Sqlite>::new(format!("SELECT {key} AS group_key, {sums} FROM usage_records"));
        push_filters(&mut builder, query);
        builder.push(format!(" GROUP BY {key} ORDER BY {key}"));
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
        let mut builder = QueryBuilder::<Sqlite>::new(format!("SELECT {RECORD_COLUMNS} FROM usage_records"));
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
            sqlx::query_scalar("SELECT limits FROM budget_overrides WHERE user_id = ?1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        limits
            .map(|text| BudgetOverride::try_from(StoredBudget::parse(&text)?))
            .transpose()
    }

    async fn set_budget_override(&self, user_id: &str, budget: &BudgetOverride) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO budget_overrides (user_id, limits, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(StoredBudget::from(budget).to_json())
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_budget_override(&self, user_id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM budget_overrides WHERE user_id = ?1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }
}
