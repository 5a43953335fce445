//! Requests per second per principal (GCRA, through `governor`): over it, the caller is told
//! how long to wait.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// The rate limit of every principal; `None` inside when off.
pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// `per_second` requests a second with bursts of `burst`; 0 turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> RateLimits {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimits {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the allowance of `key` (a principal's label, or a client address
    /// for failed attempts); `Err` says how long until the next fits.
    pub fn check(&self, key: String) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets principals whose allowance is full again (so the table does not grow for ever).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_over_its_burst_waits_and_others_do_not() {
        let limits = RateLimits::new(1, 3);
        for _ in 0..3 {
            assert!(limits.check("user:alice".into()).is_ok());
        }
        let wait = limits.check("user:alice".into()).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limits.check("user:bob".into()).is_ok());
        let off = RateLimits::new(0, 0);
        for _ in 0..1000 {
            assert!(off.check("user:alice".into()).is_ok());
        }
    }
}
