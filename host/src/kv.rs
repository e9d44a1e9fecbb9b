//! The key-value store behind the plugins' `kv` import.
//!
//! [`MemoryKv`] serves a single instance; [`RedisKv`] lets a fleet of Weir
//! instances share rate-limit counters and idempotency keys.
//!
//! Whatever a plugin stores, the host holds, so both backends refuse keys
//! and values over their caps, and the memory backend is bounded as a
//! whole ([`KvLimits::max_bytes`], [`KvLimits::max_entries`]) and per plugin
//! (quotas far below the whole, so one plugin filling its share cannot push
//! out another's entries). A refusal is [`KvError::TooLarge`], the WIT
//! `too-large`, with the reason the host counts it under.

mod limiter;
mod memory;
mod redis_kv;
#[cfg(test)]
mod tests;

pub use limiter::{Bucket, Limiter, LimiterLimits};
pub use memory::MemoryKv;
pub use redis_kv::{RedisKv, RedisSettings};
pub use weir_gcra::Decision as LimitDecision;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("kv backend unavailable: {0}")]
    Unavailable(String),
    #[error("stored value is not an integer")]
    NotAnInteger,
    #[error("kv write refused: {0}")]
    TooLarge(Refusal),
    /// Arguments no store could act on (a `limit` with a zero rate).
    #[error("invalid kv call: {0}")]
    Invalid(String),
}

/// Why a key or a write was refused; the `reason` label of
/// `weir_plugin_kv_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The plugin's key is longer than [`MAX_KEY_BYTES`].
    KeyBytes,
    /// The value is longer than `max_value_bytes`.
    ValueBytes,
    /// The write would take the plugin past `plugin_max_bytes`.
    PluginBytes,
    /// The write would take the plugin past `plugin_max_entries`.
    PluginEntries,
    /// A new rate-limit bucket would take the limiter past `max_keys` or
    /// the plugin past `plugin_max_keys` (see [`LimiterLimits`]).
    LimiterKeys,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::KeyBytes => "key_bytes",
            Refusal::ValueBytes => "value_bytes",
            Refusal::PluginBytes => "plugin_bytes",
            Refusal::PluginEntries => "plugin_entries",
            Refusal::LimiterKeys => "limiter_keys",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::KeyBytes => "key too long",
            Refusal::ValueBytes => "value too large",
            Refusal::PluginBytes => "the plugin's byte quota is used up",
            Refusal::PluginEntries => "the plugin's entry quota is used up",
            Refusal::LimiterKeys => "the rate limiter holds as many buckets as it may",
        })
    }
}

pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// Most limits one `kv.limit` call may carry: a request checks a handful.
pub const MAX_LIMITS_PER_CALL: usize = 16;

/// Longest key a plugin may use (its own part, before namespacing): keys
/// are names, and a long one costs the host on every lookup.
pub const MAX_KEY_BYTES: usize = 1024;

/// How much the memory store may hold. Sizes count what an entry costs the
/// host: its stored key, its value and 512 bytes of bookkeeping (measured,
/// see `memory::ENTRY_OVERHEAD`), so the figures are close to the memory
/// the store really takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// The whole store. 64 MiB, as the response cache: a proxy's memory
    /// belongs to its connections, not to plugin state. Past it, moka
    /// evicts (expired entries first, then by TinyLFU).
    pub max_bytes: u64,
    /// The whole store, in entries. 1 M: at the default `max_bytes` the
    /// per-entry overhead already keeps the count near 120 k; this keeps
    /// the count (and the work evicting grows with) bounded when
    /// `max_bytes` is raised.
    pub max_entries: u64,
    /// One plugin's share. 16 MiB, a quarter of `max_bytes`: four plugins
    /// must all be full before the global bound evicts anyone's entries
    /// (Weir's own plugins have one KV user, `rate-limit`), while still
    /// about 30 k small counters, one per client and window.
    pub plugin_max_bytes: u64,
    /// One plugin's share, in entries. 100 k, a tenth of `max_entries`.
    pub plugin_max_entries: u64,
    /// Largest value. 1 MiB: KV values are counters, tokens and small
    /// records; a bigger one is a body, which belongs in the cache.
    pub max_value_bytes: usize,
    /// The rate limiter's buckets, held apart from the values.
    pub limiter: LimiterLimits,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_bytes: 64 << 20,
            max_entries: 1_000_000,
            plugin_max_bytes: 16 << 20,
            plugin_max_entries: 100_000,
            max_value_bytes: 1 << 20,
            limiter: LimiterLimits::default(),
        }
    }
}

