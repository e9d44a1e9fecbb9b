//! Per-store host state and the host imports plugins may call: log, config,
//! clock, key-value, metrics and allow-listed outbound HTTP. WASI is linked
//! with an empty context: no preopened directories, no environment, no
//! sockets, no stdin; stdout/stderr are discarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::v0_2::weir::plugin::{clock, config, http_client, kv, log, metrics, types};
use super::outbound;
use crate::config::LogLimits;
use crate::kv::{Bucket, KvError, KvKey, KvStore, LimitDecision, MAX_LIMITS_PER_CALL};
use crate::metrics::Metrics;

/// What every instance of one plugin shares.
pub struct PluginShared {
    pub name: String,
    pub config_json: String,
    pub kv: Arc<dyn KvStore>,
    pub metrics: Metrics,
    pub outbound: outbound::Client,
    pub memory_bytes: usize,
    pub started: Instant,
    pub logs: LogLimits,
    /// Shared by every instance of the plugin: a pool cannot log more
    /// than one instance.
    pub log_bucket: Mutex<TokenBucket>,
    /// `weir_plugin_log_dropped_total` for this plugin, found at its first
    /// dropped line: a flood drops thousands a second.
    pub log_dropped: OnceLock<Arc<AtomicU64>>,
    /// The process's turns for long-running calls (see `instance.rs`).
    pub long_runners: Arc<tokio::sync::Semaphore>,
    /// Calls in a row that ran into an epoch tick (see
    /// `instance::LONG_RUNNING_STREAK`): counted at the call's first long
    /// tick, cleared by a call that ends before one.
    pub ticked_calls: std::sync::atomic::AtomicU32,
}

