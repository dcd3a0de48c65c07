//! The cleanup queue in Redis (contract §8): an item queued by an instance
//! that dies is worked off by another.
//!
//! Tasks are kept in a hash (`image-service:cleanup:tasks`, id → JSON) and
//! ordered by due time in a sorted set (`image-service:cleanup:due`). Taking
//! a task leases it: its due time moves a lease ahead, so if its worker dies
//! before finishing, the task is due again for anyone once the lease ends.
//! While Redis cannot be reached, tasks stay in this process and are handed
//! to Redis once it answers again.

use std::time::Duration;

use async_trait::async_trait;

use super::{CleanupQueue, MemoryQueue, QueueDown, Task};
use crate::redis_link::RedisLink;

const DUE: &str = "image-service:cleanup:due";
const TASKS: &str = "image-service:cleanup:tasks";

/// Queues (or re-queues) a task, due after ARGV[3] ms on Redis's clock.
const PUSH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"#;

/// Takes up to ARGV[1] due tasks (all when ARGV[3] is 1), leasing each for ARGV[2] ms.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local upto = now
if ARGV[3] == '1' then upto = '+inf' end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', upto, 'LIMIT', 0, tonumber(ARGV[1]))
local taken = {}
for _, id in ipairs(ids) do
  local task = redis.call('HGET', KEYS[2], id)
  if task then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(taken, task)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return taken
"#;

/// Forgets a finished task.
const FINISH: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// The queue every instance shares, with this process's own as a fallback.
pub struct SharedQueue {
    link: RedisLink,
    lease: Duration,
    fallback: MemoryQueue,
    push: redis::Script,
    take: redis::Script,
    finish: redis::Script,
}

impl SharedQueue {
    /// A queue in the Redis behind `link`; a taken task is someone else's
    /// again after `lease` (longer than any one attempt can take).
    pub fn new(link: RedisLink, lease: Duration) -> Self {
        Self {
            link,
            lease,
            fallback: MemoryQueue::default(),
            push: redis::Script::new(PUSH),
            take: redis::Script::new(TAKE),
            finish: redis::Script::new(FINISH),
        }
    }

    async fn push_shared(&self, task: &Task, delay: Duration) -> Result<(), QueueDown> {
        let json = serde_json::to_string(task).map_err(|e| QueueDown(e.to_string()))?;
        let mut invocation = self.push.prepare_invoke();
        invocation
            .key(DUE)
            .key(TASKS)
            .arg(&task.id)
            .arg(json)
            .arg(delay.as_millis() as u64);
        self.link
            .invoke::<i64>(&invocation)
            .await
            .map(drop)
            .map_err(|e| QueueDown(e.to_string()))
    }

    /// Hands the tasks kept in process while Redis was away to Redis.
    async fn hand_over(&self) {
        let Ok(kept) = self.fallback.take_due(usize::MAX, true).await else {
            return;
        };
        for (i, task) in kept.iter().enumerate() {
            if self.push_shared(task, Duration::ZERO).await.is_err() {
                for task in &kept[i..] {
                    let _ = self.fallback.push(task.clone(), Duration::ZERO).await;
                }
                return;
            }
        }
    }
}

#[async_trait]
impl CleanupQueue for SharedQueue {
    async fn push(&self, task: Task, delay: Duration) -> Result<(), QueueDown> {
        if let Err(e) = self.push_shared(&task, delay).await {
            tracing::warn!(error = %e, "cleanup kept in process until Redis answers");
            self.fallback.push(task, delay).await?;
        }
        Ok(())
    }

    async fn take_due(&self, max: usize, all: bool) -> Result<Vec<Task>, QueueDown> {
        if !self.fallback.is_empty().await? {
            self.hand_over().await;
        }
        let mut invocation = self.take.prepare_invoke();
        invocation
            .key(DUE)
            .key(TASKS)
            .arg(max)
            .arg(self.lease.as_millis() as u64)
            .arg(if all { "1" } else { "0" });
        match self.link.invoke::<Vec<String>>(&invocation).await {
            Ok(taken) => Ok(taken
                .iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect()),
            // Redis away: work off what this process kept.
            Err(_) => self.fallback.take_due(max, all).await,
        }
    }

    async fn finish(&self, task: &Task) -> Result<(), QueueDown> {
        let mut invocation = self.finish.prepare_invoke();
        invocation.key(DUE).key(TASKS).arg(&task.id);
        // If Redis is away the lease runs out and the task is done again:
        // every chore can be done twice.
        self.link
            .invoke::<i64>(&invocation)
            .await
            .map(drop)
            .map_err(|e| QueueDown(e.to_string()))
    }

    async fn len(&self) -> Result<usize, QueueDown> {
        let kept = self.fallback.len().await?;
        let shared = self
            .link
            .query::<usize>(redis::cmd("ZCARD").arg(DUE))
            .await
            .unwrap_or(0);
        Ok(kept + shared)
    }
}
