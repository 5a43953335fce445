//! API keys at rest: only a hash of each key is kept, never the key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::Role;

/// One API key as stored: everything but the key itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// The key's public id (shown in lists, named by `keys revoke`).
    pub id: String,
    /// A name for people, if one was given.
    pub name: Option<String>,
    /// What the key may do.
    pub role: Role,
    /// The user a `User` key acts as (`None` for an admin key).
    pub user_id: Option<String>,
    /// The SHA-256 of the whole key, lowercase hex: how a presented key is found.
    pub hash: String,
    /// The key's first characters (its `cah_` prefix and a few more), to recognise it by.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (updated at most about once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Where API keys live. Every instance sharing the store sees a revocation at once: nothing here
/// is cached.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key; a key with the same id or hash is refused (`StoreError::Conflict`).
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The key whose hash this is, revoked or not.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every key, revoked ones included, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes the key at `at` (a key already revoked keeps its first revocation time) and returns
    /// it; `None` for an unknown id.
    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Records that the key authenticated a request at `at`.
    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
}
