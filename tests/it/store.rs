//! The conformance story of `SessionStore`: every backend must pass every test here.

use std::sync::Arc;

use chrono::{Duration, Utc};
use claude_agent_http::config::Config;
use claude_agent_http::domain::{SessionId, SessionRecord};
use claude_agent_http::store::{LimitScope, Limits, MemoryStore, SessionStore, SqliteStore, StoreError};
use serde_json::json;

use crate::support::pg::TestDatabase;

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

/// A store under test, and what must outlive it (its folder or its database).
struct Opened {
    store: Arc<dyn SessionStore>,
    _folder: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

async fn open_memory(ttl: u64) -> Opened {
    Opened {
        store: Arc::new(MemoryStore::new(ttl)),
        _folder: tempfile::tempdir().unwrap(),
        _database: None,
    }
}

async fn open_sqlite(ttl: u64) -> Opened {
    let folder = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&folder.path().join("sessions.db"), ttl)
        .await
        .unwrap();
    Opened {
        store: Arc::new(store),
        _folder: folder,
        _database: None,
    }
}

/// A fresh database on the machine's PostgreSQL, dropped after the story.
async fn open_postgres(ttl: u64) -> Opened {
    let database = TestDatabase::create().await;
    Opened {
        store: Arc::new(database.store(ttl).await),
        _folder: tempfile::tempdir().unwrap(),
        _database: Some(database),
    }
}

/// Runs every story against each backend, opened fresh (ttl in seconds).
macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                round_trips_a_record 0, lists_by_user_oldest_first 0, touch_counts_turns 0,
                delete_is_final 0, expired_records_vanish_and_purge 3600, ttl_zero_never_expires 0,
                deleting_an_expired_record_finds_nothing 3600,
                limits_hold_under_concurrency 0, duplicate_ids_are_refused 0,
                any_json_and_text_round_trip 0);
        }
    )*};
    (@stories $open:ident; $($story:ident $ttl:literal),*) => {$(
        // Several threads, so that concurrent stories really overlap.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $story() {
            let opened = super::$open($ttl).await;
            super::$story(opened.store.clone()).await
        }
    )*};
}

conformance! {
    memory => open_memory;
    sqlite => open_sqlite;
    postgres => open_postgres;
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
    // Open the connections first (a pool that connects on demand would otherwise space the
    // inserts out by its connect time), so that the inserts really overlap.
    let pings = (0..24).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.ping().await })
    });
    for ping in pings.collect::<Vec<_>>() {
        ping.await.unwrap().unwrap();
    }
    // Collected, so that all are spawned before the first is awaited.
    let attempts: Vec<_> = (0..24)
        .map(|i| {
            let store = store.clone();
            let user = if i % 2 == 0 { "hank" } else { "ivy" };
            tokio::spawn(async move { store.insert(&record(user), limits).await })
        })
        .collect();
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

