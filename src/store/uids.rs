//! The operating-system identity of each user: one uid (and gid of the same number) per
//! `user_id`, allocated once from a configured range and kept, so it is the same after a restart
//! and on every instance sharing the store. Its specification is the conformance story in
//! `tests/it/uid_store.rs`, run on every backend.
//!
//! A uid belongs to its user, not to a session: deleting or expiring a user's sessions leaves it,
//! and nothing here ever frees or reassigns one (files the user's agents wrote keep their owner).

use async_trait::async_trait;

use super::StoreError;

/// Where users' uids live.
#[async_trait]
pub trait UidStore: Send + Sync + 'static {
    /// The uid of `user_id`: the one it was given before, else the lowest free one in
    /// `first..first + count`, allocated atomically (two instances asking at once for different
    /// users never get the same uid; for the same user, the same one). `StoreError::Conflict` when
    /// the range is used up (nothing is allocated then).
    ///
    /// The range only bounds a new allocation: a user given a uid before keeps it even when it
    /// lies outside the range asked for now (the range may have been moved in the config since),
    /// and a uid held by anyone, inside or outside the range, is never given to another user.
    ///
    /// `count` 0, or a range whose end `first + count` does not fit in a `u32`, is refused with
    /// `StoreError::InvalidArgument` before anything is read (so the largest uid ever allocated is
    /// `u32::MAX - 1`; `u32::MAX` is `(uid_t) -1`, which no user may have).
    async fn uid_for(&self, user_id: &str, first: u32, count: u32) -> Result<u32, StoreError>;
    /// The uid `user_id` was given, if any.
    async fn uid_of(&self, user_id: &str) -> Result<Option<u32>, StoreError>;
}

/// A checked `first..end` to allocate from: not empty, and `end` fits in a `u32`.
#[derive(Debug, Clone, Copy)]
pub(super) struct UidRange {
    pub first: u32,
    pub end: u32,
}

impl UidRange {
    /// Checks the arguments of [`UidStore::uid_for`].
    pub fn new(first: u32, count: u32) -> Result<UidRange, StoreError> {
        if count == 0 {
            return Err(StoreError::InvalidArgument(format!(
                "the uid range starting at {first} is empty (count 0)"
            )));
        }
        let end = first.checked_add(count).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "the uid range {first}.. of {count} uids ends past {}",
                u32::MAX
            ))
        })?;
        Ok(UidRange { first, end })
    }

    /// The error when every uid of the range is taken.
    pub fn used_up(&self) -> StoreError {
        StoreError::Conflict(format!("no free uid in {}..{}", self.first, self.end))
    }
}

/// A uid as read from a database column (an `i64` on both SQL backends).
pub(super) fn uid_from_sql(user_id: &str, uid: i64) -> Result<u32, StoreError> {
    u32::try_from(uid).map_err(|_| StoreError::Corrupt(format!("uid {uid} of user {user_id:?}")))
}
