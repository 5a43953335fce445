//! The conformance story of `UidStore`: every backend gives each user one uid, the lowest free one
//! of the range asked for, once and for good, and never gives one uid twice, on one instance or
//! several. Each story runs on every backend, opened fresh.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use claude_agent_http::store::{SqliteStore, StoreError, UidStore};

use crate::event_store::{AtRest, Backend, session};

macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                a_user_keeps_its_uid_also_after_reopening,
                different_users_get_different_uids,
                the_lowest_free_uid_comes_first,
                a_used_up_range_is_a_conflict_and_allocates_nothing,
                concurrent_allocations_give_each_user_one_uid_and_no_uid_twice,
                a_uid_outlives_the_users_sessions,
                uid_of_answers_what_was_given_and_allocates_nothing,
                a_uid_outside_the_range_asked_now_is_kept,
                an_empty_or_overflowing_range_is_refused);
        }
    )*};
    (@stories $open:ident; $($story:ident),*) => {$(
        // Several threads, so that concurrent allocations really overlap.
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

/// Another store on the same rows, as a second instance (or the next start) would open it; `None`
/// for the memory backend, whose rows live in its one store.
async fn another_instance(at_rest: &AtRest) -> Option<Arc<dyn UidStore>> {
    match at_rest {
        AtRest::Memory => None,
        AtRest::Sqlite(path) => Some(Arc::new(SqliteStore::open(path, 0).await.unwrap())),
        AtRest::Postgres(database) => Some(Arc::new(database.store(0).await)),
    }
}

async fn a_user_keeps_its_uid_also_after_reopening(backend: Backend) {
    let uids = backend.uids.clone();
    let alice = uids.uid_for("alice", 1000, 100).await.unwrap();
    assert_eq!(alice, 1000);
    let bob = uids.uid_for("bob", 1000, 100).await.unwrap();
    assert_eq!(uids.uid_for("alice", 1000, 100).await.unwrap(), alice);
    assert_eq!(uids.uid_of("alice").await.unwrap(), Some(alice));
    // The store closed, and opened again on the same rows.
    let Backend { stores, at_rest } = backend;
    drop((stores, uids));
    let Some(reopened) = another_instance(&at_rest).await else {
        return;
    };
    assert_eq!(reopened.uid_of("alice").await.unwrap(), Some(alice));
    assert_eq!(reopened.uid_for("alice", 1000, 100).await.unwrap(), alice);
    assert_eq!(reopened.uid_for("bob", 1000, 100).await.unwrap(), bob);
    assert_eq!(
        reopened.uid_for("carol", 1000, 100).await.unwrap(),
        1002,
        "the uids given before are still taken"
    );
}

async fn different_users_get_different_uids(backend: Backend) {
    let mut given = BTreeSet::new();
    for i in 0..20 {
        let uid = backend
            .uids
            .uid_for(&format!("user{i}"), 20_000, 1000)
            .await
            .unwrap();
        assert!((20_000..21_000).contains(&uid), "{uid}");
        assert!(given.insert(uid), "uid {uid} given twice");
    }
    assert_eq!(given, (20_000..20_020).collect::<BTreeSet<u32>>());
    // User ids differ only in case or by a space: different users.
    let upper = backend.uids.uid_for("USER0", 20_000, 1000).await.unwrap();
    let spaced = backend.uids.uid_for("user0 ", 20_000, 1000).await.unwrap();
    assert_eq!((upper, spaced), (20_020, 20_021));
}

async fn the_lowest_free_uid_comes_first(backend: Backend) {
    let uids = &backend.uids;
    // Holes and islands: 1002 and 1005 taken (through ranges of their own), the rest free.
    assert_eq!(uids.uid_for("island-a", 1002, 1).await.unwrap(), 1002);
    assert_eq!(uids.uid_for("island-b", 1005, 3).await.unwrap(), 1005);
    let mut got = Vec::new();
    for user in ["a", "b", "c", "d", "e", "f"] {
        got.push(uids.uid_for(user, 1000, 10).await.unwrap());
    }
    assert_eq!(got, [1000, 1001, 1003, 1004, 1006, 1007]);
    // A range starting inside held uids starts at its first free one.
    assert_eq!(uids.uid_for("g", 1004, 10).await.unwrap(), 1008);
    // The lowest of the whole u32 range.
    assert_eq!(uids.uid_for("h", 0, u32::MAX).await.unwrap(), 0);
}

async fn a_used_up_range_is_a_conflict_and_allocates_nothing(backend: Backend) {
    let uids = &backend.uids;
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(uids.uid_for(user, 3000, 3).await.unwrap(), 3000 + i as u32);
    }
    for _ in 0..2 {
        let refused = uids.uid_for("d", 3000, 3).await;
        match refused {
            Err(StoreError::Conflict(why)) => assert_eq!(why, "no free uid in 3000..3003"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(uids.uid_of("d").await.unwrap(), None, "nothing allocated");
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(uids.uid_of(user).await.unwrap(), Some(3000 + i as u32));
        assert_eq!(
            uids.uid_for(user, 3000, 3).await.unwrap(),
            3000 + i as u32,
            "a full range still answers its users"
        );
    }
    // A larger range has room: the next uid, none skipped by the refusals.
    assert_eq!(uids.uid_for("d", 3000, 4).await.unwrap(), 3003);
}

async fn concurrent_allocations_give_each_user_one_uid_and_no_uid_twice(backend: Backend) {
    // Two instances on the same rows where the backend has rows to share; each user asks on both.
    let second = another_instance(&backend.at_rest).await;
    let instances: [Arc<dyn UidStore>; 2] = [
        backend.uids.clone(),
        second.unwrap_or_else(|| backend.uids.clone()),
    ];
    // Exactly as many uids as users: a uid given twice would leave a user without one.
    let (first, count) = (5000, 8);
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let user = format!("user{}", i % 8);
            let store = instances[i / 8].clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let uid = store.uid_for(&user, first, count).await;
                (user, uid)
            })
        })
        .collect();
    let mut by_user: HashMap<String, BTreeSet<u32>> = HashMap::new();
    for task in tasks {
        let (user, uid) = task.await.unwrap();
        let uid = uid.unwrap_or_else(|e| panic!("{user}: {e}"));
        by_user.entry(user).or_default().insert(uid);
    }
    assert_eq!(by_user.len(), 8);
    let mut all = BTreeSet::new();
    for (user, uids) in &by_user {
        assert_eq!(uids.len(), 1, "{user} got {uids:?}");
        assert!(
            all.insert(*uids.first().unwrap()),
            "{user}'s uid is someone else's too"
        );
        for store in &instances {
            assert_eq!(store.uid_of(user).await.unwrap(), uids.first().copied());
        }
    }
    assert_eq!(all, (5000..5008).collect::<BTreeSet<u32>>());
}

