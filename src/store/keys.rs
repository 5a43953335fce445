//! API keys at rest: only a hash of each key is kept, never the key. Its specification is the
//! conformance story in `tests/it/key_store.rs`, run on every backend.

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
    /// The user a `User` key acts as (`None` for an admin key; a store refuses any other pairing).
    pub user_id: Option<String>,
    /// The SHA-256 of the whole key, lowercase hex: how a presented key is found (a store refuses
    /// anything but 64 lowercase hex digits, so a key cannot be stored here by mistake).
    pub hash: String,
    /// The key's first characters (its `cah_` prefix and a few more), to recognise it by: at most
    /// [`KEY_PREFIX_MAX_CHARS`] characters (a store refuses more, so a whole key cannot be stored
    /// here by mistake).
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (updated at most about once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The longest [`ApiKeyRecord::prefix`] a store keeps.
pub const KEY_PREFIX_MAX_CHARS: usize = 16;

impl ApiKeyRecord {
    /// Refuses a record that must not be stored: a hash that is not a lowercase hex SHA-256 (a key
    /// passed by mistake), a prefix long enough to give the key away, or a role and user that do
    /// not go together. Every backend checks this before storing anything.
    pub(super) fn check_storable(&self) -> Result<(), StoreError> {
        let refuse = |why: &str| {
            Err(StoreError::Corrupt(format!(
                "api key {:?} cannot be stored: {why}",
                self.id
            )))
        };
        let is_sha256_hex = self.hash.len() == 64
            && self
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_sha256_hex {
            return refuse("its hash is not a lowercase hex SHA-256");
        }
        if self.prefix.chars().count() > KEY_PREFIX_MAX_CHARS {
            return refuse(&format!(
                "its prefix is longer than {KEY_PREFIX_MAX_CHARS} characters"
            ));
        }
        match (self.role, &self.user_id) {
            (Role::User, Some(_)) | (Role::Admin, None) => Ok(()),
            (Role::User, None) => refuse("a user key needs a user"),
            (Role::Admin, Some(_)) => refuse("an admin key acts for no one user"),
        }
    }
}

/// Where API keys live. Every instance sharing the store sees a revocation at once: nothing here
/// is cached.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key; a key with the same id or hash is refused (`StoreError::Conflict`), and so
    /// is a record [`ApiKeyRecord`] says no store keeps (`StoreError::Corrupt`).
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The key whose hash this is, revoked or not.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every key, revoked ones included, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes the key at `at` (a key already revoked keeps its first revocation time) and returns
    /// it; `None` for an unknown id.
    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Records that the key authenticated a request at `at` (`last_used_at` never moves back: an
    /// earlier `at`, from a slower instance, changes nothing); nothing for an unknown id.
    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
}
