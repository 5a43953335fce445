//! Where the principal of a request is established: the middleware in front of every API route
//! reads `Authorization: Bearer <credential>` (or `X-API-Key`), asks `auth` who that is, applies the
//! principal's rate limit, and hands handlers a [`Caller`]. Public routes (`/`, `/health`,
//! `/livez`, `/readyz`, `/docs`, `/openapi.json`) are not behind it.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::auth::AuthError;
use crate::domain::{Caller, Role};

/// An `Authorization` header of another scheme than `Bearer`, or a credential header that is not
/// text: never accepted.
#[derive(Debug)]
pub struct MalformedCredential;

/// The credential a request presents: `Authorization: Bearer <credential>`, else `X-API-Key`.
pub fn presented_credential(headers: &HeaderMap) -> Result<Option<&str>, MalformedCredential> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| MalformedCredential)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(MalformedCredential)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(MalformedCredential);
        }
        return Ok(Some(token.trim()));
    }
    match headers.get("x-api-key") {
        Some(value) => value
            .to_str()
            .map(|key| Some(key.trim()))
            .map_err(|_| MalformedCredential),
        None => Ok(None),
    }
}

/// The request's id for the audit log: the one in `x-request-id` when it is short and plain (ours
/// are UUIDs; a client may send its own), else none: a client cannot write what it likes there.
fn request_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get("x-request-id")?.to_str().ok()?;
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    plain.then(|| id.to_string())
}

/// The caller of a request: its credential checked (401 when it must and cannot; failed attempts
/// are limited per client address, 429, and recorded in the audit log) and the principal's rate
/// applied (user principals only, 429).
pub async fn establish_caller(
    state: &AppState,
    headers: &HeaderMap,
    remote: Option<SocketAddr>,
) -> Result<Caller, Response> {
    let request_id = request_id(headers);
    let remote_addr = remote.map(|addr| addr.ip().to_string());
    let principal = match presented_credential(headers) {
        Ok(credential) => state.auth.authenticate(credential).await,
        Err(MalformedCredential) => Err(AuthError::Invalid(
            "Authorization is not `Bearer <credential>`".into(),
        )),
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(AuthError::Store(e)) => {
            return Err(ApiError::from(crate::sessions::SessionError::Store(e)).into_response());
        }
        Err(e) => {
            // Guessing is limited like any user's requests, by address: it cannot flood the log or
            // the audit queue.
            if let Err(wait) = state
                .rate
                .check(format!("addr:{}", remote_addr.as_deref().unwrap_or("?")))
            {
                return Err(ApiError::rate_limited(wait).into_response());
            }
            tracing::warn!(request.id = request_id.as_deref().unwrap_or_default(), client.address = remote_addr.as_deref().unwrap_or_default(), reason = %e, "authentication failed");
            let caller = Caller {
                principal: crate::domain::Principal::anonymous(),
                remote_addr,
                request_id,
            };
            state.auth.record_failure(&caller, &e.to_string());
            return Err(ApiError::unauthorized().into_response());
        }
    };
    // The trusted backend (an admin) speaks for many users: only user principals are limited.
    if principal.role == Role::User
        && let Err(wait) = state.rate.check(principal.label())
    {
        return Err(ApiError::rate_limited(wait).into_response());
    }
    Ok(Caller {
        principal,
        remote_addr,
        request_id,
    })
}

/// Middleware: puts the [`Caller`] in the request for handlers, or answers 401/429/503.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    match establish_caller(&state, request.headers(), remote).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refusal,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            tracing::error!("a handler that needs the caller is not behind the authentication layer");
            ApiError::internal("the request's caller is unknown")
        })
    }
}

/// Refuses a caller that is not an admin (403 `forbidden`).
pub fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    match caller.principal.is_admin() {
        true => Ok(()),
        false => Err(ApiError::forbidden("this endpoint is for admin credentials only")),
    }
}
