//! Idempotency keys in Redis (contract §8): a retry may reach any instance.
//!
//! One hash per key (`image-service:idem:{user}:{key}`: state, lease end,
//! fingerprint, answer or undecided attempt), expiring `IDEMPOTENCY_TTL_SECS`
//! after its first use. Claims are one script, so of two instances racing
//! for a key exactly one wins; the other sees it running (`409`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore, StoreDown, Undecided};
use crate::domain::UserId;
use crate::redis_link::{RedisDown, RedisLink};

/// Claims a key on Redis's clock; see `Claim` for the answers. A running
/// entry keeps the fingerprint and attempt it is settling, so an ended
/// lease hands the settling on.
const CLAIM: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('HMGET', KEYS[1], 'state', 'until', 'fp', 'body', 'path', 'url')
local held_until = now + tonumber(ARGV[1])
if not e[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'running', 'until', held_until)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'fresh'}
end
if e[1] == 'done' then return {'done', e[3], e[4]} end
if e[1] == 'running' and tonumber(e[2]) > now then return {'inflight'} end
redis.call('HSET', KEYS[1], 'state', 'running', 'until', held_until)
if e[5] and e[5] ~= '' then return {'settle', e[3], e[5], e[6]} end
return {'fresh'}
"#;

/// Sets the outcome of a key that exists (its expiry kept).
const SET_STATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'fp', ARGV[2], 'body', ARGV[3], 'path', ARGV[4], 'url', ARGV[5])
return 1
"#;

/// The idempotency store every instance shares.
pub struct SharedStore {
    link: RedisLink,
    ttl: Duration,
    claim: redis::Script,
    set_state: redis::Script,
}

impl SharedStore {
    /// Keys remembered for `ttl` in the Redis behind `link`.
    pub fn new(link: RedisLink, ttl: Duration) -> Self {
        Self {
            link,
            ttl,
            claim: redis::Script::new(CLAIM),
            set_state: redis::Script::new(SET_STATE),
        }
    }

    fn entry(user: &UserId, key: &IdempotencyKey) -> String {
        format!("image-service:idem:{}:{}", user.as_str(), key.as_str())
    }

    async fn set_state(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        state: &str,
        fingerprint: Fingerprint,
        body: &[u8],
        attempt: Option<&Undecided>,
    ) -> Result<(), StoreDown> {
        let mut invocation = self.set_state.prepare_invoke();
        invocation
            .key(Self::entry(user, key))
            .arg(state)
            .arg(fingerprint.to_hex())
            .arg(body)
            .arg(attempt.map_or("", |a| a.path.as_str()))
            .arg(attempt.map_or("", |a| a.url.as_str()));
        self.link
            .invoke::<i64>(&invocation)
            .await
            .map(drop)
            .map_err(down)
    }
}

fn down(e: RedisDown) -> StoreDown {
    StoreDown(e.to_string())
}

#[async_trait]
impl IdempotencyStore for SharedStore {
    async fn claim(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        lease: Duration,
    ) -> Result<Claim, StoreDown> {
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(Self::entry(user, key))
            .arg(lease.as_millis() as u64)
            .arg(self.ttl.as_millis() as u64);
        let reply: Vec<Vec<u8>> = self.link.invoke(&invocation).await.map_err(down)?;
        let text = |i: usize| {
            reply
                .get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let fingerprint = || {
            Fingerprint::from_hex(&text(1))
                .ok_or_else(|| StoreDown("stored fingerprint unreadable".into()))
        };
        match reply.first().map(Vec::as_slice) {
            Some(b"fresh") => Ok(Claim::Fresh),
            Some(b"inflight") => Ok(Claim::InFlight),
            Some(b"done") => Ok(Claim::Done {
                fingerprint: fingerprint()?,
                body: Bytes::from(reply.get(2).cloned().unwrap_or_default()),
            }),
            Some(b"settle") => Ok(Claim::Settle {
                fingerprint: fingerprint()?,
                attempt: Undecided {
                    path: text(2),
                    url: text(3),
                },
            }),
            _ => Err(StoreDown(format!("unexpected claim reply {:?}", text(0)))),
        }
    }

    async fn complete(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        body: Bytes,
    ) -> Result<(), StoreDown> {
        self.set_state(user, key, "done", fingerprint, &body, None)
            .await
    }

    async fn release(&self, user: &UserId, key: &IdempotencyKey) -> Result<(), StoreDown> {
        self.link
            .query::<i64>(redis::cmd("DEL").arg(Self::entry(user, key)))
            .await
            .map(drop)
            .map_err(down)
    }

    async fn leave_undecided(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        attempt: Undecided,
    ) -> Result<(), StoreDown> {
        self.set_state(user, key, "undecided", fingerprint, b"", Some(&attempt))
            .await
    }

    async fn ping(&self) -> Result<(), StoreDown> {
        self.link.ping().await.map_err(down)
    }
}
