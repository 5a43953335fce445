//! The one place where errors become HTTP: a status, a stable machine `code`, and one JSON body
//! `{"detail": "...", "code": "..."}` (`detail` as the seed's FastAPI sent it).
//!
//! A 4xx detail says what was wrong with the input. A 5xx detail says what failed in the user's
//! terms and carries the request id; its internal cause (store text, host paths, CLI output) is
//! logged here, once, inside the request's span, and never sent.
//!
//! Bodies are written by one middleware, [`error_bodies`], which the router installs around every
//! route and fallback: it renders each [`ApiError`] (it alone knows the request id) and gives the
//! same body to bare error responses from axum or the layers (a 413 from the body limit, ...).

use axum::body::Body;
use axum::extract::Request;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::REQUEST_ID;
use crate::domain::TurnErrorCode;
use crate::sessions::SessionError;
use crate::store::StoreError;
use crate::webhooks::WebhookError;
use crate::workspace::WorkspaceError;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people. For a 5xx: what failed, and the request id to quote.
    pub detail: String,
    /// What went wrong, for programs (stable).
    pub code: &'static str,
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    /// 4xx: what was wrong with the input. 5xx: what failed, in the user's terms.
    detail: String,
    /// 5xx only: the internal cause, for the log.
    cause: Option<String>,
    /// Headers the error's status needs (`WWW-Authenticate` on a 401, `Retry-After` on a 429).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with an explicit status and code. For a 5xx, `detail` is taken as the internal
    /// cause: it is logged, and the client gets the code's generic detail instead.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        if status.is_server_error() {
            return Self::server(status, code, what_failed(code), detail.into());
        }
        ApiError {
            status,
            code,
            detail: detail.into(),
            cause: None,
            headers: Vec::new(),
        }
    }

    /// A 5xx: `what` is shown (with the request id), `cause` is only logged.
    fn server(status: StatusCode, code: &'static str, what: &str, cause: String) -> Self {
        ApiError {
            status,
            code,
            detail: what.to_string(),
            cause: Some(cause),
            headers: Vec::new(),
        }
    }

    /// 401 `unauthorized`: the same answer whatever was wrong with the credential (missing,
    /// malformed, unknown, revoked, expired), with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid credential is required: Authorization: Bearer <API key or JWT> (or X-API-Key)",
        );
        error
            .headers
            .push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        error
    }

    /// 403 `forbidden`: the credential is valid but may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 429 `rate_limited`, with `Retry-After` in whole seconds (at least 1).
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "Too many requests from this credential; retry in {} s",
                seconds.max(1)
            ),
        );
        error
            .headers
            .push((header::RETRY_AFTER, HeaderValue::from(seconds.max(1))));
        error
    }

    /// 429 `too_many_turns`: the user runs as many turns at once as allowed.
    pub fn too_many_turns(detail: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_turns", detail);
        error
            .headers
            .push((header::RETRY_AFTER, HeaderValue::from_static("1")));
        error
    }

    /// 500 for a failure of our own making; `cause` is logged.
    pub fn internal(cause: impl Into<String>) -> Self {
        Self::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            what_failed("internal_error"),
            cause.into(),
        )
    }

    /// 422 `invalid_request`: what is wrong with the input.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
    }

    /// 404 for a session id that is unknown (or not even a UUID).
    pub fn session_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("Session {id} not found"),
        )
    }

    /// 404 for a path no route serves.
    pub fn route_not_found(method: &Method, uri: &Uri) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No route for {method} {}", uri.path()),
        )
    }

    /// 405 for a known path asked with a method it does not serve (the `Allow` header lists those
    /// it does).
    pub fn method_not_allowed(method: &Method, uri: &Uri) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} does not accept {method}; the Allow header lists what it accepts",
                uri.path()
            ),
        )
    }

    /// 413: the body is over `api.max_body_bytes`, whether its length was declared or not.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The request body is larger than this service accepts (api.max_body_bytes)",
        )
    }

    /// 414: the request target is over `limit` bytes.
    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("The request URI is longer than {limit} bytes"),
        )
    }

    /// 431: the request headers are over `limit` bytes in all.
    pub fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("The request headers are larger than {limit} bytes in all"),
        )
    }

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
            | TurnErrorCode::ServiceShutdown
            | TurnErrorCode::StoreUnavailable => S::SERVICE_UNAVAILABLE,
            TurnErrorCode::AgentUnresponsive => S::GATEWAY_TIMEOUT,
            TurnErrorCode::SessionDeleted => S::NOT_FOUND,
            TurnErrorCode::StreamLagged | TurnErrorCode::ServiceRestarted => S::INTERNAL_SERVER_ERROR,
        };
        // A turn's message is written for its client (our words, or the model API's error), never
        // a store or host detail, so it stays visible on a 5xx too.
        ApiError {
            status,
            code: code.as_str(),
            detail: message.clone(),
            cause: status.is_server_error().then_some(message),
            headers: Vec::new(),
        }
    }

    /// The error a bare response of this status stands for (one an extractor, a layer or axum
    /// made without our body).
    fn from_status(status: StatusCode) -> Self {
        use StatusCode as S;
        match status {
            S::NOT_FOUND => Self::new(status, "not_found", "Not found"),
            S::METHOD_NOT_ALLOWED => Self::new(
                status,
                "method_not_allowed",
                "Method not allowed; the Allow header lists what this path accepts",
            ),
            S::PAYLOAD_TOO_LARGE => Self::payload_too_large(),
            S::URI_TOO_LONG => Self::new(status, "uri_too_long", "The request URI is too long"),
            S::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                "unsupported_media_type",
                "Unsupported media type; send application/json",
            ),
            S::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                Self::new(status, "headers_too_large", "The request headers are too large")
            }
            _ if status.is_server_error() => Self::server(
                status,
                "internal_error",
                what_failed("internal_error"),
                format!("a layer answered {status} without a body"),
            ),
            _ => Self::new(
                status,
                "bad_request",
                status.canonical_reason().unwrap_or("Bad request"),
            ),
        }
    }

    /// Logs a 5xx's internal cause (inside the request span, which carries `request.id`).
    fn log(&self) {
        if let Some(cause) = &self.cause {
            tracing::error!(
                http.status = self.status.as_u16(),
                error.code = self.code,
                error.cause = %cause,
                "request failed"
            );
        }
    }

    /// Writes the JSON body into `response` (keeping its other headers, such as `Allow`).
    fn render(self, response: Response, request_id: Option<&str>) -> Response {
        let detail = match request_id {
            Some(id) if self.status.is_server_error() => format!("{} (request id {id})", self.detail),
            _ => self.detail,
        };
        let body = ErrorBody {
            detail,
            code: self.code,
        };
        let (mut parts, _) = response.into_parts();
        parts.status = self.status;
        for (name, value) in self.headers {
            parts.headers.insert(name, value);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read, so this connection cannot carry another request:
            // say so, or a client reuses it and its next request fails.
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let json = serde_json::to_vec(&body).expect("an error body serializes");
        Response::from_parts(parts, Body::from(json))
    }
}

