//! Webhooks: tells configured endpoints about events (`turn.completed`, `turn.failed`,
//! `budget.exceeded`, `session.deleted`). An event is addressed to every endpoint that subscribes
//! to it, queued without waiting (a turn never waits for the store or an endpoint), written to the
//! store by a task of its own (kept and retried through a store outage), and then sent by the
//! delivery worker (`delivery.rs`): a signed JSON POST, retried with exponential backoff until a
//! 2xx or `webhook_delivery.max_attempts`. Deliveries live in the store, so a restart loses none,
//! and instances sharing a store claim them under a lease, so none is sent twice at once.
//!
//! It knows the store and its own config sections; nothing of sessions' lives, agents or HTTP
//! routes (the runtime and the session service call it where events happen).

mod delivery;
mod payload;
mod signature;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{WebhookConfig, WebhookDeliveryConfig};
use crate::domain::{SessionRecord, TurnEvent, TurnId, WebhookEvent};
use crate::store::{StoreError, TurnStatus, WebhookStore};

pub use crate::store::{DeliveryQuery, DeliveryStatus, WebhookDelivery};
pub use payload::DeletionReason;
pub use signature::sign;

/// Events queued before new ones are dropped (with an error in the log).
const QUEUE: usize = 10_000;

/// How long shutdown waits for queued events to reach the store.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(10);

/// One configured endpoint.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: String,
    events: Vec<WebhookEvent>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// How deliveries are tried, from `webhook_delivery`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    max_attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

impl Policy {
    fn of(config: &WebhookDeliveryConfig) -> Policy {
        Policy {
            max_attempts: config.max_attempts.max(1),
            first_backoff: Duration::from_millis(config.retry_backoff_ms),
            max_backoff: Duration::from_secs(config.retry_backoff_max_seconds),
            timeout: Duration::from_secs(config.timeout_seconds.max(1)),
        }
    }

    /// The wait after the `attempts`-th failed attempt: the first backoff, doubled for each
    /// attempt after the first, at most the longest.
    fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.first_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// A listing of deliveries failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where every part of the service sends its events. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    store: Arc<dyn WebhookStore>,
    queue: mpsc::Sender<Message>,
    stop: watch::Sender<bool>,
    worker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

enum Message {
    Deliveries(Vec<WebhookDelivery>),
    Flush(oneshot::Sender<()>),
}

impl Webhooks {
    /// Starts the writer and the delivery worker for `endpoints`, on `store`. Deliveries stored
    /// before (by an earlier run, or another instance) are sent too.
    pub fn start(
        endpoints: &[WebhookConfig],
        delivery: &WebhookDeliveryConfig,
        store: Arc<dyn WebhookStore>,
    ) -> Webhooks {
        let endpoints: Vec<Endpoint> = endpoints
            .iter()
            .map(|config| Endpoint {
                url: config.url.clone(),
                events: config.events.clone(),
                secret: config.secret.as_bytes().to_vec(),
            })
            .collect();
        let (queue, receiver) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        tokio::spawn(write(store.clone(), receiver, wake.clone()));
        let worker = tokio::spawn(delivery::run(
            delivery::Worker::new(endpoints.clone(), Policy::of(delivery), store.clone()),
            wake,
            stopped,
        ));
        if !endpoints.is_empty() {
            tracing::info!(webhooks = endpoints.len(), "webhooks configured");
        }
        Webhooks {
            inner: Arc::new(Inner {
                endpoints,
                store,
                queue,
                stop,
                worker: std::sync::Mutex::new(Some(worker)),
            }),
        }
    }

    /// Tells the endpoints that a turn of `session` ended with `terminal` (recorded as `status`):
    /// `turn.completed`, or `turn.failed` (and `budget.exceeded` for a `budget_exceeded` error).
    /// Never waits.
    pub fn turn_ended(
        &self,
        session: &SessionRecord,
        turn: TurnId,
        status: TurnStatus,
        terminal: &TurnEvent,
    ) {
        if self.inner.endpoints.is_empty() {
            return;
        }
        for event in payload::turn_ended(session, turn, status, terminal) {
            self.emit(event);
        }
    }

    /// Tells the endpoints that `session` is gone. Never waits.
    pub fn session_deleted(&self, session: &SessionRecord, reason: DeletionReason) {
        if self.inner.endpoints.is_empty() {
            return;
        }
        self.emit(payload::session_deleted(session, reason));
    }

    /// Queues one delivery of `event` per endpoint subscribed to it.
    fn emit(&self, event: payload::Event) {
        let body = event.body();
        let deliveries: Vec<WebhookDelivery> = self
            .inner
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.events.contains(&event.kind))
            .map(|endpoint| {
                WebhookDelivery::new(
                    event.id,
                    event.kind.as_str(),
                    &endpoint.url,
                    body.clone(),
                    event.at,
                )
            })
            .collect();
        if deliveries.is_empty() {
            return;
        }
        if self
            .inner
            .queue
            .try_send(Message::Deliveries(deliveries))
            .is_err()
        {
            tracing::error!(webhook.event = event.kind.as_str(), webhook.id = %event.id, "the webhook queue is full or closed: an event is lost");
        }
    }

    /// The deliveries matching `query`, newest first.
    pub async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, WebhookError> {
        Ok(self.inner.store.webhook_deliveries(query).await?)
    }

    /// Removes delivered and failed deliveries created before `before`; returns how many.
    pub async fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, WebhookError> {
        Ok(self.inner.store.prune_webhooks(before).await?)
    }

    /// Writes what is queued to the store (waiting at most a few seconds), then stops the worker
    /// (attempts under way get a short grace, then are recorded as cut short). Deliveries still
    /// pending are sent by the next run.
    pub async fn shutdown(&self) {
        let (done, written) = oneshot::channel();
        if self.inner.queue.send(Message::Flush(done)).await.is_ok()
            && tokio::time::timeout(FLUSH_AT_SHUTDOWN, written).await.is_err()
        {
            tracing::warn!("webhook events not yet stored at shutdown are lost");
        }
        let _ = self.inner.stop.send(true);
        let worker = self.inner.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(worker) = worker {
            let _ = worker.await;
        }
    }
}

/// The first and longest pause between attempts to store events while the store is unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Stores queued deliveries in order (kept while the store is unavailable) and wakes the worker.
async fn write(store: Arc<dyn WebhookStore>, mut receiver: mpsc::Receiver<Message>, wake: Arc<Notify>) {
    let mut pending: Vec<WebhookDelivery> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut retry = RETRY_FIRST;
    loop {
        if pending.is_empty() {
            match receiver.recv().await {
                Some(Message::Deliveries(deliveries)) => pending.extend(deliveries),
                Some(Message::Flush(done)) => {
                    let _ = done.send(());
                    continue;
                }
                None => return,
            }
        }
        while let Ok(message) = receiver.try_recv() {
            match message {
                Message::Deliveries(deliveries) => pending.extend(deliveries),
                Message::Flush(done) => waiting.push(done),
            }
        }
        match store.insert_webhooks(&pending).await {
            Ok(()) => {
                pending.clear();
                retry = RETRY_FIRST;
                wake.notify_one();
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
            Err(e) if e.is_outage() => {
                tracing::warn!(count = pending.len(), error = %e, "the store is unavailable: keeping webhook deliveries to store later");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::error!(count = pending.len(), error = %e, "cannot store webhook deliveries; they are lost");
                pending.clear();
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }
}
