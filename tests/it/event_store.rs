//! The conformance story of `EventStore` and `TranscriptStore`: every backend keeps turns, their
//! numbered events and the CLI's transcript the same way. Each story runs on every backend, opened fresh.

use std::sync::Arc;

use chrono::{Duration, Utc};
use claude_agent_http::config::Config;
use claude_agent_http::domain::{SessionId, SessionRecord, TurnId, TurnUsage};
use claude_agent_http::store::{
    Limits, MemoryStore, SqliteStore, StoreError, StoredEvent, Stores, TurnRecord, TurnStatus,
};
use serde_json::json;

use crate::support::pg::TestDatabase;

/// One backend, seen through each of its traits (`backend.events`, ... through [`Stores`]), and
/// where it keeps its rows, to look at them at rest.
pub struct Backend {
    pub stores: Stores,
    pub at_rest: AtRest,
}

/// Where a backend's rows are: kept alive for the story (a PostgreSQL database is dropped with it).
pub enum AtRest {
    Memory,
    /// The SQLite file.
    Sqlite(std::path::PathBuf),
    Postgres(TestDatabase),
}

impl std::ops::Deref for Backend {
    type Target = Stores;

    fn deref(&self) -> &Stores {
        &self.stores
    }
}

pub async fn open_memory(_: std::path::PathBuf) -> Backend {
    Backend {
        stores: Stores::of(Arc::new(MemoryStore::new(0))),
        at_rest: AtRest::Memory,
    }
}

pub async fn open_sqlite(path: std::path::PathBuf) -> Backend {
    Backend {
        stores: Stores::of(Arc::new(SqliteStore::open(&path, 0).await.unwrap())),
        at_rest: AtRest::Sqlite(path),
    }
}

/// A fresh database on the machine's PostgreSQL, dropped after the story.
pub async fn open_postgres(_: std::path::PathBuf) -> Backend {
    let database = TestDatabase::create().await;
    Backend {
        stores: Stores::of(Arc::new(database.store(0).await)),
        at_rest: AtRest::Postgres(database),
    }
}

/// A new session of alice's.
pub async fn session(backend: &Backend) -> SessionId {
    let now = Utc::now();
    let record = SessionRecord {
        session_id: SessionId::new(),
        user_id: "alice".into(),
        subdir: None,
        cwd: "/srv/users/alice".into(),
        options: Config::default().agent_options(),
        created_at: now,
        last_active_at: now,
        message_count: 0,
        metadata: Default::default(),
    };
    let limits = Limits {
        max_total: 1000,
        max_per_user: 1000,
    };
    backend.sessions.insert(&record, limits).await.unwrap();
    record.session_id
}

fn turn(session: SessionId, message: &str, started_at: chrono::DateTime<Utc>) -> TurnRecord {
    TurnRecord {
        turn_id: TurnId::new(),
        session_id: session,
        user_message: message.into(),
        status: TurnStatus::Running,
        error_code: None,
        text: String::new(),
        tool_calls: json!([]),
        usage: TurnUsage::default(),
        cost_usd: 0.0,
        started_at,
        finished_at: None,
    }
}

fn event(turn: &TurnRecord, seq: u64, text: &str) -> StoredEvent {
    StoredEvent {
        seq,
        turn_id: turn.turn_id,
        // Key order, escapes and non-ASCII text must come back byte for byte.
        data: format!(r#"{{"type":"text_delta","text":"{text} é \"q\""}}"#),
        at: Utc::now(),
    }
}

macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                events_come_back_in_order_byte_for_byte_and_by_page,
                a_number_already_stored_is_refused,
                finishing_a_turn_records_its_outcome_with_its_last_events,
                running_turns_are_the_unfinished_ones,
                turns_page_newest_before_a_time_oldest_first,
                deleting_a_session_removes_its_turns_and_events,
                sessions_number_their_events_separately,
                transcripts_keep_their_lines_in_order_until_the_session_goes);
        }
    )*};
    (@stories $open:ident; $($story:ident),*) => {$(
        #[tokio::test]
        async fn $story() {
            let dir = tempfile::tempdir().unwrap();
            let backend = super::$open(dir.path().join("sessions.db")).await;
            super::$story(backend).await
        }
    )*};
}

conformance! {
    memory => open_memory;
    sqlite => open_sqlite;
    postgres => open_postgres;
}