/// What failed, in the user's terms, for a 5xx of this code.
fn what_failed(code: &str) -> &'static str {
    match code {
        "store_unavailable" => "The session store is unavailable; try again later",
        "workspace_error" => "The session's working directory could not be prepared",
        "agent_capacity_reached" => "No capacity for another agent right now; try again later",
        "agent_unavailable" => "The agent cannot be started right now; GET /health shows why",
        "service_shutting_down" | "service_shutdown" => "The service is shutting down",
        "turn_timeout" => "The turn exceeded its timeout and was interrupted",
        "agent_crashed" => "The agent stopped unexpectedly during the turn",
        "model_error" => "The model API failed to answer",
        _ => "The service failed to answer this request",
    }
}

/// A store failure: a reached limit (429), or the store unreachable (503, try again) or broken
/// (500). `error` is the whole failure, for the detail or the log.
fn store_error(store: &StoreError, error: &SessionError) -> ApiError {
    use StatusCode as S;
    let unavailable = (S::SERVICE_UNAVAILABLE, "store_unavailable");
    let broken = (S::INTERNAL_SERVER_ERROR, "internal_error");
    let (status, code) = match store {
        // The database refused or could not be reached: busy, locked, read-only, full, gone.
        StoreError::Database(_) if store.is_outage() => unavailable,
        // A violated constraint, a bad statement or an undecodable column: our bug or a broken row.
        StoreError::Database(_) => broken,
        StoreError::Corrupt(_)
        | StoreError::Duplicate(_)
        | StoreError::Conflict(_)
        | StoreError::InvalidArgument(_)
        | StoreError::Migrate(_) => broken,
        StoreError::LimitReached(_) => {
            return ApiError::new(S::TOO_MANY_REQUESTS, "session_limit_reached", error.to_string());
        }
    };
    let what = match store {
        StoreError::Corrupt(_) => "A stored session could not be read",
        _ if status == S::SERVICE_UNAVAILABLE => what_failed(code),
        _ => "The session store failed unexpectedly",
    };
    ApiError::server(status, code, what, error.to_string())
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        use StatusCode as S;
        let (status, code) = match &error {
            SessionError::NotFound(_) => (S::NOT_FOUND, "session_not_found"),
            SessionError::TurnNotFound(_) => (S::NOT_FOUND, "turn_not_found"),
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
            SessionError::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
            SessionError::TooManyTurns(detail) => return ApiError::too_many_turns(detail.clone()),
            SessionError::Invalid(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            SessionError::Store(store) => return store_error(store, &error),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            // The same store, failing the same ways.
            WebhookError::Store(store) => SessionError::Store(store).into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => return ApiError::payload_too_large(),
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

/// The response is only the status and the error itself; [`error_bodies`] writes the body.
impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        self.log();
        self.cause = None;
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Middleware: every error response leaves with the one JSON body. An [`ApiError`] is rendered
/// with the request id (set by the outer request-id layer); a bare error response (no body, or
/// not JSON: axum's own 404/405, tower-http's 413, ...) becomes the error its status stands for,
/// keeping its headers. JSON responses (a handler's own, such as `/health`'s 503) pass as they are.
pub async fn error_bodies(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let error = match response.extensions_mut().remove::<ApiError>() {
        Some(error) => error,
        None if is_bare_error(&response) => {
            let error = ApiError::from_status(response.status());
            error.log();
            error
        }
        None => return response,
    };
    error.render(response, request_id.as_deref())
}

/// An error status without a JSON body.
fn is_bare_error(response: &Response) -> bool {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
        });
    (status.is_client_error() || status.is_server_error()) && !json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionId;

    async fn body_of(error: ApiError, request_id: Option<&str>) -> (StatusCode, serde_json::Value) {
        let response = error.render(Response::new(Body::empty()), request_id);
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn a_corrupt_record_is_a_500_that_shows_no_internals_but_the_request_id() {
        let error = ApiError::from(SessionError::Store(StoreError::Corrupt(
            "metadata: expected value at line 1 column 1 in /srv/data/sessions.db".into(),
        )));
        let (status, body) = body_of(error, Some("req-42")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "internal_error");
        let detail = body["detail"].as_str().unwrap();
        assert_eq!(detail, "A stored session could not be read (request id req-42)");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_503_and_a_broken_one_a_500() {
        let io = StoreError::Database(sqlx::Error::Io(std::io::Error::other("/var/lib/x: gone")));
        let (status, body) = body_of(SessionError::Store(io).into(), Some("r1")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "store_unavailable");
        assert!(!body["detail"].as_str().unwrap().contains("/var/lib"), "{body}");
        for error in [
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Duplicate(SessionId::new()),
        ] {
            let (status, body) = body_of(SessionError::Store(error).into(), Some("r2")).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(body["code"], "internal_error");
        }
        let limit = StoreError::LimitReached(crate::store::LimitScope::Total(3));
        let (status, body) = body_of(SessionError::Store(limit).into(), Some("r3")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            !body["detail"].as_str().unwrap().contains("r3"),
            "4xx carry no request id"
        );
    }

    #[tokio::test]
    async fn every_5xx_but_a_turns_own_message_hides_its_cause_and_every_4xx_keeps_its_detail() {
        let agent = SessionError::AgentUnavailable("cannot create /root/.claude-agents/alice: EACCES".into());
        let (status, body) = body_of(agent.into(), Some("r")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body["detail"].as_str().unwrap().contains("/root"), "{body}");
        let (status, body) = body_of(
            ApiError::turn_failed(TurnErrorCode::ModelError, "API Error: 401 bad key".into()),
            Some("r"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        // A turn's own message is written for its client: it stays, with the request id.
        assert_eq!(body["detail"], "API Error: 401 bad key (request id r)");
        let id = SessionId::new().to_string();
        let (status, body) = body_of(SessionError::Busy(id.clone()).into(), Some("r")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body["detail"],
            format!("Session {id} is busy with another message")
        );
    }

    #[test]
    fn bare_error_responses_are_recognized_but_json_ones_are_left_alone() {
        let bare = StatusCode::NOT_FOUND.into_response();
        assert!(is_bare_error(&bare));
        let text = (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
        assert!(is_bare_error(&text));
        let json = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({}))).into_response();
        assert!(!is_bare_error(&json));
        assert!(!is_bare_error(&StatusCode::OK.into_response()));
        assert_eq!(
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE).code,
            "payload_too_large"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::BAD_GATEWAY).code,
            "internal_error"
        );
    }
}
