//! What was spent: `GET /api/v1/sessions/{id}/usage`, `GET /api/v1/usage` (a user's own, an
//! admin's anyone's), and users' budgets: `GET`/`PUT`/`DELETE /api/v1/admin/users/{user_id}/budget`
//! (admins only). Every figure comes from the model relay's records: tokens as the model reported
//! them, costs from the service's price table.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::require_admin;
use super::error::{ApiError, ErrorBody};
use super::sessions::SessionIdPath;
use crate::domain::{BudgetLimits, BudgetOverride, Caller, nanos_to_usd};
use crate::sessions::{BudgetView, Spent, UsageGroup, UsageRequest, UsageTotals};

/// Sums over model requests.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Model requests.
    pub requests: u64,
    /// Input tokens (not counting cache reads and writes).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// All of the above tokens.
    pub total_tokens: u64,
    /// Their cost in USD, from the service's price table.
    pub cost_usd: f64,
}

impl From<&UsageTotals> for Totals {
    fn from(totals: &UsageTotals) -> Self {
        Totals {
            requests: totals.requests,
            input_tokens: totals.usage.input_tokens,
            output_tokens: totals.usage.output_tokens,
            cache_read_input_tokens: totals.usage.cache_read_input_tokens,
            cache_creation_input_tokens: totals.usage.cache_creation_input_tokens,
            total_tokens: totals.usage.total(),
            cost_usd: nanos_to_usd(totals.cost_nanos),
        }
    }
}

/// One group of a breakdown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Group {
    /// The group: a UTC day (`2026-12-01`), a model (`unknown` where none was named), a session
    /// id, or a turn id (`none` for requests between turns).
    pub key: String,
    /// Its sums.
    #[serde(flatten)]
    pub totals: Totals,
}

fn groups(groups: &[(String, UsageTotals)]) -> Vec<Group> {
    groups
        .iter()
        .map(|(key, totals)| Group {
            key: key.clone(),
            totals: totals.into(),
        })
        .collect()
}

/// A session's usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionUsageResponse {
    /// The session.
    pub session_id: String,
    /// Its user.
    pub user_id: String,
    /// Every model request of the session (kept after the session is deleted).
    pub totals: Totals,
    /// By model.
    pub by_model: Vec<Group>,
    /// By turn.
    pub by_turn: Vec<Group>,
}

/// A session's model usage: tokens and cost, in all, by model and by turn.
#[utoipa::path(get, path = "/api/v1/sessions/{session_id}/usage", tag = "usage",
    params(("session_id" = String, Path, description = "The session's id")),
    responses((status = 200, body = SessionUsageResponse), (status = 404, body = ErrorBody)))]
pub async fn session_usage(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
) -> Result<Json<SessionUsageResponse>, ApiError> {
    let usage = state.sessions.session_usage(&caller, id).await?;
    Ok(Json(SessionUsageResponse {
        session_id: usage.session_id.to_string(),
        user_id: usage.user_id,
        totals: (&usage.totals).into(),
        by_model: groups(&usage.by_model),
        by_turn: groups(&usage.by_turn),
    }))
}

/// `GET /api/v1/usage` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Whose usage: a user's credential sees only its own (the default); an admin names anyone,
    /// or leaves it out for every user's.
    pub user_id: Option<String>,
    /// From this moment (RFC 3339, inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Until this moment (RFC 3339, exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Break the totals down by `day` (UTC), `model`, `session` or `turn`.
    pub group_by: Option<UsageGroup>,
}

/// A usage report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageResponse {
    /// Whose (`null`: every user's).
    pub user_id: Option<String>,
    /// The period's start, as asked.
    pub from: Option<DateTime<Utc>>,
    /// The period's end, as asked.
    pub to: Option<DateTime<Utc>>,
    /// The breakdown asked for.
    pub group_by: Option<UsageGroup>,
    /// The totals.
    pub totals: Totals,
    /// The groups, ordered by key (empty without `group_by`).
    pub groups: Vec<Group>,
}

/// Model usage over a period: a user's own, or (admins) anyone's or everyone's, optionally broken
/// down by day, model, session or turn.
#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(UsageParams),
    responses((status = 200, body = UsageResponse), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    let Query(params) = query?;
    let report = state
        .sessions
        .usage_report(
            &caller,
            UsageRequest {
                user_id: params.user_id,
                from: params.from,
                to: params.to,
                group_by: params.group_by,
            },
        )
        .await?;
    Ok(Json(UsageResponse {
        user_id: report.user_id,
        from: params.from,
        to: params.to,
        group_by: params.group_by,
        totals: (&report.totals).into(),
        groups: groups(&report.groups),
    }))
}

/// Spending in one period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SpentBody {
    /// USD.
    pub cost_usd: f64,
    /// Tokens (input, output, cache reads and writes).
    pub tokens: u64,
}

impl From<Spent> for SpentBody {
    fn from(spent: Spent) -> Self {
        SpentBody {
            cost_usd: nanos_to_usd(spent.cost_nanos),
            tokens: spent.tokens,
        }
    }
}

/// A user's budgets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetResponse {
    /// The user.
    pub user_id: String,
    /// The override an admin set (`null`: none; the service's defaults apply).
    #[serde(rename = "override")]
    pub own: Option<BudgetOverride>,
    /// The limits in effect for the user (`null`: no limit).
    pub effective: BudgetLimits,
    /// What the user spent today (UTC).
    pub spent_today: SpentBody,
    /// What the user spent this month (UTC).
    pub spent_this_month: SpentBody,
}

impl From<BudgetView> for BudgetResponse {
    fn from(view: BudgetView) -> Self {
        BudgetResponse {
            user_id: view.user_id,
            own: view.own,
            effective: view.effective,
            spent_today: view.spending.user_day.into(),
            spent_this_month: view.spending.user_month.into(),
        }
    }
}

/// A user's budgets: the override, the limits in effect, and what was spent (admins only).
#[utoipa::path(get, path = "/api/v1/admin/users/{user_id}/budget", tag = "admin",
    params(("user_id" = String, Path, description = "The user")),
    responses((status = 200, body = BudgetResponse), (status = 403, body = ErrorBody)))]
pub async fn get_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Json<BudgetResponse>, ApiError> {
    require_admin(&caller)?;
    Ok(Json(state.sessions.budget(&caller, &user_id).await?.into()))
}

/// Sets a user's budget override (admins only), replacing any earlier one: a key left out keeps
/// the service's default, `null` lifts that limit, a number sets it. It holds from the user's next
/// model request on, on every instance; a turn refused for its budget can go on with the next
/// message.
#[utoipa::path(put, path = "/api/v1/admin/users/{user_id}/budget", tag = "admin",
    params(("user_id" = String, Path, description = "The user")), request_body = BudgetOverride,
    responses((status = 200, body = BudgetResponse), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    body: Result<Json<BudgetOverride>, JsonRejection>,
) -> Result<Json<BudgetResponse>, ApiError> {
    require_admin(&caller)?;
    let Json(budget) = body?;
    Ok(Json(
        state.sessions.set_budget(&caller, &user_id, budget).await?.into(),
    ))
}

/// Removes a user's budget override (admins only): the service's defaults apply again.
#[utoipa::path(delete, path = "/api/v1/admin/users/{user_id}/budget", tag = "admin",
    params(("user_id" = String, Path, description = "The user")),
    responses((status = 200, body = BudgetResponse), (status = 403, body = ErrorBody)))]
pub async fn delete_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Json<BudgetResponse>, ApiError> {
    require_admin(&caller)?;
    Ok(Json(
        state.sessions.delete_budget(&caller, &user_id).await?.into(),
    ))
}
