//! The relay's one handler: authenticate the token, check the method and path against the
//! allowlist, read the request body (bounded: it names the model), swap the token for the real
//! credential and forward; the answer streams back chunk by chunk through a [`Meter`] that reads
//! its usage on the way and records the request when the answer ends (or the client goes away).
//! Every refusal is answered here, in the Anthropic error shape the CLI shows, without contacting
//! the upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use serde_json::json;

use super::usage::{RelayRecord, TokenUsage, UsageScan};
use super::{Grant, Shared};

/// The largest request body relayed (the whole conversation travels in each request).
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// What the relay forwards: the Messages API calls the CLI makes.
const ALLOWED: &[(Method, &str)] = &[
    (Method::POST, "/v1/messages"),
    (Method::POST, "/v1/messages/count_tokens"),
];

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), and those the relay
/// sets itself.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    // The relay must read the answer's usage: it asks for it uncompressed.
    "accept-encoding",
];

/// The relay's routes: every request reaches [`relay`].
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(relay).with_state(shared)
}

/// An answer in the Messages API's error shape.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The token a request presents: `x-api-key`, else `Authorization: Bearer`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok();
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn relay(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = Instant::now();
    let at = Utc::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // Older CLIs check that the base URL answers before their first call, without a key: the
    // relay answers for itself (nothing reaches the upstream, nothing is revealed).
    if method == Method::HEAD && path == "/" {
        return StatusCode::OK.into_response();
    }
    let Some(grant) = presented_token(request.headers()).and_then(|token| shared.grant(token)) else {
        tracing::warn!(relay.method = %method, relay.path = %path, "the model relay refused a request without a live token");
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid relay token: the token is unknown or its session has stopped",
        );
    };
    if !ALLOWED.iter().any(|(m, p)| *m == method && *p == path) {
        tracing::warn!(session.id = %grant.session, relay.method = %method, relay.path = %path, "the model relay refused a path it does not forward");
        return error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "the relay forwards only POST /v1/messages and POST /v1/messages/count_tokens",
        );
    }
    let record = Pending {
        shared: shared.clone(),
        grant,
        path: path.clone(),
        at,
        started,
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            record.finish(StatusCode::PAYLOAD_TOO_LARGE, None, TokenUsage::default());
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request is larger than the relay forwards (32 MiB), or it was cut off",
            );
        }
    };
    let model = requested_model(&body);
    let credential = &shared.credential;
    if !credential.is_present() {
        record.finish(StatusCode::UNAUTHORIZED, model, TokenUsage::default());
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "the service has no model API credential",
        );
    }
    let mut headers = forwarded_headers(&parts.headers);
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if let Some(key) = &credential.api_key
        && let Ok(mut value) = HeaderValue::from_str(key)
    {
        value.set_sensitive(true);
        headers.insert("x-api-key", value);
    }
    if let Some(token) = &credential.auth_token
        && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    let target = format!(
        "{}{}",
        shared.upstream.as_str().trim_end_matches('/'),
        parts.uri.path_and_query().map_or(path.as_str(), |p| p.as_str())
    );
    let sent = shared
        .client
        .request(method, target)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(session.id = %record.grant.session, error = %e, "the model relay cannot reach the model API");
            record.finish(StatusCode::BAD_GATEWAY, model, TokenUsage::default());
            return error(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the service's model relay cannot reach the model API",
            );
        }
    };
    let status = answer.status();
    let mut response_headers = forwarded_headers(answer.headers());
    if let Some(length) = answer.headers().get(header::CONTENT_LENGTH) {
        // The body passes unchanged, so its length holds.
        response_headers.insert(header::CONTENT_LENGTH, length.clone());
    }
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let meter = Meter {
        scan: UsageScan::for_content_type(content_type),
        body: Box::pin(answer.bytes_stream()),
        status,
        model,
        record: Some(record),
    };
    let mut response = Response::new(Body::from_stream(meter));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

/// The model a request body names, if it is JSON with a `model`.
fn requested_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    serde_json::from_slice::<Named>(body).ok()?.model
}

/// `headers` without those that are not forwarded, nor those the `Connection` header names.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if NOT_FORWARDED.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

/// A request on its way: recorded once, when its answer ends.
struct Pending {
    shared: Arc<Shared>,
    grant: Grant,
    path: String,
    at: chrono::DateTime<Utc>,
    started: Instant,
}

impl Pending {
    fn finish(self, status: StatusCode, model: Option<String>, usage: TokenUsage) {
        let record = RelayRecord {
            session_id: self.grant.session,
            user_id: self.grant.user_id,
            model,
            usage,
            status: status.as_u16(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            path: self.path,
            at: self.at,
        };
        self.shared.records.push(record);
    }
}

/// The answer's body on its way to the client: every chunk is passed on as it arrives, after a
/// look for usage; the request is recorded when the body ends or is dropped (a client that went
/// away mid-answer).
struct Meter {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    scan: UsageScan,
    status: StatusCode,
    model: Option<String>,
    record: Option<Pending>,
}

impl Meter {
    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            let (usage, answered_model) = self.scan.finish();
            let model = self.model.take().or(answered_model);
            record.finish(self.status, model, usage);
        }
    }
}

impl Stream for Meter {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.body.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => self.scan.feed(chunk),
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "the model API's answer broke off");
                self.finish();
            }
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}
