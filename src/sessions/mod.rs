//! The service layer handlers call: create, read, list, resume and delete sessions. It owns the
//! rules that span the store and the workspaces (limits, leaving nothing behind on a rejection).
//! It must not know about HTTP.

mod error;

use std::sync::Arc;

use chrono::Utc;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::domain::{AgentOptions, SessionId, SessionRecord};
use crate::store::{Limits, SessionStore, StoreError};
use crate::workspace::Workspaces;

pub use error::SessionError;

/// What a client asks for when creating a session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub user_id: String,
    pub subdir: Option<String>,
    pub metadata: Map<String, Value>,
}

/// The session service.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    workspaces: Workspaces,
    limits: Limits,
    defaults: AgentOptions,
}

impl Sessions {
    /// Wires the service from its parts.
    pub fn new(config: &Config, store: Arc<dyn SessionStore>, workspaces: Workspaces) -> Self {
        Sessions {
            store,
            workspaces,
            limits: Limits {
                max_total: config.api.max_sessions,
                max_per_user: config.api.max_sessions_per_user,
            },
            defaults: AgentOptions::from_config(config),
        }
    }

    /// The store behind the service (for health checks).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Creates a session: validates names, checks limits, creates the workspace. No process starts.
    pub async fn create(&self, request: NewSession) -> Result<SessionRecord, SessionError> {
        let subdir = request.subdir.as_deref();
        // Reject bad names and planted links before anything is written.
        self.workspaces.check(&request.user_id, subdir)?;
        let now = Utc::now();
        let mut record = SessionRecord {
            session_id: SessionId::new(),
            user_id: request.user_id.clone(),
            subdir: request.subdir.clone(),
            cwd: self.workspaces.path_of(&request.user_id, subdir),
            options: self.defaults.clone(),
            created_at: now,
            last_active_at: now,
            message_count: 0,
            metadata: request.metadata,
        };
        self.store
            .insert(&record, self.limits)
            .await
            .map_err(|e| match e {
                StoreError::LimitReached(scope) => SessionError::LimitReached(scope),
                other => SessionError::Store(other),
            })?;
        match self.workspaces.resolve(&request.user_id, subdir) {
            Ok(cwd) => record.cwd = cwd,
            Err(e) => {
                self.store.delete(record.session_id).await?;
                return Err(e.into());
            }
        }
        Ok(record)
    }

    /// The session, or `NotFound` if unknown or expired.
    pub async fn get(&self, id: SessionId) -> Result<SessionRecord, SessionError> {
        self.store
            .get(id)
            .await?
            .ok_or(SessionError::NotFound(id.to_string()))
    }

    /// A user's sessions, oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<SessionRecord>, SessionError> {
        crate::workspace::check_user_id(user_id)?;
        Ok(self.store.list_by_user(user_id).await?)
    }

    /// Marks the session active again and returns it.
    pub async fn resume(&self, id: SessionId) -> Result<SessionRecord, SessionError> {
        if !self.store.touch(id, Utc::now(), 0).await? {
            return Err(SessionError::NotFound(id.to_string()));
        }
        self.get(id).await
    }

    /// Deletes the session for good.
    pub async fn delete(&self, id: SessionId) -> Result<(), SessionError> {
        if !self.store.delete(id).await? {
            return Err(SessionError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Removes expired sessions; returns how many.
    pub async fn purge_expired(&self) -> Result<usize, SessionError> {
        Ok(self.store.purge_expired().await?.len())
    }

    /// How many unexpired sessions exist.
    pub async fn count(&self) -> Result<u64, SessionError> {
        Ok(self.store.count().await?)
    }
}
