//! Criterion benchmarks of `kv.limit`, the host side of a plugin's rate
//! limit, below the WIT boundary:
//!
//! * `memory`: the in-process limiter (`[kv] backend = "memory"`, and
//!   `kv.limit-local` on any backend): one limit, and two limits decided
//!   together, each on a bucket of its own that never runs out (a quota
//!   far above what the bench spends), so every call takes the allowing
//!   path: read, decide, write.
//! * `redis`: the same calls on `RedisKv` against a real `redis-server`
//!   on loopback, started here: one `EVALSHA` round trip per call however
//!   many limits it carries.
//!
//! Run: `cargo bench -p weir-tests --bench kv_limit` (needs
//! `redis-server`, which `scripts/test.sh` installs).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use weir::kv::{Bucket, KvStore, Limiter, LimiterLimits, RedisKv, RedisSettings};
use weir_gcra::Params;

fn buckets(n: usize) -> Vec<Bucket> {
    (0..n)
        .map(|i| Bucket {
            key: format!("4:bench/limit-{i}"),
            // A billion an hour: the bench never exhausts it.
            params: Params::new(1_000_000_000, 3_600_000, 1_000_000_000, 1).expect("sound"),
        })
        .collect()
}

fn bench_memory(c: &mut Criterion) {
    let limiter = Limiter::new(LimiterLimits::default());
    for n in [1, 2] {
        let buckets = buckets(n);
        c.bench_function(&format!("kv.limit memory, {n} limit(s)"), |b| {
            b.iter(|| limiter.limit("bench", &buckets).expect("decided"))
        });
    }
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_redis(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kv = rt.block_on(async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RedisKv::new(&RedisSettings {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: "bench:".into(),
            timeout: Duration::from_secs(1),
            retry: Duration::from_millis(100),
            max_value_bytes: 1 << 20,
            limiter: LimiterLimits::default(),
        })
        .expect("redis url")
    });
    for n in [1, 2] {
        let buckets = buckets(n);
        // Loads the script (EVALSHA falls back to it once).
        rt.block_on(kv.limit("bench", &buckets))
            .expect("redis answers");
        c.bench_function(
            &format!("kv.limit redis, {n} limit(s), one round trip"),
            |b| {
                b.to_async(&rt)
                    .iter(|| async { kv.limit("bench", &buckets).await.expect("decided") })
            },
        );
    }
}

criterion_group!(benches, bench_memory, bench_redis);
criterion_main!(benches);
