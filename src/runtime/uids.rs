//! An in-process `UidStore`, for stores that do not keep users' uids yet: the lowest free uid of
//! the range per user, in the order users first start an agent on this instance. Not shared
//! between instances and not kept across restarts (a user may get another uid after one; their
//! trees are then handed to it at their next start).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::store::{StoreError, UidStore};

/// Uids held in memory.
#[derive(Debug, Default)]
pub struct LocalUids {
    given: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl UidStore for LocalUids {
    async fn uid_for(&self, user_id: &str, first: u32, count: u32) -> Result<u32, StoreError> {
        let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(uid) = given.get(user_id) {
            return Ok(*uid);
        }
        let used: std::collections::HashSet<u32> = given.values().copied().collect();
        let uid = (first..first.saturating_add(count))
            .find(|uid| !used.contains(uid))
            .ok_or_else(|| {
                StoreError::Conflict(format!(
                    "every uid of {first}..{} is given",
                    first.saturating_add(count)
                ))
            })?;
        given.insert(user_id.to_string(), uid);
        Ok(uid)
    }

    async fn uid_of(&self, user_id: &str) -> Result<Option<u32>, StoreError> {
        Ok(self
            .given
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user_id)
            .copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_user_keeps_one_uid_of_the_range() {
        let uids = LocalUids::default();
        assert_eq!(uids.uid_for("alice", 100, 2).await.unwrap(), 100);
        assert_eq!(uids.uid_for("bob", 100, 2).await.unwrap(), 101);
        assert_eq!(uids.uid_for("alice", 100, 2).await.unwrap(), 100);
        assert!(uids.uid_for("carol", 100, 2).await.is_err());
        assert_eq!(uids.uid_of("bob").await.unwrap(), Some(101));
    }
}
