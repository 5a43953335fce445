//! The relay's one handler: authenticate the token, check the method and path against the
//! allowlist, check the budgets, read the request body (bounded: it names the model), swap the
//! token for the real credential and forward; the answer streams back chunk by chunk through a
//! [`Meter`] that reads its usage on the way and records the request when the answer ends (or the
//! client goes away).
//! Every refusal is answered here, in the Anthropic error shape the CLI shows, without contacting
//! the upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use serde_json::json;

use super::budget::first_refusal;
use super::usage::UsageScan;
use super::{Binding, Grant, Shared, token_key};
use crate::domain::{TurnId, TurnUsage};
use crate::store::UsageRecord;

/// The largest request body relayed (the whole conversation travels in each request).
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// How long a budget check waits for the session's earlier requests to be stored.
const BUDGET_PATIENCE: Duration = Duration::from_secs(5);

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

/// What a listener serves with: the relay, and the binding of a token's own socket (none on the
/// shared endpoints, where any live token goes).
#[derive(Clone)]
struct Endpoint {
    shared: Arc<Shared>,
    binding: Option<Binding>,
}

/// The relay's routes: every request reaches [`relay`].
pub(super) fn router(shared: Arc<Shared>, binding: Option<Binding>) -> Router {
    Router::new()
        .fallback(relay)
        .with_state(Endpoint { shared, binding })
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

async fn relay(State(endpoint): State<Endpoint>, request: Request) -> Response {
    let shared = endpoint.shared;
    let started = Instant::now();
    let at = Utc::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // Older CLIs check that the base URL answers before their first call, without a key: the
    // relay answers for itself (nothing reaches the upstream, nothing is revealed).
    if method == Method::HEAD && path == "/" {
        return StatusCode::OK.into_response();
    }
    let key = presented_token(request.headers()).map(token_key);
    let grant = key.as_ref().and_then(|key| shared.grant_of(key));
    if let (Some(binding), Some(grant), Some(key)) = (&endpoint.binding, &grant, &key)
        && *key != binding.key
    {
        // A live token learnt from another session (its environment, a leak): bound tokens
        // work on their own socket only.
        tracing::warn!(
            session.id = %binding.session, relay.token_session = %grant.session,
            relay.method = %method, relay.path = %path,
            "the model relay refused another session's token on a session's own socket"
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid relay token: the token is unknown or its session has stopped",
        );
    }
    let Some(grant) = grant else {
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
    let turn = grant.state.turn();
    if let Some(refused) = budget_gate(&shared, &grant, turn).await {
        return refused;
    }
    shared.meters.request_started(turn);
    let record = Pending {
        shared: shared.clone(),
        grant,
        turn,
        path: path.clone(),
        at,
        started,
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            record.finish(StatusCode::PAYLOAD_TOO_LARGE, None, TurnUsage::default());
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
        record.finish(StatusCode::UNAUTHORIZED, model, TurnUsage::default());
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
            record.finish(StatusCode::BAD_GATEWAY, model, TurnUsage::default());
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

/// Refuses a request when the budgets of its user, session or turn are reached (`None`: it may
/// go). The limits are the service's with the user's override over them, read on every request so
/// a raise takes effect at once on every instance.
async fn budget_gate(shared: &Shared, grant: &Grant, turn: Option<TurnId>) -> Option<Response> {
    let store = shared.meters.store();
    let limits = match store.budget_override(&grant.user_id).await {
        Ok(Some(own)) => shared.budgets.with_override(&own),
        Ok(None) => shared.budgets.clone(),
        Err(e) => return Some(cannot_check(grant, &e)),
    };
    if !limits.any() {
        return None;
    }
    // What this process spent before must be in the totals compared.
    if !shared.meters.written(&grant.state, BUDGET_PATIENCE).await {
        tracing::warn!(session.id = %grant.session, "the session's earlier usage is not stored yet; checking its budget without it");
    }
    let spending = match store
        .spending(&grant.user_id, grant.session, turn, Utc::now())
        .await
    {
        Ok(spending) => spending,
        Err(e) => return Some(cannot_check(grant, &e)),
    };
    let refusal = first_refusal(&limits, &spending)?;
    tracing::warn!(
        session.id = %grant.session, user.id = %grant.user_id,
        turn.id = turn.map(|t| t.to_string()).unwrap_or_default(),
        budget.limit = %refusal.limit, budget.allowed = refusal.allowed, budget.spent = refusal.spent,
        "the model relay refused a request: a budget is spent"
    );
    let message = format!("budget exceeded: {refusal}");
    crate::telemetry::budget_refused(&refusal.limit);
    shared.meters.refused(turn, refusal);
    // 400 is final for the CLI: it does not retry, and it ends the turn showing the message.
    Some(error(StatusCode::BAD_REQUEST, "invalid_request_error", &message))
}

/// The answer when the budget cannot be checked (the store is unreachable): the model's own
/// "overloaded" error, which the CLI retries with a pause, by when the store may be back.
fn cannot_check(grant: &Grant, error_: &crate::store::StoreError) -> Response {
    tracing::warn!(session.id = %grant.session, error = %error_, "the model relay cannot check the budget; the request is refused for now");
    error(
        StatusCode::from_u16(529).expect("529 is a status"),
        "overloaded_error",
        "the service cannot check the budget right now; try again shortly",
    )
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
    /// The turn it counts for (the one running when it arrived).
    turn: Option<TurnId>,
    path: String,
    at: chrono::DateTime<Utc>,
    started: Instant,
}

impl Pending {
    fn finish(self, status: StatusCode, model: Option<String>, usage: TurnUsage) {
        let cost_nanos = self.shared.prices.cost(model.as_deref(), &usage);
        let record = UsageRecord {
            session_id: self.grant.session,
            user_id: self.grant.user_id.clone(),
            turn_id: self.turn,
            model,
            usage,
            cost_nanos,
            status: status.as_u16(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            path: self.path,
            at: self.at,
        };
        tracing::debug!(
            session.id = %record.session_id,
            user.id = %record.user_id,
            turn.id = record.turn_id.map(|t| t.to_string()).unwrap_or_default(),
            relay.path = %record.path,
            relay.model = record.model.as_deref().unwrap_or(""),
            relay.status = record.status,
            relay.duration_ms = record.duration_ms,
            usage.input_tokens = record.usage.input_tokens,
            usage.output_tokens = record.usage.output_tokens,
            usage.cache_read_tokens = record.usage.cache_read_input_tokens,
            usage.cache_write_tokens = record.usage.cache_creation_input_tokens,
            usage.cost_nanos = record.cost_nanos,
            "model request relayed"
        );
        crate::telemetry::relay_request(
            &record.user_id,
            record.model.as_deref(),
            record.status,
            crate::telemetry::Tokens {
                input: record.usage.input_tokens,
                output: record.usage.output_tokens,
                cache_read: record.usage.cache_read_input_tokens,
                cache_write: record.usage.cache_creation_input_tokens,
            },
            crate::domain::nanos_to_usd(record.cost_nanos),
        );
        self.shared.seen.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.shared.meters.request_ended(&self.grant.state, record);
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