async fn a_uid_outlives_the_users_sessions(backend: Backend) {
    // `session` makes a session of alice's.
    let id = session(&backend).await;
    let uid = backend.uids.uid_for("alice", 1000, 10).await.unwrap();
    assert!(backend.sessions.delete(id).await.unwrap().is_some());
    assert!(backend.sessions.list(Some("alice")).await.unwrap().is_empty());
    assert_eq!(backend.uids.uid_of("alice").await.unwrap(), Some(uid));
    assert_eq!(backend.uids.uid_for("bob", 1000, 10).await.unwrap(), uid + 1);
    let again = session(&backend).await;
    assert_eq!(backend.uids.uid_for("alice", 1000, 10).await.unwrap(), uid);
    assert!(backend.sessions.delete(again).await.unwrap().is_some());
    assert_eq!(backend.uids.uid_of("alice").await.unwrap(), Some(uid));
}

async fn uid_of_answers_what_was_given_and_allocates_nothing(backend: Backend) {
    let uids = &backend.uids;
    for _ in 0..2 {
        assert_eq!(uids.uid_of("alice").await.unwrap(), None);
    }
    assert_eq!(
        uids.uid_for("bob", 1000, 10).await.unwrap(),
        1000,
        "asking about alice took nothing"
    );
    let alice = uids.uid_for("alice", 1000, 10).await.unwrap();
    assert_eq!(alice, 1001);
    assert_eq!(uids.uid_of("alice").await.unwrap(), Some(1001));
    assert_eq!(uids.uid_of("bob").await.unwrap(), Some(1000));
    for unknown in ["carol", "Alice", "alice ", ""] {
        assert_eq!(uids.uid_of(unknown).await.unwrap(), None, "{unknown:?}");
    }
}

async fn a_uid_outside_the_range_asked_now_is_kept(backend: Backend) {
    let uids = &backend.uids;
    let alice = uids.uid_for("alice", 1000, 10).await.unwrap();
    // The range moved (a new config): alice keeps her uid, never silently reassigned.
    assert_eq!(uids.uid_for("alice", 2000, 10).await.unwrap(), alice);
    assert_eq!(uids.uid_of("alice").await.unwrap(), Some(alice));
    // New users get uids of the new range; an overlapping range skips alice's.
    assert_eq!(uids.uid_for("bob", 2000, 10).await.unwrap(), 2000);
    assert_eq!(uids.uid_for("carol", 1000, 2000).await.unwrap(), 1001);
    // Even a used-up range answers a user who already has a uid.
    assert_eq!(uids.uid_for("dave", 5000, 1).await.unwrap(), 5000);
    assert_eq!(uids.uid_for("alice", 5000, 1).await.unwrap(), alice);
}

async fn an_empty_or_overflowing_range_is_refused(backend: Backend) {
    let uids = &backend.uids;
    let alice = uids.uid_for("alice", 1000, 10).await.unwrap();
    let bad = [(1000, 0), (0, 0), (u32::MAX, 1), (u32::MAX - 5, 6), (1, u32::MAX)];
    for (first, count) in bad {
        for user in ["alice", "bob"] {
            let refused = uids.uid_for(user, first, count).await;
            assert!(
                matches!(refused, Err(StoreError::InvalidArgument(_))),
                "{user} {first}+{count}: {refused:?}"
            );
        }
    }
    assert_eq!(uids.uid_of("bob").await.unwrap(), None, "nothing allocated");
    assert_eq!(uids.uid_of("alice").await.unwrap(), Some(alice));
    // The largest range there is ends at u32::MAX, which is never given: `(uid_t) -1`.
    assert_eq!(uids.uid_for("bob", u32::MAX - 1, 1).await.unwrap(), u32::MAX - 1);
    assert_eq!(uids.uid_of("bob").await.unwrap(), Some(u32::MAX - 1));
    let full = uids.uid_for("carol", u32::MAX - 1, 1).await;
    match full {
        Err(StoreError::Conflict(why)) => {
            assert_eq!(why, format!("no free uid in {}..{}", u32::MAX - 1, u32::MAX))
        }
        other => panic!("{other:?}"),
    }
}
