//! The memory backend's bounds and atomicity, and the namespacing every
//! backend stores keys under.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::memory::ENTRY_OVERHEAD;
use super::{KvError, KvFuture, KvKey, KvLimits, KvStore, MemoryKv, Refusal, MAX_KEY_BYTES};

/// The memory backend answers without waiting: its futures are ready at
/// the first poll, so tests (and their threads) need no runtime.
fn now<T>(mut future: KvFuture<'_, T>) -> Result<T, KvError> {
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

fn key<'a>(plugin: &'a str, key: &str) -> KvKey<'a> {
    KvKey::new(plugin, key).expect("short key")
}

fn set(kv: &MemoryKv, plugin: &str, k: &str, value: &[u8]) -> Result<(), KvError> {
    now(kv.set(&key(plugin, k), value.to_vec(), None))
}

fn get(kv: &MemoryKv, plugin: &str, k: &str) -> Option<Vec<u8>> {
    now(kv.get(&key(plugin, k))).expect("get")
}

fn refusal(result: Result<impl std::fmt::Debug, KvError>) -> Refusal {
    match result {
        Err(KvError::TooLarge(why)) => why,
        other => panic!("expected too-large, got {other:?}"),
    }
}

/// What one entry of `plugin` with key `k` and `value_len` bytes weighs.
fn weight(plugin: &str, k: &str, value_len: usize) -> u64 {
    (key(plugin, k).stored().len() + value_len) as u64 + ENTRY_OVERHEAD
}

#[test]
fn plugins_cannot_reach_each_others_keys() {
    // Plugin names may contain `/`: with a plain `name/key` both of
    // these would be `a/b/x`.
    assert_ne!(key("a", "b/x").stored(), key("a/b", "x").stored());
    assert_eq!(key("a", "b/x").stored(), "1:a/b/x");
    assert_eq!(key("a/b", "x").stored(), "3:a/b/x");

    let kv = MemoryKv::default();
    set(&kv, "a", "b/x", b"from a").unwrap();
    set(&kv, "a/b", "x", b"from a/b").unwrap();
    assert_eq!(get(&kv, "a", "b/x").as_deref(), Some(&b"from a"[..]));
    assert_eq!(get(&kv, "a/b", "x").as_deref(), Some(&b"from a/b"[..]));
    // Each counts against its own quota.
    let usage = kv.usage().unwrap();
    assert_eq!(usage.plugins["a"].entries, 1);
    assert_eq!(usage.plugins["a/b"].entries, 1);
}

#[test]
fn oversized_keys_and_values_are_refused() {
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert_eq!(refusal(KvKey::new("p", &long)), Refusal::KeyBytes);
    let kv = MemoryKv::new(KvLimits {
        max_value_bytes: 100,
        ..KvLimits::default()
    });
    set(&kv, "p", "fits", &[0; 100]).unwrap();
    assert_eq!(
        refusal(set(&kv, "p", "big", &[0; 101])),
        Refusal::ValueBytes
    );
    let swap = now(kv.compare_and_swap(&key("p", "big"), None, vec![0; 101], None));
    assert_eq!(refusal(swap), Refusal::ValueBytes);
}

#[test]
fn a_plugin_past_its_byte_quota_is_refused_and_others_are_not() {
    let value = [7u8; 1000];
    let per_entry = weight("flood", "k0000", value.len());
    let kv = MemoryKv::new(KvLimits {
        plugin_max_bytes: per_entry * 10,
        ..KvLimits::default()
    });
    for i in 0..10 {
        set(&kv, "flood", &format!("k{i:04}"), &value).unwrap();
    }
    assert_eq!(
        refusal(set(&kv, "flood", "k0010", &value)),
        Refusal::PluginBytes
    );
    // A refused write leaves the key as it was.
    assert_eq!(get(&kv, "flood", "k0010"), None);
    // Replacing a value it holds is not growth: still allowed.
    set(&kv, "flood", "k0003", &[8u8; 1000]).unwrap();
    // Another plugin has its own quota, and its entries stay.
    set(&kv, "victim", "counter", b"1").unwrap();
    assert_eq!(get(&kv, "victim", "counter").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&kv, "flood", "k0000").as_deref(), Some(&value[..]));

    let usage = kv.usage().unwrap();
    assert_eq!(usage.plugins["flood"].entries, 10);
    assert_eq!(usage.plugins["flood"].bytes, per_entry * 10);
    // Deleting frees the quota.
    now(kv.delete(&key("flood", "k0000"))).unwrap();
    set(&kv, "flood", "k0010", &value).unwrap();
}

