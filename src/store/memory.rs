//! The in-process store: for development and tests; nothing survives a restart. Usage and budgets
//! are in `memory/usage.rs`.

mod usage;

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

use super::uids::UidRange;
use super::webhooks::{
    ClaimedDelivery, DeliveryQuery, DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookStore,
    outcome_columns,
};
use super::{
    ApiKeyRecord, AuditQuery, AuditRecord, AuditStore, EventStore, Expiry, KeyStore, LimitScope, Limits,
    SessionStore, StoreError, StoredEvent, Transcript, TranscriptStore, TurnRecord, TurnStatus, UidStore,
};
use crate::domain::{SessionId, SessionRecord, TurnId};

/// Session records in a map.
pub struct MemoryStore {
    records: RwLock<HashMap<SessionId, SessionRecord>>,
    /// Turns and events per session (removed with the session).
    history: RwLock<HashMap<SessionId, History>>,
    /// API keys, in the order they were stored.
    keys: RwLock<Vec<ApiKeyRecord>>,
    /// The audit log (tied to no session).
    audit: Mutex<AuditLog>,
    /// Users' uids (tied to no session).
    uids: Mutex<Uids>,
    /// Model usage and budget overrides (tied to no session).
    usage: Mutex<usage::Usage>,
    /// Webhook deliveries and their leases (tied to no session).
    webhooks: Mutex<Vec<LeasedDelivery>>,
    expiry: Expiry,
}

/// A webhook delivery and its current claim and lease, if any.
struct LeasedDelivery {
    delivery: WebhookDelivery,
    lease: Option<(Uuid, DateTime<Utc>)>,
}

/// Each user's uid, and every uid given (to find the lowest free one).
#[derive(Default)]
struct Uids {
    by_user: HashMap<String, u32>,
    taken: BTreeSet<u32>,
}

/// The audit log in order, and the number the next record gets (never reused, even when the newest
/// records are pruned).
struct AuditLog {
    records: Vec<AuditRecord>,
    next_id: i64,
}

#[derive(Default)]
struct History {
    turns: Vec<TurnRecord>,
    events: Vec<StoredEvent>,
    transcript: Option<Transcript>,
}

