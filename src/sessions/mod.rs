//! The service layer handlers call: create, read, list, resume and delete sessions. It owns the
//! rules that span the store and the workspaces (limits, leaving nothing behind on a rejection)
//! and scoping: every session is looked up through [`Sessions::get`] with the caller, which answers
//! another user's session exactly as an unknown one. It must not know about HTTP.

mod error;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};

use serde_json::json;

use crate::audit::AuditLog;
use crate::domain::BudgetLimits;
use crate::domain::{AgentOptions, Caller, SessionEvent, SessionId, SessionRecord, TurnId};
use crate::runtime::{Runtime, SendRefusal, TurnTicket};
use crate::store::{EventStore, Limits, SessionStore, StoreError, Stores, UsageStore};
use crate::telemetry::store_operation;
use crate::webhooks::{DeletionReason, Webhooks};
use crate::workspace::Workspaces;

pub use crate::runtime::CliState;
pub use crate::store::{Spending, Spent, StoredEvent, TurnRecord, UsageGroup, UsageTotals};
pub use error::SessionError;
pub use usage::{BudgetView, SessionUsage, UsageReport, UsageRequest};

/// A watch on one session's events: the live reader and the store behind it.
pub struct Watch {
    /// The session.
    pub session: SessionId,
    /// Events published since the watch began (bounded: a slow watcher lags).
    pub live: tokio::sync::broadcast::Receiver<Arc<SessionEvent>>,
    /// Where earlier (and not yet seen) events are read from.
    pub events: Arc<dyn EventStore>,
}

/// What a client asks for when creating a session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// Whose session: the caller's own when left out (required from an admin).
    pub user_id: Option<String>,
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
    runtime: Arc<Runtime>,
    events: Arc<dyn EventStore>,
    usage: Arc<dyn UsageStore>,
    /// The service's budgets (users' overrides are in the usage store).
    budgets: BudgetLimits,
    audit: AuditLog,
    webhooks: Webhooks,
}

