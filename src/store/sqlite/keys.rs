//! `KeyStore` on SQLite: the `api_keys` table (hashes only).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{SqliteStore, from_micros, micros};
use crate::domain::Role;
use crate::store::{ApiKeyRecord, KeyStore, StoreError};

/// The columns of `api_keys`, in [`KeyRow`]'s order.
macro_rules! key_columns {
    () => {
        "id, name, role, user_id, hash, prefix, created_at, revoked_at, last_used_at"
    };
}

/// One row of `api_keys`, as SQLite holds it.
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    name: Option<String>,
    role: String,
    user_id: Option<String>,
    hash: String,
    prefix: String,
    created_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl From<&ApiKeyRecord> for KeyRow {
    fn from(key: &ApiKeyRecord) -> Self {
        // Destructured so that a new field is a compile error here until it is stored.
        let ApiKeyRecord {
            id,
            name,
            role,
            user_id,
            hash,
            prefix,
            created_at,
            revoked_at,
            last_used_at,
        } = key;
        KeyRow {
            id: id.clone(),
            name: name.clone(),
            role: role.as_str().to_string(),
            user_id: user_id.clone(),
            hash: hash.clone(),
            prefix: prefix.clone(),
            created_at: micros(*created_at),
            revoked_at: revoked_at.map(micros),
            last_used_at: last_used_at.map(micros),
        }
    }
}

impl TryFrom<KeyRow> for ApiKeyRecord {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        Ok(ApiKeyRecord {
            role: Role::parse(&row.role)
                .ok_or_else(|| StoreError::Corrupt(format!("api key {}: role {:?}", row.id, row.role)))?,
            created_at: from_micros(row.created_at)?,
            revoked_at: row.revoked_at.map(from_micros).transpose()?,
            last_used_at: row.last_used_at.map(from_micros).transpose()?,
            id: row.id,
            name: row.name,
            user_id: row.user_id,
            hash: row.hash,
            prefix: row.prefix,
        })
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        key.check_storable()?;
        let row = KeyRow::from(key);
        let inserted = sqlx::query(concat!(
            "INSERT INTO api_keys (",
            key_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.role)
        .bind(&row.user_id)
        .bind(&row.hash)
        .bind(&row.prefix)
        .bind(row.created_at)
        .bind(row.revoked_at)
        .bind(row.last_used_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            // "UNIQUE constraint failed: api_keys.hash" (or `.id`, the primary key).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(if e.message().contains("api_keys.hash") {
                    "an api key with this hash already exists".into()
                } else {
                    format!("api key {} already exists", key.id)
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE hash = ?1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ApiKeyRecord::try_from).collect()
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(concat!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 RETURNING ",
            key_columns!()
        ))
        .bind(id)
        .bind(micros(at))
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, ?2), ?2) WHERE id = ?1")
            .bind(id)
            .bind(micros(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
