//! The conformance story of `SessionStore`: every backend must pass every test here.

use std::sync::Arc;

use chrono::{Duration, Utc};
use claude_agent_http::config::Config;
use claude_agent_http::domain::{SessionId, SessionRecord};
use claude_agent_http::store::{LimitScope, Limits, MemoryStore, SessionStore, SqliteStore, StoreError};
use serde_json::json;

const ROOMY: Limits = Limits {
    max_total: 1000,
    max_per_user: 1000,
};

fn record(user: &str) -> SessionRecord {
    let now = Utc::now();
    SessionRecord {
        session_id: SessionId::new(),
        user_id: user.into(),
        subdir: Some("proj/a".into()),
        cwd: format!("/srv/users/{user}/proj/a").into(),
        options: Config::default().agent_options(),
        created_at: now,
        last_active_at: now,
        message_count: 0,
        metadata: json!({"env": "prod", "n": 1}).as_object().unwrap().clone(),
    }
}

async fn open_memory(ttl: u64, _: std::path::PathBuf) -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new(ttl))
}

async fn open_sqlite(ttl: u64, path: std::path::PathBuf) -> Arc<dyn SessionStore> {
    Arc::new(SqliteStore::open(&path, ttl).await.unwrap())
}

/// Runs every story against each backend, opened fresh (ttl in seconds) in its own folder.
macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                round_trips_a_record 0, lists_by_user_oldest_first 0, touch_counts_turns 0,
                delete_is_final 0, expired_records_vanish_and_purge 3600, ttl_zero_never_expires 0,
                deleting_an_expired_record_finds_nothing 3600,
                limits_hold_under_concurrency 0, duplicate_ids_are_refused 0);
        }
    )*};
    (@stories $open:ident; $($story:ident $ttl:literal),*) => {$(
        #[tokio::test]
        async fn $story() {
            let dir = tempfile::tempdir().unwrap();
            let store = super::$open($ttl, dir.path().join("sessions.db")).await;
            super::$story(store).await
        }
    )*};
}

conformance! {
    memory => open_memory;
    sqlite => open_sqlite;
}

async fn round_trips_a_record(store: Arc<dyn SessionStore>) {
    let original = record("alice");
    store.insert(&original, ROOMY).await.unwrap();
    let found = store.get(original.session_id).await.unwrap().expect("stored");
    // Timestamps are kept to the microsecond.
    assert_eq!(
        found.created_at.timestamp_micros(),
        original.created_at.timestamp_micros()
    );
    assert_eq!(found.session_id, original.session_id);
    assert_eq!(found.user_id, "alice");
    assert_eq!(found.subdir.as_deref(), Some("proj/a"));
    assert_eq!(found.cwd, original.cwd);
    assert_eq!(found.options, original.options);
    assert_eq!(found.metadata, original.metadata);
    assert_eq!(found.message_count, 0);
    assert!(store.get(SessionId::new()).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 1);
    store.ping().await.unwrap();
}

async fn lists_by_user_oldest_first(store: Arc<dyn SessionStore>) {
    let mut ids = Vec::new();
    for minutes in [3, 2, 1] {
        let mut r = record("bob");
        r.created_at = Utc::now() - Duration::minutes(minutes);
        store.insert(&r, ROOMY).await.unwrap();
        ids.push(r.session_id);
    }
    store.insert(&record("carol"), ROOMY).await.unwrap();
    let listed: Vec<SessionId> = store
        .list(Some("bob"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.session_id)
        .collect();
    assert_eq!(listed, ids);
    assert!(store.list(Some("nobody")).await.unwrap().is_empty());
    let everyone: Vec<String> = store
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.user_id)
        .collect();
    assert_eq!(
        everyone,
        vec!["bob", "bob", "bob", "carol"],
        "everyone's, oldest first"
    );
}

async fn touch_counts_turns(store: Arc<dyn SessionStore>) {
    let r = record("dave");
    store.insert(&r, ROOMY).await.unwrap();
    let later = r.last_active_at + Duration::seconds(5);
    assert!(store.touch(r.session_id, later, 1).await.unwrap());
    assert!(store.touch(r.session_id, later, 1).await.unwrap());
    // An older timestamp never moves last_active_at backwards.
    assert!(store.touch(r.session_id, r.created_at, 0).await.unwrap());
    let found = store.get(r.session_id).await.unwrap().unwrap();
    assert_eq!(found.message_count, 2);
    assert_eq!(found.last_active_at.timestamp_micros(), later.timestamp_micros());
    assert!(!store.touch(SessionId::new(), later, 1).await.unwrap());
}

