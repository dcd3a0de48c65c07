//! The per-user rate limit on `/api/images*` (`RATE_LIMIT_PER_MINUTE`): a
//! GCRA of `limit` requests a minute with a burst of `limit`.
//!
//! In process for one instance; with Redis, decided in one atomic script
//! per request, so any number of instances let `limit` through in total
//! (contract §8). When Redis cannot be reached the request is let through:
//! an outage of the shared store must not take the service down.

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::domain::UserId;
use crate::redis_link::RedisLink;

/// A request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited for {retry_after_secs} s")]
pub struct OverLimit {
    /// Whole seconds until a request will be accepted again (at least 1).
    pub retry_after_secs: u64,
}

impl OverLimit {
    fn after(wait: Duration) -> Self {
        Self {
            retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
        }
    }
}

/// The limit, where it is kept.
pub enum RateLimiter {
    /// This process's own counters.
    Local(LocalLimiter),
    /// Counters every instance shares in Redis.
    Shared(SharedLimiter),
}

impl RateLimiter {
    /// `None` when the limit is off (0); shared when `redis` is given.
    pub fn new(per_minute: u32, redis: Option<RedisLink>) -> Option<Arc<Self>> {
        let per_minute = NonZeroU32::new(per_minute)?;
        Some(Arc::new(match redis {
            Some(link) => Self::Shared(SharedLimiter::new(per_minute, link)),
            None => Self::Local(LocalLimiter::new(per_minute)),
        }))
    }

    /// Counts one request of `user`; the wait when over.
    pub async fn check(&self, user: &UserId) -> Result<(), OverLimit> {
        match self {
            Self::Local(local) => local.check(user),
            Self::Shared(shared) => shared.check(user).await,
        }
    }
}

/// A GCRA limiter keyed by user, in process; idle users are forgotten every minute.
pub struct LocalLimiter {
    inner: Arc<DefaultKeyedRateLimiter<UserId>>,
    clock: DefaultClock,
}

impl LocalLimiter {
    fn new(per_minute: NonZeroU32) -> Self {
        let inner = Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_minute(
            per_minute,
        )));
        // Keeps memory bounded by the users active in the last minute.
        let weak: Weak<DefaultKeyedRateLimiter<UserId>> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        Self {
            inner,
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, user: &UserId) -> Result<(), OverLimit> {
        self.inner
            .check_key(user)
            .map_err(|not_until| OverLimit::after(not_until.wait_time_from(self.clock.now())))
    }
}

/// GCRA in one script, on Redis's own clock (instances' clocks may differ):
/// the key holds the theoretical arrival time of the next request; a
/// request is allowed when that time is at most a burst ahead of now.
/// Returns 0 when allowed, else the milliseconds to wait.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 1000)
return 0
"#;

/// The limit kept in Redis.
pub struct SharedLimiter {
    link: RedisLink,
    script: redis::Script,
    interval_ms: u64,
    burst: u32,
}

impl SharedLimiter {
    fn new(per_minute: NonZeroU32, link: RedisLink) -> Self {
        Self {
            link,
            script: redis::Script::new(GCRA),
            interval_ms: (60_000 / u64::from(per_minute.get())).max(1),
            burst: per_minute.get(),
        }
    }

    async fn check(&self, user: &UserId) -> Result<(), OverLimit> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("image-service:rate:{}", user.as_str()))
            .arg(self.interval_ms)
            .arg(self.burst);
        match self.link.invoke::<u64>(&invocation).await {
            Ok(0) => Ok(()),
            Ok(wait_ms) => Err(OverLimit::after(Duration::from_millis(wait_ms))),
            Err(e) => {
                tracing::warn!(error = %e, "rate limit not applied: Redis unavailable");
                Ok(())
            }
        }
    }
}
