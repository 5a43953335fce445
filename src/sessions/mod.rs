//! The service layer handlers call: create, read, list, resume and delete sessions. It owns the
//! rules that span the store and the workspaces (limits, leaving nothing behind on a rejection).
//! It must not know about HTTP.

mod agents;
mod error;
mod turn;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::domain::{AgentOptions, SessionId, SessionRecord, TurnEvent};
use crate::store::{Limits, SessionStore, StoreError};
use crate::workspace::Workspaces;

pub use agents::{AgentPool, CliState, config_root as agents_root};
pub use error::SessionError;

/// What a client asks for when creating a session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// Whose session.
    pub user_id: String,
    /// A subdirectory of the user's directory.
    pub subdir: Option<String>,
    /// The client's own data.
    pub metadata: Map<String, Value>,
}

/// The session service.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    workspaces: Workspaces,
    limits: Limits,
    defaults: AgentOptions,
    agents: Arc<AgentPool>,
}

impl Sessions {
    /// Wires the service from its parts (the agent pool learns about the CLI later).
    pub fn new(config: &Config, store: Arc<dyn SessionStore>, workspaces: Workspaces) -> Self {
        Sessions {
            store,
            agents: Arc::new(AgentPool::new(config, workspaces.clone())),
            workspaces,
            limits: Limits {
                max_total: config.api.max_sessions,
                max_per_user: config.api.max_sessions_per_user,
            },
            defaults: AgentOptions::from_config(config),
        }
    }

    /// Creates a session: validates names, checks limits, creates the workspace. No process starts.
    pub async fn create(&self, request: NewSession) -> Result<SessionRecord, SessionError> {
        // `"p/"` is the same directory as `"p"`, and is stored as `"p"`.
        let subdir = request.subdir.as_deref().map(crate::workspace::normalize_subdir);
        // Reject bad names and planted links before anything is written.
        self.workspaces.check(&request.user_id, subdir)?;
        let now = Utc::now();
        let mut record = SessionRecord {
            session_id: SessionId::new(),
            user_id: request.user_id.clone(),
            subdir: subdir.map(str::to_owned),
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

    /// Sessions, oldest first: one user's, or everyone's (as the seed's API allowed).
    pub async fn list(&self, user_id: Option<&str>) -> Result<Vec<SessionRecord>, SessionError> {
        if let Some(user_id) = user_id {
            crate::workspace::check_user_id(user_id)?;
        }
        Ok(self.store.list(user_id).await?)
    }

    /// Marks the session active again, starts its agent process if none is live, and returns it.
    pub async fn resume(&self, id: SessionId) -> Result<SessionRecord, SessionError> {
        if !self.store.touch(id, Utc::now(), 0).await? {
            return Err(SessionError::NotFound(id.to_string()));
        }
        let record = self.get(id).await?;
        let slot = self.agents.slot(&record)?;
        // A running turn already has the process; otherwise start it now so the next message is
        // warm. Warming is best effort: if it fails, the next message reports why.
        if let Ok(mut guard) = slot.process.try_lock()
            && guard.as_ref().is_none_or(|p| p.is_gone())
        {
            if let Some(dead) = guard.take() {
                slot.set_live(false);
                dead.reap_after_crash().await;
            }
            match self.agents.start(&slot, &record).await {
                Ok(process) => *guard = Some(process),
                Err(e) => tracing::warn!(session.id = %id, error = %e, "cannot warm the agent on resume"),
            }
        }
        slot.touch();
        Ok(record)
    }

    /// Deletes the session for good: its record, its process and everything the CLI kept about it.
    pub async fn delete(&self, id: SessionId) -> Result<(), SessionError> {
        let Some(record) = self.store.delete(id).await? else {
            return Err(SessionError::NotFound(id.to_string()));
        };
        self.agents.forget(id, &record.user_id).await;
        Ok(())
    }

    /// Removes expired sessions, their processes and transcripts; returns how many.
    pub async fn purge_expired(&self) -> Result<usize, SessionError> {
        let purged = self.store.purge_expired().await?;
        for record in &purged {
            self.agents.forget(record.session_id, &record.user_id).await;
        }
        Ok(purged.len())
    }

    /// Starts a turn; its events arrive on the returned channel, the last one terminal.
    /// Refuses (before anything starts) an unknown session or one already running a turn.
    pub async fn start_turn(
        &self,
        id: SessionId,
        message: String,
        timeout: Option<Duration>,
    ) -> Result<mpsc::UnboundedReceiver<TurnEvent>, SessionError> {
        let record = self.get(id).await?;
        let slot = self.agents.slot(&record)?;
        if !slot.try_claim() {
            return Err(SessionError::Busy(id.to_string()));
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let turn = turn::Turn {
            pool: self.agents.clone(),
            store: self.store.clone(),
            slot,
            record,
            message,
            timeout,
            events,
        };
        tokio::spawn(turn.run());
        Ok(receiver)
    }

    /// Stops the session's running turn; false if none was running.
    pub async fn interrupt(&self, id: SessionId) -> Result<bool, SessionError> {
        self.get(id).await?;
        Ok(self.agents.interrupt(id))
    }

    /// The live agents.
    pub fn agents(&self) -> &Arc<AgentPool> {
        &self.agents
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), SessionError> {
        Ok(self.store.ping().await?)
    }

    /// How many unexpired sessions exist.
    pub async fn count(&self) -> Result<u64, SessionError> {
        Ok(self.store.count().await?)
    }
}
