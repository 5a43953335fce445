//! `GET /metrics`: every metric in the Prometheus text format. On the API it is for admin
//! credentials (behind the authentication layer, like the other admin routes); on the
//! `metrics.listen` address, which serves nothing else, it needs no credential (scrapers). And the
//! middleware that counts and times every HTTP request by its matched route.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::auth::require_admin;
use super::error::{ApiError, ErrorBody};
use crate::domain::Caller;

/// What Prometheus scrapes: its text exposition format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of this instance (admin credentials only).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    Ok(render(&state))
}

/// The router of the `metrics.listen` address: `GET /metrics` without authentication, and
/// nothing else (its requests are not counted among the API's).
pub fn scrape_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(state)
}

async fn scrape(State(state): State<AppState>) -> Response {
    render(&state)
}

fn render(state: &AppState) -> Response {
    // Read at scrape time, from the runtime that knows it, rather than tracked at every change.
    crate::telemetry::live_agents(state.live_agents());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], state.metrics.render()).into_response()
}

/// Middleware: counts the request by matched route (never the raw path: paths carry ids), method
/// and status, and times it to its response's head (a stream's start, not its end).
pub async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    crate::telemetry::http_request(
        route.as_ref().map(MatchedPath::as_str),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
