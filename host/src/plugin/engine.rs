//! The process-wide plugin runtime: one wasmtime [`Engine`] with the pooling
//! allocator and an on-disk compilation cache, one [`Linker`] with every host
//! import, and ONE epoch ticker thread that drives every call deadline.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy};

use super::bindings;
use super::state::HostState;
use super::PluginError;
use crate::config::RuntimeSettings;

/// How often the epoch advances. Deadlines are whole ticks, so a plugin's
/// `timeout_ms` is honoured to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The shared runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: EpochTicker,
    /// Turns for calls that run past one tick (`max_long_running_calls`).
    long_runners: Arc<tokio::sync::Semaphore>,
    /// Where the calls of long-running plugins run (see [`LongRunners`]).
    offload: LongRunners,
    /// `[runtime] max_plugin_cpu_percent`.
    max_plugin_cpu_percent: u32,
}

impl Runtime {
    pub fn new(settings: &RuntimeSettings) -> Result<Runtime, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Keep guest stack overflows well inside the fiber stack.
        config.max_wasm_stack(512 * 1024);

        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        pooling.total_component_instances(settings.max_instances);
        // A component may hold several core instances and memories (e.g.
        // JS and Python guests, or a preview-1 adapter).
        pooling.total_core_instances(settings.max_instances.saturating_mul(4));
        pooling.total_memories(settings.max_instances.saturating_mul(2));
        pooling.total_tables(settings.max_instances.saturating_mul(4));
        pooling.max_memory_size(settings.max_memory_bytes as usize);
        pooling.total_stacks(settings.max_instances);
        // A finished instance's dirty pages are found with PAGEMAP_SCAN
        // (Linux 6.7+) and reset in place, up to this many bytes, instead of
        // being handed back with madvise and faulted in again by the next
        // instance: the two cost ~20% of a request through four fresh
        // plugins. Bounded per warm slot, so RSS stays bounded too.
        pooling.pagemap_scan(wasmtime::Enabled::Auto);
        pooling.linear_memory_keep_resident(1 << 20);
        pooling.table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

        config.cache(compilation_cache(&settings.cache_dir));

        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime {
            message: format!("engine: {e:#}"),
        })?;
        let linker = Self::build_linker(&engine).map_err(|e| PluginError::Runtime {
            message: format!("linker: {e:#}"),
        })?;
        // Without the ticker no deadline would ever fire: refuse to start.
        let ticker = EpochTicker::start(engine.clone()).map_err(|e| PluginError::Runtime {
            message: format!("cannot start the epoch ticker thread: {e}"),
        })?;
        let turns = settings.max_long_running_calls.max(1);
        let offload = LongRunners::start(turns).map_err(|e| PluginError::Runtime {
            message: format!("cannot start the long-running call threads: {e}"),
        })?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                ticker,
                long_runners: Arc::new(tokio::sync::Semaphore::new(turns)),
                offload,
                max_plugin_cpu_percent: settings.max_plugin_cpu_percent,
            }),
        })
    }

    fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
        let mut linker = Linker::new(engine);
        // WASI is linked because every language's standard library imports
        // it, but the context grants nothing: no files, no env, no sockets.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Both contract versions: a component gets the imports of the one
        // it exports (see `contract.rs`).
        bindings::v0_2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;
        bindings::v0_1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;
        Ok(linker)
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The turns of calls that run past one epoch tick.
    pub fn long_runners(&self) -> Arc<tokio::sync::Semaphore> {
        self.inner.long_runners.clone()
    }

    /// Percent of the request workers' time one plugin's calls may take
    /// before they run as long runners do.
    pub fn max_plugin_cpu_percent(&self) -> u32 {
        self.inner.max_plugin_cpu_percent
    }

    /// Where long-running plugins' calls run.
    pub fn offload(&self) -> Offload {
        Offload {
            handle: self.inner.offload.handle(),
        }
    }

    /// Marks plugin calls in flight for the epoch ticker.
    pub fn calls(&self) -> Calls {
        self.inner.ticker.calls()
    }

    pub fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// Compile (or fetch from the disk cache) a component, on a blocking
    /// thread: compiling a large (JavaScript, Python) component takes
    /// seconds of CPU, which on a request worker would freeze every
    /// connection that worker serves (on a one-thread runtime, all of them).
    pub async fn compile(&self, path: &Path) -> Result<Component, PluginError> {
        let engine = self.inner.engine.clone();
        let owned = path.to_owned();
        let compiled = tokio::task::spawn_blocking(move || {
            let component = Component::from_file(&engine, &owned);
            release_compile_memory();
            component
        })
        .await;
        match compiled {
            Ok(result) => result.map_err(|e| PluginError::Load {
                message: format!("{}: not a valid component: {e:#}", path.display()),
            }),
            Err(join) => Err(PluginError::Load {
                message: format!("{}: compilation did not finish: {join}", path.display()),
            }),
        }
    }
}

