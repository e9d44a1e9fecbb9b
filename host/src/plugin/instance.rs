//! One loaded plugin and how its calls run: each call gets an instance (fresh
//! from the pooling allocator, or warm from the plugin's pool), a deadline
//! enforced by the epoch ticker, and a memory cap. A failure — trap,
//! deadline, memory cap — fails that call only; the instance is discarded.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::Component;

use self::maker::{run, Ended, Maker, Settled, Showed, Warm};
use self::share::CpuShare;
use super::bindings::types;
use super::contract::Pre;
use super::engine::{Calls, Offload, Runtime};
use super::outbound;
use super::state::{PluginShared, PLUGIN_LOGS};
use super::throttle::Throttle;
use super::view::View;
use super::PluginError;
use crate::config::{OnError, PluginSpec, Strategy};
use crate::kv::KvStore;
use crate::metrics::Metrics;

mod maker;
mod share;

/// Extra wall time, beyond the epoch deadline, before an await inside a host
/// import (KV, HTTP) is abandoned.
const HOST_CALL_SLACK: Duration = Duration::from_millis(50);

/// After this many calls in a row that each turned out a long runner
/// ([`maker::LONG_RUN_CPU_NS`], measured on the thread's CPU clock, so neither
/// waits in host imports nor the OS preempting the thread count), the
/// plugin's calls wait for a long-running turn before they start, not at
/// their first tick. Otherwise every call of a spinning plugin would run
/// its first slice (up to a whole tick, plus a fresh instance's start-up)
/// ungated, beside every other call of it: with many connections, a core
/// of guest code the turns never see. A call that ends before a tick
/// clears the count, so a plugin that is quick again is not held back.
/// A call a fraction of a tick long never counts.
const LONG_RUNNING_STREAK: u32 = 4;

/// A queued call waits at most this many `queue_timeout`s in all, however
/// busy (and progressing) the plugin is.
const MAX_QUEUE_TIMEOUTS: u32 = 10;

/// A `max_concurrency` slot; giving it back marks the plugin as progressing.
struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    plugin: &'a Plugin,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let plugin = self.plugin;
        let now = plugin.maker.shared.started.elapsed().as_nanos() as u64;
        plugin.last_release.fetch_max(now, Ordering::Relaxed);
    }
}

/// A plugin ready to serve: linked, its config accepted.
pub struct Plugin {
    pub name: String,
    pub info: types::PluginInfo,
    /// What each call is given (`info`'s interest, checked).
    pub view: View,
    pub on_error: OnError,
    /// Its linked component, shared state and time limit.
    maker: Arc<Maker>,
    strategy: Strategy,
    pool: Mutex<Vec<Warm>>,
    calls: Calls,
    /// Capacity exhaustion fails every request at once: warn about it
    /// once a second, not once per request.
    overload_warnings: Throttle,
    /// A plugin that traps or times out on every call would otherwise
    /// write a warning per request: the log gets one a second, saying
    /// how many were left out (every one is in `weir_plugin_errors_total`).
    failure_warnings: Throttle,
    /// Calls of this plugin running at once (`max_concurrency`): one busy
    /// plugin cannot take every instance slot and worker turn.
    slots: tokio::sync::Semaphore,
    /// How long a call beyond `max_concurrency` waits for a slot while no
    /// call of the plugin finishes.
    queue_timeout: Duration,
    /// When a call last gave its slot back, in ns since `shared.started`.
    last_release: AtomicU64,
    max_concurrency: usize,
    /// The share of the request workers' time its calls take.
    share: CpuShare,
    /// Where the calls of a long-running plugin run.
    offload: Offload,
    /// `weir_plugin_call_duration_seconds`, request and response phase.
    pub(super) durations: [crate::metrics::Histogram; 2],
}

