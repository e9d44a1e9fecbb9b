//! The in-process backend: a moka cache bounded in bytes and entries, with
//! a quota per plugin.
//!
//! The global bound is moka's: one weighted capacity (`max_bytes`), each
//! entry weighing its key, its value and [`ENTRY_OVERHEAD`], but at least
//! `max_bytes / max_entries` so the same capacity also caps the count.
//! Housekeeping drops expired entries first, then evicts by TinyLFU, whose
//! admission filter weighs how often a key is used, so a flood of keys
//! written once competes poorly with counters in use. moka applies that
//! bound asynchronously (a few hundred writes may be pending), so the hard
//! bound is the quotas: a plugin's holdings are charged synchronously,
//! before its write is put. An expired entry is invisible at once, but is
//! dropped, and credited back to its plugin, when moka's timer wheel
//! reaches it: within about a second (its buckets are 1.07 s wide).
//!
//! Atomicity: every write (set, delete, increment, compare-and-swap) is a
//! read-modify-write inside moka's `and_compute_with`, which runs the
//! closures of one key one at a time under a per-key lock. No lock of ours
//! spans a read and a write (a plugin's account is locked only to charge
//! or credit it), so writes to distinct keys do not queue behind each
//! other as they did behind the old map's one mutex, and reads take no
//! lock of ours at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::{
    check_value, Bucket, Held, KvError, KvFuture, KvKey, KvLimits, KvStore, KvUsage, LimitDecision,
    Limiter, Refusal,
};

/// What an entry costs the host beyond its key and value bytes. Measured
/// with moka 0.12.16 in a release build: 500 k entries with 24-byte keys
/// and 8-byte values raised RSS by 480–530 bytes each (moka's hash table,
/// access-order deque and timer-wheel nodes, the key's `Arc`, our
/// `Arc<Item>`, allocator rounding). Counting it keeps `max_bytes` honest
/// for small entries, which are what a flood of keys is made of.
pub(super) const ENTRY_OVERHEAD: u64 = 512;

/// One stored value. Behind an `Arc` because moka clones a value on every
/// read.
struct Item {
    value: Vec<u8>,
    expires: Option<Instant>,
    /// What the item is charged to its plugin: stored key + value +
    /// [`ENTRY_OVERHEAD`].
    weight: u64,
    /// Credited back when moka drops the item.
    account: Arc<Account>,
}

impl Item {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// One plugin's holdings. Exact because every item is charged once, when
/// it is put, and credited once, when moka drops it for whatever reason —
/// replaced, deleted, expired or evicted: the eviction listener sees every
/// removal (replacements too, synchronously, inside the put).
#[derive(Default)]
struct Account {
    held: Mutex<Held>,
}

impl Account {
    fn held(&self) -> Held {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charge a new item unless it would take the plugin past its quota.
    /// `replacing` is the live item the put replaces: it is credited back
    /// during the put, so it does not count against the new one.
    fn charge(
        &self,
        weight: u64,
        replacing: Option<&Item>,
        limits: &KvLimits,
    ) -> Result<(), Refusal> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (freed_bytes, freed_entries) = replacing.map_or((0, 0), |item| (item.weight, 1));
        if held
            .bytes
            .saturating_sub(freed_bytes)
            .saturating_add(weight)
            > limits.plugin_max_bytes
        {
            return Err(Refusal::PluginBytes);
        }
        if held.entries.saturating_sub(freed_entries) >= limits.plugin_max_entries {
            return Err(Refusal::PluginEntries);
        }
        held.bytes = held.bytes.saturating_add(weight);
        held.entries = held.entries.saturating_add(1);
        Ok(())
    }

    fn credit(&self, weight: u64) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.bytes = held.bytes.saturating_sub(weight);
        held.entries = held.entries.saturating_sub(1);
    }
}

/// Each item expires at its own TTL, set again by every write: a write
/// without TTL makes the key permanent, as in Redis. (moka's default for
/// an update would keep the old expiry.)
struct UntilExpires;

impl Expiry<String, Arc<Item>> for UntilExpires {
    fn expire_after_create(
        &self,
        _key: &String,
        item: &Arc<Item>,
        created_at: Instant,
    ) -> Option<Duration> {
        item.expires
            .map(|at| at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        key: &String,
        item: &Arc<Item>,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, item, updated_at)
    }
}

/// What a read-modify-write decided.
enum Change {
    Keep,
    Put {
        value: Vec<u8>,
        expires: Option<Instant>,
    },
    Remove,
}

/// An in-process store, bounded as a whole and per plugin (see the module
/// docs).
pub struct MemoryKv {
    entries: Cache<String, Arc<Item>>,
    /// By plugin name; grows only with the plugins configured over the
    /// process's life.
    accounts: RwLock<HashMap<String, Arc<Account>>>,
    limits: KvLimits,
    /// `kv.limit`'s buckets, apart from the values.
    limiter: Limiter,
}

impl Default for MemoryKv {
    fn default() -> Self {
        MemoryKv::new(KvLimits::default())
    }
}

/// When a TTL ends; `None` (never) for one past what `Instant` can hold.
fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)))
}

