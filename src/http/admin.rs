//! `/api/v1/admin/...`: API keys, the audit log and webhook deliveries, for admin credentials only.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::require_admin;
use super::error::{ApiError, ErrorBody};
use crate::audit::{AuditQuery, AuditRecord};
use crate::auth::{ApiKeyRecord, KeyError};
use crate::domain::{Caller, Role, WebhookEvent};
use crate::webhooks::{DeliveryQuery, DeliveryStatus, WebhookDelivery};

/// `POST /api/v1/admin/keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// `user` (acts as `user_id` only) or `admin` (acts for every user).
    pub role: Role,
    /// The user a `user` key acts as; none for an admin key.
    pub user_id: Option<String>,
    /// A name for people.
    pub name: Option<String>,
}

/// An API key as listed: never the key itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyResponse {
    /// The key's id (name it to revoke the key).
    pub id: String,
    /// The name given at creation.
    pub name: Option<String>,
    /// `user` or `admin`.
    pub role: Role,
    /// The user a `user` key acts as.
    pub user_id: Option<String>,
    /// The key's first characters, to recognise it by.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (to within a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for KeyResponse {
    fn from(key: ApiKeyRecord) -> Self {
        KeyResponse {
            id: key.id,
            name: key.name,
            role: key.role,
            user_id: key.user_id,
            prefix: key.prefix,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
            last_used_at: key.last_used_at,
        }
    }
}

/// A created key: the only time the key itself is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key: give it to its holder now; it cannot be shown again.
    pub key: String,
    /// What is kept about it.
    #[serde(flatten)]
    pub record: KeyResponse,
}

/// Every key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeysResponse {
    /// Oldest first, revoked ones included.
    pub keys: Vec<KeyResponse>,
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::BadRequest(detail) => ApiError::invalid(detail),
            KeyError::NotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "key_not_found", format!("No API key {id}"))
            }
            KeyError::Store(e) => crate::sessions::SessionError::Store(e).into(),
        }
    }
}

/// Create an API key (admin only). The response holds the key; it is never shown again.
#[utoipa::path(post, path = "/api/v1/admin/keys", tag = "admin", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateKeyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    require_admin(&caller)?;
    let Json(body) = body?;
    let (record, key) = state
        .auth
        .create_key(&caller, body.role, body.user_id.as_deref(), body.name)
        .await?;
    tracing::info!(key.id = %record.id, key.role = record.role.as_str(), user.id = record.user_id.as_deref().unwrap_or_default(), by = %caller.principal.label(), "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            record: record.into(),
        }),
    ))
}

