//! The operating-system identity of each user: one uid (and gid of the same number) per
//! `user_id`, allocated once from a configured range and kept, so it is the same after a restart
//! and on every instance sharing the store.

use async_trait::async_trait;

use super::StoreError;

/// Where users' uids live.
#[async_trait]
pub trait UidStore: Send + Sync + 'static {
    /// The uid of `user_id`: the one it was given before, else the lowest free one in
    /// `first..first + count`, allocated atomically (two instances asking at once for different
    /// users never get the same uid; for the same user, the same one). `StoreError::Conflict` when
    /// the range is used up.
    async fn uid_for(&self, user_id: &str, first: u32, count: u32) -> Result<u32, StoreError>;
    /// The uid `user_id` was given, if any.
    async fn uid_of(&self, user_id: &str) -> Result<Option<u32>, StoreError>;
}
