//! The conformance story of `AuditStore`: every backend numbers, reads and prunes the audit log the
//! same way, and keeps it apart from sessions. Each story runs on every backend, opened fresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Duration, TimeZone, Utc};
use claude_agent_http::domain::SessionId;
use claude_agent_http::store::{AuditQuery, AuditRecord};
use serde_json::json;

use crate::event_store::{Backend, session};

/// Now, to the microsecond (what every backend keeps).
fn now() -> DateTime<Utc> {
    Utc.timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn record(action: &str, user: Option<&str>, at: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        id: 0,
        at,
        action: action.into(),
        principal: user.map(|u| format!("user:{u}")),
        key_id: Some("key_0123".into()),
        user_id: user.map(Into::into),
        session_id: None,
        remote_addr: Some("192.0.2.7:51234".into()),
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        detail: json!({"action": action}),
    }
}

/// Everything, oldest first.
fn all() -> AuditQuery {
    AuditQuery {
        limit: 10_000,
        ..AuditQuery::default()
    }
}

fn ids(records: &[AuditRecord]) -> Vec<i64> {
    records.iter().map(|r| r.id).collect()
}

fn actions(records: &[AuditRecord]) -> Vec<&str> {
    records.iter().map(|r| r.action.as_str()).collect()
}

fn assert_increasing(ids: &[i64]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                records_are_numbered_in_append_order_and_come_back_whole,
                queries_filter_by_user_time_and_position,
                pruning_removes_older_records_counts_them_and_never_frees_a_number,
                concurrent_appends_get_distinct_increasing_ids_and_a_pager_misses_none,
                records_outlive_their_session);
        }
    )*};
    (@stories $open:ident; $($story:ident),*) => {$(
        // Several threads, so that concurrent appends really overlap.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $story() {
            let dir = tempfile::tempdir().unwrap();
            let backend = crate::event_store::$open(dir.path().join("sessions.db")).await;
            super::$story(backend).await
        }
    )*};
}

conformance! {
    memory => open_memory;
    sqlite => open_sqlite;
    postgres => open_postgres;
}

async fn records_are_numbered_in_append_order_and_come_back_whole(backend: Backend) {
    let at = now();
    let mut first = record("key.created", None, at);
    first.principal = Some("admin:env".into());
    first.session_id = Some(SessionId::new());
    // Whatever JSON a detail holds comes back equal: nesting, escapes (NUL included), non-ASCII
    // text, large integers, fractions, nulls.
    first.detail = json!({
        "key": {"id": "key_0123", "role": "user", "user": "alice"},
        "text": "é \"q\" \u{0} \n 😀",
        "n": 9_007_199_254_740_993_u64,
        "neg": -42,
        "cost": 0.000_35,
        "none": null,
        "list": [1, "two", [3], {}],
    });
    let mut second = record("session.created", Some("alice"), at);
    second.detail = json!(["a", 1]);
    let mut third = record("turn.started", Some("alice"), at + Duration::milliseconds(1));
    (third.principal, third.key_id, third.remote_addr, third.request_id) = (None, None, None, None);
    third.detail = json!("plain");
    let batch = [first, second, third];
    backend.audit.append_audit(&batch).await.unwrap();
    backend.audit.append_audit(&[]).await.unwrap();
    let stored = backend.audit.audit(&all()).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_increasing(&ids(&stored));
    for (stored, sent) in stored.iter().zip(&batch) {
        assert_eq!(
            stored,
            &AuditRecord {
                id: stored.id,
                ..sent.clone()
            }
        );
    }
    let later = [
        record("turn.interrupted", Some("bob"), now()),
        record("session.deleted", Some("bob"), now()),
    ];
    backend.audit.append_audit(&later).await.unwrap();
    let stored = backend.audit.audit(&all()).await.unwrap();
    assert_increasing(&ids(&stored));
    assert_eq!(
        actions(&stored),
        vec![
            "key.created",
            "session.created",
            "turn.started",
            "turn.interrupted",
            "session.deleted"
        ]
    );
}

