//! The in-process side of `kv.limit`: GCRA buckets (see [`weir_gcra`]) in
//! a sharded map, one TAT per bucket.
//!
//! A call decides all its limits under the locks of their shards, taken in
//! shard order (so two calls never wait on each other in a cycle), which
//! makes it atomic: every limit spends or none does, whatever runs beside
//! it. Calls on buckets of other shards do not wait at all.
//!
//! Bounded like the rest of the KV: at most `max_keys` buckets, and
//! `plugin_max_keys` per plugin. A bucket is dead once its TAT has passed
//! (a fresh bucket behaves the same), so dead ones are reused in place and
//! swept when a bound is reached, at most once a second (a sweep walks
//! every shard). A new bucket that still does not fit is refused as
//! `too-large` (reason `limiter_keys`): the plugin's `on_store_error`
//! decides, and the refusal is counted.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use weir_gcra::{Decision, Params};

use super::{KvError, Refusal};

const SHARDS: usize = 64;

/// The longest a sweep is put off while a bound is reached.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How many buckets the limiter may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterLimits {
    /// All plugins together. 200 k: about 25 MiB (a bucket costs its key,
    /// a TAT and the map's slot, about 120 bytes), one bucket per client
    /// and limit for a busy public service.
    pub max_keys: u64,
    /// One plugin's share, so a plugin keyed on something a client picks
    /// cannot take every bucket. Half of `max_keys`.
    pub plugin_max_keys: u64,
}

impl Default for LimiterLimits {
    fn default() -> Self {
        LimiterLimits {
            max_keys: 200_000,
            plugin_max_keys: 100_000,
        }
    }
}

/// One limit of a call: its stored key (namespaced) and its parameters.
pub struct Bucket {
    pub key: String,
    pub params: Params,
}

struct Entry {
    tat_ns: u64,
    plugin: Arc<str>,
}

type Shard = HashMap<String, Entry>;

pub struct Limiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    started: Instant,
    limits: LimiterLimits,
    held: AtomicU64,
    /// Buckets per plugin, live or dead until swept.
    plugins: Mutex<HashMap<Arc<str>, u64>>,
    /// When the last sweep ran, in `now_ns` terms (0: never).
    swept_ns: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limiter {
    pub fn new(limits: LimiterLimits) -> Limiter {
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            started: Instant::now(),
            limits,
            held: AtomicU64::new(0),
            plugins: Mutex::default(),
            swept_ns: AtomicU64::new(0),
        }
    }

    /// Nanoseconds on the limiter's own monotonic clock; never 0, so an
    /// expired TAT is always in the past.
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64 + 1
    }

    fn shard_of(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }

    /// Buckets held, all plugins together.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Decide `buckets` (distinct keys, checked by the caller) for
    /// `plugin`: one decision per bucket, in order.
    pub fn limit(&self, plugin: &str, buckets: &[Bucket]) -> Result<Vec<Decision>, KvError> {
        let shards: Vec<usize> = buckets.iter().map(|b| self.shard_of(&b.key)).collect();
        let mut order = shards.clone();
        order.sort_unstable();
        order.dedup();
        // Which of the held guards each bucket's shard is.
        let slots: Vec<usize> = shards
            .iter()
            .map(|shard| order.partition_point(|i| i < shard))
            .collect();
        if self.near_bounds(plugin, buckets.len() as u64) {
            self.sweep();
        }
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            order.iter().map(|&i| lock(&self.shards[i])).collect();
        let now = self.now_ns();

        let mut new_keys = 0;
        let limits: Vec<(Params, u64)> = buckets
            .iter()
            .zip(&slots)
            .map(|(bucket, &slot)| {
                let tat = guards[slot]
                    .get(&bucket.key)
                    .map(|e| e.tat_ns)
                    .filter(|&tat| tat > now);
                if !guards[slot].contains_key(&bucket.key) && bucket.params.cost_ns > 0 {
                    new_keys += 1;
                }
                (bucket.params, weir_gcra::ahead(tat, now))
            })
            .collect();
        let mut decisions = vec![
            Decision {
                allowed: false,
                remaining: 0,
                reset_ns: 0,
            };
            buckets.len()
        ];
        if !weir_gcra::decide_all(&limits, &mut decisions) {
            return Ok(decisions);
        }
        if new_keys > 0 {
            self.charge(plugin, new_keys)?;
        }
        let owner: Arc<str> = Arc::from(plugin);
        for ((bucket, &slot), decision) in buckets.iter().zip(&slots).zip(&decisions) {
            if bucket.params.cost_ns == 0 {
                continue;
            }
            let tat_ns = now + decision.reset_ns;
            match guards[slot].get_mut(&bucket.key) {
                // A dead bucket is reused in place: it is still counted.
                Some(entry) => entry.tat_ns = tat_ns,
                None => {
                    guards[slot].insert(
                        bucket.key.clone(),
                        Entry {
                            tat_ns,
                            plugin: owner.clone(),
                        },
                    );
                }
            }
        }
        Ok(decisions)
    }

    /// Whether `more` new buckets could take the store or the plugin past
    /// a bound.
    fn near_bounds(&self, plugin: &str, more: u64) -> bool {
        if self.held() + more > self.limits.max_keys {
            return true;
        }
        lock(&self.plugins).get(plugin).copied().unwrap_or(0) + more > self.limits.plugin_max_keys
    }

    /// Count `new_keys` buckets against the bounds, or refuse them all.
    fn charge(&self, plugin: &str, new_keys: u64) -> Result<(), KvError> {
        let mut plugins = lock(&self.plugins);
        let held = plugins.get(plugin).copied().unwrap_or(0);
        if held + new_keys > self.limits.plugin_max_keys
            || self.held() + new_keys > self.limits.max_keys
        {
            return Err(KvError::TooLarge(Refusal::LimiterKeys));
        }
        *plugins.entry(Arc::from(plugin)).or_insert(0) += new_keys;
        self.held.fetch_add(new_keys, Ordering::Relaxed);
        Ok(())
    }

    /// Drop every dead bucket, unless a sweep ran less than
    /// [`SWEEP_EVERY`] ago. Takes one shard lock at a time, never while
    /// the caller holds any.
    fn sweep(&self) {
        let now = self.now_ns();
        let last = self.swept_ns.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= SWEEP_EVERY.as_nanos() as u64;
        if !due
            || self
                .swept_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let mut freed: HashMap<Arc<str>, u64> = HashMap::new();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, entry| {
                let live = entry.tat_ns > now;
                if !live {
                    *freed.entry(entry.plugin.clone()).or_insert(0) += 1;
                }
                live
            });
        }
        let mut plugins = lock(&self.plugins);
        for (plugin, count) in freed {
            if let Some(held) = plugins.get_mut(&plugin) {
                *held = held.saturating_sub(count);
            }
            self.held.fetch_sub(count, Ordering::Relaxed);
        }
        plugins.retain(|_, held| *held > 0);
    }
}
