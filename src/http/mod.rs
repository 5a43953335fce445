//! The only code that knows axum, status codes and JSON shapes: one file per resource, the error
//! mapping, the OpenAPI document and the middleware stack. Handlers call `sessions` and nothing
//! below it.

pub mod chat;
pub mod error;
pub mod health;
pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Method, Request};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::sessions::Sessions;

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
    ),
    tags((name = "sessions", description = "Create, inspect, resume and delete sessions"),
         (name = "chat", description = "Talk to a session's agent, whole or streamed"),
         (name = "service", description = "Health and service information")),
)]
pub struct ApiDoc;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
        .route("/api/v1/chat", post(chat::chat))
        .route("/api/v1/chat/stream", post(chat::chat_stream))
        .route("/health", get(health::health))
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
    api.merge(docs)
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .layer(cors(&config.api.cors_origins))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
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
