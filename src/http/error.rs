//! The one place where errors become HTTP: a status, a stable machine `code`, and one JSON body
//! `{"detail": "...", "code": "..."}` (`detail` as the seed's FastAPI sent it). 5xx are logged here.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::TurnErrorCode;
use crate::sessions::SessionError;
use crate::store::StoreError;
use crate::workspace::WorkspaceError;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub detail: String,
    /// What went wrong, for programs (stable).
    pub code: &'static str,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 404 for a session id that is unknown (or not even a UUID).
    pub fn session_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("Session {id} not found"),
        )
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        use StatusCode as S;
        let detail = error.to_string();
        let (status, code) = match &error {
            SessionError::NotFound(_) => (S::NOT_FOUND, "session_not_found"),
            SessionError::LimitReached(_) => (S::TOO_MANY_REQUESTS, "session_limit_reached"),
            SessionError::Workspace(e) => match e {
                WorkspaceError::InvalidUserId(_) => (S::UNPROCESSABLE_ENTITY, "invalid_user_id"),
                WorkspaceError::InvalidSubdir(_) => (S::UNPROCESSABLE_ENTITY, "invalid_subdir"),
                WorkspaceError::Symlink(_) => (S::BAD_REQUEST, "workspace_symlink"),
                WorkspaceError::NotADirectory(_) => (S::BAD_REQUEST, "workspace_not_a_directory"),
                WorkspaceError::Missing(_) => (S::BAD_REQUEST, "workspace_missing"),
                WorkspaceError::Io { .. } => (S::INTERNAL_SERVER_ERROR, "workspace_error"),
            },
            SessionError::Busy(_) => (S::CONFLICT, "session_busy"),
            SessionError::NoCapacity(_) => (S::SERVICE_UNAVAILABLE, "agent_capacity_reached"),
            SessionError::AgentUnavailable(_) => (S::SERVICE_UNAVAILABLE, "agent_unavailable"),
            SessionError::ShuttingDown => (S::SERVICE_UNAVAILABLE, "service_shutting_down"),
            SessionError::Store(StoreError::LimitReached(_)) => {
                (S::TOO_MANY_REQUESTS, "session_limit_reached")
            }
            SessionError::Store(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        ApiError::new(status, code, detail)
    }
}

impl ApiError {
    /// A failed turn, for the synchronous chat endpoint.
    pub fn turn_failed(code: TurnErrorCode, message: String) -> Self {
        use StatusCode as S;
        let status = match code {
            TurnErrorCode::TurnTimeout => S::GATEWAY_TIMEOUT,
            TurnErrorCode::Interrupted => S::CONFLICT,
            TurnErrorCode::MaxTurns | TurnErrorCode::BudgetExceeded => S::UNPROCESSABLE_ENTITY,
            TurnErrorCode::AgentCrashed | TurnErrorCode::ModelError => S::BAD_GATEWAY,
            TurnErrorCode::AgentUnavailable
            | TurnErrorCode::AgentCapacityReached
            | TurnErrorCode::CredentialsMissing
            | TurnErrorCode::ServiceShutdown => S::SERVICE_UNAVAILABLE,
            TurnErrorCode::AgentUnresponsive => S::GATEWAY_TIMEOUT,
            TurnErrorCode::SessionDeleted => S::NOT_FOUND,
            TurnErrorCode::StreamLagged => S::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, code.as_str(), message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
            _ => "invalid_json",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            rejection.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(error.code = self.code, error.detail = %self.detail, "request failed");
        }
        let body = ErrorBody {
            detail: self.detail,
            code: self.code,
        };
        (self.status, Json(body)).into_response()
    }
}