/// List API keys (admin only).
#[utoipa::path(get, path = "/api/v1/admin/keys", tag = "admin",
    responses((status = 200, body = KeysResponse), (status = 403, body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<KeysResponse>, ApiError> {
    require_admin(&caller)?;
    let keys = state.auth.list_keys().await?;
    Ok(Json(KeysResponse {
        keys: keys.into_iter().map(KeyResponse::from).collect(),
    }))
}

/// Revoke an API key (admin only): from now on it authenticates nothing, on every instance.
#[utoipa::path(delete, path = "/api/v1/admin/keys/{key_id}", tag = "admin",
    params(("key_id" = String, Path, description = "The key's id")),
    responses((status = 200, body = KeyResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyResponse>, ApiError> {
    require_admin(&caller)?;
    let record = state.auth.revoke_key(&caller, &id).await?;
    tracing::info!(key.id = %record.id, by = %caller.principal.label(), "API key revoked");
    Ok(Json(record.into()))
}

/// `GET /api/v1/admin/audit` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only records about this user.
    pub user_id: Option<String>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only records after this id (the previous page's `next_after_id`).
    pub after_id: Option<i64>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<u32>,
}

/// One audit record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Increasing in the order records were written.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What: `key.created`, `key.revoked`, `auth.failed`, `session.created`, `session.deleted`,
    /// `turn.started`, `tool.used`, `turn.interrupted`.
    pub action: String,
    /// Who (`user:<id>`, `admin:<key id>`, `admin:env`, `admin:jwt:<sub>`, `admin:cli`, `anonymous`).
    pub principal: Option<String>,
    /// The API key that authenticated it.
    pub key_id: Option<String>,
    /// Whose object it touched.
    pub user_id: Option<String>,
    /// Which session.
    pub session_id: Option<String>,
    /// From which address.
    pub remote_addr: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// The rest (a tool's name and input digest, a key's id and role, ...).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditRecord> for AuditEntry {
    fn from(record: AuditRecord) -> Self {
        AuditEntry {
            id: record.id,
            at: record.at,
            action: record.action,
            principal: record.principal,
            key_id: record.key_id,
            user_id: record.user_id,
            session_id: record.session_id.map(|id| id.to_string()),
            remote_addr: record.remote_addr,
            request_id: record.request_id,
            detail: record.detail,
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Oldest first.
    pub records: Vec<AuditEntry>,
    /// Pass as `after_id` for the next page (the last record's id, or the `after_id` given).
    pub next_after_id: Option<i64>,
}

/// Read the audit log (admin only), oldest first.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    require_admin(&caller)?;
    let Query(params) = query?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let records = state
        .auth
        .audit()
        .query(&AuditQuery {
            user_id: params.user_id,
            since: params.since,
            after_id: params.after_id,
            limit,
        })
        .await
        .map_err(|e| ApiError::from(crate::sessions::SessionError::Store(e)))?;
    let next_after_id = records.last().map(|r| r.id).or(params.after_id);
    Ok(Json(AuditPage {
        records: records.into_iter().map(AuditEntry::from).collect(),
        next_after_id,
    }))
}

/// `GET /api/v1/admin/webhooks/deliveries` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesParams {
    /// Only deliveries in this state: `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// Only deliveries of this event (`turn.completed`, `turn.failed`, `budget.exceeded`,
    /// `session.deleted`).
    pub event: Option<String>,
    /// Only deliveries created before this time (RFC 3339; the previous page's `next_before`).
    pub before: Option<DateTime<Utc>>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<u32>,
}

/// One webhook delivery: an event for one endpoint, and how its delivery went. Never a secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryEntry {
    /// The delivery's id (`X-Webhook-Delivery`).
    pub id: String,
    /// The event's id: the payload's `id` and `X-Webhook-Id`, the same on every attempt.
    pub event_id: String,
    /// The event (`turn.completed`, ...).
    pub event: String,
    /// The endpoint (a password in it is shown as `***`).
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The endpoint's HTTP status at the last attempt, if it answered.
    pub last_http_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body sent: `{id, type, created_at, data}`.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<WebhookDelivery> for DeliveryEntry {
    fn from(delivery: WebhookDelivery) -> Self {
        let pending = delivery.status == DeliveryStatus::Pending;
        DeliveryEntry {
            id: delivery.id.to_string(),
            event_id: delivery.event_id.to_string(),
            url: without_password(&delivery.url),
            status: delivery.status.as_str().to_string(),
            attempts: delivery.attempts,
            created_at: delivery.created_at,
            next_attempt_at: pending.then_some(delivery.next_attempt_at),
            last_attempt_at: delivery.last_attempt_at,
            last_http_status: delivery.last_http_status,
            last_error: delivery.last_error,
            delivered_at: delivery.delivered_at,
            payload: serde_json::from_str(&delivery.payload).unwrap_or(serde_json::Value::Null),
            event: delivery.event,
        }
    }
}

/// `url` with the password of its user part, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// A page of webhook deliveries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveriesPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryEntry>,
    /// Pass as `before` for the next (older) page: the last delivery's `created_at`.
    pub next_before: Option<DateTime<Utc>>,
}

/// Read the webhook deliveries (admin only), newest first.
#[utoipa::path(get, path = "/api/v1/admin/webhooks/deliveries", tag = "admin", params(DeliveriesParams),
    responses((status = 200, body = DeliveriesPage), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DeliveriesParams>, QueryRejection>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    require_admin(&caller)?;
    let Query(params) = query?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let status = match params.status.as_deref() {
        None => None,
        Some(name) => Some(DeliveryStatus::parse(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "status {name:?} is not one of pending, delivered, failed"
            ))
        })?),
    };
    if let Some(name) = params.event.as_deref()
        && WebhookEvent::parse(name).is_none()
    {
        let known: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
        return Err(ApiError::invalid(format!(
            "event {name:?} is not one of {}",
            known.join(", ")
        )));
    }
    let deliveries = state
        .sessions
        .webhooks()
        .deliveries(&DeliveryQuery {
            status,
            event: params.event,
            before: params.before,
            limit,
        })
        .await?;
    let next_before = deliveries.last().map(|d| d.created_at);
    Ok(Json(DeliveriesPage {
        deliveries: deliveries.into_iter().map(DeliveryEntry::from).collect(),
        next_before,
    }))
}