async fn events_come_back_in_order_byte_for_byte_and_by_page(backend: Backend) {
    let id = session(&backend).await;
    let turn = turn(id, "hello", Utc::now());
    backend.events.begin_turn(&turn).await.unwrap();
    let events: Vec<StoredEvent> = (1..=5).map(|seq| event(&turn, seq, &format!("w{seq}"))).collect();
    backend.events.append_events(id, &events[..2]).await.unwrap();
    backend.events.append_events(id, &events[2..]).await.unwrap();
    let all = backend.events.events_after(id, 0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    for (stored, sent) in all.iter().zip(&events) {
        assert_eq!(
            (stored.seq, stored.turn_id, &stored.data),
            (sent.seq, sent.turn_id, &sent.data)
        );
        assert_eq!(stored.at.timestamp_micros(), sent.at.timestamp_micros());
    }
    let page: Vec<u64> = backend
        .events
        .events_after(id, 2, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, vec![3, 4]);
    assert!(backend.events.events_after(id, 5, 10).await.unwrap().is_empty());
    assert_eq!(backend.events.last_seq(id).await.unwrap(), 5);
}

async fn a_number_already_stored_is_refused(backend: Backend) {
    let id = session(&backend).await;
    let turn = turn(id, "hello", Utc::now());
    backend.events.begin_turn(&turn).await.unwrap();
    let events: Vec<StoredEvent> = (1..=3).map(|seq| event(&turn, seq, "x")).collect();
    backend.events.append_events(id, &events).await.unwrap();
    for again in [&events[2], &events[1]] {
        let refused = backend
            .events
            .append_events(id, std::slice::from_ref(again))
            .await;
        assert!(
            matches!(refused, Err(StoreError::Duplicate(s)) if s == id),
            "{refused:?}"
        );
    }
    assert_eq!(backend.events.events_after(id, 0, 10).await.unwrap().len(), 3);
}

async fn finishing_a_turn_records_its_outcome_with_its_last_events(backend: Backend) {
    let id = session(&backend).await;
    let mut turn = turn(id, "write a file", Utc::now());
    backend.events.begin_turn(&turn).await.unwrap();
    assert_eq!(
        backend
            .events
            .turn(id, turn.turn_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TurnStatus::Running
    );
    backend
        .events
        .append_events(id, &[event(&turn, 1, "a")])
        .await
        .unwrap();
    turn.status = TurnStatus::Completed;
    turn.text = "Done.".into();
    turn.tool_calls = json!([{"tool": "Write", "input": {"file_path": "a"}, "id": "t1", "result": "ok", "is_error": false}]);
    turn.usage = TurnUsage {
        input_tokens: 3,
        output_tokens: 4,
        cache_creation_input_tokens: 5,
        cache_read_input_tokens: 6,
    };
    turn.cost_usd = 0.00035;
    turn.finished_at = Some(Utc::now());
    let done = StoredEvent {
        data: r#"{"type":"done","text":"Done."}"#.into(),
        ..event(&turn, 2, "")
    };
    assert!(backend.events.finish_turn(&turn, &[done], true).await.unwrap());
    let session = backend.sessions.get(id).await.unwrap().unwrap();
    assert_eq!(
        session.message_count, 1,
        "a completed turn counts as a message, in the same transaction"
    );
    let stored = backend.events.turn(id, turn.turn_id).await.unwrap().unwrap();
    assert_eq!(stored.status, TurnStatus::Completed);
    assert_eq!(
        (stored.text.as_str(), &stored.tool_calls, &stored.usage),
        (turn.text.as_str(), &turn.tool_calls, &turn.usage)
    );
    assert!((stored.cost_usd - 0.00035).abs() < 1e-12);
    assert_eq!(
        stored.finished_at.map(|t| t.timestamp_micros()),
        turn.finished_at.map(|t| t.timestamp_micros())
    );
    assert_eq!(backend.events.last_seq(id).await.unwrap(), 2);
    assert!(
        backend
            .events
            .running_turns()
            .await
            .unwrap()
            .iter()
            .all(|t| t.turn_id != turn.turn_id)
    );
}

async fn running_turns_are_the_unfinished_ones(backend: Backend) {
    let (a, b) = (session(&backend).await, session(&backend).await);
    let mut finished = turn(a, "one", Utc::now());
    let running = turn(b, "two", Utc::now());
    backend.events.begin_turn(&finished).await.unwrap();
    backend.events.begin_turn(&running).await.unwrap();
    finished.status = TurnStatus::Failed;
    finished.error_code = Some("agent_crashed".into());
    finished.finished_at = Some(Utc::now());
    assert!(backend.events.finish_turn(&finished, &[], false).await.unwrap());
    assert_eq!(
        backend.sessions.get(a).await.unwrap().unwrap().message_count,
        0,
        "a failed turn is not counted"
    );
    let open: Vec<TurnId> = backend
        .events
        .running_turns()
        .await
        .unwrap()
        .iter()
        .map(|t| t.turn_id)
        .collect();
    assert!(open.contains(&running.turn_id));
    assert!(!open.contains(&finished.turn_id));
    let stored = backend.events.turn(a, finished.turn_id).await.unwrap().unwrap();
    assert_eq!(stored.error_code.as_deref(), Some("agent_crashed"));
}

async fn turns_page_newest_before_a_time_oldest_first(backend: Backend) {
    let id = session(&backend).await;
    let start = Utc::now() - Duration::minutes(10);
    let turns: Vec<TurnRecord> = (0..5)
        .map(|i| turn(id, &format!("m{i}"), start + Duration::minutes(i)))
        .collect();
    for t in &turns {
        backend.events.begin_turn(t).await.unwrap();
    }
    let messages = |page: Vec<TurnRecord>| page.into_iter().map(|t| t.user_message).collect::<Vec<_>>();
    assert_eq!(
        messages(backend.events.turns(id, None, 2).await.unwrap()),
        vec!["m3", "m4"]
    );
    assert_eq!(
        messages(
            backend
                .events
                .turns(id, Some(turns[3].started_at), 10)
                .await
                .unwrap()
        ),
        vec!["m0", "m1", "m2"]
    );
    assert_eq!(
        messages(
            backend
                .events
                .turns(id, Some(turns[3].started_at), 2)
                .await
                .unwrap()
        ),
        vec!["m1", "m2"]
    );
    assert!(backend.events.turn(id, TurnId::new()).await.unwrap().is_none());
}

async fn deleting_a_session_removes_its_turns_and_events(backend: Backend) {
    let id = session(&backend).await;
    let mut turn = turn(id, "hello", Utc::now());
    backend.events.begin_turn(&turn).await.unwrap();
    backend
        .events
        .append_events(id, &[event(&turn, 1, "a")])
        .await
        .unwrap();
    assert!(backend.sessions.delete(id).await.unwrap().is_some());
    assert!(backend.events.events_after(id, 0, 10).await.unwrap().is_empty());
    assert_eq!(backend.events.last_seq(id).await.unwrap(), 0);
    assert!(backend.events.turn(id, turn.turn_id).await.unwrap().is_none());
    // A turn that was running when its session went writes nothing, and fails nothing.
    backend
        .events
        .append_events(id, &[event(&turn, 2, "b")])
        .await
        .unwrap();
    turn.status = TurnStatus::Interrupted;
    backend
        .events
        .finish_turn(&turn, &[event(&turn, 3, "c")], false)
        .await
        .unwrap();
    assert!(backend.events.events_after(id, 0, 10).await.unwrap().is_empty());
    assert!(
        backend
            .events
            .running_turns()
            .await
            .unwrap()
            .iter()
            .all(|t| t.session_id != id)
    );
}

async fn sessions_number_their_events_separately(backend: Backend) {
    let (a, b) = (session(&backend).await, session(&backend).await);
    let (ta, tb) = (turn(a, "a", Utc::now()), turn(b, "b", Utc::now()));
    backend.events.begin_turn(&ta).await.unwrap();
    backend.events.begin_turn(&tb).await.unwrap();
    backend
        .events
        .append_events(a, &[event(&ta, 1, "a1"), event(&ta, 2, "a2")])
        .await
        .unwrap();
    backend
        .events
        .append_events(b, &[event(&tb, 1, "b1")])
        .await
        .unwrap();
    assert_eq!(backend.events.last_seq(a).await.unwrap(), 2);
    assert_eq!(backend.events.last_seq(b).await.unwrap(), 1);
    let of_b = backend.events.events_after(b, 0, 10).await.unwrap();
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].turn_id, tb.turn_id);
}

