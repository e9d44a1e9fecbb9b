//! The host's key-value store, shared by every instance of the plugin (and
//! by every Weir, with a Redis backend); keys are namespaced per plugin.
//!
//! [`limit`] is the rate limiter: GCRA buckets the host decides atomically,
//! several per call, in one round trip to Redis for a fleet. Use it rather
//! than building a limiter from [`get`] and [`compare_and_swap`], which
//! costs round trips and loses races under contention.
//!
//! Built natively (tests), an in-process map per thread stands in, with TTLs
//! and buckets measured on [`crate::clock::now_ms`];
//! [`crate::testing::clear_kv`] empties it.

pub use crate::bindings::weir::plugin::kv::{KvError, LimitCheck, LimitDecision};

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::weir::plugin::kv::{
    compare_and_swap, delete, get, increment, limit, limit_local, set,
};

#[cfg(not(target_arch = "wasm32"))]
pub use native::{compare_and_swap, delete, get, increment, limit, limit_local, set};

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::{KvError, LimitCheck, LimitDecision};
    use crate::clock::now_ms;

    struct Entry {
        value: Vec<u8>,
        expires_ms: Option<u64>,
    }

    thread_local! {
        static STORE: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
        /// `limit`'s buckets: their TATs in ns on `now_ms`.
        static BUCKETS: RefCell<HashMap<String, u64>> = RefCell::new(HashMap::new());
    }

    pub(crate) fn clear() {
        STORE.with(|store| store.borrow_mut().clear());
        BUCKETS.with(|buckets| buckets.borrow_mut().clear());
    }

    /// The host's `kv.limit`, with its arithmetic and its checks.
    pub fn limit(limits: &[LimitCheck]) -> Result<Vec<LimitDecision>, KvError> {
        if limits.len() > 16 {
            return Err(KvError::Invalid("more than 16 limits in one call".into()));
        }
        let now = now_ms().saturating_mul(1_000_000);
        let mut params = Vec::with_capacity(limits.len());
        for (i, limit) in limits.iter().enumerate() {
            if limits[..i].iter().any(|earlier| earlier.key == limit.key) {
                return Err(KvError::Invalid(format!("limits[{i}] repeats a key")));
            }
            let checked =
                weir_gcra::Params::new(limit.rate, limit.period_ms, limit.burst, limit.cost)
                    .map_err(|why| KvError::Invalid(format!("limits[{i}]: {why}")))?;
            params.push(checked);
        }
        BUCKETS.with(|buckets| {
            let mut buckets = buckets.borrow_mut();
            let limits_ahead: Vec<(weir_gcra::Params, u64)> = limits
                .iter()
                .zip(&params)
                .map(|(limit, p)| (*p, weir_gcra::ahead(buckets.get(&limit.key).copied(), now)))
                .collect();
            let mut decisions = vec![
                weir_gcra::Decision {
                    allowed: false,
                    remaining: 0,
                    reset_ns: 0,
                };
                limits.len()
            ];
            if weir_gcra::decide_all(&limits_ahead, &mut decisions) {
                for ((limit, p), decision) in limits.iter().zip(&params).zip(&decisions) {
                    if p.cost_ns > 0 {
                        buckets.insert(limit.key.clone(), now + decision.reset_ns);
                    }
                }
            }
            Ok(decisions
                .into_iter()
                .map(|d| LimitDecision {
                    allowed: d.allowed,
                    remaining: d.remaining,
                    reset_ms: d.reset_ns.div_ceil(1_000_000),
                })
                .collect())
        })
    }

    /// Natively there is one store: the same buckets as [`limit`].
    pub fn limit_local(limits: &[LimitCheck]) -> Result<Vec<LimitDecision>, KvError> {
        limit(limits)
    }

    fn deadline(ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ttl| now_ms().saturating_add(ttl))
    }

    /// Runs `f` on the live (unexpired) value of `key`.
    fn with_live<T>(key: &str, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        STORE.with(|store| {
            let mut store = store.borrow_mut();
            if store
                .get(key)
                .is_some_and(|e| e.expires_ms.is_some_and(|at| at <= now_ms()))
            {
                store.remove(key);
            }
            f(&mut store)
        })
    }

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(with_live(key, |store| {
            store.get(key).map(|e| e.value.clone())
        }))
    }

    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        let entry = Entry {
            value: value.to_vec(),
            expires_ms: deadline(ttl_ms),
        };
        with_live(key, |store| store.insert(key.to_string(), entry));
        Ok(())
    }

    pub fn delete(key: &str) -> Result<(), KvError> {
        with_live(key, |store| store.remove(key));
        Ok(())
    }

    pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        with_live(key, |store| {
            let current = match store.get(key) {
                None => 0,
                Some(entry) => std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or(KvError::NotAnInteger)?,
            };
            let next = current.saturating_add(delta);
            let expires_ms = match store.get(key) {
                Some(entry) => entry.expires_ms,
                None => deadline(ttl_ms),
            };
            let value = next.to_string().into_bytes();
            store.insert(key.to_string(), Entry { value, expires_ms });
            Ok(next)
        })
    }

    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        Ok(with_live(key, |store| {
            if store.get(key).map(|e| e.value.as_slice()) != expected {
                return false;
            }
            let entry = Entry {
                value: new.to_vec(),
                expires_ms: deadline(ttl_ms),
            };
            store.insert(key.to_string(), entry);
            true
        }))
    }
}
