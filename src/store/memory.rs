//! The in-process store: for development and tests; nothing survives a restart.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::RwLock;

use super::{Expiry, LimitScope, Limits, SessionStore, StoreError};
use crate::domain::{SessionId, SessionRecord};

/// Session records in a map.
pub struct MemoryStore {
    records: RwLock<HashMap<SessionId, SessionRecord>>,
    expiry: Expiry,
}

impl MemoryStore {
    /// An empty store whose records expire `ttl_seconds` after their last activity (0: never).
    pub fn new(ttl_seconds: u64) -> Self {
        MemoryStore {
            records: RwLock::new(HashMap::new()),
            expiry: Expiry::new(ttl_seconds),
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn insert(&self, record: &SessionRecord, limits: Limits) -> Result<(), StoreError> {
        let cutoff = self.expiry.cutoff();
        let mut records = self.records.write().await;
        if records.contains_key(&record.session_id) {
            return Err(StoreError::Duplicate(record.session_id));
        }
        let live = records.values().filter(|r| self.expiry.is_live(r, cutoff));
        let (mut total, mut mine) = (0u32, 0u32);
        for existing in live {
            total += 1;
            mine += u32::from(existing.user_id == record.user_id);
        }
        if mine >= limits.max_per_user {
            return Err(StoreError::LimitReached(LimitScope::User(limits.max_per_user)));
        }
        if total >= limits.max_total {
            return Err(StoreError::LimitReached(LimitScope::Total(limits.max_total)));
        }
        records.insert(record.session_id, record.clone());
        Ok(())
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let cutoff = self.expiry.cutoff();
        let records = self.records.read().await;
        Ok(records
            .get(&id)
            .filter(|r| self.expiry.is_live(r, cutoff))
            .cloned())
    }

    async fn list(&self, user_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let cutoff = self.expiry.cutoff();
        let records = self.records.read().await;
        let mut found: Vec<SessionRecord> = records
            .values()
            .filter(|r| user_id.is_none_or(|u| r.user_id == u) && self.expiry.is_live(r, cutoff))
            .cloned()
            .collect();
        found.sort_by_key(|r| (r.created_at, r.session_id));
        Ok(found)
    }

    async fn touch(&self, id: SessionId, at: DateTime<Utc>, turns: u64) -> Result<bool, StoreError> {
        let cutoff = self.expiry.cutoff();
        let mut records = self.records.write().await;
        match records.get_mut(&id).filter(|r| self.expiry.is_live(r, cutoff)) {
            Some(record) => {
                record.last_active_at = record.last_active_at.max(at);
                record.message_count += turns;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let cutoff = self.expiry.cutoff();
        let mut records = self.records.write().await;
        if !records.get(&id).is_some_and(|r| self.expiry.is_live(r, cutoff)) {
            return Ok(None);
        }
        Ok(records.remove(&id))
    }

    async fn purge_expired(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let Some(cutoff) = self.expiry.cutoff() else {
            return Ok(Vec::new());
        };
        let mut records = self.records.write().await;
        let expired: Vec<SessionId> = records
            .values()
            .filter(|r| r.last_active_at < cutoff)
            .map(|r| r.session_id)
            .collect();
        Ok(expired.iter().filter_map(|id| records.remove(id)).collect())
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let cutoff = self.expiry.cutoff();
        let records = self.records.read().await;
        Ok(records
            .values()
            .filter(|r| self.expiry.is_live(r, cutoff))
            .count() as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