impl Sessions {
    /// Wires the service from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: &Stores,
        workspaces: Workspaces,
        runtime: Arc<Runtime>,
        limits: Limits,
        defaults: AgentOptions,
        budgets: BudgetLimits,
        audit: AuditLog,
        webhooks: Webhooks,
    ) -> Self {
        Sessions {
            audit,
            events: stores.events.clone(),
            usage: stores.usage.clone(),
            budgets,
            store: stores.sessions.clone(),
            webhooks,
            workspaces,
            limits,
            defaults,
            runtime,
        }
    }

    /// The user a caller acts for: `requested`, which a user principal may leave out (then it is
    /// itself) or must name itself with; an admin must name one.
    pub(crate) fn acting_for(
        &self,
        caller: &Caller,
        requested: Option<&str>,
    ) -> Result<String, SessionError> {
        let principal = &caller.principal;
        match (requested, principal.user_id.as_deref()) {
            (Some(user), _) if principal.may_act_for(user) => Ok(user.to_string()),
            (Some(user), _) => Err(SessionError::Forbidden(format!(
                "this credential acts as another user and may not act for user_id {user:?}"
            ))),
            (None, Some(own)) if !principal.is_admin() => Ok(own.to_string()),
            (None, _) => Err(SessionError::Invalid("user_id is required".into())),
        }
    }

    /// Creates a session: validates names, checks limits, creates the workspace. No process starts.
    pub async fn create(&self, caller: &Caller, request: NewSession) -> Result<SessionRecord, SessionError> {
        let user_id = self.acting_for(caller, request.user_id.as_deref())?;
        // `"p/"` is the same directory as `"p"`, and is stored as `"p"`.
        let subdir = request.subdir.as_deref().map(crate::workspace::normalize_subdir);
        // Reject bad names and planted links before anything is written.
        self.workspaces.check(&user_id, subdir)?;
        let now = Utc::now();
        let mut record = SessionRecord {
            session_id: SessionId::new(),
            user_id: user_id.clone(),
            subdir: subdir.map(str::to_owned),
            cwd: self.workspaces.path_of(&user_id, subdir),
            options: self.defaults.clone(),
            created_at: now,
            last_active_at: now,
            message_count: 0,
            metadata: request.metadata,
        };
        store_operation("sessions.insert", self.store.insert(&record, self.limits))
            .await
            .map_err(|e| match e {
                StoreError::LimitReached(scope) => SessionError::LimitReached(scope),
                other => SessionError::Store(other),
            })?;
        match self.workspaces.resolve(&user_id, subdir) {
            Ok(cwd) => record.cwd = cwd,
            Err(e) => {
                store_operation("sessions.delete", self.store.delete(record.session_id)).await?;
                return Err(e.into());
            }
        }
        self.audit.session_act(
            "session.created",
            caller,
            &record.user_id,
            record.session_id,
            json!({"subdir": record.subdir}),
        );
        // Start its agent ahead of the first message, where there is free room.
        self.runtime.warm(&record, false).await;
        Ok(record)
    }

    /// The session, if the caller may reach it: `NotFound` when unknown, expired, or another
    /// user's (the same answer, so an id reveals nothing). The one lookup every operation on a
    /// session goes through.
    pub async fn get(&self, caller: &Caller, id: SessionId) -> Result<SessionRecord, SessionError> {
        store_operation("sessions.get", self.store.get(id))
            .await?
            .filter(|record| caller.principal.may_act_for(&record.user_id))
            .ok_or(SessionError::NotFound(id.to_string()))
    }

    /// Sessions, oldest first: one user's, or (for an admin, as the seed's API allowed) everyone's.
    /// A user principal lists its own; naming another user is `Forbidden`.
    pub async fn list(
        &self,
        caller: &Caller,
        user_id: Option<&str>,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        let user_id = match user_id {
            None if caller.principal.is_admin() => None,
            requested => Some(self.acting_for(caller, requested)?),
        };
        if let Some(user_id) = &user_id {
            crate::workspace::check_user_id(user_id)?;
        }
        Ok(store_operation("sessions.list", self.store.list(user_id.as_deref())).await?)
    }

    /// Marks the session active again, starts its agent process in the background if none is
    /// live (making room if needed), and returns it.
    pub async fn resume(&self, caller: &Caller, id: SessionId) -> Result<SessionRecord, SessionError> {
        self.get(caller, id).await?;
        if !store_operation("sessions.touch", self.store.touch(id, Utc::now(), 0)).await? {
            return Err(SessionError::NotFound(id.to_string()));
        }
        let record = self.get(caller, id).await?;
        self.runtime.warm(&record, true).await;
        Ok(record)
    }

    /// Deletes the session for good: its record, its process and everything the CLI kept about it.
    pub async fn delete(&self, caller: &Caller, id: SessionId) -> Result<(), SessionError> {
        self.get(caller, id).await?;
        let Some(record) = store_operation("sessions.delete", self.store.delete(id)).await? else {
            return Err(SessionError::NotFound(id.to_string()));
        };
        self.audit.session_act(
            "session.deleted",
            caller,
            &record.user_id,
            id,
            serde_json::Value::Null,
        );
        self.webhooks.session_deleted(&record, DeletionReason::Deleted);
        self.runtime.close(id, &record.user_id).await;
        Ok(())
    }

    /// Removes expired sessions, their processes and transcripts; returns how many.
    pub async fn purge_expired(&self) -> Result<usize, SessionError> {
        let purged = store_operation("sessions.purge_expired", self.store.purge_expired()).await?;
        for record in &purged {
            self.webhooks.session_deleted(record, DeletionReason::Expired);
            self.runtime.close(record.session_id, &record.user_id).await;
        }
        Ok(purged.len())
    }

    /// Starts a turn; its events and its terminal event arrive on the ticket. Refuses (before
    /// anything starts) an unknown session or one already running a turn.
    pub async fn start_turn(
        &self,
        caller: &Caller,
        id: SessionId,
        message: String,
        timeout: Option<Duration>,
    ) -> Result<TurnTicket, SessionError> {
        let record = self.get(caller, id).await?;
        let ticket = self
            .runtime
            .send(&record, message, timeout, caller.clone())
            .await
            .map_err(|refusal| match refusal {
                SendRefusal::Busy => SessionError::Busy(id.to_string()),
                SendRefusal::UserAtLimit(limit) => SessionError::TooManyTurns(format!(
                    "user {} already runs {limit} turn(s) at once, the most api.max_concurrent_turns_per_user allows; \
                     retry when one ends",
                    record.user_id
                )),
                SendRefusal::Closed if self.runtime.is_closing() => SessionError::ShuttingDown,
                // Deleted between the read above and the turn's start.
                SendRefusal::Closed => SessionError::NotFound(id.to_string()),
            })?;
        self.audit.session_act(
            "turn.started",
            caller,
            &record.user_id,
            id,
            json!({"turn_id": ticket.turn.to_string()}),
        );
        Ok(ticket)
    }

    /// Stops the session's running turn; false if none was running.
    pub async fn interrupt(&self, caller: &Caller, id: SessionId) -> Result<bool, SessionError> {
        let record = self.get(caller, id).await?;
        let interrupted = self.runtime.interrupt(id).await;
        if interrupted {
            self.audit.session_act(
                "turn.interrupted",
                caller,
                &record.user_id,
                id,
                serde_json::Value::Null,
            );
        }
        Ok(interrupted)
    }

    /// The session's stored events numbered after `after`, at most `limit`.
    pub async fn events_after(
        &self,
        caller: &Caller,
        id: SessionId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, SessionError> {
        self.get(caller, id).await?;
        Ok(store_operation("events.events_after", self.events.events_after(id, after, limit)).await?)
    }

    /// Watches a session: a live reader (subscribed first, so nothing published from now on is
    /// missed) and the store for what came before.
    pub async fn watch(&self, caller: &Caller, id: SessionId) -> Result<Watch, SessionError> {
        let record = self.get(caller, id).await?;
        let live = self
            .runtime
            .subscribe(&record)
            .await
            .ok_or(SessionError::ShuttingDown)?;
        Ok(Watch {
            session: id,
            live,
            events: self.events.clone(),
        })
    }

    /// The session's turns, oldest first: the newest `limit` started before `before`.
    pub async fn turns(
        &self,
        caller: &Caller,
        id: SessionId,
        before: Option<chrono::DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<TurnRecord>, SessionError> {
        self.get(caller, id).await?;
        Ok(store_operation("events.turns", self.events.turns(id, before, limit)).await?)
    }

    /// One turn of the session.
    pub async fn turn(
        &self,
        caller: &Caller,
        id: SessionId,
        turn: TurnId,
    ) -> Result<TurnRecord, SessionError> {
        self.get(caller, id).await?;
        store_operation("events.turn", self.events.turn(id, turn))
            .await?
            .ok_or_else(|| SessionError::TurnNotFound(turn.to_string()))
    }

    /// The live agents of this instance.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Where events go to webhooks, and their deliveries.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), SessionError> {
        Ok(store_operation("sessions.ping", self.store.ping()).await?)
    }

    /// How many unexpired sessions exist.
    pub async fn count(&self) -> Result<u64, SessionError> {
        Ok(store_operation("sessions.count", self.store.count()).await?)
    }
}