async fn any_json_and_text_round_trip(store: Arc<dyn SessionStore>) {
    // What a client may send as metadata and what a configuration may hold: escapes every store
    // must keep (PostgreSQL's `jsonb` and `text` refuse NUL), any script, big and odd numbers.
    let mut r = record("lee");
    r.subdir = None;
    r.cwd = "/srv/users/lee/проект ✓".into();
    r.metadata = json!({
        "nul": "a\u{0}b",
        "text": "line\nbreak \"quoted\" \\ tab\t 中文 😀",
        "nested": {"list": [1, -2.5, 1e300, null, true, {"k": []}], "empty": {}},
        "big": u64::MAX,
        "zz": 0, "aa": 1
    })
    .as_object()
    .unwrap()
    .clone();
    r.options.system_prompt = Some("Be brief.\u{0}\nNever \"shout\".".into());
    r.options.allowed_tools = vec!["Bash(git *)".into(), "ünïcode".into()];
    r.message_count = i64::MAX as u64;
    store.insert(&r, ROOMY).await.unwrap();
    let found = store.get(r.session_id).await.unwrap().expect("stored");
    assert_eq!(found.metadata, r.metadata);
    assert_eq!(found.options, r.options);
    assert_eq!((found.subdir, found.cwd), (None, r.cwd.clone()));
    assert_eq!(found.message_count, i64::MAX as u64);
    let deleted = store.delete(r.session_id).await.unwrap().expect("deleted");
    assert_eq!(deleted.metadata, r.metadata);
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

/// Stories about the PostgreSQL database itself: migrations, rows at rest, turns and events.
mod postgres_database {
    use std::time::{Duration, Instant};

    use chrono::{DateTime, Utc};
    use claude_agent_http::domain::{SessionId, TurnId, TurnUsage};
    use claude_agent_http::store::{
        EventStore, PostgresStore, SessionStore, StoreError, StoredEvent, TurnRecord, TurnStatus,
    };
    use serde_json::json;
    use sqlx::PgConnection;

    use super::{ROOMY, record};
    use crate::support::pg::TestDatabase;

    /// Now, as PostgreSQL keeps it (to the microsecond).
    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
    }

    async fn rows(connection: &mut PgConnection, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(connection)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn instances_starting_at_once_on_a_fresh_database_take_turns_migrating() {
        let database = TestDatabase::create().await;
        let settings = database.settings(0);
        let starts = (0..3).map(|_| {
            let settings = settings.clone();
            tokio::spawn(async move { PostgresStore::connect(&settings).await })
        });
        let mut stores = Vec::new();
        for start in starts {
            stores.push(start.await.unwrap().expect("every instance starts"));
        }
        let r = record("nia");
        stores[0].insert(&r, ROOMY).await.unwrap();
        assert!(stores[2].get(r.session_id).await.unwrap().is_some());
        let mut connection = database.connect().await;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&mut connection)
                .await
                .unwrap();
        // Every file's version (its number before `_`; numbers may skip), in order.
        let mut migrations: Vec<i64> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
                .unwrap()
                .map(|entry| {
                    let name = entry.unwrap().file_name().into_string().unwrap();
                    name.split('_').next().unwrap().parse().unwrap()
                })
                .collect();
        migrations.sort();
        assert_eq!(applied, migrations, "each migration applied once");
    }

    #[tokio::test]
    async fn rows_at_rest_are_queryable_json_and_versioned() {
        let database = TestDatabase::create().await;
        let store = database.store(0).await;
        let r = record("oli");
        store.insert(&r, ROOMY).await.unwrap();
        let mut connection = database.connect().await;
        let (version, env, id_type): (String, String, String) = sqlx::query_as(
            "SELECT options->>'v', metadata->>'env', pg_typeof(session_id)::text FROM sessions",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(
            (version.as_str(), env.as_str(), id_type.as_str()),
            ("1", "prod", "uuid")
        );
    }

    #[tokio::test]
    async fn options_from_a_newer_version_are_corrupt_and_impossible_numbers_refused() {
        let database = TestDatabase::create().await;
        let store = database.store(0).await;
        let r = record("pat");
        store.insert(&r, ROOMY).await.unwrap();
        let mut connection = database.connect().await;
        let negative = sqlx::query("UPDATE sessions SET message_count = -1")
            .execute(&mut connection)
            .await;
        assert!(negative.is_err(), "the database refuses a negative count");
        sqlx::query("UPDATE sessions SET options = '{\"v\":99}'")
            .execute(&mut connection)
            .await
            .unwrap();
        assert!(matches!(
            store.get(r.session_id).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(store.list(None).await, Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_at_startup_at_once() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut settings = TestDatabase::create().await.settings(0);
        settings.url = Some(format!("postgres://postgres@127.0.0.1:{port}/nothing"));
        let started = Instant::now();
        let result = PostgresStore::connect(&settings).await;
        assert!(matches!(result, Err(StoreError::Database(_))));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_url_asking_for_tls_gets_it() {
        // `sslmode` is why `session.pg_url` exists: the machine's server offers TLS (Debian's
        // default, a self-signed certificate, so `require` rather than `verify-full`).
        let database = TestDatabase::create().await;
        let mut settings = database.settings(0);
        settings.url = Some(format!(
            "{}?sslmode=require&application_name=tls-story",
            database.url()
        ));
        let store = PostgresStore::connect(&settings).await.expect("a TLS connection");
        store.ping().await.unwrap();
        let mut connection = database.connect().await;
        let encrypted: bool = sqlx::query_scalar(
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'tls-story'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert!(encrypted);
    }

    fn turn(session: SessionId, message: &str, started_at: DateTime<Utc>) -> TurnRecord {
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

    fn event(turn: &TurnRecord, seq: u64, data: &str) -> StoredEvent {
        StoredEvent {
            seq,
            turn_id: turn.turn_id,
            data: data.into(),
            at: now(),
        }
    }

    #[tokio::test]
    async fn turns_and_events_are_kept_exactly_and_go_with_their_session() {
        let database = TestDatabase::create().await;
        let store = database.store(0).await;
        let r = record("quinn");
        store.insert(&r, ROOMY).await.unwrap();
        let s = r.session_id;
        let first = turn(s, "hi \u{0} there 😀", now());
        store.begin_turn(&first).await.unwrap();
        assert_eq!(store.running_turns().await.unwrap(), vec![first.clone()]);

        // The wire text exactly: key order, spacing, escapes, number spelling.
        let e1 = event(&first, 1, r#"{"type":"text_delta","text":"a\u0000b 😀"}"#);
        let e2 = event(&first, 2, r#"{"z":1, "a":2.50,"type":"tool_use"}"#);
        store.append_events(s, &[e1.clone(), e2.clone()]).await.unwrap();
        store.append_events(s, &[]).await.unwrap();
        assert_eq!(store.last_seq(s).await.unwrap(), 2);
        assert_eq!(
            store.events_after(s, 0, 10).await.unwrap(),
            vec![e1.clone(), e2.clone()]
        );
        assert_eq!(store.events_after(s, 1, 10).await.unwrap(), vec![e2.clone()]);
        assert_eq!(store.events_after(s, 0, 1).await.unwrap(), vec![e1.clone()]);
        assert!(store.events_after(s, u64::MAX, 10).await.unwrap().is_empty());
        assert!(
            store
                .events_after(SessionId::new(), 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.last_seq(SessionId::new()).await.unwrap(), 0);

        // A number stored twice is refused, and nothing of its batch is kept.
        let e3 = event(&first, 3, r#"{"type":"done"}"#);
        let again = store
            .append_events(s, &[e3.clone(), event(&first, 2, "{}")])
            .await;
        assert!(
            matches!(again, Err(StoreError::Duplicate(id)) if id == s),
            "{again:?}"
        );
        assert_eq!(store.last_seq(s).await.unwrap(), 2);

        let finished = TurnRecord {
            status: TurnStatus::Completed,
            text: "Done.\u{0}".into(),
            tool_calls: json!([{"tool": "Bash", "input": {"command": "ls"}, "id": "t1", "result": "a\u{0}", "is_error": false}]),
            usage: TurnUsage {
                input_tokens: 1,
                output_tokens: 2,
                cache_creation_input_tokens: 3,
                cache_read_input_tokens: u64::MAX >> 1,
            },
            cost_usd: 0.0123,
            finished_at: Some(now()),
            ..first.clone()
        };
        store
            .finish_turn(&finished, std::slice::from_ref(&e3), true)
            .await
            .unwrap();
        assert_eq!(
            store.turn(s, first.turn_id).await.unwrap(),
            Some(finished.clone())
        );
        assert!(
            store
                .turn(SessionId::new(), first.turn_id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.running_turns().await.unwrap().is_empty());
        assert_eq!(store.last_seq(s).await.unwrap(), 3);

        // Finishing with a duplicate number changes nothing (one transaction).
        let second = turn(s, "again", first.started_at + chrono::Duration::seconds(1));
        store.begin_turn(&second).await.unwrap();
        let failed = TurnRecord {
            status: TurnStatus::Failed,
            error_code: Some("agent_crashed".into()),
            finished_at: Some(now()),
            ..second.clone()
        };
        let refused = store
            .finish_turn(&failed, &[event(&second, 3, "{}")], false)
            .await;
        assert!(matches!(refused, Err(StoreError::Duplicate(_))), "{refused:?}");
        assert_eq!(store.turn(s, second.turn_id).await.unwrap(), Some(second.clone()));
        store.finish_turn(&failed, &[], false).await.unwrap();

        // Oldest first; the newest `limit`; those started before `before`.
        assert_eq!(
            store.turns(s, None, 10).await.unwrap(),
            vec![finished.clone(), failed.clone()]
        );
        assert_eq!(store.turns(s, None, 1).await.unwrap(), vec![failed.clone()]);
        assert_eq!(
            store.turns(s, Some(second.started_at), 10).await.unwrap(),
            vec![finished.clone()]
        );

        // Deleting the session takes its turns and events; a late write does not bring them back.
        store.delete(s).await.unwrap().expect("deleted");
        assert!(store.events_after(s, 0, 10).await.unwrap().is_empty());
        assert!(store.turns(s, None, 10).await.unwrap().is_empty());
        assert_eq!(store.last_seq(s).await.unwrap(), 0);
        // Late writes for a deleted session change nothing and are not errors (the contract).
        assert!(
            !store
                .finish_turn(&failed, &[event(&second, 4, "{}")], false)
                .await
                .unwrap(),
            "the session is gone"
        );
        store.append_events(s, &[event(&second, 4, "{}")]).await.unwrap();
        assert!(store.events_after(s, 0, 10).await.unwrap().is_empty());
        store.finish_turn(&failed, &[], false).await.unwrap();
        let mut connection = database.connect().await;
        assert_eq!(
            (
                rows(&mut connection, "turns").await,
                rows(&mut connection, "events").await
            ),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn purging_a_session_takes_its_turns_and_events() {
        let database = TestDatabase::create().await;
        let store = database.store(3600).await;
        let mut stale = record("rae");
        stale.last_active_at = Utc::now() - chrono::Duration::hours(2);
        store.insert(&stale, ROOMY).await.unwrap();
        let t = turn(stale.session_id, "old", now());
        store.begin_turn(&t).await.unwrap();
        store
            .append_events(stale.session_id, &[event(&t, 1, "{}")])
            .await
            .unwrap();
        let purged = store.purge_expired().await.unwrap();
        assert_eq!(purged.len(), 1);
        let mut connection = database.connect().await;
        assert_eq!(
            (
                rows(&mut connection, "turns").await,
                rows(&mut connection, "events").await
            ),
            (0, 0)
        );
    }
}

/// Stories of the session API on PostgreSQL, through the real server.
mod postgres_service {
    use reqwest::StatusCode;
    use serde_json::json;

    use crate::support::pg::{self, PgServer};
    use crate::support::{TestServer, expect_json};

    fn id_of(body: &serde_json::Value) -> String {
        body["session_id"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_user_creates_reads_lists_resumes_and_deletes_a_session_on_postgresql() {
        let server = pg::start_server("").await;
        let health = expect_json(server.get("/health").await, StatusCode::OK).await;
        assert_eq!(health["storage_type"], "postgresql");
        let alice = server.user("alice");
        let created = alice.create_session(Some("my-project")).await;
        let id = id_of(&created);
        let response = server
            .post(
                "/api/v1/sessions",
                json!({"user_id": "alice", "metadata": {"nul": "a\u{0}b", "n": [1, 2]}}),
            )
            .await;
        let other = expect_json(response, StatusCode::CREATED).await;
        assert_eq!(other["metadata"], json!({"nul": "a\u{0}b", "n": [1, 2]}));
        let fetched = expect_json(
            server.get(&format!("/api/v1/sessions/{id}")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            (&fetched["cwd"], &fetched["metadata"]),
            (&created["cwd"], &json!({}))
        );
        assert_eq!(alice.session_ids().await, vec![id.clone(), id_of(&other)]);
        expect_json(
            server
                .post(&format!("/api/v1/sessions/{id}/resume"), json!({}))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            server.delete(&format!("/api/v1/sessions/{id}")).await.status(),
            StatusCode::NO_CONTENT
        );
        let body = expect_json(
            server.get(&format!("/api/v1/sessions/{id}")).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(body["code"], "session_not_found");
        assert_eq!(alice.session_ids().await, vec![id_of(&other)]);
    }

    #[tokio::test]
    async fn sessions_survive_a_restart_on_postgresql() {
        let PgServer { server, database } = pg::start_server("").await;
        let id = id_of(&server.user("alice").create_session(None).await);
        let server = server.restart().await;
        expect_json(
            server.get(&format!("/api/v1/sessions/{id}")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(server.user("alice").session_ids().await, vec![id]);
        drop(server);
        drop(database);
    }

    #[tokio::test]
    async fn two_instances_on_one_database_share_sessions_and_limits() {
        let limits = "api:\n  max_sessions_per_user: 2\n";
        let first = pg::start_server(limits).await;
        let second = TestServer::start_with_env(limits, pg::server_env(&first.database.url())).await;
        let on_first = id_of(&first.user("alice").create_session(None).await);
        let on_second = id_of(&second.user("alice").create_session(None).await);
        expect_json(
            second.get(&format!("/api/v1/sessions/{on_first}")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            first.user("alice").session_ids().await,
            vec![on_first.clone(), on_second.clone()]
        );
        let refused = expect_json(
            first.user("alice").try_create_session(None).await,
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
        assert_eq!(refused["code"], "session_limit_reached");
        assert_eq!(
            second
                .delete(&format!("/api/v1/sessions/{on_first}"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        expect_json(
            first.get(&format!("/api/v1/sessions/{on_first}")).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        drop(second);
    }
}