async fn queries_filter_by_user_time_and_position(backend: Backend) {
    let start = now() - Duration::minutes(10);
    let users = [
        Some("alice"),
        Some("bob"),
        None,
        Some("alice"),
        Some("alice"),
        Some("bob"),
    ];
    let batch: Vec<AuditRecord> = users
        .iter()
        .enumerate()
        .map(|(i, user)| record(&format!("a{i}"), *user, start + Duration::minutes(i as i64)))
        .collect();
    backend.audit.append_audit(&batch).await.unwrap();
    let stored = backend.audit.audit(&all()).await.unwrap();
    assert_eq!(actions(&stored), vec!["a0", "a1", "a2", "a3", "a4", "a5"]);
    let query = |query: AuditQuery| {
        let audit = backend.audit.clone();
        async move { audit.audit(&query).await.unwrap() }
    };

    let alice = query(AuditQuery {
        user_id: Some("alice".into()),
        ..all()
    })
    .await;
    assert_eq!(actions(&alice), vec!["a0", "a3", "a4"]);
    assert!(
        query(AuditQuery {
            user_id: Some("nobody".into()),
            ..all()
        })
        .await
        .is_empty()
    );

    // `since` is inclusive.
    let since = query(AuditQuery {
        since: Some(batch[3].at),
        ..all()
    })
    .await;
    assert_eq!(actions(&since), vec!["a3", "a4", "a5"]);

    let after = query(AuditQuery {
        after_id: Some(stored[2].id),
        ..all()
    })
    .await;
    assert_eq!(actions(&after), vec!["a3", "a4", "a5"]);
    assert!(
        query(AuditQuery {
            after_id: Some(stored[5].id),
            ..all()
        })
        .await
        .is_empty()
    );

    let first_two = query(AuditQuery { limit: 2, ..all() }).await;
    assert_eq!(actions(&first_two), vec!["a0", "a1"]);
    assert!(
        query(AuditQuery::default()).await.is_empty(),
        "limit 0 reads nothing"
    );

    let combined = query(AuditQuery {
        user_id: Some("alice".into()),
        since: Some(batch[1].at),
        after_id: Some(stored[0].id),
        limit: 1,
    })
    .await;
    assert_eq!(actions(&combined), vec!["a3"]);

    // Paging through one user's records, one at a time, finds each once, in order.
    let mut paged = Vec::new();
    let mut after_id = None;
    loop {
        let page = query(AuditQuery {
            user_id: Some("bob".into()),
            after_id,
            limit: 1,
            ..AuditQuery::default()
        })
        .await;
        let Some(last) = page.last() else { break };
        after_id = Some(last.id);
        paged.extend(page);
    }
    assert_eq!(actions(&paged), vec!["a1", "a5"]);
}

async fn pruning_removes_older_records_counts_them_and_never_frees_a_number(backend: Backend) {
    let t = now();
    let batch = [
        record("old1", Some("alice"), t - Duration::days(3)),
        record("old2", None, t - Duration::days(2)),
        record("edge", Some("bob"), t - Duration::days(1)),
        record("new1", Some("alice"), t - Duration::hours(1)),
        record("new2", Some("bob"), t),
    ];
    backend.audit.append_audit(&batch).await.unwrap();
    let before = t - Duration::days(1);
    assert_eq!(backend.audit.prune_audit(before).await.unwrap(), 2);
    let kept = backend.audit.audit(&all()).await.unwrap();
    assert_eq!(
        actions(&kept),
        vec!["edge", "new1", "new2"],
        "a record at the cutoff stays"
    );
    assert_eq!(backend.audit.prune_audit(before).await.unwrap(), 0);
    let newest = kept.last().unwrap().id;
    assert_eq!(
        backend.audit.prune_audit(t + Duration::seconds(1)).await.unwrap(),
        3
    );
    assert!(backend.audit.audit(&all()).await.unwrap().is_empty());
    backend
        .audit
        .append_audit(&[record("after", None, now())])
        .await
        .unwrap();
    let after = backend.audit.audit(&all()).await.unwrap();
    assert_eq!(actions(&after), vec!["after"]);
    assert!(
        after[0].id > newest,
        "a pruned number is never given again ({} after {newest}): a reader paging from it would skip",
        after[0].id
    );
}