/// A plugin's key as the backends store it: the plugin's name prefixed
/// with its length, `/`, then the plugin's own key — `6:tagger/seen`.
/// The length says where the name ends, whatever the name and the key
/// contain, so no plugin can spell another's key: plugin `a` with key
/// `b/x` is `1:a/b/x`, plugin `a/b` with key `x` is `3:a/b/x`. (Plugin
/// names are any TOML key, `/` included, so a separator alone would not do.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvKey<'a> {
    plugin: &'a str,
    stored: String,
}

impl<'a> KvKey<'a> {
    /// Namespace `key` for `plugin`, refusing a key over [`MAX_KEY_BYTES`].
    pub fn new(plugin: &'a str, key: &str) -> Result<KvKey<'a>, KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge(Refusal::KeyBytes));
        }
        Ok(KvKey {
            plugin,
            stored: format!("{}:{plugin}/{key}", plugin.len()),
        })
    }

    /// The plugin whose quota the key counts against.
    pub fn plugin(&self) -> &'a str {
        self.plugin
    }

    /// The key as stored, namespace included.
    pub fn stored(&self) -> &str {
        &self.stored
    }
}

/// Refuse a value over the backend's cap, before it is stored or sent.
pub(crate) fn check_value(value: &[u8], max_value_bytes: usize) -> Result<(), KvError> {
    if value.len() > max_value_bytes {
        return Err(KvError::TooLarge(Refusal::ValueBytes));
    }
    Ok(())
}

/// What a store holds, in the units of [`KvLimits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub bytes: u64,
    pub entries: u64,
}

/// What the memory store holds, overall and per plugin.
#[derive(Debug, Clone, Default)]
pub struct KvUsage {
    /// moka's weighted size and entry count: what `max_bytes` and
    /// `max_entries` bound. An entry weighs at least
    /// `max_bytes / max_entries`, so with a small `max_entries` the
    /// weight exceeds the bytes held.
    pub total: Held,
    /// What each plugin that has written holds: what its quota bounds.
    pub plugins: BTreeMap<String, Held>,
}

/// Operations every backend provides atomically.
pub trait KvStore: Send + Sync {
    fn get<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, Option<Vec<u8>>>;
    fn set<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, ()>;
    fn delete<'a>(&'a self, key: &'a KvKey<'a>) -> KvFuture<'a, ()>;
    fn increment<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, i64>;
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a KvKey<'a>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvFuture<'a, bool>;

    /// Decide a request against `buckets` (distinct keys, namespaced for
    /// `plugin`) atomically: the WIT's `kv.limit`.
    fn limit<'a>(
        &'a self,
        plugin: &'a str,
        buckets: &'a [Bucket],
    ) -> KvFuture<'a, Vec<LimitDecision>>;

    /// The same on this process's own limiter, whatever the backend: the
    /// WIT's `kv.limit-local`.
    fn limit_local(&self, plugin: &str, buckets: &[Bucket]) -> Result<Vec<LimitDecision>, KvError>;

    /// Rate-limit buckets held in this process.
    fn limiter_keys(&self) -> u64;

    /// What the store holds, where the host can tell: the memory backend.
    /// Redis holds its own data, bounded by its own `maxmemory`.
    fn usage(&self) -> Option<KvUsage> {
        None
    }
}
