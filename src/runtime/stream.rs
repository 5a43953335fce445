//! One numbered event stream per session: every event of every turn passes `SessionStream`, which
//! gives it the session's next sequence number, makes its wire form once, queues it for the
//! store, and fans it out to live readers on a bounded broadcast (a reader that falls more than the
//! buffer behind is dropped, never buffered without limit).
//!
//! Writing does not slow the stream: a writer task per session stores what has queued up in one
//! transaction while the next events queue behind it (one write per few milliseconds of deltas,
//! not one per delta). The queue is bounded (`WRITE_QUEUE`): only a store that cannot keep up at
//! all holds the agent back, rather than memory growing without limit. A turn's terminal event
//! reaches readers after every event of its turn, and the turn's record, are durable.
//!
//! An unavailable store (an outage) loses nothing: the writer keeps the session's writes in order
//! and retries until the store is back; a turn that ends meanwhile ends as `store_unavailable`
//! after a short grace (see [`SessionStream::finish`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::domain::{SessionEvent, SessionId, TurnErrorCode, TurnEvent, TurnId};
use crate::store::{EventStore, StoredEvent, TranscriptStore, TurnRecord, TurnStatus};
use crate::telemetry::store_operation;

/// How long the writer gathers events into one transaction.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Writes queued for the store per session before the agent waits for the store.
const WRITE_QUEUE: usize = 1024;

/// Writes the writer keeps while the store is unavailable; beyond this it stops taking more, so
/// the agent waits (backpressure) instead of memory growing without limit.
const RETAINED_MAX: usize = 10_000;

/// How long a turn's end waits for an unavailable store before its client is told the turn's
/// events could not be stored (`store_unavailable`): a client never hangs on an outage.
const OUTAGE_GRACE: Duration = Duration::from_secs(5);

/// The first and the longest pause between attempts to write to an unavailable store.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the writer task is asked to store, in order.
enum Write {
    /// A turn's start, with the span it runs in: the writer's lines about that turn's writes
    /// carry its fields (request, session, user, turn) like the actor's.
    Begin(TurnRecord, tracing::Span),
    Event(StoredEvent),
    Finish(Box<Finish>),
    Transcript(String, Vec<String>),
}

/// A turn's end: its record and terminal event, stored with the events before it.
struct Finish {
    record: TurnRecord,
    terminal: StoredEvent,
    completed: bool,
    /// What is stored instead, and what the client gets, when the store stays unavailable past
    /// [`OUTAGE_GRACE`]: the same number, a `store_unavailable` error, the turn failed.
    instead: (TurnRecord, StoredEvent, Arc<SessionEvent>),
    /// Told once: how the end was stored (or that it is waiting for the store).
    answer: Option<oneshot::Sender<Ended>>,
    queued: Instant,
}

/// How a turn's end was stored.
enum Ended {
    /// Durable; whether the session still exists.
    Stored(bool),
    /// The store stayed unavailable: the turn ends as failed, to be stored when it is back.
    Unavailable(Arc<SessionEvent>),
}

/// A session's numbered stream of events.
pub struct SessionStream {
    next_seq: u64,
    fanout: broadcast::Sender<Arc<SessionEvent>>,
    writes: mpsc::Sender<Write>,
}

