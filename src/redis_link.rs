//! The one connection to Redis (contract §8), shared by the rate limit, the
//! idempotency keys and the cleanup queue. It connects lazily, reconnects
//! by itself, bounds every call in time, and counts every failure in
//! `redis_errors_total`: callers decide what a failure means for them.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};

use crate::clients::UpstreamFault;
use crate::metrics::Metrics;

/// Longest a Redis call may take, reconnecting included.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Redis could not be used for one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis: {detail}")]
pub struct RedisDown {
    /// What went wrong, in a word.
    pub fault: UpstreamFault,
    /// The detail, for the log.
    pub detail: String,
}

/// A cheap-to-clone handle on the shared Redis.
#[derive(Clone)]
pub struct RedisLink {
    connection: ConnectionManager,
    metrics: Metrics,
}

impl RedisLink {
    /// A link to `url` (`redis://…`); nothing is connected until the first call.
    pub fn new(url: &str, metrics: Metrics) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            // One quick attempt per call; the next call tries again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(Self {
            connection,
            metrics,
        })
    }

    /// Runs a Lua script.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisDown> {
        let mut connection = self.connection.clone();
        let call = invocation.invoke_async(&mut connection);
        self.bounded(call).await
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, RedisDown> {
        let mut connection = self.connection.clone();
        let call = command.query_async(&mut connection);
        self.bounded(call).await
    }

    /// Whether Redis answers (readiness).
    pub async fn ping(&self) -> Result<(), RedisDown> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisDown> {
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => RedisDown {
                fault: if e.is_timeout() {
                    UpstreamFault::Timeout
                } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
                {
                    UpstreamFault::Unreachable
                } else {
                    UpstreamFault::BadAnswer
                },
                detail: e.to_string(),
            },
            Err(_) => RedisDown {
                fault: UpstreamFault::Timeout,
                detail: format!("no answer within {CALL_TIMEOUT:?}"),
            },
        };
        self.metrics.redis_error();
        Err(result)
    }
}