impl MemoryKv {
    pub fn new(limits: KvLimits) -> MemoryKv {
        // The lightest an entry may weigh, so that `max_bytes` of weight
        // is also at most `max_entries` entries.
        let floor = limits.max_bytes.div_ceil(limits.max_entries.max(1));
        let entries = Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(move |_key: &String, item: &Arc<Item>| {
                u32::try_from(item.weight.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(UntilExpires)
            .eviction_listener(|_key, item: Arc<Item>, _cause| item.account.credit(item.weight))
            .build();
        MemoryKv {
            entries,
            accounts: RwLock::new(HashMap::new()),
            limits,
            limiter: Limiter::new(limits.limiter),
        }
    }

    fn account(&self, plugin: &str) -> Arc<Account> {
        let accounts = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(account) = accounts.get(plugin) {
            return account.clone();
        }
        drop(accounts);
        let mut accounts = self
            .accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        accounts.entry(plugin.to_owned()).or_default().clone()
    }

    fn read(&self, key: &KvKey<'_>) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.entries
            .get(key.stored())
            .filter(|item| item.live(now))
            .map(|item| item.value.clone())
    }

    /// Read-modify-write one key atomically: `decide` sees the live item,
    /// if any, and says what to store and what to answer. A put is charged
    /// to the plugin inside the same per-key critical section, so a refusal
    /// leaves the key as it was.
    fn update<T>(
        &self,
        key: &KvKey<'_>,
        decide: impl FnOnce(Option<&Item>, Instant) -> Result<(Change, T), KvError>,
    ) -> Result<T, KvError> {
        let account = self.account(key.plugin());
        let mut outcome = None;
        self.entries
            .entry_by_ref(key.stored())
            .and_compute_with(|current| {
                let now = Instant::now();
                let current = current
                    .map(|entry| entry.into_value())
                    .filter(|item| item.live(now));
                let (op, result) = match decide(current.as_deref(), now) {
                    Err(err) => (Op::Nop, Err(err)),
                    Ok((Change::Keep, answer)) => (Op::Nop, Ok(answer)),
                    Ok((Change::Remove, answer)) if current.is_some() => (Op::Remove, Ok(answer)),
                    Ok((Change::Remove, answer)) => (Op::Nop, Ok(answer)),
                    Ok((Change::Put { value, expires }, answer)) => {
                        let weight = (key.stored().len() + value.len()) as u64 + ENTRY_OVERHEAD;
                        match account.charge(weight, current.as_deref(), &self.limits) {
                            Ok(()) => {
                                let item = Item {
                                    value,
                                    expires,
                                    weight,
                                    account: account.clone(),
                                };
                                (Op::Put(Arc::new(item)), Ok(answer))
                            }
                            Err(why) => (Op::Nop, Err(KvError::TooLarge(why))),
                        }
                    }
                };
                outcome = Some(result);
                op
            });
        // moka runs the closure exactly once; a missing outcome would be
        // its bug, reported to the plugin rather than panicking the host.
        outcome.unwrap_or_else(|| Err(KvError::Unavailable("memory store update lost".into())))
    }

    fn set_now(&self, key: &KvKey<'_>, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        check_value(&value, self.limits.max_value_bytes)?;
        self.update(key, |_, now| {
            let expires = expiry(now, ttl_ms);
            Ok((Change::Put { value, expires }, ()))
        })
    }

    fn increment_now(
        &self,
        key: &KvKey<'_>,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        self.update(key, |current, now| {
            let (count, expires) = match current {
                Some(item) => {
                    let count = std::str::from_utf8(&item.value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or(KvError::NotAnInteger)?;
                    // The TTL is set only when the key is created, so a
                    // fixed window ends on time however often it counts.
                    (count, item.expires)
                }
                None => (0, expiry(now, ttl_ms)),
            };
            let next = count.saturating_add(delta);
            let value = next.to_string().into_bytes();
            Ok((Change::Put { value, expires }, next))
        })
    }

    fn compare_and_swap_now(
        &self,
        key: &KvKey<'_>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        check_value(&new, self.limits.max_value_bytes)?;
        self.update(key, |current, now| {
            if current.map(|item| item.value.as_slice()) != expected.as_deref() {
                return Ok((Change::Keep, false));
            }
            let expires = expiry(now, ttl_ms);
            Ok((
                Change::Put {
                    value: new,
                    expires,
                },
                true,
            ))
        })
    }
}

impl KvStore for MemoryKv {
    fn get<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, Option<Vec<u8>>> {
        let result = self.read(key);
        Box::pin(async move { Ok(result) })
    }

    fn set<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, ()> {
        let result = self.set_now(key, value, ttl_ms);
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, ()> {
        let result = self.update(key, |_, _| Ok((Change::Remove, ())));
        Box::pin(async move { result })
    }

    fn increment<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, i64> {
        let result = self.increment_now(key, delta, ttl_ms);
        Box::pin(async move { result })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, bool> {
        let result = self.compare_and_swap_now(key, expected, new, ttl_ms);
        Box::pin(async move { result })
    }

    /// Exact once moka's pending work (expiry, eviction) has run, which
    /// this does first.
    fn limit<'a>(
        &'a self,
        plugin: &'a str,
        buckets: &'a [Bucket],
    ) -> KvFuture<'a, Vec<LimitDecision>> {
        let result = self.limiter.limit(plugin, buckets);
        Box::pin(async move { result })
    }

    fn limit_local(&self, plugin: &str, buckets: &[Bucket]) -> Result<Vec<LimitDecision>, KvError> {
        self.limiter.limit(plugin, buckets)
    }

    fn limiter_keys(&self) -> u64 {
        self.limiter.held()
    }

    fn usage(&self) -> Option<KvUsage> {
        self.entries.run_pending_tasks();
        let plugins = self
            .accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, account)| (name.clone(), account.held()))
            .collect();
        Some(KvUsage {
            total: Held {
                bytes: self.entries.weighted_size(),
                entries: self.entries.entry_count(),
            },
            plugins,
        })
    }
}