async fn delete_is_final(store: Arc<dyn SessionStore>) {
    let r = record("erin");
    store.insert(&r, ROOMY).await.unwrap();
    let deleted = store.delete(r.session_id).await.unwrap().expect("deleted");
    assert_eq!(
        (deleted.session_id, deleted.user_id.as_str()),
        (r.session_id, "erin")
    );
    assert_eq!(deleted.cwd, r.cwd);
    assert!(store.delete(r.session_id).await.unwrap().is_none());
    assert!(store.delete(SessionId::new()).await.unwrap().is_none());
    assert!(store.get(r.session_id).await.unwrap().is_none());
    // A late update (a turn finishing after the delete) must not resurrect it.
    assert!(!store.touch(r.session_id, Utc::now(), 1).await.unwrap());
    assert!(store.get(r.session_id).await.unwrap().is_none());
    assert!(store.list(Some("erin")).await.unwrap().is_empty());
}

async fn expired_records_vanish_and_purge(store: Arc<dyn SessionStore>) {
    let fresh = record("frank");
    let mut stale = record("frank");
    stale.last_active_at = Utc::now() - Duration::hours(2);
    store.insert(&fresh, ROOMY).await.unwrap();
    store.insert(&stale, ROOMY).await.unwrap();
    assert!(store.get(stale.session_id).await.unwrap().is_none());
    assert_eq!(store.list(Some("frank")).await.unwrap().len(), 1);
    assert_eq!(store.count().await.unwrap(), 1);
    assert!(
        !store.touch(stale.session_id, Utc::now(), 1).await.unwrap(),
        "expired stays expired"
    );
    let purged = store.purge_expired().await.unwrap();
    assert_eq!(
        purged.iter().map(|r| r.session_id).collect::<Vec<_>>(),
        vec![stale.session_id]
    );
    assert!(store.purge_expired().await.unwrap().is_empty());
    assert!(store.get(fresh.session_id).await.unwrap().is_some());
}

async fn deleting_an_expired_record_finds_nothing(store: Arc<dyn SessionStore>) {
    // Expired is invisible to delete too (the API answers 404, as for a read); the record stays
    // for the purge, which returns it so that its transcript is removed.
    let mut stale = record("fred");
    stale.last_active_at = Utc::now() - Duration::hours(2);
    store.insert(&stale, ROOMY).await.unwrap();
    assert!(store.delete(stale.session_id).await.unwrap().is_none());
    let purged = store.purge_expired().await.unwrap();
    assert_eq!(
        purged.iter().map(|r| r.session_id).collect::<Vec<_>>(),
        vec![stale.session_id]
    );
}

async fn ttl_zero_never_expires(store: Arc<dyn SessionStore>) {
    let mut ancient = record("gina");
    ancient.last_active_at = Utc::now() - Duration::days(3650);
    store.insert(&ancient, ROOMY).await.unwrap();
    assert!(store.get(ancient.session_id).await.unwrap().is_some());
    assert!(store.purge_expired().await.unwrap().is_empty());
}

async fn limits_hold_under_concurrency(store: Arc<dyn SessionStore>) {
    let limits = Limits {
        max_total: 5,
        max_per_user: 3,
    };
    let attempts = (0..12).map(|i| {
        let store = store.clone();
        let user = if i % 2 == 0 { "hank" } else { "ivy" };
        tokio::spawn(async move { store.insert(&record(user), limits).await })
    });
    let mut ok = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::LimitReached(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 5, "exactly max_total inserts succeed");
    assert!(store.list(Some("hank")).await.unwrap().len() <= 3);
    assert!(store.list(Some("ivy")).await.unwrap().len() <= 3);
    match store
        .insert(
            &record("hank"),
            Limits {
                max_total: 100,
                max_per_user: 3,
            },
        )
        .await
    {
        Err(StoreError::LimitReached(LimitScope::User(3))) => {}
        other => {
            // hank may hold 2 if ivy took 3; then the next insert succeeds and a further one fails.
            assert!(other.is_ok(), "{other:?}");
        }
    }
    match store
        .insert(
            &record("jack"),
            Limits {
                max_total: 5,
                max_per_user: 3,
            },
        )
        .await
    {
        Err(StoreError::LimitReached(LimitScope::Total(5))) => {}
        other => panic!("expected the total limit, got {other:?}"),
    }
}

