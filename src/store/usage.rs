//! Model usage at rest: one record per relayed model request (who, which model, tokens, cost,
//! status), running totals per user and UTC day, user and UTC month, session and turn (what budgets
//! are checked against), and users' budget overrides. Its specification is the conformance story
//! in `tests/it/usage_store.rs`, run on every backend.
//!
//! Records are kept when their session is deleted: they are what was spent. Totals only ever grow,
//! by an atomic increment in the same transaction as the record, so concurrent requests of one
//! user, on one instance or several, never lose one another's spending.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::StoreError;
use crate::domain::{BudgetOverride, Nanos, SessionId, TurnId, TurnUsage};

/// One relayed model request.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// The session whose token it carried.
    pub session_id: SessionId,
    /// That session's user.
    pub user_id: String,
    /// The turn that was running when it was made (`None` between turns, e.g. a warm-up).
    pub turn_id: Option<TurnId>,
    /// The model the request named (else the one the answer named).
    pub model: Option<String>,
    /// The tokens the answer reported (zero where it reported none).
    pub usage: TurnUsage,
    /// Its price, from the service's price table.
    pub cost_nanos: Nanos,
    /// The status answered to the CLI (the upstream's, or the relay's own).
    pub status: u16,
    /// From the request's arrival to the answer's last byte.
    pub duration_ms: u64,
    /// The request's path (without its query).
    pub path: String,
    /// When the request arrived (its UTC day and month are the totals it counts in).
    pub at: DateTime<Utc>,
}

/// Spending against one limit's scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Money.
    pub cost_nanos: Nanos,
    /// Every token (input, output, cache writes and reads).
    pub tokens: u64,
}

/// What a user, a session and a turn have spent so far: what a budget check compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spending {
    /// The user, this UTC day.
    pub user_day: Spent,
    /// The user, this UTC month.
    pub user_month: Spent,
    /// The session, ever.
    pub session: Spent,
    /// The turn (zero without one).
    pub turn: Spent,
}

/// How usage totals are broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    /// By UTC day (`YYYY-MM-DD`).
    Day,
    /// By model (`unknown` where none was named).
    Model,
    /// By session.
    Session,
    /// By turn (`none` for requests between turns).
    Turn,
}

/// Which records a query covers; every filter that is `None` matches all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageQuery {
    /// One user's.
    pub user_id: Option<String>,
    /// One session's.
    pub session_id: Option<SessionId>,
    /// Made at or after this.
    pub from: Option<DateTime<Utc>>,
    /// Made before this.
    pub to: Option<DateTime<Utc>>,
}

/// Sums over a set of records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Model requests.
    pub requests: u64,
    /// Their tokens.
    pub usage: TurnUsage,
    /// Their cost.
    pub cost_nanos: Nanos,
}

impl UsageTotals {
    /// Adds one record.
    pub fn add(&mut self, record: &UsageRecord) {
        self.requests += 1;
        self.usage.add(&record.usage);
        self.cost_nanos = self.cost_nanos.saturating_add(record.cost_nanos);
    }
}

/// The UTC day and month a moment counts in, as the totals name them (`2026-12-01`, `2026-12`).
pub fn periods_of(at: DateTime<Utc>) -> (String, String) {
    let day: NaiveDate = at.date_naive();
    (
        day.format("%Y-%m-%d").to_string(),
        format!("{:04}-{:02}", day.year(), day.month()),
    )
}

