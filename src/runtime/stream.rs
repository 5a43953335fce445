//! One numbered event stream per session: every event of every turn passes `SessionStream::publish`,
//! which gives it the session's next sequence number, hands it to the event log (the seam where
//! events become durable), and fans it out to the turn's readers on a bounded broadcast. A reader
//! that falls more than the buffer behind is dropped (`Lagged`), never buffered without limit.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::{SessionEvent, SessionId, TurnEvent, TurnId};

/// Where a session's events go to be kept. The runtime calls it once per event, in sequence
/// order, from the session's actor; an implementation must not block (queue and batch instead).
pub trait EventLog: Send + Sync {
    /// The last sequence number stored for a session (0 if none), so a restarted stream continues.
    fn last_seq(&self, session: SessionId) -> u64;
    /// Records one event.
    fn append(&self, session: SessionId, event: &SessionEvent);
}

/// An event log that keeps nothing (events live only in the fan-out buffer).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEventLog;

impl EventLog for NoEventLog {
    fn last_seq(&self, _: SessionId) -> u64 {
        0
    }

    fn append(&self, _: SessionId, _: &SessionEvent) {}
}

/// A session's numbered stream of events.
pub struct SessionStream {
    session: SessionId,
    next_seq: u64,
    fanout: broadcast::Sender<Arc<SessionEvent>>,
    log: Arc<dyn EventLog>,
}

impl SessionStream {
    /// A stream continuing after what `log` holds, fanning out through `buffer` events.
    pub fn new(session: SessionId, log: Arc<dyn EventLog>, buffer: usize) -> Self {
        SessionStream {
            session,
            next_seq: log.last_seq(session) + 1,
            fanout: broadcast::channel(buffer.max(1)).0,
            log,
        }
    }

    /// Numbers, records and fans out one event.
    pub fn publish(&mut self, turn: TurnId, event: TurnEvent) -> Arc<SessionEvent> {
        let event = Arc::new(SessionEvent {
            seq: self.next_seq,
            turn,
            event,
        });
        self.next_seq += 1;
        self.log.append(self.session, &event);
        // No reader is fine: the turn goes on without an audience.
        let _ = self.fanout.send(event.clone());
        event
    }

    /// A reader of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SessionEvent>> {
        self.fanout.subscribe()
    }

    /// How many readers are attached now.
    pub fn readers(&self) -> usize {
        self.fanout.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_in_order_and_a_slow_reader_lags() {
        let mut stream = SessionStream::new(SessionId::new(), Arc::new(NoEventLog), 4);
        let turn = TurnId::new();
        let mut fast = stream.subscribe();
        let mut slow = stream.subscribe();
        for i in 0..10 {
            let event = stream.publish(turn, TurnEvent::TextDelta(i.to_string()));
            assert_eq!(event.seq, i + 1);
            assert_eq!(fast.try_recv().unwrap().seq, i + 1);
        }
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
    }
}
