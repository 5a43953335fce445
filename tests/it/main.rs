//! One integration-test binary: stories that start the real server and speak HTTP to it.

mod audit_store;
mod auth;
mod chat;
mod config;
mod docker;
mod escape;
mod event_store;
mod history;
mod http_edges;
mod http_limits;
mod key_store;
mod layering;
mod lifecycle;
mod options;
mod pg_outage;
mod relay;
mod runtime;
mod sessions_api;
mod store;
mod support;
mod tenancy;
mod uid_store;
mod webhook_store;
mod webhooks;
mod workspace_security;
