//! What was spent, and the budgets that bound it: a session's usage (scoped like every session
//! operation), usage reports (a user sees its own; an admin anyone's, or everyone's), and users'
//! budget overrides (admins only). The numbers come from the relay's records in the store.

use chrono::{DateTime, Utc};

use super::{SessionError, Sessions};
use crate::audit::AuditLog;
use crate::domain::{BudgetLimits, BudgetOverride, Caller, SessionId};
use crate::store::{Spending, UsageGroup, UsageQuery, UsageTotals};

/// A session's usage: its totals, by model and by turn.
#[derive(Debug, Clone)]
pub struct SessionUsage {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: String,
    /// Every request of the session.
    pub totals: UsageTotals,
    /// By model.
    pub by_model: Vec<(String, UsageTotals)>,
    /// By turn (`none`: requests between turns).
    pub by_turn: Vec<(String, UsageTotals)>,
}

/// What a usage report covers.
#[derive(Debug, Clone, Default)]
pub struct UsageRequest {
    /// Whose usage: the caller's own when left out (an admin leaving it out means everyone's).
    pub user_id: Option<String>,
    /// From this moment on.
    pub from: Option<DateTime<Utc>>,
    /// Before this moment.
    pub to: Option<DateTime<Utc>>,
    /// How to break the totals down.
    pub group_by: Option<UsageGroup>,
}

/// A usage report.
#[derive(Debug, Clone)]
pub struct UsageReport {
    /// Whose (`None`: every user's).
    pub user_id: Option<String>,
    /// The totals.
    pub totals: UsageTotals,
    /// The groups asked for, by key.
    pub groups: Vec<(String, UsageTotals)>,
}

/// A user's budgets: the override an admin set, the limits in effect, and what was spent.
#[derive(Debug, Clone)]
pub struct BudgetView {
    /// The user.
    pub user_id: String,
    /// The override, if one is set.
    pub own: Option<BudgetOverride>,
    /// The service's defaults with the override over them.
    pub effective: BudgetLimits,
    /// What the user spent today and this month (UTC).
    pub spending: Spending,
}

impl Sessions {
    /// The usage of one of the caller's sessions.
    pub async fn session_usage(&self, caller: &Caller, id: SessionId) -> Result<SessionUsage, SessionError> {
        let record = self.get(caller, id).await?;
        let query = UsageQuery {
            session_id: Some(id),
            ..UsageQuery::default()
        };
        let (totals, by_model) = self.usage.usage_totals(&query, Some(UsageGroup::Model)).await?;
        let (_, by_turn) = self.usage.usage_totals(&query, Some(UsageGroup::Turn)).await?;
        Ok(SessionUsage {
            session_id: id,
            user_id: record.user_id,
            totals,
            by_model,
            by_turn,
        })
    }

    /// A usage report: the caller's own, or (an admin) any user's or everyone's.
    pub async fn usage_report(
        &self,
        caller: &Caller,
        request: UsageRequest,
    ) -> Result<UsageReport, SessionError> {
        let user_id = match request.user_id.as_deref() {
            None if caller.principal.is_admin() => None,
            requested => Some(self.acting_for(caller, requested)?),
        };
        if let (Some(from), Some(to)) = (request.from, request.to)
            && from > to
        {
            return Err(SessionError::Invalid("from must not be after to".into()));
        }
        let query = UsageQuery {
            user_id: user_id.clone(),
            session_id: None,
            from: request.from,
            to: request.to,
        };
        let (totals, groups) = self.usage.usage_totals(&query, request.group_by).await?;
        Ok(UsageReport {
            user_id,
            totals,
            groups,
        })
    }

    /// A user's budgets (admins only).
    pub async fn budget(&self, caller: &Caller, user_id: &str) -> Result<BudgetView, SessionError> {
        require_admin(caller)?;
        crate::workspace::check_user_id(user_id)?;
        let own = self.usage.budget_override(user_id).await?;
        let effective = match &own {
            Some(own) => self.budgets.with_override(own),
            None => self.budgets.clone(),
        };
        // Today's and this month's totals; the session and turn totals are per session.
        let spending = self
            .usage
            .spending(user_id, SessionId(uuid::Uuid::nil()), None, Utc::now())
            .await?;
        Ok(BudgetView {
            user_id: user_id.to_string(),
            own,
            effective,
            spending,
        })
    }

    /// Sets (replaces) a user's budget override (admins only); it holds from the next model
    /// request on, on every instance.
    pub async fn set_budget(
        &self,
        caller: &Caller,
        user_id: &str,
        budget: BudgetOverride,
    ) -> Result<BudgetView, SessionError> {
        require_admin(caller)?;
        crate::workspace::check_user_id(user_id)?;
        if let Some((key, bad)) = budget.invalid_amount() {
            return Err(SessionError::Invalid(format!(
                "{key} is {bad}: a budget is USD, 0 or more (or null for no limit)"
            )));
        }
        self.usage.set_budget_override(user_id, &budget).await?;
        let mut entry = AuditLog::entry("budget.set", caller);
        entry.user_id = Some(user_id.to_string());
        entry.detail = serde_json::to_value(&budget).unwrap_or_default();
        self.audit.record(entry);
        self.budget(caller, user_id).await
    }

    /// Removes a user's budget override (admins only): the service's defaults apply again.
    pub async fn delete_budget(&self, caller: &Caller, user_id: &str) -> Result<BudgetView, SessionError> {
        require_admin(caller)?;
        crate::workspace::check_user_id(user_id)?;
        if self.usage.delete_budget_override(user_id).await? {
            let mut entry = AuditLog::entry("budget.deleted", caller);
            entry.user_id = Some(user_id.to_string());
            self.audit.record(entry);
        }
        self.budget(caller, user_id).await
    }
}

fn require_admin(caller: &Caller) -> Result<(), SessionError> {
    if caller.principal.is_admin() {
        Ok(())
    } else {
        Err(SessionError::Forbidden("this needs an admin credential".into()))
    }
}