#[test]
fn a_plugin_past_its_entry_quota_is_refused() {
    let kv = MemoryKv::new(KvLimits {
        plugin_max_entries: 3,
        ..KvLimits::default()
    });
    for k in ["a", "b", "c"] {
        set(&kv, "p", k, b"0").unwrap();
    }
    assert_eq!(refusal(set(&kv, "p", "d", b"v")), Refusal::PluginEntries);
    let incr = now(kv.increment(&key("p", "d"), 1, None));
    assert_eq!(refusal(incr), Refusal::PluginEntries);
    // Overwriting and counting on held keys goes on at the quota.
    for _ in 0..1000 {
        set(&kv, "p", "a", b"again").unwrap();
        now(kv.increment(&key("p", "b"), 1, None)).unwrap();
    }
    assert_eq!(kv.usage().unwrap().plugins["p"].entries, 3);
}

#[test]
fn the_whole_store_stays_under_max_bytes_by_evicting() {
    let max_bytes = 256 << 10;
    let kv = MemoryKv::new(KvLimits {
        max_bytes,
        plugin_max_bytes: max_bytes,
        ..KvLimits::default()
    });
    let value = [1u8; 500];
    // Four plugins, each writing as much as the whole store holds.
    let per_plugin = max_bytes / weight("p0", "k00000", value.len());
    for p in 0..4 {
        let plugin = format!("p{p}");
        for i in 0..per_plugin {
            set(&kv, &plugin, &format!("k{i:05}"), &value).unwrap();
        }
    }
    let usage = kv.usage().unwrap();
    assert!(
        usage.total.bytes <= max_bytes,
        "{} > {max_bytes}",
        usage.total.bytes
    );
    assert!(usage.total.entries < 4 * per_plugin, "nothing was evicted");
    // Evictions were credited back to their plugins: the accounts add up
    // to what the store holds.
    let held: u64 = usage.plugins.values().map(|h| h.bytes).sum();
    let entries: u64 = usage.plugins.values().map(|h| h.entries).sum();
    assert_eq!(held, usage.total.bytes);
    assert_eq!(entries, usage.total.entries);
}

#[test]
fn the_whole_store_stays_under_max_entries() {
    let kv = MemoryKv::new(KvLimits {
        max_entries: 50,
        plugin_max_entries: 50,
        ..KvLimits::default()
    });
    for p in 0..4 {
        for i in 0..50 {
            set(&kv, &format!("p{p}"), &format!("k{i}"), b"1").unwrap();
        }
    }
    let usage = kv.usage().unwrap();
    assert!(usage.total.entries <= 50, "{}", usage.total.entries);
    let entries: u64 = usage.plugins.values().map(|h| h.entries).sum();
    assert_eq!(entries, usage.total.entries);
}

#[test]
fn entries_expire_at_their_ttl_and_free_their_quota() {
    let kv = MemoryKv::default();
    now(kv.set(&key("p", "short"), b"v".to_vec(), Some(50))).unwrap();
    set(&kv, "p", "forever", b"v").unwrap();
    // increment keeps the TTL it created the key with.
    assert_eq!(now(kv.increment(&key("p", "window"), 1, Some(50))), Ok(1));
    assert_eq!(
        now(kv.increment(&key("p", "window"), 1, Some(60_000))),
        Ok(2)
    );
    // A set without TTL makes a key permanent.
    now(kv.set(&key("p", "kept"), b"v".to_vec(), Some(50))).unwrap();
    set(&kv, "p", "kept", b"v").unwrap();
    // A TTL past what the clock can express means "never", not a panic.
    now(kv.set(&key("p", "far"), b"v".to_vec(), Some(u64::MAX))).unwrap();
    assert!(get(&kv, "p", "short").is_some());

    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(get(&kv, "p", "short"), None);
    assert_eq!(get(&kv, "p", "window"), None);
    assert!(get(&kv, "p", "forever").is_some());
    assert!(get(&kv, "p", "kept").is_some());
    assert!(get(&kv, "p", "far").is_some());
    assert_eq!(now(kv.increment(&key("p", "window"), 1, None)), Ok(1));
    // Expired entries leave the store, and their plugin's account, when
    // moka's timer wheel (1.07 s buckets) reaches them. The wait is a
    // bound on that, not a timing assertion.
    let mut usage = kv.usage().unwrap();
    for _ in 0..50 {
        if usage.total.entries == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        usage = kv.usage().unwrap();
    }
    assert_eq!(usage.total.entries, 4);
    assert_eq!(usage.plugins["p"].entries, 4);
}