async fn duplicate_ids_are_refused(store: Arc<dyn SessionStore>) {
    let r = record("kim");
    store.insert(&r, ROOMY).await.unwrap();
    assert!(matches!(
        store.insert(&r, ROOMY).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.count().await.unwrap(), 1);
}

/// Stories about the SQLite file itself: what a row looks like at rest and what old rows hold.
mod sqlite_file {
    use std::path::Path;

    use claude_agent_http::domain::SessionId;
    use claude_agent_http::store::{SessionStore, SqliteStore, StoreError};
    use sqlx::SqlitePool;

    use super::{ROOMY, record};

    async fn raw(path: &Path) -> SqlitePool {
        SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
    }

    /// The options column exactly as the service wrote it before rows were versioned: the serde
    /// form of `AgentOptions`, MCP servers and all.
    const OLD_OPTIONS: &str = r#"{"system_prompt":"Be brief.","append_system_prompt":null,"permission_mode":"acceptEdits","allowed_tools":["Bash","Read"],"setting_sources":["user","project"],"model":"claude-x","max_turns":20,"max_budget_usd":1.5,"mcp_servers":{"files":{"type":"stdio","command":"npx","args":["-y","x"],"env":{"API_TOKEN":"old-secret-77"}}},"plugins":["/opt/plugins/one",{"type":"local","path":"/opt/plugins/two"}]}"#;

    async fn insert_old_row(pool: &SqlitePool, id: SessionId) {
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, subdir, cwd, options, metadata, created_at, \
             last_active_at, message_count) VALUES (?1, 'ida', 'proj', '/srv/users/ida/proj', ?2, \
             '{\"k\":\"v\"}', ?3, ?3, 4)",
        )
        .bind(id.to_string())
        .bind(OLD_OPTIONS)
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn rows_written_before_versioning_still_load_and_lose_their_mcp_servers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let store = SqliteStore::open(&path, 0).await.unwrap();
        let pool = raw(&path).await;
        let id = SessionId::new();
        insert_old_row(&pool, id).await;

        let found = store.get(id).await.unwrap().expect("an old row loads");
        let options = &found.options;
        assert_eq!(options.system_prompt.as_deref(), Some("Be brief."));
        assert_eq!(options.permission_mode.as_str(), "acceptEdits");
        assert_eq!(options.allowed_tools, vec!["Bash", "Read"]);
        assert_eq!(
            options.setting_sources,
            Some(vec!["user".into(), "project".into()])
        );
        assert_eq!((options.max_turns, options.max_budget_usd), (Some(20), Some(1.5)));
        assert_eq!(options.plugins.len(), 2);
        assert_eq!(options.plugins[1].path(), Path::new("/opt/plugins/two"));
        assert_eq!(
            (found.message_count, found.metadata["k"].as_str()),
            (4, Some("v"))
        );

        // An upgrade scrubs the MCP servers out of such rows: run that migration again.
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 2")
            .execute(&pool)
            .await
            .unwrap();
        let upgraded = SqliteStore::open(&path, 0).await.unwrap();
        let column: String = sqlx::query_scalar("SELECT options FROM sessions WHERE session_id = ?1")
            .bind(id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(
            !column.contains("old-secret-77") && !column.contains("mcp_servers"),
            "{column}"
        );
        assert_eq!(upgraded.get(id).await.unwrap().unwrap().options, found.options);
    }

    #[tokio::test]
    async fn impossible_numbers_are_corrupt_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let store = SqliteStore::open(&path, 0).await.unwrap();
        let pool = raw(&path).await;
        for (update, value) in [
            ("UPDATE sessions SET message_count = ?1 WHERE session_id = ?2", -1),
            (
                "UPDATE sessions SET message_count = ?1 WHERE session_id = ?2",
                i64::MIN,
            ),
            (
                "UPDATE sessions SET created_at = ?1 WHERE session_id = ?2",
                i64::MAX,
            ),
            (
                "UPDATE sessions SET last_active_at = ?1 WHERE session_id = ?2",
                i64::MAX,
            ),
        ] {
            let r = record("jo");
            store.insert(&r, ROOMY).await.unwrap();
            sqlx::query(update)
                .bind(value)
                .bind(r.session_id.to_string())
                .execute(&pool)
                .await
                .unwrap();
            let read = store.get(r.session_id).await;
            assert!(
                matches!(read, Err(StoreError::Corrupt(_))),
                "{update} ({value}): {read:?}"
            );
            assert!(matches!(
                store.list(Some("jo")).await,
                Err(StoreError::Corrupt(_))
            ));
            sqlx::query("DELETE FROM sessions").execute(&pool).await.unwrap();
        }
    }

    #[tokio::test]
    async fn options_from_a_newer_version_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let store = SqliteStore::open(&path, 0).await.unwrap();
        let r = record("kai");
        store.insert(&r, ROOMY).await.unwrap();
        sqlx::query("UPDATE sessions SET options = '{\"v\":99}'")
            .execute(&raw(&path).await)
            .await
            .unwrap();
        assert!(matches!(
            store.get(r.session_id).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
