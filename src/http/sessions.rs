//! `/api/v1/sessions`: create, list, read, resume and delete sessions.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::domain::{Caller, SessionId, SessionRecord};
use crate::sessions::NewSession;

/// `POST /api/v1/sessions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateSessionRequest {
    /// 1 to 64 characters of `[A-Za-z0-9_-]`. A user credential may leave it out (it is then the
    /// credential's user) or must name its own user; an admin (or an open service) must give it.
    pub user_id: Option<String>,
    /// A relative folder inside the user's directory; omitted means the user's root.
    pub subdir: Option<String>,
    /// Your own data, returned as given.
    #[schema(value_type = Object)]
    pub metadata: Option<Map<String, Value>>,
}

/// A session as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionResponse {
    /// The session's id (a UUID).
    pub session_id: String,
    /// Whose session it is.
    pub user_id: String,
    /// The subdirectory, if any.
    pub subdir: Option<String>,
    /// The agent's working directory.
    pub cwd: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used.
    pub last_active_at: DateTime<Utc>,
    /// Turns completed.
    pub message_count: u64,
    /// Always `active` for a session that exists (the seed's field).
    pub status: &'static str,
    /// Your own data, as given.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

impl From<SessionRecord> for SessionResponse {
    fn from(record: SessionRecord) -> Self {
        SessionResponse {
            session_id: record.session_id.to_string(),
            user_id: record.user_id,
            subdir: record.subdir,
            cwd: record.cwd.to_string_lossy().into_owned(),
            created_at: record.created_at,
            last_active_at: record.last_active_at,
            message_count: record.message_count,
            status: "active",
            metadata: record.metadata,
        }
    }
}

/// `GET /api/v1/sessions` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Whose sessions to list; without it, every session's.
    pub user_id: Option<String>,
}

/// Parses a session id (from a path or a body); anything that is not a UUID is simply not a
/// session: 404 `session_not_found`.
pub fn parse_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(text).ok_or_else(|| ApiError::session_not_found(text))
}

/// The `{session_id}` path parameter, parsed by [`parse_id`].
#[derive(Debug, Clone, Copy)]
pub struct SessionIdPath(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await?;
        parse_id(&text).map(SessionIdPath)
    }
}

/// Documents the parameter as the handlers' `params(SessionIdPath)`.
impl utoipa::IntoParams for SessionIdPath {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{KnownFormat, ObjectBuilder, Required, SchemaFormat, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)));
        vec![
            ParameterBuilder::new()
                .name("session_id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(
                    "The session's id; anything that is not one is 404 session_not_found",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// Create a session (starts no process and calls no model).
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions",
    request_body = CreateSessionRequest,
    responses(
        (status = 201, body = SessionResponse),
        (status = 400, description = "a path component is a symlink or not a directory", body = ErrorBody),
        (status = 422, description = "invalid user_id, subdir or body", body = ErrorBody),
        (status = 429, description = "session_limit_reached", body = ErrorBody)))]
pub async fn create_session(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateSessionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SessionResponse>), ApiError> {
    let Json(body) = body?;
    let record = state
        .sessions
        .create(
            &caller,
            NewSession {
                user_id: body.user_id,
                subdir: body.subdir,
                metadata: body.metadata.unwrap_or_default(),
            },
        )
        .await?;
    tracing::info!(session.id = %record.session_id, user.id = %record.user_id, "session created");
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// List session ids, of one user or of all (the seed's shape: a JSON array of strings).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, body = Vec<String>), (status = 422, body = ErrorBody)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<String>>, ApiError> {
    let Query(query) = query?;
    let records = state.sessions.list(&caller, query.user_id.as_deref()).await?;
    Ok(Json(
        records.into_iter().map(|r| r.session_id.to_string()).collect(),
    ))
}

/// Get a session.
#[utoipa::path(get, path = "/api/v1/sessions/{session_id}", tag = "sessions", params(SessionIdPath),
    responses((status = 200, body = SessionResponse), (status = 404, body = ErrorBody)))]
pub async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
) -> Result<Json<SessionResponse>, ApiError> {
    Ok(Json(state.sessions.get(&caller, id).await?.into()))
}

/// Resume a session: marks it active again.
#[utoipa::path(post, path = "/api/v1/sessions/{session_id}/resume", tag = "sessions", params(SessionIdPath),
    responses((status = 200, body = SessionResponse), (status = 404, body = ErrorBody)))]
pub async fn resume_session(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
) -> Result<Json<SessionResponse>, ApiError> {
    Ok(Json(state.sessions.resume(&caller, id).await?.into()))
}

/// Delete a session for good (it can never be resumed).
#[utoipa::path(delete, path = "/api/v1/sessions/{session_id}", tag = "sessions", params(SessionIdPath),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_session(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
) -> Result<StatusCode, ApiError> {
    state.sessions.delete(&caller, id).await?;
    tracing::info!(session.id = %id, "session deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The answer to an interrupt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InterruptResponse {
    /// The session.
    pub session_id: String,
    /// Whether a running turn was told to stop (it then ends with `error` code `interrupted`).
    pub interrupted: bool,
}

/// Stop the session's running turn, including a running tool; the session stays usable.
#[utoipa::path(post, path = "/api/v1/sessions/{session_id}/interrupt", tag = "sessions", params(SessionIdPath),
    responses((status = 200, body = InterruptResponse), (status = 404, body = ErrorBody)))]
pub async fn interrupt_session(
    State(state): State<AppState>,
    caller: Caller,
    SessionIdPath(id): SessionIdPath,
) -> Result<Json<InterruptResponse>, ApiError> {
    let interrupted = state.sessions.interrupt(&caller, id).await?;
    Ok(Json(InterruptResponse {
        session_id: id.to_string(),
        interrupted,
    }))
}