impl MemoryStore {
    /// An empty store whose records expire `ttl_seconds` after their last activity (0: never).
    pub fn new(ttl_seconds: u64) -> Self {
        MemoryStore {
            records: RwLock::new(HashMap::new()),
            history: RwLock::new(HashMap::new()),
            keys: RwLock::new(Vec::new()),
            audit: Mutex::new(AuditLog {
                records: Vec::new(),
                next_id: 1,
            }),
            uids: Mutex::new(Uids::default()),
            usage: Mutex::default(),
            webhooks: Mutex::new(Vec::new()),
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
        self.history.write().await.remove(&id);
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
        let mut history = self.history.write().await;
        for id in &expired {
            history.remove(id);
        }
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

impl MemoryStore {
    /// Appends events after checking they continue the session's stream.
    fn append_to(
        history: &mut History,
        session: SessionId,
        events: &[StoredEvent],
    ) -> Result<(), StoreError> {
        let mut last = history.events.last().map(|e| e.seq).unwrap_or(0);
        for event in events {
            if event.seq <= last {
                return Err(StoreError::Duplicate(session));
            }
            last = event.seq;
        }
        history.events.extend_from_slice(events);
        Ok(())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn begin_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        if !self.records.read().await.contains_key(&turn.session_id) {
            return Ok(());
        }
        let mut history = self.history.write().await;
        history
            .entry(turn.session_id)
            .or_default()
            .turns
            .push(turn.clone());
        Ok(())
    }

    async fn append_events(&self, session: SessionId, events: &[StoredEvent]) -> Result<(), StoreError> {
        if !self.records.read().await.contains_key(&session) {
            return Ok(());
        }
        let mut history = self.history.write().await;
        Self::append_to(history.entry(session).or_default(), session, events)
    }

    async fn finish_turn(
        &self,
        turn: &TurnRecord,
        events: &[StoredEvent],
        completed: bool,
    ) -> Result<bool, StoreError> {
        let cutoff = self.expiry.cutoff();
        {
            let mut records = self.records.write().await;
            let Some(record) = records
                .get_mut(&turn.session_id)
                .filter(|r| self.expiry.is_live(r, cutoff))
            else {
                return Ok(false);
            };
            record.last_active_at = record
                .last_active_at
                .max(turn.finished_at.unwrap_or_else(Utc::now));
            record.message_count += u64::from(completed);
        }
        let mut history = self.history.write().await;
        let history = history.entry(turn.session_id).or_default();
        Self::append_to(history, turn.session_id, events)?;
        if let Some(stored) = history.turns.iter_mut().find(|t| t.turn_id == turn.turn_id) {
            *stored = turn.clone();
        }
        Ok(true)
    }

    async fn events_after(
        &self,
        session: SessionId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let history = self.history.read().await;
        Ok(history
            .get(&session)
            .map(|h| {
                let start = h.events.partition_point(|e| e.seq <= after);
                h.events[start..].iter().take(limit as usize).cloned().collect()
            })
            .unwrap_or_default())
    }

    async fn last_seq(&self, session: SessionId) -> Result<u64, StoreError> {
        let history = self.history.read().await;
        Ok(history
            .get(&session)
            .and_then(|h| h.events.last())
            .map(|e| e.seq)
            .unwrap_or(0))
    }

    async fn turns(
        &self,
        session: SessionId,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        let history = self.history.read().await;
        let mut turns: Vec<TurnRecord> = history
            .get(&session)
            .map(|h| {
                h.turns
                    .iter()
                    .filter(|t| before.is_none_or(|b| t.started_at < b))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        turns.sort_by_key(|t| t.started_at);
        let skip = turns.len().saturating_sub(limit as usize);
        Ok(turns.split_off(skip))
    }

    async fn turn(&self, session: SessionId, turn: TurnId) -> Result<Option<TurnRecord>, StoreError> {
        let history = self.history.read().await;
        Ok(history
            .get(&session)
            .and_then(|h| h.turns.iter().find(|t| t.turn_id == turn))
            .cloned())
    }

    async fn running_turns(&self) -> Result<Vec<TurnRecord>, StoreError> {
        let history = self.history.read().await;
        Ok(history
            .values()
            .flat_map(|h| h.turns.iter().filter(|t| t.status == TurnStatus::Running))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl TranscriptStore for MemoryStore {
    async fn append_transcript(
        &self,
        session: SessionId,
        path: &str,
        lines: &[String],
    ) -> Result<(), StoreError> {
        if !self.records.read().await.contains_key(&session) {
            return Ok(());
        }
        let mut history = self.history.write().await;
        let transcript = history
            .entry(session)
            .or_default()
            .transcript
            .get_or_insert_with(|| Transcript {
                path: path.to_string(),
                lines: Vec::new(),
            });
        transcript.path = path.to_string();
        transcript.lines.extend_from_slice(lines);
        Ok(())
    }

    async fn transcript(&self, session: SessionId) -> Result<Option<Transcript>, StoreError> {
        Ok(self
            .history
            .read()
            .await
            .get(&session)
            .and_then(|h| h.transcript.clone()))
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        key.check_storable()?;
        let mut keys = self.keys.write().await;
        if keys.iter().any(|k| k.id == key.id) {
            return Err(StoreError::Conflict(format!("api key {} already exists", key.id)));
        }
        if keys.iter().any(|k| k.hash == key.hash) {
            return Err(StoreError::Conflict(
                "an api key with this hash already exists".into(),
            ));
        }
        keys.push(key.clone());
        Ok(())
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.keys.read().await.iter().find(|k| k.hash == hash).cloned())
    }

    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys = self.keys.read().await.clone();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut keys = self.keys.write().await;
        Ok(keys.iter_mut().find(|k| k.id == id).map(|key| {
            key.revoked_at.get_or_insert(at);
            key.clone()
        }))
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        if let Some(key) = self.keys.write().await.iter_mut().find(|k| k.id == id) {
            key.last_used_at = Some(key.last_used_at.map_or(at, |last| last.max(at)));
        }
        Ok(())
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut log = self.audit.lock().await;
        for record in records {
            let id = log.next_id;
            log.next_id += 1;
            log.records.push(AuditRecord { id, ..record.clone() });
        }
        Ok(())
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let log = self.audit.lock().await;
        let start = log
            .records
            .partition_point(|r| query.after_id.is_some_and(|after| r.id <= after));
        Ok(log.records[start..]
            .iter()
            .filter(|r| {
                query
                    .user_id
                    .as_ref()
                    .is_none_or(|user| r.user_id.as_ref() == Some(user))
            })
            .filter(|r| query.since.is_none_or(|since| r.at >= since))
            .take(query.limit as usize)
            .cloned()
            .collect())
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut log = self.audit.lock().await;
        let kept = log.records.len();
        log.records.retain(|r| r.at >= before);
        Ok((kept - log.records.len()) as u64)
    }
}

#[async_trait]
impl UidStore for MemoryStore {
    async fn uid_for(&self, user_id: &str, first: u32, count: u32) -> Result<u32, StoreError> {
        let range = UidRange::new(first, count)?;
        // One lock around the lookup and the allocation: the map is the single writer.
        let mut uids = self.uids.lock().await;
        if let Some(&uid) = uids.by_user.get(user_id) {
            return Ok(uid);
        }
        // The first gap in the taken uids of the range (every `uid + 1` stays below `end`).
        let mut free = range.first;
        for &uid in uids.taken.range(range.first..range.end) {
            if uid != free {
                break;
            }
            free = uid + 1;
        }
        if free >= range.end {
            return Err(range.used_up());
        }
        uids.taken.insert(free);
        uids.by_user.insert(user_id.to_string(), free);
        Ok(free)
    }

    async fn uid_of(&self, user_id: &str) -> Result<Option<u32>, StoreError> {
        Ok(self.uids.lock().await.by_user.get(user_id).copied())
    }
}

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn insert_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError> {
        let mut stored = self.webhooks.lock().await;
        for (index, delivery) in deliveries.iter().enumerate() {
            let taken = stored.iter().any(|d| d.delivery.id == delivery.id)
                || deliveries[..index].iter().any(|d| d.id == delivery.id);
            if taken {
                return Err(StoreError::Conflict(format!(
                    "webhook delivery {} already exists",
                    delivery.id
                )));
            }
        }
        stored.extend(deliveries.iter().map(|delivery| LeasedDelivery {
            delivery: delivery.clone(),
            lease: None,
        }));
        Ok(())
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut stored = self.webhooks.lock().await;
        let mut due: Vec<&mut LeasedDelivery> = stored
            .iter_mut()
            .filter(|d| {
                d.delivery.status == DeliveryStatus::Pending
                    && d.delivery.next_attempt_at <= now
                    && d.lease.is_none_or(|(_, until)| until <= now)
            })
            .collect();
        due.sort_by_key(|d| (d.delivery.next_attempt_at, d.delivery.created_at));
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|d| {
                let claim = Uuid::new_v4();
                d.lease = Some((claim, now + lease));
                ClaimedDelivery {
                    delivery: d.delivery.clone(),
                    claim,
                }
            })
            .collect())
    }

    async fn record_webhook_attempt(
        &self,
        id: Uuid,
        claim: Uuid,
        attempt: &WebhookAttempt,
    ) -> Result<bool, StoreError> {
        let mut stored = self.webhooks.lock().await;
        let Some(held) = stored
            .iter_mut()
            .find(|d| d.delivery.id == id && d.lease.is_some_and(|(current, _)| current == claim))
        else {
            return Ok(false);
        };
        let (status, next_attempt_at, delivered_at) = outcome_columns(attempt);
        let delivery = &mut held.delivery;
        delivery.attempts += 1;
        delivery.last_attempt_at = Some(attempt.at);
        delivery.last_http_status = attempt.http_status;
        delivery.last_error = attempt.error.clone();
        delivery.status = status;
        if let Some(at) = next_attempt_at {
            delivery.next_attempt_at = at;
        }
        delivery.delivered_at = delivered_at;
        held.lease = None;
        Ok(true)
    }

    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, StoreError> {
        let stored = self.webhooks.lock().await;
        let mut found: Vec<WebhookDelivery> = stored
            .iter()
            .map(|d| &d.delivery)
            .filter(|d| query.status.is_none_or(|status| d.status == status))
            .filter(|d| query.event.as_ref().is_none_or(|event| &d.event == event))
            .filter(|d| query.before.is_none_or(|before| d.created_at < before))
            .cloned()
            .collect();
        found.sort_by_key(|d| std::cmp::Reverse((d.created_at, d.id)));
        found.truncate(query.limit as usize);
        Ok(found)
    }

    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let stored = self.webhooks.lock().await;
        Ok(stored
            .iter()
            .filter(|d| d.delivery.status == DeliveryStatus::Pending)
            .map(|d| match d.lease {
                Some((_, until)) => until.max(d.delivery.next_attempt_at),
                None => d.delivery.next_attempt_at,
            })
            .min())
    }

    async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut stored = self.webhooks.lock().await;
        let kept = stored.len();
        stored.retain(|d| d.delivery.status == DeliveryStatus::Pending || d.delivery.created_at >= before);
        Ok((kept - stored.len()) as u64)
    }
}