/// What [`on_compiled`] registered.
static AFTER_COMPILE: OnceLock<fn()> = OnceLock::new();

/// Registers `release`, to run after each compilation on every thread that
/// took part in it: the blocking thread, and rayon's, where cranelift
/// compiles functions in parallel. Those threads then sleep, and an
/// allocator that returns freed memory lazily (mimalloc, the binary's)
/// would keep what compiling freed resident until they allocate again:
/// 26 MiB of a cold start's 75 in the sample chain (BENCHMARKS.md, RSS).
/// The library stays allocator-agnostic; the binary says how.
pub fn on_compiled(release: fn()) {
    let _ = AFTER_COMPILE.set(release);
}

fn release_compile_memory() {
    if let Some(&release) = AFTER_COMPILE.get() {
        release();
        rayon::broadcast(|_| release());
    }
}

/// How much lower than the request workers the long runners' threads are
/// scheduled where `SCHED_IDLE` is refused (`nice` 10: about a tenth of a
/// worker's share of a busy core).
const LONG_RUNNER_NICENESS: i32 = 10;

/// Puts the calling thread below every ordinary thread: `SCHED_IDLE`,
/// which Linux lets any process choose for itself, runs a thread only on
/// a core nothing else wants, and the scheduler places a waking request
/// worker on a core that runs only such threads as if it were idle. `nice`
/// alone leaves the spinning thread a share of its core and the waking
/// worker queued behind it. Best effort: without either they still take
/// turns.
fn lower_own_priority() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let Err(idle_refused) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        idle,
    ) else {
        return;
    };
    if let Err(e) = rustix::process::setpriority_process(None, LONG_RUNNER_NICENESS) {
        tracing::debug!(sched_idle = ?idle_refused, nice = %e, "long-runner thread keeps its priority");
    }
}

/// A small runtime of its own, on threads the OS schedules below the
/// request workers, for the calls of plugins whose calls keep running past
/// a tick (`instance::LONG_RUNNING_STREAK`). The turns still bound how
/// many run at once; running them here, not on a request worker, means a
/// request or the admin listener never waits behind a guest's slice for a
/// core: on a two-core machine with one core spinning, the OS otherwise
/// shares the other between everything else.
struct LongRunners {
    handle: tokio::runtime::Handle,
    /// `None` once shut down.
    runtime: Option<tokio::runtime::Runtime>,
}

