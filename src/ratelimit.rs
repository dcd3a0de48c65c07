//! Per-user rate limit on `/api/images*` (`RATE_LIMIT_PER_MINUTE`).

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::domain::UserId;

/// A request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited for {retry_after_secs} s")]
pub struct OverLimit {
    /// Whole seconds until a request will be accepted again (at least 1).
    pub retry_after_secs: u64,
}

/// A GCRA limiter keyed by user; idle users are forgotten every minute.
pub struct RateLimiter {
    inner: DefaultKeyedRateLimiter<UserId>,
    clock: DefaultClock,
}

impl RateLimiter {
    /// `None` when the limit is off (0).
    pub fn new(per_minute: u32) -> Option<Arc<Self>> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
        let limiter = Arc::new(Self {
            inner: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        });
        // Keeps memory bounded by the users active in the last minute.
        let weak: Weak<Self> = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.inner.retain_recent();
                limiter.inner.shrink_to_fit();
            }
        });
        Some(limiter)
    }

    /// Counts one request of `user`; the wait when over.
    pub fn check(&self, user: &UserId) -> Result<(), OverLimit> {
        self.inner.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            OverLimit {
                retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            }
        })
    }
}