async fn transcripts_keep_their_lines_in_order_until_the_session_goes(backend: Backend) {
    let (a, b) = (session(&backend).await, session(&backend).await);
    assert!(backend.transcripts.transcript(a).await.unwrap().is_none());
    let path = format!("projects/-srv-users-alice/{a}.jsonl");
    let lines = |range: std::ops::Range<u32>| {
        range
            .map(|i| format!(r#"{{"n":{i},"text":"é \"q\""}}"#))
            .collect::<Vec<_>>()
    };
    backend
        .transcripts
        .append_transcript(a, &path, &lines(0..3))
        .await
        .unwrap();
    backend
        .transcripts
        .append_transcript(a, &path, &lines(3..5))
        .await
        .unwrap();
    backend
        .transcripts
        .append_transcript(b, "projects/x/b.jsonl", &lines(0..1))
        .await
        .unwrap();
    let saved = backend.transcripts.transcript(a).await.unwrap().unwrap();
    assert_eq!(saved.path, path);
    assert_eq!(saved.lines, lines(0..5));
    assert_eq!(
        backend
            .transcripts
            .transcript(b)
            .await
            .unwrap()
            .unwrap()
            .lines
            .len(),
        1
    );
    backend.sessions.delete(a).await.unwrap();
    assert!(backend.transcripts.transcript(a).await.unwrap().is_none());
    backend
        .transcripts
        .append_transcript(a, &path, &lines(5..6))
        .await
        .unwrap();
    assert!(
        backend.transcripts.transcript(a).await.unwrap().is_none(),
        "nothing is written for a deleted session"
    );
}