impl SessionStream {
    /// A stream continuing after event `last_seq`, fanning out through `buffer` events, storing in
    /// `store`.
    pub fn new(
        session: SessionId,
        store: Arc<dyn EventStore>,
        transcripts: Arc<dyn TranscriptStore>,
        last_seq: u64,
        buffer: usize,
    ) -> Self {
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            session,
            store,
            transcripts,
            retained: VecDeque::new(),
            turn_span: tracing::Span::none(),
        };
        tokio::spawn(writer.run(queue));
        SessionStream {
            next_seq: last_seq + 1,
            fanout: broadcast::channel(buffer.max(1)).0,
            writes,
        }
    }

    /// Records that a turn has begun.
    pub async fn begin(&self, turn: TurnRecord) {
        let _ = self
            .writes
            .send(Write::Begin(turn, tracing::Span::current()))
            .await;
    }

    fn number(&mut self, turn: TurnId, event: TurnEvent) -> Arc<SessionEvent> {
        let data = event.wire_json();
        let event = Arc::new(SessionEvent {
            seq: self.next_seq,
            turn,
            event,
            data,
        });
        self.next_seq += 1;
        event
    }

    fn stored(event: &SessionEvent) -> StoredEvent {
        StoredEvent {
            seq: event.seq,
            turn_id: event.turn,
            data: event.data.clone(),
            at: Utc::now(),
        }
    }

    /// Numbers, queues for the store and fans out one event of a running turn.
    pub async fn publish(&mut self, turn: TurnId, event: TurnEvent) -> Arc<SessionEvent> {
        let event = self.number(turn, event);
        let _ = self.writes.send(Write::Event(Self::stored(&event))).await;
        // No reader is fine: the turn goes on without an audience.
        let _ = self.fanout.send(event.clone());
        event
    }

    /// Numbers a turn's terminal event, stores it with the turn's record and the session's new
    /// activity (one transaction, after everything queued before it), and only then fans it out.
    /// Also answers whether the session still exists (false: deleted or expired meanwhile).
    ///
    /// A store that stays unavailable for [`OUTAGE_GRACE`] turns the end into a `store_unavailable`
    /// error under the same number: that is what readers get, and what is stored (with everything
    /// before it, in order) once the store is back, so the replay matches what was streamed.
    pub async fn finish(&mut self, record: TurnRecord, terminal: TurnEvent) -> (Arc<SessionEvent>, bool) {
        let completed = matches!(terminal, TurnEvent::Done(_));
        let seq = self.next_seq;
        let instead = unavailable(&record, &terminal, seq);
        let event = self.number(record.turn_id, terminal);
        let (answer, ended) = oneshot::channel();
        let finish = Finish {
            record,
            terminal: Self::stored(&event),
            completed,
            instead: (instead.0, Self::stored(&instead.1), instead.1),
            answer: Some(answer),
            queued: Instant::now(),
        };
        let (event, exists) = match self.writes.send(Write::Finish(Box::new(finish))).await {
            Err(_) => (event, true),
            Ok(()) => match ended.await {
                Ok(Ended::Stored(exists)) => (event, exists),
                Ok(Ended::Unavailable(instead)) => (instead, true),
                Err(_) => (event, true),
            },
        };
        let _ = self.fanout.send(event.clone());
        (event, exists)
    }

    /// Queues lines the CLI added to its transcript (`path` relative to its config dir).
    pub async fn transcript(&self, path: String, lines: Vec<String>) {
        let _ = self.writes.send(Write::Transcript(path, lines)).await;
    }

    /// A reader of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SessionEvent>> {
        self.fanout.subscribe()
    }
}

/// The record and event (numbered `seq`) that replace a turn's end when the store is unavailable.
fn unavailable(record: &TurnRecord, terminal: &TurnEvent, seq: u64) -> (TurnRecord, Arc<SessionEvent>) {
    let partial = match terminal {
        TurnEvent::Done(outcome) => outcome.clone(),
        TurnEvent::Error { partial, .. } => partial.clone(),
        _ => Default::default(),
    };
    let event = TurnEvent::Error {
        code: TurnErrorCode::StoreUnavailable,
        message: "the session store is unavailable: this turn's events could not be stored; they are \
                  kept and stored when it is back, with the turn marked failed"
            .to_string(),
        partial,
    };
    let mut instead = record.clone();
    instead.status = TurnStatus::Failed;
    instead.error_code = Some(TurnErrorCode::StoreUnavailable.as_str().to_string());
    let data = event.wire_json();
    let event = Arc::new(SessionEvent {
        seq,
        turn: record.turn_id,
        event,
        data,
    });
    (instead, event)
}