/// One loaded plugin, as `GET /api/plugins` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    /// `weir:plugin@x.y.z`.
    pub contract: &'static str,
    /// `fresh` or `pooled`.
    pub strategy: &'static str,
    pub pool_size: Option<usize>,
    pub max_uses: Option<u64>,
    pub pool_idle: usize,
    pub in_flight: usize,
    pub max_concurrency: usize,
    pub timeout_ms: u64,
    pub on_request: bool,
    pub on_response: bool,
    /// Each call waits for a long-running turn before it starts: its
    /// recent calls all ran past an epoch tick, or took more than
    /// `max_plugin_cpu_percent` of the request workers' time.
    pub long_running: bool,
    /// Its calls took more than `max_plugin_cpu_percent` of the request
    /// workers' time (and have not yet fallen under half of it).
    pub over_cpu_share: bool,
}

/// The calls a plugin answers.
// Built and matched once per call, never stored: boxing the large variant
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Call<'a> {
    ValidateConfig(&'a str),
    /// Built for this call: a 0.1.0 guest's conversion moves it.
    Request(types::Request),
    /// The response head and, for a 0.1.0 guest, the request.
    Response(types::ResponseHead, Option<&'a types::Request>),
}

pub(super) enum Answer {
    ValidateConfig(Result<types::PluginInfo, String>),
    Request(types::RequestAction),
    Response(types::ResponseChanges),
}

impl Plugin {
    /// Link and validate one plugin, compiled from `spec.file` (by
    /// [`Runtime::compile`]; one component serves every config of it).
    /// Never on the request path.
    pub async fn load(
        runtime: &Runtime,
        component: &Component,
        spec: &PluginSpec,
        kv: Arc<dyn KvStore>,
        metrics: Metrics,
        listeners: &outbound::OwnListeners,
    ) -> Result<Plugin, PluginError> {
        let instance_pre =
            runtime
                .linker()
                .instantiate_pre(component)
                .map_err(|e| PluginError::Contract {
                    plugin: spec.name.clone(),
                    message: format!("{e:#}"),
                })?;
        let pre = Pre::new(instance_pre).map_err(|message| PluginError::Contract {
            plugin: spec.name.clone(),
            message,
        })?;
        tracing::debug!(plugin = %spec.name, contract = pre.version(), "plugin linked");
        let outbound = outbound::Client::new(
            &spec.name,
            &spec.outbound,
            listeners.clone(),
            metrics.clone(),
        )
        .map_err(|e| PluginError::Load {
            message: format!("plugin {}: outbound_ca: {e}", spec.name),
        })?;
        let durations =
            ["request", "response"].map(|phase| metrics.host().plugin_duration(&spec.name, phase));
        let shared = Arc::new(PluginShared {
            name: spec.name.clone(),
            config_json: spec.config_json.clone(),
            kv,
            metrics,
            outbound,
            memory_bytes: spec.memory_bytes as usize,
            started: Instant::now(),
            logs: spec.logs,
            log_bucket: std::sync::Mutex::new(super::state::TokenBucket::full(&spec.logs)),
            log_dropped: std::sync::OnceLock::new(),
            long_runners: runtime.long_runners(),
            ticked_calls: AtomicU32::new(0),
        });
        let mut plugin = Plugin {
            name: spec.name.clone(),
            info: types::PluginInfo {
                on_request: false,
                on_response: false,
                request_body: false,
                response_body: false,
                request_headers: types::HeaderInterest::All,
                response_headers: types::HeaderInterest::All,
                connection: true,
                properties: true,
            },
            view: View::everything(),
            on_error: spec.on_error,
            maker: Arc::new(Maker {
                pre,
                shared,
                timeout: spec.timeout,
            }),
            strategy: spec.strategy,
            pool: Mutex::new(Vec::new()),
            calls: runtime.calls(),
            overload_warnings: Throttle::default(),
            failure_warnings: Throttle::default(),
            slots: tokio::sync::Semaphore::new(spec.max_concurrency),
            queue_timeout: spec.queue_timeout,
            last_release: AtomicU64::new(0),
            max_concurrency: spec.max_concurrency,
            share: CpuShare::new(
                &spec.name,
                runtime.max_plugin_cpu_percent(),
                request_workers(),
            ),
            offload: runtime.offload(),
            durations,
        };
        let answer = plugin
            .invoke("load", 0, Call::ValidateConfig(&spec.config_json))
            .await?;
        match answer {
            Answer::ValidateConfig(Ok(info)) => {
                plugin.view = View::new(&info).map_err(|why| {
                    PluginError::config(&spec.name, &format!("plugin-info: {why}"))
                })?;
                plugin.info = info;
            }
            Answer::ValidateConfig(Err(message)) => {
                return Err(PluginError::config(&spec.name, &message))
            }
            _ => unreachable!("validate-config answers with its own variant"),
        }
        Ok(plugin)
    }

    /// Whether the response phase is given the request too (a 0.1.0
    /// guest's `on-response` takes it).
    pub fn response_takes_request(&self) -> bool {
        self.maker.pre.response_takes_request()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.maker.shared.metrics
    }

    /// What the admin API shows of this plugin.
    pub fn status(&self) -> PluginStatus {
        let (strategy, pool_size, max_uses) = match self.strategy {
            Strategy::Fresh => ("fresh", None, None),
            Strategy::Pooled {
                pool_size,
                max_uses,
            } => ("pooled", Some(pool_size), Some(max_uses)),
        };
        PluginStatus {
            name: self.name.clone(),
            contract: self.maker.pre.version(),
            strategy,
            pool_size,
            max_uses,
            pool_idle: self.pool_idle(),
            in_flight: self.in_flight(),
            max_concurrency: self.max_concurrency,
            timeout_ms: u64::try_from(self.maker.timeout.as_millis()).unwrap_or(u64::MAX),
            on_request: self.info.on_request,
            on_response: self.info.on_response,
            long_running: self.long_running(),
            over_cpu_share: self.share.over(),
        }
    }

    /// A request on a route whose chain has this plugin was served: see
    /// `CpuShare::served_through` (the proxy calls it just before it
    /// counts the request).
    pub fn served_through(&self) {
        self.share.served_through();
    }

    /// Whether calls wait for a long-running turn before they start.
    pub fn long_running(&self) -> bool {
        self.maker.shared.ticked_calls.load(Ordering::Relaxed) >= LONG_RUNNING_STREAK
            || self.share.over()
    }

    /// Warm instances waiting in the pool.
    pub fn pool_idle(&self) -> usize {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Calls of this plugin running now (slots of `max_concurrency` taken).
    pub fn in_flight(&self) -> usize {
        self.max_concurrency
            .saturating_sub(self.slots.available_permits())
    }

    /// An instance for one call, holding `turn` if the call has one.
    async fn acquire(&self, turn: Option<OwnedSemaphorePermit>) -> Result<Warm, PluginError> {
        self.maker.take(self.pooled(), turn).await
    }

    /// An idle instance from the pool, if the plugin is pooled and has one.
    fn pooled(&self) -> Option<Warm> {
        match self.strategy {
            Strategy::Pooled { .. } => self
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop(),
            Strategy::Fresh => None,
        }
    }

    /// For a plugin whose recent calls all ran past a tick, a long-running
    /// turn before the call starts (see [`LONG_RUNNING_STREAK`]); `Err`
    /// when none came free within the call's own time limit.
    async fn early_turn(&self) -> Result<Option<OwnedSemaphorePermit>, PluginError> {
        if !self.long_running() {
            return Ok(None);
        }
        let turns = self.maker.shared.long_runners.clone();
        match tokio::time::timeout(self.maker.timeout, turns.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            // The semaphore is never closed; were it, run ungated.
            Ok(Err(_closed)) => Ok(None),
            Err(_) => Err(self.maker.timed_out()),
        }
    }

    /// Count the call that just ended towards the plugin's share of the
    /// workers' time, and towards [`LONG_RUNNING_STREAK`]: a call that ran
    /// a tick added to the streak at that tick (`Maker::instantiate`'s
    /// epoch callback), so that in a burst the calls not yet started learn
    /// of it before the first ones end; one that ended by itself within
    /// its tick breaks it. A call cut off at its deadline before it ran a
    /// tick (it waited for a turn, or the long runners' threads got no
    /// core) shows nothing either way, so it leaves the streak alone:
    /// counted as short, a starved spinner would move back onto the
    /// request workers.
    fn note(&self, showed: Showed, ended: Ended) {
        let shared = &self.maker.shared;
        self.share
            .add(showed.busy, || shared.metrics.requests_served());
        if !showed.reached_tick && ended == Ended::ByItself {
            shared.ticked_calls.store(0, Ordering::Relaxed);
        }
    }

    /// Back into the pool if the plugin keeps it; otherwise the instance
    /// is given back, to be dropped where the caller chooses.
    fn release(&self, mut warm: Warm) -> Option<Warm> {
        if let Strategy::Pooled {
            pool_size,
            max_uses,
        } = self.strategy
        {
            warm.uses += 1;
            if warm.uses < max_uses {
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                if pool.len() < pool_size {
                    pool.push(warm);
                    return None;
                }
            }
        }
        Some(warm)
    }

    /// One of the plugin's `max_concurrency` slots, or `None` when the
    /// plugin is stuck: a call waits while the plugin's calls keep
    /// finishing (a saturated proxy queues, in order), and is refused once
    /// none has finished for `queue_timeout`, or after
    /// `MAX_QUEUE_TIMEOUTS` of them in all.
    async fn slot(&self) -> Option<Slot<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Some(Slot {
                _permit: permit,
                plugin: self,
            });
        }
        let queued = Instant::now();
        let give_up = queued + self.queue_timeout * MAX_QUEUE_TIMEOUTS;
        // One acquire, kept across waits: the call keeps its place.
        let acquire = self.slots.acquire();
        tokio::pin!(acquire);
        loop {
            let idle_since = self.last_release().max(queued);
            let deadline = (idle_since + self.queue_timeout).min(give_up);
            match tokio::time::timeout_at(deadline.into(), &mut acquire).await {
                Ok(Ok(permit)) => {
                    return Some(Slot {
                        _permit: permit,
                        plugin: self,
                    })
                }
                Ok(Err(_closed)) => return None,
                Err(_) => {
                    let now = Instant::now();
                    if now >= give_up || self.last_release() + self.queue_timeout <= now {
                        return None;
                    }
                }
            }
        }
    }

    fn last_release(&self) -> Instant {
        self.maker.shared.started + Duration::from_nanos(self.last_release.load(Ordering::Relaxed))
    }

    /// Run one call in a bounded instance, for a request `hops` plugin
    /// callouts deep (its own callouts go one deeper).
    pub(super) async fn invoke(
        &self,
        request_id: &str,
        hops: u8,
        call: Call<'_>,
    ) -> Result<Answer, PluginError> {
        let _slot = match self.slot().await {
            Some(slot) => slot,
            None => {
                let error = PluginError::Overload {
                    plugin: self.name.clone(),
                    message: format!(
                        "every max_concurrency slot busy: none freed for {} ms \
                         (or queued {} ms in all)",
                        self.queue_timeout.as_millis(),
                        (self.queue_timeout * MAX_QUEUE_TIMEOUTS).as_millis()
                    ),
                };
                return Err(self.failed(request_id, error));
            }
        };
        let _in_flight = self.calls.start();
        let turn = match self.early_turn().await {
            Ok(turn) => turn,
            Err(error) => return Err(self.failed(request_id, error)),
        };
        let offloaded = turn.is_some();
        let limit = self.maker.timeout + HOST_CALL_SLACK;
        // A long-running plugin's call runs on the long runners' threads;
        // the calls that borrow (load time, a 0.1.0 response phase) stay.
        let settled = match call {
            // Boxed, so that the rare long-running path does not make
            // every call's future larger.
            Call::Request(req) if offloaded => {
                Box::pin(self.offload(turn, Call::Request(req), request_id, hops, limit)).await
            }
            Call::Response(resp, None) if offloaded => {
                Box::pin(self.offload(turn, Call::Response(resp, None), request_id, hops, limit))
                    .await
            }
            call => match self.acquire(turn).await {
                Ok(mut warm) => {
                    warm.prepare(request_id, hops, self.maker.timeout);
                    let (warm, result) = run(warm, call, limit).await;
                    self.maker.settle(warm, result)
                }
                Err(error) => Settled::unseen(error),
            },
        };
        match settled {
            Settled::Answered {
                warm,
                answer,
                showed,
            } => {
                self.note(showed, Ended::ByItself);
                if let Some(spent) = self.release(warm) {
                    if offloaded {
                        // Dropping a store resets the instance's memory
                        // (a scan of its pages and a reset of those
                        // written, in the kernel): for a long-running
                        // plugin, on the long runners, as its making was.
                        drop(self.offload.spawn(async move { drop(spent) }));
                    }
                }
                Ok(answer)
            }
            Settled::Failed {
                error,
                showed,
                ended,
            } => {
                self.note(showed, ended);
                Err(self.failed(request_id, error))
            }
        }
    }

    /// The call, from taking an instance to dropping a broken one, on the
    /// long runners' runtime, with the request's span and (when traced)
    /// its log sink. A spinning plugin's calls time out and take their
    /// instances with them: making and dropping those stays off the
    /// request workers too.
    async fn offload(
        &self,
        turn: Option<OwnedSemaphorePermit>,
        call: Call<'static>,
        request_id: &str,
        hops: u8,
        limit: Duration,
    ) -> Settled {
        use tracing::Instrument;
        let pooled = self.pooled();
        let maker = self.maker.clone();
        let request_id = request_id.to_owned();
        let call = async move {
            let mut warm = match maker.take(pooled, turn).await {
                Ok(warm) => warm,
                Err(error) => return Settled::unseen(error),
            };
            warm.prepare(&request_id, hops, maker.timeout);
            let (warm, result) = run(warm, call, limit).await;
            maker.settle(warm, result)
        };
        let logs = PLUGIN_LOGS.try_with(Clone::clone).ok().flatten();
        let task = PLUGIN_LOGS
            .scope(logs, call)
            .instrument(tracing::Span::current());
        // The call keeps its own deadline on the long runners, but those
        // threads run only on a core nothing else wants: on a saturated
        // proxy they may not run at all. The request does not wait for
        // them past the deadline and its slack.
        let mut joined = self.offload.spawn(task);
        match tokio::time::timeout(limit + HOST_CALL_SLACK, &mut joined).await {
            Ok(Ok(settled)) => settled,
            Ok(Err(e)) => Settled::unseen(PluginError::Trap {
                plugin: self.name.clone(),
                message: format!("the long-running call did not finish: {e}"),
            }),
            Err(_) => {
                // It ends, and drops its instance, when next scheduled.
                joined.abort();
                Settled::unseen(self.maker.timed_out())
            }
        }
    }

    /// Count and log a failed call, whether it failed before it ran (no
    /// instance to be had) or while running.
    fn failed(&self, request_id: &str, error: PluginError) -> PluginError {
        self.maker.shared.metrics.counter_add(
            "weir_plugin_errors_total",
            &[("plugin", &self.name), ("kind", error.kind())],
            1,
        );
        if !error.is_overload() {
            match self.failure_warnings.allow() {
                Some(left_out) => tracing::warn!(
                    plugin = %self.name,
                    request = request_id,
                    left_out,
                    error = %error,
                    "plugin call failed"
                ),
                None => tracing::debug!(
                    plugin = %self.name,
                    request = request_id,
                    error = %error,
                    "plugin call failed"
                ),
            }
        } else if let Some(left_out) = self.overload_warnings.allow() {
            tracing::warn!(
                plugin = %self.name,
                request = request_id,
                left_out,
                error = %error,
                "plugin capacity exhausted: raise [runtime] max_instances, or find what holds instances (a slow callout?)"
            );
        }
        error
    }
}

/// The threads of the runtime loading the plugin, which serve its
/// requests.
fn request_workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |rt| rt.metrics().num_workers())
}
