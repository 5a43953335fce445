//! Spending limits: what a user, a session or a turn may spend on the model, in USD and in tokens,
//! and a user's own override of the service's defaults. Amounts of money are kept as whole
//! nano-dollars ([`Nanos`]) wherever they are summed, so totals are exact.

use serde::{Deserialize, Deserializer, Serialize};

/// An amount of US dollars in billionths (a token of the cheapest model costs a few hundred).
pub type Nanos = u64;

/// Nano-dollars in one dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// Dollars as nano-dollars (rounded; negative amounts are 0).
pub fn usd_to_nanos(usd: f64) -> Nanos {
    (usd * NANOS_PER_USD).round().max(0.0) as Nanos
}

/// Nano-dollars as dollars.
pub fn nanos_to_usd(nanos: Nanos) -> f64 {
    super::round_usd(nanos as f64 / NANOS_PER_USD)
}

/// Spending limits; a limit that is `None` does not apply. Tokens count everything the model
/// processed: input, output, cache reads and cache writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetLimits {
    /// USD a user may spend per UTC day.
    pub user_daily_usd: Option<f64>,
    /// USD a user may spend per UTC calendar month.
    pub user_monthly_usd: Option<f64>,
    /// USD one session may spend in all.
    pub session_usd: Option<f64>,
    /// USD one turn may spend.
    pub turn_usd: Option<f64>,
    /// Tokens a user may use per UTC day.
    pub user_daily_tokens: Option<u64>,
    /// Tokens a user may use per UTC calendar month.
    pub user_monthly_tokens: Option<u64>,
    /// Tokens one session may use in all.
    pub session_tokens: Option<u64>,
    /// Tokens one turn may use.
    pub turn_tokens: Option<u64>,
}

impl BudgetLimits {
    /// Whether any limit applies.
    pub fn any(&self) -> bool {
        *self != BudgetLimits::default()
    }

    /// The first USD amount that is negative or not finite, by its key.
    pub fn invalid_amount(&self) -> Option<(&'static str, f64)> {
        [
            ("user_daily_usd", self.user_daily_usd),
            ("user_monthly_usd", self.user_monthly_usd),
            ("session_usd", self.session_usd),
            ("turn_usd", self.turn_usd),
        ]
        .into_iter()
        .find_map(|(key, value)| value.filter(|v| !v.is_finite() || *v < 0.0).map(|v| (key, v)))
    }

    /// These limits with a user's override applied.
    pub fn with_override(&self, user: &BudgetOverride) -> BudgetLimits {
        fn pick<T: Copy>(own: Option<Option<T>>, default: Option<T>) -> Option<T> {
            own.unwrap_or(default)
        }
        BudgetLimits {
            user_daily_usd: pick(user.user_daily_usd, self.user_daily_usd),
            user_monthly_usd: pick(user.user_monthly_usd, self.user_monthly_usd),
            session_usd: pick(user.session_usd, self.session_usd),
            turn_usd: pick(user.turn_usd, self.turn_usd),
            user_daily_tokens: pick(user.user_daily_tokens, self.user_daily_tokens),
            user_monthly_tokens: pick(user.user_monthly_tokens, self.user_monthly_tokens),
            session_tokens: pick(user.session_tokens, self.session_tokens),
            turn_tokens: pick(user.turn_tokens, self.turn_tokens),
        }
    }
}

/// A user's own limits, set by an admin: a key that is absent keeps the service's default, `null`
/// lifts that limit for the user, a number replaces it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetOverride {
    /// USD per UTC day.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub user_daily_usd: Option<Option<f64>>,
    /// USD per UTC calendar month.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub user_monthly_usd: Option<Option<f64>>,
    /// USD per session.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub session_usd: Option<Option<f64>>,
    /// USD per turn.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub turn_usd: Option<Option<f64>>,
    /// Tokens per UTC day.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub user_daily_tokens: Option<Option<u64>>,
    /// Tokens per UTC calendar month.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub user_monthly_tokens: Option<Option<u64>>,
    /// Tokens per session.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub session_tokens: Option<Option<u64>>,
    /// Tokens per turn.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub turn_tokens: Option<Option<u64>>,
}

impl BudgetOverride {
    /// The first USD amount that is negative or not finite, by its key.
    pub fn invalid_amount(&self) -> Option<(&'static str, f64)> {
        [
            ("user_daily_usd", self.user_daily_usd),
            ("user_monthly_usd", self.user_monthly_usd),
            ("session_usd", self.session_usd),
            ("turn_usd", self.turn_usd),
        ]
        .into_iter()
        .find_map(|(key, value)| {
            value
                .flatten()
                .filter(|v| !v.is_finite() || *v < 0.0)
                .map(|v| (key, v))
        })
    }
}

/// A key that is present, `null` included, is `Some` (an absent one stays `None` by `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Which limit a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// `user_daily_usd` or `user_daily_tokens`.
    UserDaily,
    /// `user_monthly_usd` or `user_monthly_tokens`.
    UserMonthly,
    /// `session_usd` or `session_tokens`.
    Session,
    /// `turn_usd` or `turn_tokens`.
    Turn,
}

/// A model request refused because a limit was reached: which limit, and what was spent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BudgetRefusal {
    /// The limit's key, e.g. `user_daily_usd`.
    pub limit: String,
    /// What it covers.
    pub scope: BudgetScope,
    /// The limit (USD, or tokens for a `_tokens` limit).
    pub allowed: f64,
    /// What was spent against it (same unit).
    pub spent: f64,
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.scope {
            BudgetScope::UserDaily => "the user's budget for today",
            BudgetScope::UserMonthly => "the user's budget for this month",
            BudgetScope::Session => "the session's budget",
            BudgetScope::Turn => "the turn's budget",
        };
        if self.limit.ends_with("_tokens") {
            write!(
                f,
                "{what} ({} = {} tokens) is used up: {} tokens used",
                self.limit, self.allowed, self.spent
            )
        } else {
            write!(
                f,
                "{what} ({} = ${}) is spent: ${} spent",
                self.limit, self.allowed, self.spent
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_keeps_lifts_or_replaces_each_default() {
        let defaults = BudgetLimits {
            user_daily_usd: Some(5.0),
            session_usd: Some(1.0),
            turn_tokens: Some(1000),
            ..BudgetLimits::default()
        };
        let own: BudgetOverride =
            serde_json::from_str(r#"{"user_daily_usd": 20, "session_usd": null}"#).unwrap();
        assert_eq!(own.user_daily_usd, Some(Some(20.0)));
        assert_eq!(own.session_usd, Some(None));
        assert_eq!(own.turn_tokens, None);
        let effective = defaults.with_override(&own);
        assert_eq!(effective.user_daily_usd, Some(20.0));
        assert_eq!(effective.session_usd, None);
        assert_eq!(effective.turn_tokens, Some(1000));
        // What was set comes back as it was set: null stays null, absent stays absent.
        assert_eq!(
            serde_json::to_value(&own).unwrap(),
            serde_json::json!({"user_daily_usd": 20.0, "session_usd": null})
        );
    }

    #[test]
    fn money_is_summed_in_nano_dollars() {
        assert_eq!(usd_to_nanos(0.3), 300_000_000);
        assert_eq!(nanos_to_usd(1), 0.000000001);
        assert_eq!(usd_to_nanos(-1.0), 0);
        let own = BudgetOverride {
            turn_usd: Some(Some(-1.0)),
            ..BudgetOverride::default()
        };
        assert_eq!(own.invalid_amount(), Some(("turn_usd", -1.0)));
    }
}