/// Stores one session's writes in order. Events that queue up meanwhile go in one transaction.
/// While the store is unavailable (an outage, not a broken write), writes are kept in order and
/// retried with backoff; a broken write is logged and dropped.
struct Writer {
    session: SessionId,
    store: Arc<dyn EventStore>,
    transcripts: Arc<dyn TranscriptStore>,
    retained: VecDeque<Write>,
    /// The span of the turn whose writes are being stored (the latest `Begin` taken up).
    turn_span: tracing::Span,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Write>) {
        let mut retry = RETRY_FIRST;
        let mut open = true;
        loop {
            if self.retained.is_empty() {
                let Some(first) = queue.recv().await else {
                    return;
                };
                self.retained.push_back(first);
                // Gather for a few milliseconds (a transaction per few ms of deltas, not per
                // delta), but never hold a turn's end: its client waits for it.
                let until = Instant::now() + BATCH_WINDOW;
                while !matches!(self.retained.back(), Some(Write::Finish(..))) {
                    match tokio::time::timeout_at(until, queue.recv()).await {
                        Ok(Some(more)) => self.retained.push_back(more),
                        _ => break,
                    }
                }
            }
            if self.store_retained().await {
                retry = RETRY_FIRST;
                continue;
            }
            // Unavailable: answer ends that waited long enough, then wait for the next attempt,
            // taking in what queues meanwhile (up to the bound).
            self.give_up_waiting_ends();
            let attempt = Instant::now() + retry.min(self.until_next_grace());
            retry = (retry * 2).min(RETRY_MAX);
            loop {
                let room = open && self.retained.len() < RETAINED_MAX;
                tokio::select! {
                    more = queue.recv(), if room => match more {
                        Some(write) => self.retained.push_back(write),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(attempt) => break,
                }
            }
            if !open && self.retained.is_empty() {
                return;
            }
        }
    }

    /// Writes the retained writes in order; false when the store is unavailable (what is left
    /// stays retained, in order).
    async fn store_retained(&mut self) -> bool {
        let session = self.session;
        while let Some(front) = self.retained.front() {
            let result = match front {
                Write::Begin(turn, span) => {
                    self.turn_span = span.clone();
                    store_operation("events.begin_turn", self.store.begin_turn(turn))
                        .await
                        .map(|_| true)
                }
                Write::Transcript(path, lines) => store_operation(
                    "transcripts.append",
                    self.transcripts.append_transcript(session, path, lines),
                )
                .await
                .map(|_| true),
                Write::Event(_) | Write::Finish(_) => {
                    // The events up to the next other write, moved out (put back if the store
                    // is unavailable), with the turn's end in the same transaction if it is next.
                    let count = self
                        .retained
                        .iter()
                        .take_while(|write| matches!(write, Write::Event(_)))
                        .count();
                    let mut events: Vec<StoredEvent> = self
                        .retained
                        .drain(..count)
                        .filter_map(|write| match write {
                            Write::Event(event) => Some(event),
                            _ => None,
                        })
                        .collect();
                    let result = match self.retained.front() {
                        Some(Write::Finish(finish)) => {
                            events.push(finish.terminal.clone());
                            let result = store_operation(
                                "events.finish_turn",
                                self.store.finish_turn(&finish.record, &events, finish.completed),
                            )
                            .await;
                            events.pop();
                            result
                        }
                        // The writer's batch: every event queued meanwhile, in one transaction.
                        _ => store_operation("events.append", self.store.append_events(session, &events))
                            .await
                            .map(|_| true),
                    };
                    if matches!(&result, Err(e) if e.is_outage()) {
                        for event in events.into_iter().rev() {
                            self.retained.push_front(Write::Event(event));
                        }
                    } else if !matches!(self.retained.front(), Some(Write::Finish(_))) {
                        // Plain events, stored (or dropped as broken): nothing more to take.
                        if let Err(e) = result {
                            self.turn_span.in_scope(|| {
                                tracing::error!(session.id = %session, count, error = %e, "cannot store events; dropping them")
                            });
                        }
                        continue;
                    }
                    result
                }
            };
            match result {
                Err(e) if e.is_outage() => {
                    let retained = self.retained.len();
                    self.turn_span.in_scope(|| {
                        tracing::warn!(session.id = %session, retained, error = %e, "the store is unavailable: keeping this session's writes to store later")
                    });
                    return false;
                }
                Err(e) => {
                    self.turn_span.in_scope(|| {
                        tracing::error!(session.id = %session, error = %e, "cannot store a write of this session; dropping it")
                    });
                    self.take_front(true);
                }
                Ok(exists) => self.take_front(exists),
            }
        }
        true
    }

    /// Drops the stored front write, answering it if it is a turn's end.
    fn take_front(&mut self, exists: bool) {
        if let Some(Write::Finish(mut finish)) = self.retained.pop_front()
            && let Some(answer) = finish.answer.take()
        {
            let _ = answer.send(Ended::Stored(exists));
        }
    }

    /// Turn ends that waited [`OUTAGE_GRACE`] for the store become `store_unavailable` failures:
    /// their clients are told now, and that is what is stored when the store is back.
    fn give_up_waiting_ends(&mut self) {
        for write in self.retained.iter_mut() {
            if let Write::Finish(finish) = write
                && finish.answer.is_some()
                && finish.queued.elapsed() >= OUTAGE_GRACE
            {
                finish.record = finish.instead.0.clone();
                finish.terminal = finish.instead.1.clone();
                finish.completed = false;
                self.turn_span.in_scope(|| {
                    tracing::warn!(session.id = %self.session, turn.id = %finish.record.turn_id, "the store stayed unavailable: the turn ends as store_unavailable")
                });
                if let Some(answer) = finish.answer.take() {
                    let _ = answer.send(Ended::Unavailable(finish.instead.2.clone()));
                }
            }
        }
    }

    /// How long until the first turn end still waiting reaches its grace.
    fn until_next_grace(&self) -> Duration {
        self.retained
            .iter()
            .filter_map(|write| match write {
                Write::Finish(finish) if finish.answer.is_some() => {
                    Some(OUTAGE_GRACE.saturating_sub(finish.queued.elapsed()))
                }
                _ => None,
            })
            .min()
            .unwrap_or(RETRY_MAX)
            .max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use chrono::DateTime;

    use super::*;
    use crate::domain::{AgentOptions, SessionRecord, TurnOutcome};
    use crate::store::{Limits, MemoryStore, SessionStore, StoreError, Transcript};

    #[tokio::test]
    async fn events_are_numbered_in_order_and_a_slow_reader_lags() {
        let store = Arc::new(MemoryStore::new(0));
        let mut stream = SessionStream::new(SessionId::new(), store.clone(), store, 0, 4);
        let turn = TurnId::new();
        let mut fast = stream.subscribe();
        let mut slow = stream.subscribe();
        for i in 0..10 {
            let event = stream.publish(turn, TurnEvent::TextDelta(i.to_string())).await;
            assert_eq!(event.seq, i + 1);
            assert_eq!(fast.try_recv().unwrap().seq, i + 1);
        }
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
    }

    /// A memory store that is unavailable (an outage) while `down` is set.
    struct Flaky {
        inner: MemoryStore,
        down: AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            match self.down.load(Ordering::SeqCst) {
                true => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
                false => Ok(()),
            }
        }
    }

    #[async_trait]
    impl EventStore for Flaky {
        async fn begin_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
            self.check()?;
            self.inner.begin_turn(turn).await
        }
        async fn append_events(&self, session: SessionId, events: &[StoredEvent]) -> Result<(), StoreError> {
            self.check()?;
            self.inner.append_events(session, events).await
        }
        async fn finish_turn(
            &self,
            turn: &TurnRecord,
            events: &[StoredEvent],
            completed: bool,
        ) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.finish_turn(turn, events, completed).await
        }
        async fn events_after(
            &self,
            session: SessionId,
            after: u64,
            limit: u32,
        ) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.events_after(session, after, limit).await
        }
        async fn last_seq(&self, session: SessionId) -> Result<u64, StoreError> {
            self.inner.last_seq(session).await
        }
        async fn turns(
            &self,
            session: SessionId,
            before: Option<DateTime<Utc>>,
            limit: u32,
        ) -> Result<Vec<TurnRecord>, StoreError> {
            self.inner.turns(session, before, limit).await
        }
        async fn turn(&self, session: SessionId, turn: TurnId) -> Result<Option<TurnRecord>, StoreError> {
            self.inner.turn(session, turn).await
        }
        async fn running_turns(&self) -> Result<Vec<TurnRecord>, StoreError> {
            self.inner.running_turns().await
        }
    }

    #[async_trait]
    impl TranscriptStore for Flaky {
        async fn append_transcript(
            &self,
            session: SessionId,
            path: &str,
            lines: &[String],
        ) -> Result<(), StoreError> {
            self.check()?;
            self.inner.append_transcript(session, path, lines).await
        }
        async fn transcript(&self, session: SessionId) -> Result<Option<Transcript>, StoreError> {
            self.inner.transcript(session).await
        }
    }

    /// A stored session and a running turn of it.
    async fn session_with_turn(store: &MemoryStore) -> (SessionId, TurnRecord) {
        let now = Utc::now();
        let record = SessionRecord {
            session_id: SessionId::new(),
            user_id: "alice".into(),
            subdir: None,
            cwd: "/srv/users/alice".into(),
            options: AgentOptions::default(),
            created_at: now,
            last_active_at: now,
            message_count: 0,
            metadata: Default::default(),
        };
        let limits = Limits {
            max_total: 10,
            max_per_user: 10,
        };
        store.insert(&record, limits).await.unwrap();
        let turn = TurnRecord {
            turn_id: TurnId::new(),
            session_id: record.session_id,
            user_message: "hello".into(),
            status: TurnStatus::Running,
            error_code: None,
            text: String::new(),
            tool_calls: serde_json::json!([]),
            usage: Default::default(),
            cost_usd: 0.0,
            started_at: now,
            finished_at: None,
        };
        (record.session_id, turn)
    }

    async fn stored(store: &Flaky, session: SessionId) -> Vec<(u64, String)> {
        let events = store.inner.events_after(session, 0, 1000).await.unwrap();
        events.into_iter().map(|e| (e.seq, e.data)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_loses_nothing_and_a_turn_ending_in_it_ends_as_store_unavailable() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(0),
            down: AtomicBool::new(false),
        });
        let (session, turn) = session_with_turn(&store.inner).await;
        let mut stream = SessionStream::new(session, store.clone(), store.clone(), 0, 64);
        let mut reader = stream.subscribe();
        stream.begin(turn.clone()).await;
        stream
            .publish(turn.turn_id, TurnEvent::TextDelta("before".into()))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(stored(&store, session).await.len(), 1);

        store.down.store(true, Ordering::SeqCst);
        stream
            .publish(turn.turn_id, TurnEvent::TextDelta("during".into()))
            .await;
        stream.transcript("t.jsonl".into(), vec!["{}".into()]).await;
        let mut finished = turn.clone();
        finished.status = TurnStatus::Completed;
        let started = Instant::now();
        let (end, exists) = stream
            .finish(finished, TurnEvent::Done(TurnOutcome::default()))
            .await;
        assert!(exists);
        assert!(started.elapsed() >= OUTAGE_GRACE, "the end waited for the store");
        assert!(
            started.elapsed() < OUTAGE_GRACE + RETRY_MAX,
            "…but not much longer"
        );
        assert_eq!(end.seq, 3);
        assert!(
            matches!(
                end.event,
                TurnEvent::Error {
                    code: TurnErrorCode::StoreUnavailable,
                    ..
                }
            ),
            "{end:?}"
        );
        // Readers got everything, the substituted end last.
        let seen: Vec<u64> = std::iter::from_fn(|| reader.try_recv().ok())
            .map(|e| e.seq)
            .collect();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(
            stored(&store, session).await.len(),
            1,
            "nothing stored while down"
        );

        // Back: everything kept is stored in order, the end as the readers saw it.
        store.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(RETRY_MAX * 2).await;
        let events = stored(&store, session).await;
        assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(events[2].1, end.data);
        let record = store.inner.turn(session, turn.turn_id).await.unwrap().unwrap();
        assert_eq!(record.status, TurnStatus::Failed);
        assert_eq!(record.error_code.as_deref(), Some("store_unavailable"));
        assert!(store.inner.transcript(session).await.unwrap().is_some());

        // The next turn goes on numbering after it, stored at once.
        let next = TurnRecord {
            turn_id: TurnId::new(),
            ..turn.clone()
        };
        stream.begin(next.clone()).await;
        let mut done = next.clone();
        done.status = TurnStatus::Completed;
        let (end, _) = stream.finish(done, TurnEvent::Done(TurnOutcome::default())).await;
        assert_eq!(end.seq, 4);
        assert!(matches!(end.event, TurnEvent::Done(_)));
        assert_eq!(stored(&store, session).await.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_outage_delays_a_turns_end_but_does_not_fail_it() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(0),
            down: AtomicBool::new(true),
        });
        let (session, turn) = session_with_turn(&store.inner).await;
        let mut stream = SessionStream::new(session, store.clone(), store.clone(), 0, 64);
        stream.begin(turn.clone()).await;
        stream
            .publish(turn.turn_id, TurnEvent::TextDelta("hi".into()))
            .await;
        let back = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(OUTAGE_GRACE / 2).await;
            back.down.store(false, Ordering::SeqCst);
        });
        let mut finished = turn.clone();
        finished.status = TurnStatus::Completed;
        let (end, exists) = stream
            .finish(finished, TurnEvent::Done(TurnOutcome::default()))
            .await;
        assert!(exists);
        assert!(matches!(end.event, TurnEvent::Done(_)), "{end:?}");
        assert_eq!(stored(&store, session).await.len(), 2);
        let record = store.inner.turn(session, turn.turn_id).await.unwrap().unwrap();
        assert_eq!(record.status, TurnStatus::Completed);
    }
}
