//! The key-value store behind the plugins' `kv` import.
//!
//! [`MemoryKv`] serves a single instance; [`RedisKv`] lets a fleet of Weir
//! instances share rate-limit counters and idempotency keys.

mod redis_kv;

pub use redis_kv::RedisKv;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("kv backend unavailable: {0}")]
    Unavailable(String),
    #[error("stored value is not an integer")]
    NotAnInteger,
    #[error("key or value too large")]
    TooLarge,
}

pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// Largest key and value accepted, so a plugin cannot exhaust host memory.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Operations every backend provides atomically.
pub trait KvStore: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl_ms: Option<u64>) -> KvFuture<'a, ()>;
    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, ()>;
    fn increment<'a>(&'a self, key: &'a str, delta: i64, ttl_ms: Option<u64>) -> KvFuture<'a, i64>;
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, bool>;
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// An in-process store; expired entries are dropped lazily on access and
/// swept when the map grows.
#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<HashMap<String, Entry>>,
}

pub(crate) fn check_sizes(key: &str, value: Option<&[u8]>) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES || value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
        return Err(KvError::TooLarge);
    }
    Ok(())
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

impl MemoryKv {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Entry>, Instant) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if map.len() > 100_000 && map.len().is_power_of_two() {
            map.retain(|_, e| e.live(now));
        }
        f(&mut map, now)
    }

    fn live_value(map: &HashMap<String, Entry>, key: &str, now: Instant) -> Option<Vec<u8>> {
        map.get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }
}

impl KvStore for MemoryKv {
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        let result = self.with(|map, now| Self::live_value(map, key, now));
        Box::pin(async move { Ok(result) })
    }

    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl_ms: Option<u64>) -> KvFuture<'a, ()> {
        let result = check_sizes(key, Some(&value)).map(|()| {
            self.with(|map, now| {
                map.insert(
                    key.to_owned(),
                    Entry {
                        value,
                        expires: expiry(now, ttl_ms),
                    },
                );
            })
        });
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, ()> {
        self.with(|map, _| map.remove(key));
        Box::pin(async { Ok(()) })
    }

    fn increment<'a>(&'a self, key: &'a str, delta: i64, ttl_ms: Option<u64>) -> KvFuture<'a, i64> {
        let result = check_sizes(key, None).and_then(|()| {
            self.with(|map, now| {
                let current = match map.get(key).filter(|e| e.live(now)) {
                    Some(entry) => Some(
                        std::str::from_utf8(&entry.value)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                            .ok_or(KvError::NotAnInteger)?,
                    ),
                    None => None,
                };
                let next = current.unwrap_or(0).saturating_add(delta);
                let expires = match current {
                    Some(_) => map.get(key).and_then(|e| e.expires),
                    None => expiry(now, ttl_ms),
                };
                map.insert(
                    key.to_owned(),
                    Entry {
                        value: next.to_string().into_bytes(),
                        expires,
                    },
                );
                Ok(next)
            })
        });
        Box::pin(async move { result })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, bool> {
        let result = check_sizes(key, Some(&new)).map(|()| {
            self.with(|map, now| {
                if Self::live_value(map, key, now) != expected {
                    return false;
                }
                map.insert(
                    key.to_owned(),
                    Entry {
                        value: new,
                        expires: expiry(now, ttl_ms),
                    },
                );
                true
            })
        });
        Box::pin(async move { result })
    }
}
