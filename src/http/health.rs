//! `GET /health` (the seed's fields) and `GET /` (what this is and where to look).

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::AppState;
use crate::sessions::CliState;

/// Service health, in the seed's shape. With authentication on, only an admin credential sees
/// more than `status` and `version`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `healthy`, or `unhealthy` when the store does not answer.
    pub status: &'static str,
    /// The service's version.
    pub version: &'static str,
    /// The rest, for admins (everyone while authentication is off).
    #[serde(flatten)]
    pub details: Option<HealthDetails>,
}

/// What `/health` tells an admin beyond liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthDetails {
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
    /// How agents are isolated.
    pub isolation: IsolationHealth,
}

/// The isolation profile in effect, as `/health` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IsolationHealth {
    /// `strict` or `none`.
    pub profile: &'static str,
    /// What this host lacks for the strict profile (empty: nothing).
    pub missing: Vec<String>,
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
    /// `configured`, or `missing` when agents get no model API key or token (every turn then
    /// fails with `credentials_missing`).
    pub credentials: &'static str,
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
            credentials: "configured",
        }
    }
}

/// Health of the service and its store.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(
    State(state): State<AppState>,
    remote: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> (StatusCode, Json<HealthResponse>) {
    let (healthy, active_sessions) = match state.sessions.ping().await {
        Ok(()) => (true, state.sessions.count().await.unwrap_or_default()),
        Err(e) => {
            tracing::error!(error = %e, "session store unreachable");
            (false, 0)
        }
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Only an admin sees the details; a credential shown here is checked (and a bad one limited and
    // audited) exactly as on the API routes, but its refusal only hides the details.
    let presented = !matches!(super::auth::presented_credential(&headers), Ok(None));
    let admin = match (state.auth.required(), presented) {
        (false, _) => true,
        (true, false) => false,
        (true, true) => {
            super::auth::establish_caller(&state, &headers, remote.map(|Extension(ConnectInfo(addr))| addr))
                .await
                .is_ok_and(|caller| caller.principal.is_admin())
        }
    };
    let mut body = HealthResponse {
        status: if healthy { "healthy" } else { "unhealthy" },
        version: env!("CARGO_PKG_VERSION"),
        details: None,
    };
    if !admin {
        return (status, Json(body));
    }
    let memory = state.sessions.runtime().memory_bytes().await;
    body.details = Some(HealthDetails {
        active_sessions,
        in_memory_clients: state.live_agents(),
        memory_mb: (memory as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        storage_type: state.storage_type,
        uptime_seconds: (state.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        isolation: state.isolation.clone(),
        agent_cli: AgentCliHealth {
            credentials: if state.sessions.runtime().has_model_credentials() {
                "configured"
            } else {
                "missing"
            },
            ..state.sessions.runtime().cli_state().into()
        },
    });
    (status, Json(body))
}

/// Liveness of the process alone (no I/O): for an orchestrator's liveness probe.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LiveResponse {
    /// Always `alive`.
    pub status: &'static str,
}

/// Whether the process runs (answers without touching the store or the CLI).
#[utoipa::path(get, path = "/livez", tag = "service", responses((status = 200, body = LiveResponse)))]
pub async fn livez() -> Json<LiveResponse> {
    Json(LiveResponse { status: "alive" })
}

/// Readiness for traffic: the store answers and the CLI is ready.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadyResponse {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// What is not ready (`store`, `agent_cli`), empty when ready.
    pub waiting_for: Vec<&'static str>,
}

/// Whether the service can take traffic: the store answers and the Claude Code CLI is ready
/// (503 while it is being installed or when it is missing, or while the store is down).
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<ReadyResponse>) {
    let mut waiting_for = Vec::new();
    if let Err(e) = state.sessions.ping().await {
        tracing::warn!(error = %e, "not ready: the session store does not answer");
        waiting_for.push("store");
    }
    if !matches!(state.sessions.runtime().cli_state(), CliState::Ready { .. }) {
        waiting_for.push("agent_cli");
    }
    let ready = waiting_for.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyResponse {
        status: if ready { "ready" } else { "not_ready" },
        waiting_for,
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
