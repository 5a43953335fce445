//! Budget checks: whether what a user, a session and a turn have spent leaves room for another
//! model request. A request is refused when any limit that applies is already reached; one that
//! starts under every limit runs to its end (an answer is never cut off mid-stream), so the
//! spending it adds may take a total past its limit, and the next request is the one refused.

use crate::domain::{BudgetLimits, BudgetRefusal, BudgetScope, nanos_to_usd, usd_to_nanos};
use crate::store::{Spending, Spent};

/// One scope's limits and what was spent against it: scope, money key, tokens key, money limit,
/// tokens limit, spent.
type ScopeCheck<'a> = (BudgetScope, &'a str, &'a str, Option<f64>, Option<u64>, Spent);

/// The first limit (in the order day, month, session, turn; money before tokens) that `spending`
/// has reached.
pub fn first_refusal(limits: &BudgetLimits, spending: &Spending) -> Option<BudgetRefusal> {
    let scopes: [ScopeCheck<'_>; 4] = [
        (
            BudgetScope::UserDaily,
            "user_daily_usd",
            "user_daily_tokens",
            limits.user_daily_usd,
            limits.user_daily_tokens,
            spending.user_day,
        ),
        (
            BudgetScope::UserMonthly,
            "user_monthly_usd",
            "user_monthly_tokens",
            limits.user_monthly_usd,
            limits.user_monthly_tokens,
            spending.user_month,
        ),
        (
            BudgetScope::Session,
            "session_usd",
            "session_tokens",
            limits.session_usd,
            limits.session_tokens,
            spending.session,
        ),
        (
            BudgetScope::Turn,
            "turn_usd",
            "turn_tokens",
            limits.turn_usd,
            limits.turn_tokens,
            spending.turn,
        ),
    ];
    scopes
        .into_iter()
        .find_map(|(scope, usd_key, tokens_key, usd, tokens, spent)| {
            if let Some(usd) = usd
                && spent.cost_nanos >= usd_to_nanos(usd)
            {
                return Some(BudgetRefusal {
                    limit: usd_key.to_string(),
                    scope,
                    allowed: usd,
                    spent: nanos_to_usd(spent.cost_nanos),
                });
            }
            match tokens {
                Some(tokens) if spent.tokens >= tokens => Some(BudgetRefusal {
                    limit: tokens_key.to_string(),
                    scope,
                    allowed: tokens as f64,
                    spent: spent.tokens as f64,
                }),
                _ => None,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(usd: f64, tokens: u64) -> Spent {
        Spent {
            cost_nanos: usd_to_nanos(usd),
            tokens,
        }
    }

    #[test]
    fn a_limit_refuses_once_it_is_reached_not_before() {
        let limits = BudgetLimits {
            user_daily_usd: Some(1.0),
            session_tokens: Some(100),
            ..BudgetLimits::default()
        };
        let mut spending = Spending {
            user_day: spent(0.999999999, 10),
            session: spent(0.5, 99),
            ..Spending::default()
        };
        assert_eq!(first_refusal(&limits, &spending), None);
        spending.session.tokens = 100;
        let refusal = first_refusal(&limits, &spending).unwrap();
        assert_eq!(refusal.limit, "session_tokens");
        assert_eq!(refusal.scope, BudgetScope::Session);
        assert_eq!((refusal.allowed, refusal.spent), (100.0, 100.0));
        spending.user_day = spent(1.25, 10);
        let refusal = first_refusal(&limits, &spending).unwrap();
        assert_eq!(refusal.limit, "user_daily_usd");
        assert_eq!((refusal.allowed, refusal.spent), (1.0, 1.25));
        assert!(refusal.to_string().contains("$1.25 spent"), "{refusal}");
    }

    #[test]
    fn no_limits_refuse_nothing_and_a_zero_limit_refuses_everything() {
        let spending = Spending {
            turn: spent(1000.0, 1 << 40),
            ..Spending::default()
        };
        assert_eq!(first_refusal(&BudgetLimits::default(), &spending), None);
        let zero = BudgetLimits {
            turn_usd: Some(0.0),
            ..BudgetLimits::default()
        };
        assert_eq!(
            first_refusal(&zero, &Spending::default()).map(|r| r.limit),
            Some("turn_usd".to_string())
        );
    }
}
