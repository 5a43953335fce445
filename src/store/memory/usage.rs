//! `UsageStore` in memory: the records in order, totals computed from them under one lock (so a
//! record and its share of every total appear together).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::domain::{BudgetOverride, SessionId, TurnId};
use crate::store::usage::{UsageGroup, group_key, periods_of};
use crate::store::{Spending, Spent, StoreError, UsageQuery, UsageRecord, UsageStore, UsageTotals};

/// Every record, and the overrides by user.
#[derive(Default)]
pub(super) struct Usage {
    records: Vec<UsageRecord>,
    budgets: HashMap<String, BudgetOverride>,
}

fn covers(query: &UsageQuery, record: &UsageRecord) -> bool {
    query.user_id.as_ref().is_none_or(|u| *u == record.user_id)
        && query.session_id.is_none_or(|s| s == record.session_id)
        && query.from.is_none_or(|from| record.at >= from)
        && query.to.is_none_or(|to| record.at < to)
}

fn spent(records: &[&UsageRecord]) -> Spent {
    records.iter().fold(Spent::default(), |sum, r| Spent {
        cost_nanos: sum.cost_nanos.saturating_add(r.cost_nanos),
        tokens: sum.tokens.saturating_add(r.usage.total()),
    })
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.usage.lock().await.records.extend_from_slice(records);
        Ok(())
    }

    async fn spending(
        &self,
        user_id: &str,
        session: SessionId,
        turn: Option<TurnId>,
        at: DateTime<Utc>,
    ) -> Result<Spending, StoreError> {
        let usage = self.usage.lock().await;
        let (day, month) = periods_of(at);
        let pick = |keep: &dyn Fn(&UsageRecord) -> bool| -> Spent {
            spent(&usage.records.iter().filter(|r| keep(r)).collect::<Vec<_>>())
        };
        Ok(Spending {
            user_day: pick(&|r| r.user_id == user_id && periods_of(r.at).0 == day),
            user_month: pick(&|r| r.user_id == user_id && periods_of(r.at).1 == month),
            // Like the SQL backends' totals: by the session's and the turn's id alone.
            session: pick(&|r| r.session_id == session),
            turn: match turn {
                Some(turn) => pick(&|r| r.turn_id == Some(turn)),
                None => Spent::default(),
            },
        })
    }

    async fn usage_totals(
        &self,
        query: &UsageQuery,
        group_by: Option<UsageGroup>,
    ) -> Result<(UsageTotals, Vec<(String, UsageTotals)>), StoreError> {
        let usage = self.usage.lock().await;
        let mut totals = UsageTotals::default();
        let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
        for record in usage.records.iter().filter(|r| covers(query, r)) {
            totals.add(record);
            if let Some(group) = group_by {
                groups.entry(group_key(record, group)).or_default().add(record);
            }
        }
        Ok((totals, groups.into_iter().collect()))
    }

    async fn usage_records(&self, query: &UsageQuery, limit: u32) -> Result<Vec<UsageRecord>, StoreError> {
        let usage = self.usage.lock().await;
        Ok(usage
            .records
            .iter()
            .rev()
            .filter(|r| covers(query, r))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn budget_override(&self, user_id: &str) -> Result<Option<BudgetOverride>, StoreError> {
        Ok(self.usage.lock().await.budgets.get(user_id).cloned())
    }

    async fn set_budget_override(&self, user_id: &str, budget: &BudgetOverride) -> Result<(), StoreError> {
        self.usage
            .lock()
            .await
            .budgets
            .insert(user_id.to_string(), budget.clone());
        Ok(())
    }

    async fn delete_budget_override(&self, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.usage.lock().await.budgets.remove(user_id).is_some())
    }
}
