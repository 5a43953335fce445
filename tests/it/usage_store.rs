//! The conformance story of `UsageStore`: every backend keeps each model request's record, sums
//! them by day, model, session and turn, keeps running totals per user-day, user-month, session
//! and turn that concurrent writers (tasks or instances) never lose a request of, and keeps users'
//! budget overrides. Each story runs on every backend, opened fresh.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use claude_agent_http::domain::{BudgetOverride, SessionId, TurnId, TurnUsage};
use claude_agent_http::store::{SqliteStore, UsageGroup, UsageQuery, UsageRecord, UsageStore};

use crate::event_store::{AtRest, Backend};

macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                records_are_summed_by_every_breakdown_and_filter,
                spending_counts_the_user_s_day_and_month_the_session_and_the_turn,
                concurrent_writers_never_lose_a_request,
                a_budget_override_is_kept_replaced_and_removed,
                records_are_listed_newest_first_and_survive_reopening);
        }
    )*};
    (@stories $open:ident; $($story:ident),*) => {$(
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

/// Another store on the same rows (a second instance, or the next start); `None` for memory.
async fn another_instance(at_rest: &AtRest) -> Option<Arc<dyn UsageStore>> {
    match at_rest {
        AtRest::Memory => None,
        AtRest::Sqlite(path) => Some(Arc::new(SqliteStore::open(path, 0).await.unwrap())),
        AtRest::Postgres(database) => Some(Arc::new(database.store(0).await)),
    }
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

/// A record of `user`'s with `tokens` input tokens (and one of each other kind) costing `cost`.
fn record(
    user: &str,
    session: SessionId,
    turn: Option<TurnId>,
    model: Option<&str>,
    tokens: u64,
    cost: u64,
    when: DateTime<Utc>,
) -> UsageRecord {
    UsageRecord {
        session_id: session,
        user_id: user.into(),
        turn_id: turn,
        model: model.map(str::to_string),
        usage: TurnUsage {
            input_tokens: tokens,
            output_tokens: 1,
            cache_read_input_tokens: 1,
            cache_creation_input_tokens: 1,
        },
        cost_nanos: cost,
        status: 200,
        duration_ms: 5,
        path: "/v1/messages".into(),
        at: when,
    }
}

async fn records_are_summed_by_every_breakdown_and_filter(backend: Backend) {
    let usage = backend.usage.clone();
    let (one, two) = (SessionId::new(), SessionId::new());
    let turn = TurnId::new();
    usage
        .record_usage(&[
            record("alice", one, Some(turn), Some("claude-a"), 10, 1_000, at(3, 9)),
            record("alice", one, Some(turn), Some("claude-b"), 20, 2_000, at(3, 23)),
            record("alice", two, None, None, 30, 3_000, at(4, 0)),
        ])
        .await
        .unwrap();
    usage
        .record_usage(&[record(
            "bob",
            SessionId::new(),
            None,
            Some("claude-a"),
            40,
            4_000,
            at(3, 12),
        )])
        .await
        .unwrap();
    let alice = UsageQuery {
        user_id: Some("alice".into()),
        ..UsageQuery::default()
    };
    let (totals, days) = usage.usage_totals(&alice, Some(UsageGroup::Day)).await.unwrap();
    assert_eq!(totals.requests, 3);
    assert_eq!(totals.usage.input_tokens, 60);
    assert_eq!(totals.usage.output_tokens, 3);
    assert_eq!(totals.usage.total(), 69);
    assert_eq!(totals.cost_nanos, 6_000);
    let days: Vec<(String, u64)> = days.into_iter().map(|(k, t)| (k, t.cost_nanos)).collect();
    assert_eq!(
        days,
        vec![("2026-11-03".into(), 3_000), ("2026-11-04".into(), 3_000)]
    );
    let (_, models) = usage.usage_totals(&alice, Some(UsageGroup::Model)).await.unwrap();
    let models: Vec<(String, u64)> = models.into_iter().map(|(k, t)| (k, t.requests)).collect();
    assert_eq!(
        models,
        vec![
            ("claude-a".into(), 1),
            ("claude-b".into(), 1),
            ("unknown".into(), 1)
        ]
    );
    let (_, sessions) = usage
        .usage_totals(&alice, Some(UsageGroup::Session))
        .await
        .unwrap();
    let mut expected = vec![(one.to_string(), 3_000), (two.to_string(), 3_000)];
    expected.sort();
    let sessions: Vec<(String, u64)> = sessions.into_iter().map(|(k, t)| (k, t.cost_nanos)).collect();
    assert_eq!(sessions, expected);
    let (_, turns) = usage.usage_totals(&alice, Some(UsageGroup::Turn)).await.unwrap();
    let turns: Vec<(String, u64)> = turns.into_iter().map(|(k, t)| (k, t.requests)).collect();
    let mut expected = vec![(turn.to_string(), 2), ("none".to_string(), 1)];
    expected.sort();
    assert_eq!(turns, expected);

    // Filters: a session, a period [from, to), everyone.
    let (of_one, none) = usage
        .usage_totals(
            &UsageQuery {
                session_id: Some(one),
                ..UsageQuery::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((of_one.requests, of_one.cost_nanos), (2, 3_000));
    assert!(none.is_empty(), "no breakdown without group_by");
    let (third, _) = usage
        .usage_totals(
            &UsageQuery {
                from: Some(at(3, 9)),
                to: Some(at(3, 23)),
                ..UsageQuery::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (third.requests, third.cost_nanos),
        (2, 5_000),
        "alice's 09:00 and bob's 12:00"
    );
    let (everyone, _) = usage.usage_totals(&UsageQuery::default(), None).await.unwrap();
    assert_eq!((everyone.requests, everyone.cost_nanos), (4, 10_000));
    let (nobody, groups) = usage
        .usage_totals(
            &UsageQuery {
                user_id: Some("carol".into()),
                ..UsageQuery::default()
            },
            Some(UsageGroup::Day),
        )
        .await
        .unwrap();
    assert_eq!((nobody.requests, nobody.cost_nanos, groups.len()), (0, 0, 0));
}

async fn spending_counts_the_user_s_day_and_month_the_session_and_the_turn(backend: Backend) {
    let usage = backend.usage.clone();
    let session = SessionId::new();
    let turn = TurnId::new();
    let now = Utc.with_ymd_and_hms(2026, 12, 15, 12, 0, 0).unwrap();
    usage
        .record_usage(&[
            // Last month: in no total of this day or month, but in the session's.
            record("alice", session, None, None, 1, 100, now - Duration::days(20)),
            // Earlier this month.
            record("alice", session, None, None, 1, 10, now - Duration::days(2)),
            // Today, in the turn.
            record("alice", session, Some(turn), None, 1, 1, now - Duration::hours(1)),
            record("alice", session, Some(turn), None, 1, 2, now),
            // Another of alice's sessions today; and bob.
            record("alice", SessionId::new(), None, None, 1, 1_000, now),
            record("bob", session, None, None, 1, 10_000, now),
        ])
        .await
        .unwrap();
    let spending = usage.spending("alice", session, Some(turn), now).await.unwrap();
    assert_eq!(spending.user_day.cost_nanos, 1 + 2 + 1_000);
    assert_eq!(spending.user_day.tokens, 3 * 4);
    assert_eq!(spending.user_month.cost_nanos, 10 + 1 + 2 + 1_000);
    // The session's total counts whoever's records carry its id (a session has one user).
    assert_eq!(spending.session.cost_nanos, 100 + 10 + 1 + 2 + 10_000);
    assert_eq!(spending.turn.cost_nanos, 3);
    assert_eq!(spending.turn.tokens, 8);
    let without_turn = usage.spending("alice", session, None, now).await.unwrap();
    assert_eq!(without_turn.turn.cost_nanos, 0);
    let stranger = usage
        .spending("carol", SessionId::new(), Some(TurnId::new()), now)
        .await
        .unwrap();
    assert_eq!(stranger, Default::default());
}

async fn concurrent_writers_never_lose_a_request(backend: Backend) {
    let session = SessionId::new();
    let turn = TurnId::new();
    let now = Utc::now();
    // Four writers, each on its own store of the same rows where the backend has rows elsewhere.
    let mut writers: Vec<Arc<dyn UsageStore>> = vec![backend.usage.clone()];
    for _ in 0..3 {
        writers.push(match another_instance(&backend.at_rest).await {
            Some(store) => store,
            None => backend.usage.clone(),
        });
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .record_usage(&[record("alice", session, Some(turn), Some("m"), 1, 7, now)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let spending = backend
        .usage
        .spending("alice", session, Some(turn), now)
        .await
        .unwrap();
    for spent in [
        spending.user_day,
        spending.user_month,
        spending.session,
        spending.turn,
    ] {
        assert_eq!(spent.cost_nanos, 100 * 7);
        assert_eq!(spent.tokens, 100 * 4);
    }
    let (totals, _) = backend
        .usage
        .usage_totals(&UsageQuery::default(), None)
        .await
        .unwrap();
    assert_eq!(totals.requests, 100);
}

async fn a_budget_override_is_kept_replaced_and_removed(backend: Backend) {
    let usage = backend.usage.clone();
    assert_eq!(usage.budget_override("alice").await.unwrap(), None);
    let own: BudgetOverride = serde_json::from_value(serde_json::json!({
        "user_daily_usd": 2.5, "session_usd": null, "turn_tokens": 5000_u64
    }))
    .unwrap();
    usage.set_budget_override("alice", &own).await.unwrap();
    assert_eq!(usage.budget_override("alice").await.unwrap(), Some(own.clone()));
    assert_eq!(usage.budget_override("bob").await.unwrap(), None);
    if let Some(again) = another_instance(&backend.at_rest).await {
        assert_eq!(again.budget_override("alice").await.unwrap(), Some(own.clone()));
    }
    // A new override replaces the old one whole: keys left out go back to the defaults.
    let replaced = BudgetOverride {
        user_monthly_usd: Some(Some(100.0)),
        ..BudgetOverride::default()
    };
    usage.set_budget_override("alice", &replaced).await.unwrap();
    assert_eq!(usage.budget_override("alice").await.unwrap(), Some(replaced));
    assert!(usage.delete_budget_override("alice").await.unwrap());
    assert!(!usage.delete_budget_override("alice").await.unwrap());
    assert_eq!(usage.budget_override("alice").await.unwrap(), None);
}

async fn records_are_listed_newest_first_and_survive_reopening(backend: Backend) {
    let usage = backend.usage.clone();
    let session = SessionId::new();
    let turn = TurnId::new();
    let first = record("alice", session, Some(turn), Some("claude-a"), 1, 1, at(5, 1));
    let second = record("alice", session, None, None, 2, 2, at(5, 2));
    usage.record_usage(std::slice::from_ref(&first)).await.unwrap();
    usage.record_usage(std::slice::from_ref(&second)).await.unwrap();
    usage
        .record_usage(&[record("bob", SessionId::new(), None, None, 3, 3, at(5, 3))])
        .await
        .unwrap();
    let alice = UsageQuery {
        user_id: Some("alice".into()),
        ..UsageQuery::default()
    };
    assert_eq!(
        usage.usage_records(&alice, 10).await.unwrap(),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(
        usage.usage_records(&alice, 1).await.unwrap(),
        vec![second.clone()]
    );
    assert_eq!(
        usage
            .usage_records(&UsageQuery::default(), 10)
            .await
            .unwrap()
            .len(),
        3
    );
    if let Some(again) = another_instance(&backend.at_rest).await {
        assert_eq!(
            again.usage_records(&alice, 10).await.unwrap(),
            vec![second, first]
        );
    }
}
