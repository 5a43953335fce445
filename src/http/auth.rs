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

/// Authenticates the request (401 when it must and cannot), applies the rate limit of user
/// principals (429), and puts the [`Caller`] in the request for handlers.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let remote_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let principal = match presented_credential(request.headers()) {
        Ok(credential) => state.auth.authenticate(credential).await,
        Err(MalformedCredential) => Err(AuthError::Invalid(
            "Authorization is not `Bearer <credential>`".into(),
        )),
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(AuthError::Store(e)) => {
            return ApiError::from(crate::sessions::SessionError::Store(e)).into_response();
        }
        Err(e) => {
            tracing::warn!(request.id = request_id.as_deref().unwrap_or_default(), client.address = remote_addr.as_deref().unwrap_or_default(), reason = %e, "authentication failed");
            let caller = Caller {
                principal: crate::domain::Principal::anonymous(),
                remote_addr,
                request_id,
            };
            state.auth.record_failure(&caller, &e.to_string());
            return ApiError::unauthorized().into_response();
        }
    };
    // The trusted backend (an admin) speaks for many users: only user principals are limited.
    if principal.role == Role::User
        && let Err(wait) = state.rate.check(&principal.label())
    {
        return ApiError::rate_limited(wait).into_response();
    }
    request.extensions_mut().insert(Caller {
        principal,
        remote_addr,
        request_id,
    });
    next.run(request).await
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
