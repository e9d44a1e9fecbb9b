//! The Redis backend of the plugin KV store, so several Weir instances share
//! rate-limit counters and idempotency keys. Atomic operations that Redis
//! has no single command for (increment-with-TTL-on-create, compare-and-swap)
//! are Lua scripts, which Redis runs atomically.
//!
//! Keys and values are capped as in the memory backend; the data itself
//! lives in Redis, bounded by its `maxmemory` and eviction policy, which
//! the operator sets for the fleet. Per-plugin quotas are not kept here:
//! counting them in Redis would take a script on every write and drift
//! whenever Redis expires or evicts a key on its own.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{check_value, KvError, KvFuture, KvKey, KvStore};

/// INCRBY that sets the TTL only when it created the key.
const INCREMENT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
";

/// SET if the current value equals the expected one (or is absent when
/// ARGV[1] is '0').
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
local expected_absent = ARGV[1] == '0'
if (expected_absent and current == false) or (not expected_absent and current == ARGV[2]) then
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  return 1
end
return 0
";

pub struct RedisKv {
    connection: ConnectionManager,
    /// Before every key, so several deployments can share one Redis.
    prefix: String,
    /// Redis bounds its own memory (`maxmemory`), but a value still passes
    /// through the host on its way there and back.
    max_value_bytes: usize,
    increment: Script,
    compare_and_swap: Script,
}

fn unavailable(err: redis::RedisError) -> KvError {
    if err.to_string().contains("not an integer") {
        KvError::NotAnInteger
    } else {
        KvError::Unavailable(err.to_string())
    }
}

fn ttl_arg(ttl_ms: Option<u64>) -> String {
    ttl_ms.map(|ms| ms.max(1).to_string()).unwrap_or_default()
}

impl RedisKv {
    /// Connect lazily: a Redis outage at start-up or later makes KV calls
    /// fail with `unavailable` (plugins decide what that means) instead of
    /// stopping the proxy.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        max_value_bytes: usize,
    ) -> Result<RedisKv, KvError> {
        let client = redis::Client::open(url)
            .map_err(|e| KvError::Unavailable(format!("redis url {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| KvError::Unavailable(e.to_string()))?;
        Ok(RedisKv {
            connection,
            prefix: prefix.to_owned(),
            max_value_bytes,
            increment: Script::new(INCREMENT),
            compare_and_swap: Script::new(COMPARE_AND_SWAP),
        })
    }

    /// The configured prefix, then the plugin's namespaced key.
    fn key(&self, key: &KvKey<'_>) -> String {
        format!("{}{}", self.prefix, key.stored())
    }
}

impl KvStore for RedisKv {
    fn get<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            connection
                .get::<_, Option<Vec<u8>>>(self.key(key))
                .await
                .map_err(unavailable)
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, ()> {
        Box::pin(async move {
            check_value(&value, self.max_value_bytes)?;
            let mut connection = self.connection.clone();
            let key = self.key(key);
            match ttl_ms {
                Some(ms) => connection
                    .pset_ex::<_, _, ()>(key, value, ms.max(1))
                    .await
                    .map_err(unavailable),
                None => connection
                    .set::<_, _, ()>(key, value)
                    .await
                    .map_err(unavailable),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            connection
                .del::<_, ()>(self.key(key))
                .await
                .map_err(unavailable)
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, i64> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.increment
                .key(self.key(key))
                .arg(delta)
                .arg(ttl_arg(ttl_ms))
                .invoke_async::<i64>(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_value(&new, self.max_value_bytes)?;
            let mut connection = self.connection.clone();
            let (flag, expected) = match expected {
                Some(value) => ("1", value),
                None => ("0", Vec::new()),
            };
            let swapped: i64 = self
                .compare_and_swap
                .key(self.key(key))
                .arg(flag)
                .arg(expected)
                .arg(new)
                .arg(ttl_arg(ttl_ms))
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            Ok(swapped == 1)
        })
    }
}
