//! The only code that knows axum, status codes and JSON shapes: one file per resource, the error
//! mapping, the OpenAPI document and the middleware stack. Handlers call `sessions` and nothing
//! below it.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod error;
pub mod health;
pub mod history;
pub mod metrics;
pub mod serve;
pub mod sessions;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{Authenticator, RateLimits};
use crate::config::Config;
use crate::sessions::Sessions;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The session service.
    pub sessions: Arc<Sessions>,
    /// When the service started.
    pub started: Instant,
    /// The storage backend's name, for `/health`.
    pub storage_type: &'static str,
    /// Interval of SSE keep-alive comments.
    pub keepalive: Duration,
    /// Who is calling.
    pub auth: Arc<Authenticator>,
    /// Requests per second per user principal.
    pub rate: Arc<RateLimits>,
    /// The isolation profile in effect, for `/health`.
    pub isolation: health::IsolationHealth,
    /// The metrics recorder, for `/metrics`.
    pub metrics: crate::telemetry::Metrics,
}

impl AppState {
    /// How many sessions have a live agent process.
    pub fn live_agents(&self) -> u64 {
        self.sessions.runtime().live_count() as u64
    }
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "claude-agent-http", description = "Claude Code agent sessions for many users, over REST and SSE."),
    paths(
        health::root, health::health,
        sessions::create_session, sessions::list_sessions, sessions::get_session,
        sessions::resume_session, sessions::delete_session, sessions::interrupt_session,
        chat::chat, chat::chat_stream,
        history::session_events, history::list_turns, history::get_turn, history::list_messages,
        health::livez, health::readyz,
        admin::create_key, admin::list_keys, admin::revoke_key, admin::audit,
        usage::session_usage, usage::usage, usage::get_budget, usage::put_budget, usage::delete_budget,
        admin::webhook_deliveries,
        metrics::metrics,
    ),
    components(schemas(health::HealthDetails)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "sessions", description = "Create, inspect, resume and delete sessions"),
         (name = "chat", description = "Talk to a session's agent, whole or streamed"),
         (name = "history", description = "A session's events (replayable), turns and conversation"),
         (name = "service", description = "Health and service information"),
         (name = "usage", description = "Model tokens and cost, from the relay's records"),
         (name = "admin", description = "API keys, budgets, the audit log and webhook deliveries (admin credentials only)")),
)]
pub struct ApiDoc;

/// Declares the bearer credential (an API key or a JWT) in the OpenAPI document.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (cah_...) or a JWT; needed when auth.mode is on. X-API-Key works too.",
                    ))
                    .build(),
            ),
        );
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request target (path and query) answered; longer ones get 414 `uri_too_long`.
/// hyper itself refuses targets over 64 KiB before any of our code runs (414, empty body).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The most header bytes (names, values and separators) answered; more get 431 `headers_too_large`.
/// hyper itself refuses more than 100 headers, or a head over about 400 KiB, before any of our code
/// runs (431, empty body).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The whole HTTP application.
pub fn router(state: AppState, config: &Config) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/api/v1/sessions/{session_id}",
            get(sessions::get_session).delete(sessions::delete_session),
        )
        .route(
            "/api/v1/sessions/{session_id}/resume",
            post(sessions::resume_session),
        )
        .route(
            "/api/v1/sessions/{session_id}/interrupt",
            post(sessions::interrupt_session),
        )
        .route(
            "/api/v1/sessions/{session_id}/events",
            get(history::session_events),
        )
        .route("/api/v1/sessions/{session_id}/turns", get(history::list_turns))
        .route(
            "/api/v1/sessions/{session_id}/turns/{turn_id}",
            get(history::get_turn),
        )
        .route(
            "/api/v1/sessions/{session_id}/messages",
            get(history::list_messages),
        )
        .route("/api/v1/sessions/{session_id}/usage", get(usage::session_usage))
        .route("/api/v1/usage", get(usage::usage))
        .route(
            "/api/v1/admin/users/{user_id}/budget",
            get(usage::get_budget)
                .put(usage::put_budget)
                .delete(usage::delete_budget),
        )
        .route("/api/v1/chat", post(chat::chat))
        .route("/api/v1/chat/stream", post(chat::chat_stream))
        .route(
            "/api/v1/admin/keys",
            post(admin::create_key).get(admin::list_keys),
        )
        .route("/api/v1/admin/keys/{key_id}", delete(admin::revoke_key))
        .route("/api/v1/admin/audit", get(admin::audit))
        .route(
            "/api/v1/admin/webhooks/deliveries",
            get(admin::webhook_deliveries),
        )
        .route("/metrics", get(metrics::metrics))
        // Every route above needs a caller; the public ones below do not.
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/", get(health::root))
        .with_state(state);
    let docs: Router = SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into();
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // The matched route, not the path: paths carry ids, routes group requests.
        let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
        tracing::info_span!("request", request.id = %request_id, method = %request.method(), http.route = %route)
    });
    let max_body = config.api.max_body_bytes;
    // Layers wrap every route and both fallbacks (so these must come first); the last is outermost.
    api.merge(docs)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Extractors read at most this much, declared or not (chunked bodies)...
        .layer(DefaultBodyLimit::max(max_body))
        // ...and a declared length over it is refused before any handler runs.
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn(check_request_head))
        .layer(cors(&config.api.cors_origins))
        .layer(middleware::from_fn(error::error_bodies))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(middleware::from_fn(metrics::record_request))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// 404 for a path no route serves.
async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::route_not_found(&method, &uri)
}

/// 405 for a method a known path does not serve (axum adds the `Allow` header).
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(&method, &uri)
}

/// Refuses an over-long request target (414) or over-large headers (431) with the JSON error body.
/// hyper refuses the extreme cases itself, earlier and without a body; these limits sit below hyper's.
async fn check_request_head(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::uri_too_long(MAX_URI_BYTES).into_response();
    }
    // As on the wire: "name: value\r\n".
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::headers_too_large(MAX_HEADER_BYTES).into_response();
    }
    next.run(request).await
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(Any)
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}