/// Lines a plugin may still log: refilled at `per_second`, up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn full(limits: &LogLimits) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(limits.burst),
            refilled: Instant::now(),
        }
    }

    /// Take one token if there is one.
    fn take(&mut self, limits: &LogLimits) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * f64::from(limits.per_second);
        self.tokens = (self.tokens + earned).min(f64::from(limits.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a traced call's log lines go, for its span.
pub type LogSink = Arc<Mutex<Vec<crate::access_log::PluginLog>>>;

/// The most lines of one call kept for its span (the rate limit and the
/// byte cap apply first).
pub const MAX_SPAN_LOGS: usize = 32;

tokio::task_local! {
    /// Set around every plugin call; `Some` when its request is traced.
    pub static PLUGIN_LOGS: Option<LogSink>;
}

/// Keep a line for the current call's span, when there is one.
fn keep_for_span(level: log::Level, message: &str) {
    let _ = PLUGIN_LOGS.try_with(|sink| {
        let Some(sink) = sink else { return };
        let mut lines = sink.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() < MAX_SPAN_LOGS {
            lines.push(crate::access_log::PluginLog {
                at: SystemTime::now(),
                level: match level {
                    log::Level::Trace => "trace",
                    log::Level::Debug => "debug",
                    log::Level::Info => "info",
                    log::Level::Warn => "warn",
                    log::Level::Error => "error",
                },
                message: message.to_owned(),
            });
        }
    });
}

/// The data of one wasmtime store: one plugin instance.
pub struct HostState {
    /// Built on the guest's first WASI call: most calls make none, and a
    /// fresh instance per request would otherwise build one every time
    /// (its random sources and clocks; 2.6 % of a fresh call in perf).
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    limits: StoreLimits,
    /// Set when the guest asked for more memory than its cap, so a trap that
    /// follows is reported as "memory limit", not as a generic trap.
    pub memory_exceeded: bool,
    pub shared: Arc<PluginShared>,
    /// The request being served, for log lines.
    pub request_id: String,
    /// How many plugin callouts deep that request is.
    pub hops: u8,
    /// When the current call's wall time runs out. Checked at every epoch
    /// tick, where the guest otherwise yields its thread.
    pub call_deadline: std::time::Instant,
    /// The turn this call holds while it runs past its first tick;
    /// released at every tick (so long-running calls take turns) and when
    /// the call ends.
    pub long_turn: Arc<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// Whether the current call has run into an epoch tick: the plugin
    /// counts its calls that do (see `Plugin::long_running`).
    pub reached_tick: bool,
    /// What the call's polls ran: read at its epoch ticks and by the
    /// plugin's share of the workers' time.
    pub polls: Arc<PollClock>,
    /// Signalled when the call's deadline passed while it waited for a
    /// long-running turn: the call is abandoned there, not resumed.
    pub out_of_time: Arc<tokio::sync::Notify>,
}

/// What the polls of one call ran, kept where the epoch callback and the
/// future that polls the call both reach it.
#[derive(Default)]
pub struct PollClock {
    /// The thread's CPU time, in ns, at the first epoch tick of the
    /// current poll of the call (0 until then; each poll resets it): at a
    /// later tick, what the guest has run since (the thread runs nothing
    /// else within one poll). Wall time would count the waits in host
    /// imports and the OS preempting the thread.
    pub cpu_at_tick: std::sync::atomic::AtomicU64,
    /// Wall time, in ns, the call's polls took in all: the guest and its
    /// host imports running, not their waits (a wait ends a poll).
    pub busy_ns: std::sync::atomic::AtomicU64,
}

/// The `tracing` target of plugin log lines. Their fields are already
/// printable (the message escaped and capped here, the plugin's name and
/// the request id plain by construction), so the log writer formats them
/// without escaping them again (see `cli::init_tracing`).
pub const LOG_TARGET: &str = "weir::plugin::log";

impl HostState {
    pub fn new(shared: Arc<PluginShared>) -> HostState {
        HostState {
            wasi: None,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(shared.memory_bytes)
                .table_elements(100_000)
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            memory_exceeded: false,
            shared,
            request_id: String::new(),
            hops: 0,
            call_deadline: Instant::now(),
            long_turn: Arc::default(),
            reached_tick: false,
            polls: Arc::default(),
            out_of_time: Arc::default(),
        }
    }

    /// Give back the call's long-running turn (if it holds one) before a
    /// host import waits on the network: turns are for running guest code.
    /// A call holding its turn while its callout waits on a plugin call of
    /// its own would hold up that call (and every other long-running one)
    /// until a deadline. The next epoch tick of guest code takes a turn
    /// again.
    fn give_back_turn(&self) {
        drop(
            self.long_turn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// The plugin's key inside its own namespace (see [`KvKey`]): no key
    /// a plugin can write names another plugin's entry.
    fn kv_key(&self, key: &str) -> Result<KvKey<'_>, KvError> {
        KvKey::new(&self.shared.name, key)
    }

    /// The plugin's view of a KV outcome. Refusals and failures are
    /// counted here, for every backend, so an operator sees a plugin
    /// hitting its bounds or a store failing it, whatever the plugin then
    /// does about it.
    fn kv_outcome<T>(&self, outcome: Result<T, KvError>) -> Result<T, kv::KvError> {
        outcome.map_err(|err| {
            let plugin = self.shared.name.as_str();
            match &err {
                KvError::TooLarge(why) => self.shared.metrics.counter_add(
                    "weir_plugin_kv_refused_total",
                    &[("plugin", plugin), ("reason", why.as_str())],
                    1,
                ),
                KvError::Unavailable(_) | KvError::Invalid(_) | KvError::NotAnInteger => {
                    let error = match &err {
                        KvError::Unavailable(_) => "unavailable",
                        KvError::Invalid(_) => "invalid",
                        _ => "not_an_integer",
                    };
                    self.shared.metrics.counter_add(
                        "weir_plugin_kv_errors_total",
                        &[("plugin", plugin), ("error", error)],
                        1,
                    );
                }
            }
            kv_error(err)
        })
    }

    /// The buckets of one `kv.limit` call, checked before any store sees
    /// them: at most [`MAX_LIMITS_PER_CALL`], each key namespaced and
    /// named once, each limit's arithmetic sound.
    fn buckets(&self, limits: Vec<kv::LimitCheck>) -> Result<Vec<Bucket>, KvError> {
        if limits.len() > MAX_LIMITS_PER_CALL {
            return Err(KvError::Invalid(format!(
                "{} limits in one call (at most {MAX_LIMITS_PER_CALL})",
                limits.len()
            )));
        }
        let mut buckets: Vec<Bucket> = Vec::with_capacity(limits.len());
        for (i, limit) in limits.into_iter().enumerate() {
            let key = self.kv_key(&limit.key)?.stored().to_owned();
            if let Some(first) = buckets.iter().position(|b| b.key == key) {
                return Err(KvError::Invalid(format!(
                    "limits[{i}] has the key of limits[{first}]"
                )));
            }
            let params =
                weir_gcra::Params::new(limit.rate, limit.period_ms, limit.burst, limit.cost)
                    .map_err(|why| KvError::Invalid(format!("limits[{i}]: {why}")))?;
            buckets.push(Bucket { key, params });
        }
        Ok(buckets)
    }
}

fn limit_decisions(decisions: Vec<LimitDecision>) -> Vec<kv::LimitDecision> {
    decisions
        .into_iter()
        .map(|d| kv::LimitDecision {
            allowed: d.allowed,
            remaining: d.remaining,
            // Rounded up: a client told to wait 0 ms would retry at once.
            reset_ms: d.reset_ns.div_ceil(1_000_000),
        })
        .collect()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| WasiCtx::builder().build()),
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_exceeded = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    /// Into the host's `tracing`, bounded: cut at the plugin's
    /// `max_log_bytes`, control characters escaped (a `\n` would forge a
    /// host log line), and dropped (counted) beyond its rate.
    fn log(&mut self, level: log::Level, message: String) {
        let shared = &self.shared;
        let allowed = shared
            .log_bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(&shared.logs);
        if !allowed {
            shared
                .log_dropped
                .get_or_init(|| {
                    shared.metrics.counter_handle(
                        "weir_plugin_log_dropped_total",
                        &[("plugin", &shared.name)],
                    )
                })
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = super::printable(&message, shared.logs.max_bytes);
        keep_for_span(level, &message);
        let plugin = shared.name.as_str();
        let request = self.request_id.as_str();
        match level {
            log::Level::Trace => tracing::trace!(target: LOG_TARGET, plugin, request, "{message}"),
            log::Level::Debug => tracing::debug!(target: LOG_TARGET, plugin, request, "{message}"),
            log::Level::Info => tracing::info!(target: LOG_TARGET, plugin, request, "{message}"),
            log::Level::Warn => tracing::warn!(target: LOG_TARGET, plugin, request, "{message}"),
            log::Level::Error => tracing::error!(target: LOG_TARGET, plugin, request, "{message}"),
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self) -> String {
        self.shared.config_json.clone()
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ns(&mut self) -> u64 {
        self.shared.started.elapsed().as_nanos() as u64
    }
}

fn kv_error(err: KvError) -> kv::KvError {
    match err {
        KvError::Unavailable(why) => kv::KvError::Unavailable(why),
        KvError::NotAnInteger => kv::KvError::NotAnInteger,
        KvError::TooLarge(_) => kv::KvError::TooLarge,
        KvError::Invalid(why) => kv::KvError::Invalid(why),
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.give_back_turn();
        let outcome = match self.kv_key(&key) {
            Ok(key) => self.shared.kv.get(&key).await,
            Err(err) => Err(err),
        };
        self.kv_outcome(outcome)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::KvError> {
        self.give_back_turn();
        let outcome = match self.kv_key(&key) {
            Ok(key) => self.shared.kv.set(&key, value, ttl_ms).await,
            Err(err) => Err(err),
        };
        self.kv_outcome(outcome)
    }

    async fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        self.give_back_turn();
        let outcome = match self.kv_key(&key) {
            Ok(key) => self.shared.kv.delete(&key).await,
            Err(err) => Err(err),
        };
        self.kv_outcome(outcome)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        self.give_back_turn();
        let outcome = match self.kv_key(&key) {
            Ok(key) => self.shared.kv.increment(&key, delta, ttl_ms).await,
            Err(err) => Err(err),
        };
        self.kv_outcome(outcome)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, kv::KvError> {
        self.give_back_turn();
        let outcome = match self.kv_key(&key) {
            Ok(key) => {
                self.shared
                    .kv
                    .compare_and_swap(&key, expected, new, ttl_ms)
                    .await
            }
            Err(err) => Err(err),
        };
        self.kv_outcome(outcome)
    }

    async fn limit(
        &mut self,
        limits: Vec<kv::LimitCheck>,
    ) -> Result<Vec<kv::LimitDecision>, kv::KvError> {
        self.give_back_turn();
        let outcome = match self.buckets(limits) {
            Ok(buckets) => self.shared.kv.limit(&self.shared.name, &buckets).await,
            Err(err) => Err(err),
        };
        self.kv_outcome(outcome).map(limit_decisions)
    }

    async fn limit_local(
        &mut self,
        limits: Vec<kv::LimitCheck>,
    ) -> Result<Vec<kv::LimitDecision>, kv::KvError> {
        self.give_back_turn();
        let outcome = self
            .buckets(limits)
            .and_then(|buckets| self.shared.kv.limit_local(&self.shared.name, &buckets));
        self.kv_outcome(outcome).map(limit_decisions)
    }
}

/// Names, labels and values are checked (and bounded per plugin) by the
/// registry: a refused sample is dropped and counted, never an error to the
/// guest, since the WIT functions return nothing.
impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) {
        self.shared
            .metrics
            .plugin_counter_add(&self.shared.name, name, labels, delta);
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.shared
            .metrics
            .plugin_gauge_set(&self.shared.name, name, labels, value);
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.shared
            .metrics
            .plugin_histogram_observe(&self.shared.name, name, labels, value);
    }
}

impl http_client::Host for HostState {
    async fn fetch(
        &mut self,
        req: http_client::OutboundRequest,
    ) -> Result<http_client::OutboundResponse, http_client::FetchError> {
        self.give_back_turn();
        self.shared.outbound.fetch(req, self.hops).await
    }
}
