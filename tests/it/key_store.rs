//! The conformance story of `KeyStore`: every backend keeps API keys the same way, and keeps no key,
//! only its hash and first characters. Each story runs on every backend, opened fresh.

use chrono::{DateTime, Duration, TimeZone, Utc};
use claude_agent_http::domain::Role;
use claude_agent_http::store::{ApiKeyRecord, StoreError};
use sqlx::{AssertSqlSafe, Connection};

use crate::event_store::{AtRest, Backend};

/// Now, to the microsecond (what every backend keeps).
fn now() -> DateTime<Utc> {
    Utc.timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

/// 64 lowercase hex digits: what a SHA-256 looks like (the store never sees a key to hash).
fn fake_sha256() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A key as a client would hold it: `cah_` and 32 letters from `g` to `v`, so that no part of it
/// is ever hex (a hash or an id at rest cannot contain it by chance).
fn secret() -> String {
    let letters: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .map(|c| char::from(b'g' + c.to_digit(16).unwrap() as u8))
        .collect();
    format!("cah_{letters}")
}

/// A key's record (its hash a stand-in for the key's SHA-256) and the key itself.
fn key(role: Role, user: Option<&str>) -> (ApiKeyRecord, String) {
    let secret = secret();
    let record = ApiKeyRecord {
        id: format!("key_{}", uuid::Uuid::new_v4().simple()),
        name: Some("deploy bot é".into()),
        role,
        user_id: user.map(Into::into),
        hash: fake_sha256(),
        prefix: secret[..12].to_string(),
        created_at: now(),
        revoked_at: None,
        last_used_at: None,
    };
    (record, secret)
}

macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                a_key_is_found_by_its_hash_and_by_nothing_else,
                a_duplicate_id_or_hash_is_a_conflict,
                keys_list_oldest_first_revoked_ones_included,
                revoking_keeps_the_first_time_and_the_key_stays_findable,
                touching_records_the_latest_use,
                a_record_that_would_keep_a_key_is_refused,
                nothing_at_rest_but_the_hash_and_the_prefix);
        }
    )*};
    (@stories $open:ident; $($story:ident),*) => {$(
        #[tokio::test]
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

async fn a_key_is_found_by_its_hash_and_by_nothing_else(backend: Backend) {
    let (user, user_secret) = key(Role::User, Some("alice"));
    let (admin, _) = key(Role::Admin, None);
    backend.keys.insert_key(&user).await.unwrap();
    backend.keys.insert_key(&admin).await.unwrap();
    assert_eq!(
        backend.keys.key_by_hash(&user.hash).await.unwrap(),
        Some(user.clone())
    );
    let found = backend.keys.key_by_hash(&admin.hash).await.unwrap().unwrap();
    assert_eq!(found, admin);
    assert_eq!((found.role, found.user_id), (Role::Admin, None));
    for wrong in [
        fake_sha256(),
        user.hash.to_uppercase(),
        user.hash[..63].to_string(),
        user_secret,
        user.prefix.clone(),
        user.id.clone(),
        String::new(),
    ] {
        assert_eq!(backend.keys.key_by_hash(&wrong).await.unwrap(), None, "{wrong}");
    }
}

async fn a_duplicate_id_or_hash_is_a_conflict(backend: Backend) {
    let (first, _) = key(Role::User, Some("alice"));
    backend.keys.insert_key(&first).await.unwrap();
    let (other, _) = key(Role::Admin, None);
    let same_id = ApiKeyRecord {
        id: first.id.clone(),
        ..other.clone()
    };
    let same_hash = ApiKeyRecord {
        hash: first.hash.clone(),
        ..other.clone()
    };
    for duplicate in [&first, &same_id, &same_hash] {
        let refused = backend.keys.insert_key(duplicate).await;
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    }
    assert_eq!(backend.keys.list_keys().await.unwrap(), vec![first.clone()]);
    assert_eq!(backend.keys.key_by_hash(&first.hash).await.unwrap(), Some(first));
    backend.keys.insert_key(&other).await.unwrap();
    assert_eq!(backend.keys.list_keys().await.unwrap().len(), 2);
}

async fn keys_list_oldest_first_revoked_ones_included(backend: Backend) {
    assert!(backend.keys.list_keys().await.unwrap().is_empty());
    let start = now() - Duration::minutes(10);
    let mut keys: Vec<ApiKeyRecord> = (0..4)
        .map(|i| {
            let (mut record, _) = key(Role::User, Some(&format!("user{i}")));
            record.created_at = start + Duration::minutes(i);
            record
        })
        .collect();
    for i in [2, 0, 3, 1] {
        backend.keys.insert_key(&keys[i]).await.unwrap();
    }
    let revoked = backend
        .keys
        .revoke_key(&keys[1].id, now())
        .await
        .unwrap()
        .unwrap();
    keys[1] = revoked;
    assert_eq!(backend.keys.list_keys().await.unwrap(), keys);
}

async fn revoking_keeps_the_first_time_and_the_key_stays_findable(backend: Backend) {
    let (record, _) = key(Role::User, Some("alice"));
    let (other, _) = key(Role::User, Some("bob"));
    backend.keys.insert_key(&record).await.unwrap();
    backend.keys.insert_key(&other).await.unwrap();
    let first = now() - Duration::seconds(30);
    let revoked = backend.keys.revoke_key(&record.id, first).await.unwrap().unwrap();
    assert_eq!(
        revoked,
        ApiKeyRecord {
            revoked_at: Some(first),
            ..record.clone()
        }
    );
    let again = backend.keys.revoke_key(&record.id, now()).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(first), "the first revocation stands");
    let found = backend.keys.key_by_hash(&record.hash).await.unwrap().unwrap();
    assert_eq!(
        found.revoked_at,
        Some(first),
        "a revoked key is still found, as revoked"
    );
    assert_eq!(
        backend
            .keys
            .key_by_hash(&other.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None,
        "no other key is revoked"
    );
    assert_eq!(backend.keys.revoke_key("key_unknown", now()).await.unwrap(), None);
}

async fn touching_records_the_latest_use(backend: Backend) {
    let (record, _) = key(Role::Admin, None);
    let (other, _) = key(Role::User, Some("bob"));
    backend.keys.insert_key(&record).await.unwrap();
    backend.keys.insert_key(&other).await.unwrap();
    let last_used = |hash: String| {
        let keys = backend.keys.clone();
        async move { keys.key_by_hash(&hash).await.unwrap().unwrap().last_used_at }
    };
    let t1 = now();
    backend.keys.touch_key(&record.id, t1).await.unwrap();
    assert_eq!(last_used(record.hash.clone()).await, Some(t1));
    // A slower instance's older use does not move it back.
    backend
        .keys
        .touch_key(&record.id, t1 - Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(last_used(record.hash.clone()).await, Some(t1));
    let t2 = t1 + Duration::seconds(61);
    backend.keys.touch_key(&record.id, t2).await.unwrap();
    assert_eq!(last_used(record.hash.clone()).await, Some(t2));
    assert_eq!(
        last_used(other.hash.clone()).await,
        None,
        "no other key is touched"
    );
    backend.keys.touch_key("key_unknown", t2).await.unwrap();
}

async fn a_record_that_would_keep_a_key_is_refused(backend: Backend) {
    let (good, secret) = key(Role::User, Some("alice"));
    let refused = [
        ApiKeyRecord {
            hash: secret.clone(),
            ..good.clone()
        },
        ApiKeyRecord {
            hash: good.hash.to_uppercase(),
            ..good.clone()
        },
        ApiKeyRecord {
            hash: format!("{}0", good.hash),
            ..good.clone()
        },
        ApiKeyRecord {
            prefix: secret.clone(),
            ..good.clone()
        },
        ApiKeyRecord {
            user_id: None,
            ..good.clone()
        },
        ApiKeyRecord {
            role: Role::Admin,
            ..good.clone()
        },
    ];
    for record in &refused {
        let result = backend.keys.insert_key(record).await;
        assert!(
            matches!(result, Err(StoreError::Corrupt(_))),
            "{record:?}: {result:?}"
        );
    }
    assert!(backend.keys.list_keys().await.unwrap().is_empty());
    backend.keys.insert_key(&good).await.unwrap();
}

/// Every run of 8 characters of the key after its prefix: none may be anywhere at rest.
fn tail_windows(secret: &str, prefix_len: usize) -> Vec<String> {
    let tail = &secret[prefix_len..];
    (0..=tail.len() - 8).map(|i| tail[i..i + 8].to_string()).collect()
}

fn assert_holds_no_key(what: &str, text: &str, windows: &[String]) {
    for window in windows {
        assert!(
            !text.contains(window.as_str()),
            "{what} holds part of a key ({window})"
        );
    }
}

const KEY_COLUMNS: [&str; 9] = [
    "created_at",
    "hash",
    "id",
    "last_used_at",
    "name",
    "prefix",
    "revoked_at",
    "role",
    "user_id",
];

async fn nothing_at_rest_but_the_hash_and_the_prefix(backend: Backend) {
    let mut windows = Vec::new();
    for (role, user) in [(Role::User, Some("alice")), (Role::Admin, None)] {
        let (record, secret) = key(role, user);
        backend.keys.insert_key(&record).await.unwrap();
        backend.keys.touch_key(&record.id, now()).await.unwrap();
        windows.extend(tail_windows(&secret, record.prefix.len()));
    }
    let listed = format!("{:?}", backend.keys.list_keys().await.unwrap());
    assert_holds_no_key("list_keys", &listed, &windows);
    match &backend.at_rest {
        AtRest::Memory => {}
        AtRest::Sqlite(path) => {
            let mut connection =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display()))
                    .await
                    .unwrap();
            let mut columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info('api_keys')")
                    .fetch_all(&mut connection)
                    .await
                    .unwrap();
            columns.sort();
            assert_eq!(
                columns, KEY_COLUMNS,
                "a new column is a decision about what is at rest"
            );
            let _ = connection.close().await;
            // Every byte of the database and its write-ahead log.
            for file in [
                path.clone(),
                std::path::PathBuf::from(format!("{}-wal", path.display())),
            ] {
                let bytes = std::fs::read(&file).unwrap_or_default();
                assert_holds_no_key(
                    &file.display().to_string(),
                    &String::from_utf8_lossy(&bytes),
                    &windows,
                );
            }
        }
        AtRest::Postgres(database) => {
            let mut connection = database.connect().await;
            let mut columns: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'api_keys'",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap();
            columns.sort();
            assert_eq!(
                columns, KEY_COLUMNS,
                "a new column is a decision about what is at rest"
            );
            // Every row of every table.
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT quote_ident(table_name) FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap();
            assert!(tables.iter().any(|t| t == "api_keys"), "{tables:?}");
            for table in tables {
                let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT row_to_json(t)::text FROM {table} t"
                )))
                .fetch_all(&mut connection)
                .await
                .unwrap();
                assert_holds_no_key(&table, &rows.join("\n"), &windows);
            }
            let _ = connection.close().await;
        }
    }
}
