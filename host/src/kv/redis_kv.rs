//! The Redis backend of the plugin KV store, so several Weir instances share
//! rate-limit counters and idempotency keys. Atomic operations that Redis
//! has no single command for (increment-with-TTL-on-create, compare-and-swap)
//! are Lua scripts, which Redis runs atomically.
//!
//! `kv.limit` is one script too ([`LIMIT`]): every limit of a call is read,
//! decided and written inside it, on the Redis server's clock, so a fleet
//! shares one exact limit in one round trip per request, under any
//! contention, whatever each host's clock says. (On Redis Cluster the keys
//! of one call would have to share a slot; Weir supports one Redis, or a
//! Sentinel-managed primary.)
//!
//! While Redis is unreachable, calls fail at once, for `retry`, instead of
//! each waiting out the timeout: the request path never queues behind a
//! reconnection. Then the next calls try again, and the connection manager
//! reconnects.
//!
//! Keys and values are capped as in the memory backend; the data itself
//! lives in Redis, bounded by its `maxmemory` and eviction policy, which
//! the operator sets for the fleet. Per-plugin quotas are not kept here:
//! counting them in Redis would take a script on every write and drift
//! whenever Redis expires or evicts a key on its own.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisResult, Script};

use super::{
    check_value, Bucket, KvError, KvFuture, KvKey, KvStore, LimitDecision, Limiter, LimiterLimits,
};

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

/// GCRA over every bucket of one `kv.limit` call (the steps of
/// `weir_gcra`). A TAT is stored as decimal nanoseconds since the epoch and
/// handled as seconds and nanoseconds, so that Lua's doubles stay exact:
/// every span is under 2^53 ns. KEYS: the buckets; ARGV: interval,
/// tolerance and cost of each, in ns. Returns allowed (0/1), remaining and
/// reset (ns) of each, flattened.
const LIMIT: &str = r"
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_ns = tonumber(time[2]) * 1000
local ahead = {}
local allowed = true
for i, key in ipairs(KEYS) do
  local a = 0
  local tat = redis.call('GET', key)
  if tat and string.len(tat) > 9 then
    local s = tonumber(string.sub(tat, 1, -10))
    local ns = tonumber(string.sub(tat, -9))
    if s and ns then
      a = math.max(0, (s - now_s) * 1e9 + (ns - now_ns))
    end
  end
  ahead[i] = a
  if a + tonumber(ARGV[3 * i]) > tonumber(ARGV[3 * i - 1]) then
    allowed = false
  end
end
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local a = ahead[i]
  local fits = a + cost <= tolerance
  if allowed then
    local after = a + cost
    if cost > 0 then
      local total = now_ns + after
      local s = now_s + math.floor(total / 1e9)
      redis.call('SET', key, string.format('%d%09d', s, total % 1e9), 'PX', math.ceil(after / 1e6))
    end
    out[3 * i - 2] = 1
    out[3 * i - 1] = math.floor((tolerance - after) / interval)
    out[3 * i] = after
  elseif fits then
    out[3 * i - 2] = 1
    out[3 * i - 1] = math.floor((tolerance - a) / interval)
    out[3 * i] = a
  else
    out[3 * i - 2] = 0
    out[3 * i - 1] = 0
    out[3 * i] = a + cost - tolerance
  end
end
return out
";

/// How to reach Redis (`[kv] backend = "redis"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// Before every key, so several deployments can share one Redis.
    pub prefix: String,
    /// Connecting and each response.
    pub timeout: Duration,
    /// How long calls fail at once after Redis was found unreachable.
    pub retry: Duration,
    pub max_value_bytes: usize,
    /// The in-process limiter of `kv.limit-local`.
    pub limiter: LimiterLimits,
}

