//! `GET /health` (the seed's fields) and `GET /` (what this is and where to look).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use crate::sessions::CliState;

/// Service health, in the seed's shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `healthy`, or `unhealthy` when the store does not answer.
    pub status: &'static str,
    /// The service's version.
    pub version: &'static str,
    /// Stored, unexpired sessions.
    pub active_sessions: u64,
    /// Sessions with a live agent process.
    pub in_memory_clients: u64,
    /// Resident memory of the service and all its child processes.
    pub memory_mb: f64,
    /// `memory`, `sqlite` or `postgresql`.
    pub storage_type: &'static str,
    /// Seconds since the service started.
    pub uptime_seconds: f64,
    /// The Claude Code CLI the agents run.
    pub agent_cli: AgentCliHealth,
}

/// The Claude Code CLI, as `/health` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentCliHealth {
    /// `ready`, `installing`, `looking` or `missing`.
    pub status: &'static str,
    /// Its version, once known.
    pub version: Option<String>,
    /// Why it is missing.
    pub detail: Option<String>,
}

impl From<CliState> for AgentCliHealth {
    fn from(state: CliState) -> Self {
        let status = state.status();
        let (version, detail) = match state {
            CliState::Ready { version, .. } => (version, None),
            CliState::Missing(why) => (None, Some(why)),
            CliState::Looking | CliState::Installing => (None, None),
        };
        AgentCliHealth {
            status,
            version,
            detail,
        }
    }
}

/// Health of the service and its store.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let (healthy, active_sessions) = match state.sessions.ping().await {
        Ok(()) => (true, state.sessions.count().await.unwrap_or_default()),
        Err(e) => {
            tracing::error!(error = %e, "session store unreachable");
            (false, 0)
        }
    };
    let memory = state.sessions.runtime().memory_bytes().await;
    let body = HealthResponse {
        status: if healthy { "healthy" } else { "unhealthy" },
        version: env!("CARGO_PKG_VERSION"),
        active_sessions,
        in_memory_clients: state.live_agents(),
        memory_mb: (memory as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        storage_type: state.storage_type,
        uptime_seconds: (state.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        agent_cli: state.sessions.runtime().cli_state().into(),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// What this service is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RootResponse {
    /// The service's name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// Interactive API docs.
    pub docs: &'static str,
    /// The OpenAPI document.
    pub openapi: &'static str,
    /// The health check.
    pub health: &'static str,
}

/// Name, version and links.
#[utoipa::path(get, path = "/", tag = "service", responses((status = 200, body = RootResponse)))]
pub async fn root() -> Json<RootResponse> {
    Json(RootResponse {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
        openapi: "/openapi.json",
        health: "/health",
    })
}
