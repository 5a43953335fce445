//! claude-agent-http: Claude Code agent sessions for many users, over REST and SSE.
//! See ARCHITECTURE.md for the map of modules.

#![warn(missing_docs)]
// The one exception, allowed where it stands, is the `pre_exec` hook in `agent/launch.rs`.
#![deny(unsafe_code)]

pub mod agent;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod domain;
pub mod http;
pub mod relay;
pub mod runtime;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod webhooks;
pub mod workspace;
