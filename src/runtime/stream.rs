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

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::domain::{SessionEvent, SessionId, TurnEvent, TurnId};
use crate::store::{EventStore, StoredEvent, TranscriptStore, TurnRecord};

/// How long the writer gathers events into one transaction.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// Writes queued for the store per session before the agent waits for the store.
const WRITE_QUEUE: usize = 1024;

/// What the writer task is asked to store, in order.
enum Write {
    Begin(TurnRecord),
    Event(StoredEvent),
    Finish(TurnRecord, StoredEvent, bool, oneshot::Sender<bool>),
    Transcript(String, Vec<String>),
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
        tokio::spawn(write_events(session, store, transcripts, queue));
        SessionStream {
            next_seq: last_seq + 1,
            fanout: broadcast::channel(buffer.max(1)).0,
            writes,
        }
    }

    /// Records that a turn has begun.
    pub async fn begin(&self, turn: TurnRecord) {
        let _ = self.writes.send(Write::Begin(turn)).await;
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
    pub async fn finish(&mut self, record: TurnRecord, terminal: TurnEvent) -> (Arc<SessionEvent>, bool) {
        let completed = matches!(terminal, TurnEvent::Done(_));
        let event = self.number(record.turn_id, terminal);
        let (stored, durable) = oneshot::channel();
        let mut exists = true;
        if self
            .writes
            .send(Write::Finish(record, Self::stored(&event), completed, stored))
            .await
            .is_ok()
        {
            exists = durable.await.unwrap_or(true);
        }
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

/// Stores a session's writes in order, batching the events that queued up meanwhile.
async fn write_events(
    session: SessionId,
    store: Arc<dyn EventStore>,
    transcripts: Arc<dyn TranscriptStore>,
    mut queue: mpsc::Receiver<Write>,
) {
    let mut events: Vec<StoredEvent> = Vec::new();
    while let Some(first) = queue.recv().await {
        // Gather for a few milliseconds (a transaction per few ms of deltas, not per delta), but
        // never hold a turn's end: its client waits for it.
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_WINDOW;
        while !matches!(batch.last(), Some(Write::Finish(..))) {
            match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(more)) => batch.push(more),
                _ => break,
            }
        }
        for write in batch {
            match write {
                Write::Event(event) => events.push(event),
                Write::Begin(turn) => {
                    flush(session, store.as_ref(), &mut events).await;
                    if let Err(e) = store.begin_turn(&turn).await {
                        tracing::error!(session.id = %session, turn.id = %turn.turn_id, error = %e, "cannot record the turn's start");
                    }
                }
                Write::Transcript(path, lines) => {
                    if let Err(e) = transcripts.append_transcript(session, &path, &lines).await {
                        tracing::error!(session.id = %session, error = %e, "cannot store the agent's transcript");
                    }
                }
                Write::Finish(turn, terminal, completed, durable) => {
                    events.push(terminal);
                    let exists = match store.finish_turn(&turn, &events, completed).await {
                        Ok(exists) => exists,
                        Err(e) => {
                            tracing::error!(session.id = %session, turn.id = %turn.turn_id, error = %e, "cannot record the turn's end");
                            true
                        }
                    };
                    events.clear();
                    let _ = durable.send(exists);
                }
            }
        }
        flush(session, store.as_ref(), &mut events).await;
    }
}

async fn flush(session: SessionId, store: &dyn EventStore, events: &mut Vec<StoredEvent>) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = store.append_events(session, events).await {
        tracing::error!(session.id = %session, count = events.len(), error = %e, "cannot store events");
    }
    events.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

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
}
