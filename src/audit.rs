//! The audit log's writer: security-relevant acts are recorded off the request's path (a bounded
//! queue, batched into one transaction per burst) and survive a store outage (kept and retried).
//! What is recorded: `key.created`, `key.revoked`, `auth.failed`, `session.created`,
//! `session.deleted`, `turn.started`, `tool.used` (name and a SHA-256 of the input, never the
//! input), `turn.interrupted`. Never a credential or a message.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Caller, SessionId};

pub use crate::store::{AuditQuery, AuditRecord, AuditStore};

/// Records queued before new ones are dropped (with an error in the log).
const QUEUE: usize = 10_000;

/// Records written in one transaction at most.
const BATCH: usize = 500;

/// The first and longest pause between attempts while the store is unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Message {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<()>),
}

/// Where every part of the service sends its audit records.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Message>,
    store: Arc<dyn AuditStore>,
}

impl AuditLog {
    /// A log writing to `store` from a task of its own.
    pub fn new(store: Arc<dyn AuditStore>) -> AuditLog {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write(store.clone(), receiver));
        AuditLog { queue, store }
    }

    /// A record of `action` by `caller` (its principal, key, address and request id filled in).
    pub fn entry(action: &str, caller: &Caller) -> AuditRecord {
        AuditRecord {
            id: 0,
            at: Utc::now(),
            action: action.to_string(),
            principal: Some(caller.principal.label()),
            key_id: caller.principal.key_id().map(str::to_owned),
            user_id: caller.principal.user_id.clone(),
            session_id: None,
            remote_addr: caller.remote_addr.clone(),
            request_id: caller.request_id.clone(),
            detail: Value::Null,
        }
    }

    /// Queues a record; never waits. A full queue (the store far behind) drops it, loudly.
    pub fn record(&self, record: AuditRecord) {
        if let Err(e) = self.queue.try_send(Message::Record(Box::new(record))) {
            let record = match e {
                mpsc::error::TrySendError::Full(Message::Record(r))
                | mpsc::error::TrySendError::Closed(Message::Record(r)) => r,
                _ => return,
            };
            tracing::error!(audit.action = %record.action, audit.principal = ?record.principal, "the audit queue is full: a record is lost");
        }
    }

    /// Records `action` by `caller` about a session of `user_id`.
    pub fn session_act(
        &self,
        action: &str,
        caller: &Caller,
        user_id: &str,
        session: SessionId,
        detail: Value,
    ) {
        let mut record = Self::entry(action, caller);
        record.user_id = Some(user_id.to_string());
        record.session_id = Some(session);
        record.detail = detail;
        self.record(record);
    }

    /// Waits until everything queued so far is written (or given up on): for a short-lived
    /// process such as `keys create` before it exits.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), written).await;
        }
    }

    /// The records matching `query`, oldest first.
    pub async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, crate::store::StoreError> {
        self.store.audit(query).await
    }

    /// Removes records older than `before`; returns how many.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64, crate::store::StoreError> {
        self.store.prune_audit(before).await
    }
}

/// The digest of a tool's input recorded instead of the input (which may hold anything).
pub fn input_digest(input: &Value) -> String {
    hex::encode(Sha256::digest(input.to_string().as_bytes()))
}

/// Writes queued records in batches, keeping them (in order) while the store is unavailable.
async fn write(store: Arc<dyn AuditStore>, mut receiver: mpsc::Receiver<Message>) {
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut retry = RETRY_FIRST;
    loop {
        if pending.is_empty() {
            match receiver.recv().await {
                Some(Message::Record(record)) => pending.push(*record),
                Some(Message::Flush(done)) => {
                    let _ = done.send(());
                    continue;
                }
                None => return,
            }
        }
        while pending.len() < BATCH {
            match receiver.try_recv() {
                Ok(Message::Record(record)) => pending.push(*record),
                Ok(Message::Flush(done)) => waiting.push(done),
                Err(_) => break,
            }
        }
        match store.append_audit(&pending).await {
            Ok(()) => {
                pending.clear();
                retry = RETRY_FIRST;
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
            Err(e) if e.is_outage() => {
                tracing::warn!(count = pending.len(), error = %e, "the store is unavailable: keeping audit records to write later");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::error!(count = pending.len(), error = %e, "cannot write audit records; they are lost");
                pending.clear();
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }
}