impl LongRunners {
    fn start(threads: usize) -> std::io::Result<LongRunners> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("weir-long-runner")
            .on_thread_start(|| {
                lower_own_priority();
                offers_core();
            })
            .enable_all()
            .build()?;
        Ok(LongRunners {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

/// How long a long runner's thread keeps a core before it offers it back
/// to the OS (`sched_yield`). `SCHED_IDLE` makes a waking request worker
/// preempt it, but a thread that was preempted by a third one (a softirq,
/// say) then waits in the queue behind it until the scheduler next looks:
/// at the next tick (4 ms at `HZ=250`), or when the guest's two-tick poll
/// ends. `perf sched` beside the storms saw the admin thread queued 2 ms
/// behind a long runner while the other core was idle; offering the core
/// at every epoch tick cut the waits over 1 ms behind a long runner by
/// four to seven times (BENCHMARKS.md, storms).
const OFFER_CORE_EVERY: Duration = Duration::from_micros(250);

thread_local! {
    /// When this long runner's thread last offered its core.
    static CORE_OFFERED: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// A handle on the long runners' runtime.
#[derive(Clone)]
pub struct Offload {
    handle: tokio::runtime::Handle,
}

impl Offload {
    /// Runs `task` on the long runners. After any poll that leaves the
    /// thread having run [`OFFER_CORE_EVERY`] since it last did, the
    /// thread yields to the OS, so that an ordinary thread queued on its
    /// core runs now rather than at the next scheduler tick.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(async move {
            let mut task = std::pin::pin!(task);
            std::future::poll_fn(|cx| {
                let polled = task.as_mut().poll(cx);
                offer_core();
                polled
            })
            .await
        })
    }
}

/// Marks the calling thread as a long runner's, for [`offer_core`].
fn offers_core() {
    CORE_OFFERED.with(|offered| offered.set(Some(std::time::Instant::now())));
}

/// On a long runner's thread, yields to the OS if the thread has run
/// [`OFFER_CORE_EVERY`] since it last did; elsewhere, nothing. Called
/// after every poll of a long runner's task and at every epoch tick of a
/// guest (a spinning guest's poll lasts two ticks).
pub(super) fn offer_core() {
    CORE_OFFERED.with(|offered| {
        let Some(at) = offered.get() else {
            return;
        };
        if at.elapsed() >= OFFER_CORE_EVERY {
            std::thread::yield_now();
            offered.set(Some(std::time::Instant::now()));
        }
    });
}

impl Drop for LongRunners {
    fn drop(&mut self) {
        // Dropped wherever the last plugin runtime goes, perhaps inside
        // the proxy's own runtime, where a blocking shutdown would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Idle ticks after which the ticker sleeps until the next call.
const IDLE_TICKS_BEFORE_PARKING: u32 = 100;

/// The single thread that advances the engine's epoch. A ticker per request
/// would cost more than the requests; one per process costs nothing while
/// plugins run, and it parks when no call has been in flight for
/// [`IDLE_TICKS_BEFORE_PARKING`] ticks, so an idle proxy (or one serving
/// without plugins) is not woken a thousand times a second.
struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    stop: AtomicBool,
    in_flight: AtomicUsize,
    parked: AtomicBool,
    /// Set once the thread is spawned; unparked by the first call after a
    /// quiet spell.
    thread: OnceLock<Thread>,
}

/// Marks one plugin call in flight (instantiation included) for as long as
/// it lives, so the ticker keeps ticking for its deadline.
pub struct CallGuard(Arc<TickerShared>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hands out [`CallGuard`]s. Cheap to clone.
#[derive(Clone)]
pub struct Calls(Arc<TickerShared>);

impl Calls {
    pub fn start(&self) -> CallGuard {
        let shared = &self.0;
        // SeqCst pairs with the ticker's `parked` store then `in_flight`
        // load: either it sees this call and stays up, or this call sees it
        // parked and wakes it.
        if shared.in_flight.fetch_add(1, Ordering::SeqCst) == 0
            && shared.parked.load(Ordering::SeqCst)
        {
            if let Some(thread) = shared.thread.get() {
                thread.unpark();
            }
        }
        CallGuard(shared.clone())
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0u32;
                while !state.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    if state.in_flight.load(Ordering::SeqCst) > 0 {
                        idle_ticks = 0;
                        continue;
                    }
                    idle_ticks += 1;
                    if idle_ticks < IDLE_TICKS_BEFORE_PARKING {
                        continue;
                    }
                    state.parked.store(true, Ordering::SeqCst);
                    if state.in_flight.load(Ordering::SeqCst) == 0
                        && !state.stop.load(Ordering::SeqCst)
                    {
                        std::thread::park();
                    }
                    state.parked.store(false, Ordering::SeqCst);
                    idle_ticks = 0;
                }
            })?;
        let _ = shared.thread.set(thread.thread().clone());
        Ok(EpochTicker {
            shared,
            thread: Some(thread),
        })
    }

    fn calls(&self) -> Calls {
        Calls(self.shared.clone())
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The on-disk compilation cache, or none. A cache only saves compile time,
/// so a directory that cannot be created or used costs a warning, never the
/// start: Weir then compiles every plugin at each load.
fn compilation_cache(dir: &Path) -> Option<Cache> {
    let made = std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        .and_then(|()| {
            // create_dir_all succeeds on an existing read-only folder; the
            // cache would then fail on every write, silently.
            let probe = dir.join(".weir-write-probe");
            std::fs::write(&probe, b"")
                .map(|()| {
                    let _ = std::fs::remove_file(&probe);
                })
                .map_err(|e| format!("cannot write to {}: {e}", dir.display()))
        });
    let cache = made.and_then(|()| {
        let mut cache_config = CacheConfig::new();
        cache_config.with_directory(dir);
        Cache::new(cache_config).map_err(|e| format!("{e:#}"))
    });
    match cache {
        Ok(cache) => Some(cache),
        Err(why) => {
            tracing::warn!(
                "compilation cache disabled, plugins are compiled at every load: {why} \
                 (set [runtime] cache_dir to a writable folder)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn offered() -> Option<Instant> {
        CORE_OFFERED.with(std::cell::Cell::get)
    }

    #[test]
    fn only_a_long_runner_thread_offers_its_core_and_not_more_often_than_it_should() {
        // Any other thread (a request worker): nothing, not even a mark.
        offer_core();
        assert_eq!(offered(), None);

        offers_core();
        assert!(offered().is_some(), "marked as a long runner's thread");
        // Too soon since the last offer (a mark that elapsed() reads as
        // zero, however slowly this test runs): the mark stays.
        let just_now = Instant::now() + Duration::from_secs(60);
        CORE_OFFERED.with(|cell| cell.set(Some(just_now)));
        offer_core();
        assert_eq!(offered(), Some(just_now));

        // Held the core long enough: it yields and marks the time afresh.
        let long_ago = Instant::now() - OFFER_CORE_EVERY * 4;
        CORE_OFFERED.with(|cell| cell.set(Some(long_ago)));
        offer_core();
        let again = offered().expect("still a long runner's thread");
        assert!(
            again > long_ago + OFFER_CORE_EVERY,
            "{again:?} after {long_ago:?}"
        );
    }
}
