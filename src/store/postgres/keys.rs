//! `KeyStore` on PostgreSQL: the `api_keys` table (hashes only). Nothing is cached: every instance
//! sees a revocation at once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PostgresStore;
use super::rows::{KeyRow, key_columns};
use crate::store::{ApiKeyRecord, KeyStore, StoreError};

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        key.check_storable()?;
        let row = KeyRow::from(key);
        let inserted = sqlx::query(concat!(
            "INSERT INTO api_keys (",
            key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
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
            // `api_keys_hash_key` (the hash's unique index) or `api_keys_pkey`.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
                if e.constraint() == Some("api_keys_hash_key") {
                    "an api key with this hash already exists".into()
                } else {
                    format!("api key {} already exists", key.id)
                },
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE hash = $1"
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
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
            key_columns!()
        ))
        .bind(id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        // GREATEST ignores a NULL `last_used_at`.
        sqlx::query("UPDATE api_keys SET last_used_at = GREATEST(last_used_at, $2) WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