/// Tasks appending at once, each several batches.
const TASKS: usize = 8;
const BATCHES: usize = 10;
const PER_BATCH: usize = 3;

async fn concurrent_appends_get_distinct_increasing_ids_and_a_pager_misses_none(backend: Backend) {
    let total = TASKS * BATCHES * PER_BATCH;
    let appenders: Vec<_> = (0..TASKS)
        .map(|task| {
            let audit = backend.audit.clone();
            tokio::spawn(async move {
                for batch in 0..BATCHES {
                    let records: Vec<AuditRecord> = (0..PER_BATCH)
                        .map(|i| {
                            let mut r = record("tool.used", Some(&format!("user{task}")), now());
                            r.detail = json!({"task": task, "n": batch * PER_BATCH + i});
                            r
                        })
                        .collect();
                    audit.append_audit(&records).await.unwrap();
                }
            })
        })
        .collect();
    // A reader paging by id while they append, then once more after them: whatever it has seen,
    // nothing may appear before it.
    let appending = Arc::new(AtomicBool::new(true));
    let pager = {
        let (audit, appending) = (backend.audit.clone(), appending.clone());
        tokio::spawn(async move {
            let mut seen: Vec<AuditRecord> = Vec::new();
            loop {
                let last_round = !appending.load(Ordering::SeqCst);
                let page = audit
                    .audit(&AuditQuery {
                        after_id: seen.last().map(|r| r.id),
                        limit: 7,
                        ..AuditQuery::default()
                    })
                    .await
                    .unwrap();
                match page.is_empty() {
                    true if last_round => return seen,
                    true => tokio::task::yield_now().await,
                    false => seen.extend(page),
                }
            }
        })
    };
    for appender in appenders {
        appender.await.unwrap();
    }
    appending.store(false, Ordering::SeqCst);
    let paged = pager.await.unwrap();
    let stored = backend.audit.audit(&all()).await.unwrap();
    assert_eq!(stored.len(), total);
    assert_increasing(&ids(&stored));
    let skipped: Vec<i64> = ids(&stored)
        .into_iter()
        .filter(|id| !paged.iter().any(|r| r.id == *id))
        .collect();
    assert!(
        skipped.is_empty(),
        "the pager skipped {skipped:?}: numbered before what it saw, visible after"
    );
    assert_eq!(ids(&paged), ids(&stored), "the pager saw each record once");
    // Each task's records carry increasing ids in the order the task appended them.
    let mut by_task: HashMap<u64, Vec<u64>> = HashMap::new();
    for r in &stored {
        by_task
            .entry(r.detail["task"].as_u64().unwrap())
            .or_default()
            .push(r.detail["n"].as_u64().unwrap());
    }
    assert_eq!(by_task.len(), TASKS);
    for (task, ns) in by_task {
        assert_eq!(
            ns,
            (0..(BATCHES * PER_BATCH) as u64).collect::<Vec<_>>(),
            "task {task}"
        );
    }
}

async fn records_outlive_their_session(backend: Backend) {
    let id = session(&backend).await;
    let mut created = record("session.created", Some("alice"), now());
    created.session_id = Some(id);
    backend.audit.append_audit(&[created]).await.unwrap();
    assert!(backend.sessions.delete(id).await.unwrap().is_some());
    let mut deleted = record("session.deleted", Some("alice"), now());
    deleted.session_id = Some(id);
    backend.audit.append_audit(&[deleted]).await.unwrap();
    let stored = backend.audit.audit(&all()).await.unwrap();
    assert_eq!(actions(&stored), vec!["session.created", "session.deleted"]);
    assert!(stored.iter().all(|r| r.session_id == Some(id)));
    // A record about a session that never existed is kept too.
    let mut unknown = record("turn.started", Some("alice"), now());
    unknown.session_id = Some(SessionId::new());
    backend.audit.append_audit(&[unknown]).await.unwrap();
    assert_eq!(backend.audit.audit(&all()).await.unwrap().len(), 3);
}
