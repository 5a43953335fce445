//! Metering: what each turn's model requests add up to (kept in memory until the turn settles,
//! so its `done` event reports them at once), and each request's record written to the store in
//! the background, retried through an outage. A budget check waits for the requests its session
//! made before to be stored, so it never compares against a total that lacks them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::{BudgetRefusal, Nanos, TurnId, TurnUsage};
use crate::store::{UsageRecord, UsageStore};

/// How long a write of a record is retried through a store outage before it is given up (and
/// the record logged in full, for the operator).
const WRITE_PATIENCE: Duration = Duration::from_secs(600);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one turn's requests add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeteredTurn {
    /// Model requests relayed (refused ones not counted).
    pub requests: u64,
    /// Their tokens.
    pub usage: TurnUsage,
    /// Their cost, from the price table.
    pub cost_nanos: Nanos,
    /// The budget refusal that stopped the turn, if one did.
    pub refusal: Option<BudgetRefusal>,
}

/// A turn being metered: its sums, and its requests whose answers have not ended.
#[derive(Default)]
struct Tally {
    metered: MeteredTurn,
    in_flight: usize,
}

/// Per-process state the relay's handlers and the process's token share.
#[derive(Default)]
pub(super) struct GrantState {
    /// The turn the process's requests count for now.
    turn: Mutex<Option<TurnId>>,
    /// Records of this process not yet stored.
    unwritten: AtomicUsize,
}

impl GrantState {
    /// The turn requests count for now.
    pub(super) fn turn(&self) -> Option<TurnId> {
        *self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_turn(&self, turn: Option<TurnId>) {
        *self.turn.lock().unwrap_or_else(|e| e.into_inner()) = turn;
    }
}

/// Every turn being metered, and the records on their way to the store.
pub(super) struct Meters {
    turns: Mutex<HashMap<TurnId, Tally>>,
    /// Woken whenever a request ends or a record is stored (waiters check their own condition).
    changed: Notify,
    /// Records of every process not yet stored.
    unwritten: AtomicUsize,
    store: Arc<dyn UsageStore>,
}

impl Meters {
    pub(super) fn new(store: Arc<dyn UsageStore>) -> Meters {
        Meters {
            turns: Mutex::default(),
            changed: Notify::new(),
            unwritten: AtomicUsize::new(0),
            store,
        }
    }

    pub(super) fn store(&self) -> &Arc<dyn UsageStore> {
        &self.store
    }

    /// A turn starts: its sums start at zero (a turn handed to a new process keeps what its earlier
    /// process's requests added).
    pub(super) fn begin(&self, turn: TurnId) {
        self.lock().entry(turn).or_default();
    }

    /// A request of `turn` is on its way.
    pub(super) fn request_started(&self, turn: Option<TurnId>) {
        if let Some(turn) = turn
            && let Some(tally) = self.lock().get_mut(&turn)
        {
            tally.in_flight += 1;
        }
    }

    /// A request's answer ended: its sums join its turn's, and its record goes to the store.
    pub(super) fn request_ended(self: &Arc<Self>, grant: &Arc<GrantState>, record: UsageRecord) {
        if let Some(turn) = record.turn_id
            && let Some(tally) = self.lock().get_mut(&turn)
        {
            tally.metered.requests += 1;
            tally.metered.usage.add(&record.usage);
            tally.metered.cost_nanos = tally.metered.cost_nanos.saturating_add(record.cost_nanos);
            tally.in_flight = tally.in_flight.saturating_sub(1);
        }
        self.changed.notify_waiters();
        grant.unwritten.fetch_add(1, Ordering::AcqRel);
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        let meters = self.clone();
        let grant = grant.clone();
        tokio::spawn(async move {
            meters.write(record).await;
            grant.unwritten.fetch_sub(1, Ordering::AcqRel);
            meters.unwritten.fetch_sub(1, Ordering::AcqRel);
            meters.changed.notify_waiters();
        });
    }

    /// A request of `turn` was refused for its budget: the turn ends for that reason.
    pub(super) fn refused(&self, turn: Option<TurnId>, refusal: BudgetRefusal) {
        if let Some(turn) = turn
            && let Some(tally) = self.lock().get_mut(&turn)
        {
            tally.metered.refusal.get_or_insert(refusal);
        }
    }

    /// Waits up to `patience` for `turn`'s answers to end, then gives its sums and stops metering it.
    pub(super) async fn settle(&self, turn: TurnId, patience: Duration) -> Option<MeteredTurn> {
        let ended = self.wait_until(patience, || {
            self.lock().get(&turn).is_none_or(|tally| tally.in_flight == 0)
        });
        if !ended.await {
            tracing::warn!(turn.id = %turn, "a model request of the turn had not ended when the turn did; its tokens are stored but not in the turn's sums");
        }
        self.lock().remove(&turn).map(|tally| tally.metered)
    }

    /// Waits up to `patience` for the records of `grant`'s process to be stored.
    pub(super) async fn written(&self, grant: &GrantState, patience: Duration) -> bool {
        self.wait_until(patience, || grant.unwritten.load(Ordering::Acquire) == 0)
            .await
    }

    /// Waits up to `patience` for every record to be stored.
    pub(super) async fn flush(&self, patience: Duration) -> bool {
        self.wait_until(patience, || self.unwritten.load(Ordering::Acquire) == 0)
            .await
    }

    /// Waits until `done()` holds, or `patience` passes (false then).
    async fn wait_until(&self, patience: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the check and the wait is seen.
            changed.as_mut().enable();
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done();
            }
        }
    }

    /// Stores `record`, retrying through an outage with a growing pause.
    async fn write(&self, record: UsageRecord) {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match self.store.record_usage(std::slice::from_ref(&record)).await {
                Ok(()) => return,
                Err(e) if e.is_outage() && started.elapsed() < WRITE_PATIENCE => {
                    tracing::warn!(session.id = %record.session_id, error = %e, "cannot store a usage record yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::error!(
                        session.id = %record.session_id, user.id = %record.user_id,
                        turn.id = record.turn_id.map(|t| t.to_string()).unwrap_or_default(),
                        relay.model = record.model.as_deref().unwrap_or(""),
                        usage.input_tokens = record.usage.input_tokens,
                        usage.output_tokens = record.usage.output_tokens,
                        usage.cache_read_tokens = record.usage.cache_read_input_tokens,
                        usage.cache_write_tokens = record.usage.cache_creation_input_tokens,
                        usage.cost_nanos = record.cost_nanos, at = %record.at, error = %e,
                        "a usage record could not be stored and is lost"
                    );
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TurnId, Tally>> {
        self.turns.lock().unwrap_or_else(|e| e.into_inner())
    }
}