/// Where usage records, totals and budget overrides live.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Stores `records` and adds each to its user's day and month, its session's and its turn's
    /// totals, in one transaction: all of them or none.
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError>;
    /// What `user_id` has spent on the UTC day and month of `at`, `session` in all, and `turn`.
    async fn spending(
        &self,
        user_id: &str,
        session: SessionId,
        turn: Option<TurnId>,
        at: DateTime<Utc>,
    ) -> Result<Spending, StoreError>;
    /// The totals of the records `query` covers, and, with `group_by`, per group (ordered by
    /// group key).
    async fn usage_totals(
        &self,
        query: &UsageQuery,
        group_by: Option<UsageGroup>,
    ) -> Result<(UsageTotals, Vec<(String, UsageTotals)>), StoreError>;
    /// The records `query` covers, newest first, at most `limit`.
    async fn usage_records(&self, query: &UsageQuery, limit: u32) -> Result<Vec<UsageRecord>, StoreError>;
    /// `user_id`'s budget override, if an admin set one.
    async fn budget_override(&self, user_id: &str) -> Result<Option<BudgetOverride>, StoreError>;
    /// Sets (replaces) `user_id`'s budget override.
    async fn set_budget_override(&self, user_id: &str, budget: &BudgetOverride) -> Result<(), StoreError>;
    /// Removes `user_id`'s budget override; answers whether there was one.
    async fn delete_budget_override(&self, user_id: &str) -> Result<bool, StoreError>;
}

/// The key of a group for `record` (the SQL backends compute the same in SQL).
pub(super) fn group_key(record: &UsageRecord, group: UsageGroup) -> String {
    match group {
        UsageGroup::Day => periods_of(record.at).0,
        UsageGroup::Model => record.model.clone().unwrap_or_else(|| UNKNOWN_MODEL.to_string()),
        UsageGroup::Session => record.session_id.to_string(),
        UsageGroup::Turn => record
            .turn_id
            .map_or_else(|| NO_TURN.to_string(), |t| t.to_string()),
    }
}

/// A count as an SQL backend stores it (never negative: the tables check it).
pub(super) fn sql_count(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("usage {what} {value}")))
}

/// Token counts from their four SQL columns.
pub(super) fn sql_tokens(
    input: i64,
    output: i64,
    cache_read: i64,
    cache_write: i64,
) -> Result<TurnUsage, StoreError> {
    Ok(TurnUsage {
        input_tokens: sql_count(input, "input tokens")?,
        output_tokens: sql_count(output, "output tokens")?,
        cache_read_input_tokens: sql_count(cache_read, "cache read tokens")?,
        cache_creation_input_tokens: sql_count(cache_write, "cache write tokens")?,
    })
}

/// Sums as an SQL backend gives them back (every one 0 over no rows), with their group's key.
#[derive(sqlx::FromRow)]
pub(super) struct TotalsRow {
    group_key: Option<String>,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
    cost_nanos: i64,
}

impl TotalsRow {
    /// The group's key (empty for the totals of all) and its sums.
    pub(super) fn into_totals(self) -> Result<(String, UsageTotals), StoreError> {
        Ok((
            self.group_key.unwrap_or_default(),
            UsageTotals {
                requests: sql_count(self.requests, "requests")?,
                usage: sql_tokens(
                    self.input_tokens,
                    self.output_tokens,
                    self.cache_read_tokens,
                    self.cache_write_tokens,
                )?,
                cost_nanos: sql_count(self.cost_nanos, "cost")?,
            },
        ))
    }
}

/// `Spending` from the `(scope, cost_nanos, tokens)` rows of `usage_totals` an SQL backend read.
pub(super) fn sql_spending(rows: Vec<(String, i64, i64)>) -> Result<Spending, StoreError> {
    let mut spending = Spending::default();
    for (scope, cost, tokens) in rows {
        let spent = Spent {
            cost_nanos: sql_count(cost, "cost")?,
            tokens: sql_count(tokens, "tokens")?,
        };
        match scope.as_str() {
            "user_day" => spending.user_day = spent,
            "user_month" => spending.user_month = spent,
            "session" => spending.session = spent,
            "turn" => spending.turn = spent,
            other => return Err(StoreError::Corrupt(format!("usage total of scope {other:?}"))),
        }
    }
    Ok(spending)
}

/// The group of records that named no model.
pub const UNKNOWN_MODEL: &str = "unknown";
/// The group of records made between turns.
pub const NO_TURN: &str = "none";