#[test]
fn increment_and_compare_and_swap_are_atomic_across_threads() {
    let kv = Arc::new(MemoryKv::default());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    now(kv.increment(&key("p", "hits"), 1, None)).unwrap();
                    // A counter kept by compare-and-swap, as GCRA keeps its
                    // state: retry until the swap from what was read lands.
                    loop {
                        let seen = get(&kv, "p", "swapped");
                        let count: u64 = seen
                            .as_deref()
                            .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                        let next = (count + 1).to_string().into_bytes();
                        if now(kv.compare_and_swap(&key("p", "swapped"), seen, next, None)).unwrap()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(get(&kv, "p", "hits").as_deref(), Some(&b"8000"[..]));
    assert_eq!(get(&kv, "p", "swapped").as_deref(), Some(&b"8000"[..]));
}

mod limiter {
    use std::sync::Arc;
    use std::time::Duration;

    use weir_gcra::Params;

    use crate::kv::{Bucket, KvError, Limiter, LimiterLimits, Refusal};

    fn bucket(key: &str, rate: u64, period_ms: u64) -> Bucket {
        Bucket {
            key: key.to_owned(),
            params: Params::new(rate, period_ms, rate, 1).expect("sound limit"),
        }
    }

    fn allowed(limiter: &Limiter, plugin: &str, buckets: &[Bucket]) -> bool {
        let decisions = limiter.limit(plugin, buckets).expect("decided");
        decisions.iter().all(|d| d.allowed)
    }

    #[test]
    fn a_refusal_by_one_limit_spends_nothing_from_the_others() {
        let limiter = Limiter::new(LimiterLimits::default());
        let both = [
            bucket("wide", 10, 3_600_000),
            bucket("narrow", 2, 3_600_000),
        ];
        assert!(allowed(&limiter, "p", &both));
        assert!(allowed(&limiter, "p", &both));
        let decisions = limiter.limit("p", &both).unwrap();
        assert!(decisions[0].allowed && !decisions[1].allowed);
        assert_eq!(decisions[0].remaining, 8, "wide spent only twice");
        assert!(decisions[1].reset_ns > 0, "narrow says when to retry");
        let wide = limiter
            .limit("p", &[bucket("wide", 10, 3_600_000)])
            .unwrap();
        assert_eq!(wide[0].remaining, 7);
    }

    #[test]
    fn racing_threads_never_share_the_last_unit() {
        let limiter = Arc::new(Limiter::new(LimiterLimits::default()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    let buckets = [
                        bucket("hot", 100, 3_600_000),
                        bucket("warm", 1000, 3_600_000),
                    ];
                    (0..500)
                        .filter(|_| allowed(&limiter, "p", &buckets))
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 100);
        let warm = limiter
            .limit("p", &[bucket("warm", 1000, 3_600_000)])
            .unwrap();
        assert_eq!(warm[0].remaining, 1000 - 100 - 1, "refusals spent nothing");
    }

    #[test]
    fn buckets_are_bounded_per_plugin_and_overall() {
        let limiter = Limiter::new(LimiterLimits {
            max_keys: 10,
            plugin_max_keys: 6,
        });
        let fill = |plugin: &str, from: usize, to: usize| -> Vec<Result<(), KvError>> {
            (from..to)
                .map(|i| {
                    limiter
                        .limit(plugin, &[bucket(&format!("{plugin}/{i}"), 1, 3_600_000)])
                        .map(|_| ())
                })
                .collect()
        };
        assert!(fill("a", 0, 6).iter().all(Result::is_ok));
        assert_eq!(
            fill("a", 6, 7),
            [Err(KvError::TooLarge(Refusal::LimiterKeys))],
            "a's share is used up"
        );
        assert!(fill("b", 0, 4).iter().all(Result::is_ok), "b has its own");
        assert_eq!(
            fill("c", 0, 1),
            [Err(KvError::TooLarge(Refusal::LimiterKeys))],
            "the whole is used up"
        );
        assert_eq!(limiter.held(), 10);
        // A bucket already held is never refused.
        assert!(limiter.limit("a", &[bucket("a/0", 1, 3_600_000)]).is_ok());
    }

    #[test]
    fn dead_buckets_are_swept_when_a_bound_is_reached() {
        let limiter = Limiter::new(LimiterLimits {
            max_keys: 4,
            plugin_max_keys: 4,
        });
        for i in 0..4 {
            assert!(allowed(
                &limiter,
                "p",
                &[bucket(&format!("short/{i}"), 1, 1)]
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
        // Their TATs have passed: they are swept, and the new ones fit.
        for i in 0..4 {
            assert!(allowed(
                &limiter,
                "p",
                &[bucket(&format!("long/{i}"), 1, 3_600_000)]
            ));
        }
        assert_eq!(limiter.held(), 4);
    }
}