pub struct RedisKv {
    connection: ConnectionManager,
    /// Before every key, so several deployments can share one Redis.
    prefix: String,
    /// Redis bounds its own memory (`maxmemory`), but a value still passes
    /// through the host on its way there and back.
    max_value_bytes: usize,
    increment: Script,
    compare_and_swap: Script,
    limit: Script,
    /// `kv.limit-local`, and nothing else: values live in Redis only.
    local: Limiter,
    retry: Duration,
    /// Until when (ms on `epoch`) calls fail at once.
    down_until_ms: AtomicU64,
    epoch: Instant,
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
    pub fn new(settings: &RedisSettings) -> Result<RedisKv, KvError> {
        let url = &settings.url;
        let client = redis::Client::open(url.as_str())
            .map_err(|e| KvError::Unavailable(format!("redis url {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| KvError::Unavailable(e.to_string()))?;
        Ok(RedisKv {
            connection,
            prefix: settings.prefix.clone(),
            max_value_bytes: settings.max_value_bytes,
            increment: Script::new(INCREMENT),
            compare_and_swap: Script::new(COMPARE_AND_SWAP),
            limit: Script::new(LIMIT),
            local: Limiter::new(settings.limiter),
            retry: settings.retry,
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Run one command, unless Redis was found unreachable less than
    /// `retry` ago; finding it unreachable starts that window.
    async fn call<T>(&self, command: impl Future<Output = RedisResult<T>>) -> Result<T, KvError> {
        let down_until = self.down_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        if now < down_until {
            return Err(KvError::Unavailable(format!(
                "redis unreachable; trying again in {} ms",
                down_until - now
            )));
        }
        command.await.map_err(|err| {
            if err.is_io_error()
                || err.is_timeout()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
            {
                let until = self.now_ms() + self.retry.as_millis() as u64;
                self.down_until_ms.store(until, Ordering::Relaxed);
            }
            unavailable(err)
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
            self.call(connection.get::<_, Option<Vec<u8>>>(self.key(key)))
                .await
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
                Some(ms) => {
                    self.call(connection.pset_ex::<_, _, ()>(key, value, ms.max(1)))
                        .await
                }
                None => self.call(connection.set::<_, _, ()>(key, value)).await,
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.call(connection.del::<_, ()>(self.key(key))).await
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
            let mut invocation = self.increment.key(self.key(key));
            invocation.arg(delta).arg(ttl_arg(ttl_ms));
            self.call(invocation.invoke_async::<i64>(&mut connection))
                .await
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
            let mut invocation = self.compare_and_swap.key(self.key(key));
            invocation
                .arg(flag)
                .arg(expected)
                .arg(new)
                .arg(ttl_arg(ttl_ms));
            let swapped: i64 = self.call(invocation.invoke_async(&mut connection)).await?;
            Ok(swapped == 1)
        })
    }

    fn limit<'a>(
        &'a self,
        _plugin: &'a str,
        buckets: &'a [Bucket],
    ) -> KvFuture<'a, Vec<LimitDecision>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let mut invocation = self.limit.prepare_invoke();
            for bucket in buckets {
                invocation
                    .key(format!("{}{}", self.prefix, bucket.key))
                    .arg(bucket.params.interval_ns)
                    .arg(bucket.params.tolerance_ns)
                    .arg(bucket.params.cost_ns);
            }
            let flat: Vec<u64> = self.call(invocation.invoke_async(&mut connection)).await?;
            if flat.len() != buckets.len() * 3 {
                return Err(KvError::Unavailable(format!(
                    "redis limit script answered {} values for {} limits",
                    flat.len(),
                    buckets.len()
                )));
            }
            Ok(flat
                .chunks_exact(3)
                .map(|d| LimitDecision {
                    allowed: d[0] == 1,
                    remaining: d[1],
                    reset_ns: d[2],
                })
                .collect())
        })
    }

    fn limit_local(&self, plugin: &str, buckets: &[Bucket]) -> Result<Vec<LimitDecision>, KvError> {
        self.local.limit(plugin, buckets)
    }

    fn limiter_keys(&self) -> u64 {
        self.local.held()
    }
}
