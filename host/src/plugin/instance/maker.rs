//! Making, running and judging one instance: a store with the epoch
//! callback that makes a guest yield, take long-running turns and end at
//! its deadline; one call on it within its wall-time limit; and what the
//! call came to (`Settled`). [`super::Plugin`] keeps the pools, slots and
//! counters around it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::{Answer, Call};
use crate::plugin::contract::{Guest, Pre};
use crate::plugin::engine::{offer_core, EPOCH_TICK};
use crate::plugin::state::{HostState, PluginShared, PollClock};
use crate::plugin::PluginError;

/// Epoch ticks (`engine::EPOCH_TICK`, 1 ms) a guest runs between yields.
const YIELD_TICKS: u64 = 1;

/// A call still running a tick after the first tick of its poll, having
/// run this much CPU since, is a long runner: half a tick, so a guest
/// that had the core is one, whatever the ticker's jitter.
pub(super) const LONG_RUN_CPU_NS: u64 = EPOCH_TICK.as_nanos() as u64 / 2;

/// An instance and its store.
pub(super) struct Warm {
    store: Store<HostState>,
    guest: Guest,
    pub(super) uses: u64,
}

/// What making and judging an instance takes, apart from the plugin's
/// pool and counters: shared with the long runners, which instantiate a
/// long-running plugin's instances and drop the ones its calls leave
/// broken, so that neither happens on a request worker.
pub(super) struct Maker {
    pub(super) pre: Pre,
    pub(super) shared: Arc<PluginShared>,
    pub(super) timeout: Duration,
}

impl Maker {
    /// What a finished call on `warm` came to. Its long-running turn (if
    /// any) goes back; a failed call's instance is dropped here.
    pub(super) fn settle(
        &self,
        mut warm: Warm,
        result: Result<wasmtime::Result<Answer>, Elapsed>,
    ) -> Settled {
        drop(lock(&warm.store.data().long_turn).take());
        let showed = Showed {
            reached_tick: std::mem::take(&mut warm.store.data_mut().reached_tick),
            busy: Duration::from_nanos(warm.store.data().polls.busy_ns.swap(0, Ordering::Relaxed)),
        };
        let error = match result {
            Ok(Ok(answer)) => {
                return Settled::Answered {
                    warm,
                    answer,
                    showed,
                }
            }
            Ok(Err(err)) => self.classify(err, &warm.store),
            Err(Elapsed) => self.timed_out(),
        };
        let ended = if matches!(error, PluginError::Timeout { .. }) {
            Ended::CutOff
        } else {
            Ended::ByItself
        };
        Settled::Failed {
            error,
            showed,
            ended,
        }
    }

    /// A new instance, its start-up run holding `turn` (a long-running
    /// plugin's turn, taken before it started), which the call keeps.
    pub(super) async fn instantiate(
        &self,
        turn: Option<OwnedSemaphorePermit>,
    ) -> Result<Warm, PluginError> {
        let mut store = Store::new(self.pre.engine(), HostState::new(self.shared.clone()));
        *lock(&store.data().long_turn) = turn;
        store.limiter(|state| state);
        // At every epoch tick a running guest gives its thread back to the
        // runtime (other requests, the admin listener, other plugins run),
        // then goes on, until its own wall-time deadline has passed: then
        // it is interrupted, as a trap the call reports as a timeout.
        //
        // It yields through tokio's `yield_now`, not a plain wake-up: tokio
        // defers that wake until the worker has polled its I/O driver, so
        // sockets are read between guest slices. A plain wake looks like
        // ordinary readiness, and a worker whose tasks are always runnable
        // polls the driver only every 61 turns, about 61 ms of guest time
        // (measured: /fast p50 25 ms beside 2 spinning calls, 2.3 ms this
        // way; BENCHMARKS.md, storms).
        //
        // A call still running at a tick is a long runner: before going on
        // it waits for one of `max_long_running_calls` turns (fair, FIFO),
        // giving back the one it held. Waiting, it is not runnable, so
        // however many calls spin, they occupy at most that many workers
        // and the others keep serving requests. Short calls (most) never
        // reach a tick and never wait.
        store.epoch_deadline_callback(|mut store| {
            let data = store.data_mut();
            if Instant::now() >= data.call_deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            offer_core();
            // The first tick of this poll: from here on, what the guest
            // runs is measured on the thread's CPU clock. Read here, not
            // as each poll begins: the read is a system call, and most
            // calls end before any tick.
            let cpu = thread_cpu_ns();
            let since = data.polls.cpu_at_tick.load(Ordering::Relaxed);
            if since == 0 {
                data.polls.cpu_at_tick.store(cpu, Ordering::Relaxed);
                return Ok(UpdateDeadline::Continue(YIELD_TICKS));
            }
            // Another tick passed, but the guest has not run half a tick
            // of CPU since the first: it waited in a host import (KV,
            // HTTP) or the OS ran something else. Not long-running: a new
            // slice, without yielding.
            if cpu.saturating_sub(since) < LONG_RUN_CPU_NS {
                return Ok(UpdateDeadline::Continue(YIELD_TICKS));
            }
            if !std::mem::replace(&mut data.reached_tick, true) {
                let _ = data.shared.ticked_calls.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |n| Some(n.saturating_add(1)),
                );
            }
            let data = store.data();
            let turn = data.long_turn.clone();
            let turns = data.shared.long_runners.clone();
            let out_of_time = data.out_of_time.clone();
            let deadline = tokio::time::Instant::from_std(data.call_deadline);
            Ok(UpdateDeadline::YieldCustom(
                YIELD_TICKS,
                Box::pin(async move {
                    drop(lock(&turn).take());
                    match tokio::time::timeout_at(deadline, turns.acquire_owned()).await {
                        Ok(Ok(permit)) => *lock(&turn) = Some(permit),
                        // Never closed; were it, run ungated.
                        Ok(Err(_closed)) => {}
                        // Past the deadline without a turn: the call ends
                        // here, as a timeout (`Maker::settle` drops it, and the
                        // instance with it). Going on instead would run up
                        // to a tick of guest code outside the turns.
                        Err(_) => {
                            out_of_time.notify_one();
                            std::future::pending::<()>().await;
                        }
                    }
                    tokio::task::yield_now().await;
                }),
            ))
        });
        // Instantiation runs guest code too (start functions, a language
        // runtime's initialisation): the same wall-time limit applies.
        store.data_mut().call_deadline = Instant::now() + self.timeout;
        store.set_epoch_deadline(YIELD_TICKS);
        // A turn taken at a tick of the start-up stays with the call: it
        // is a long runner already.
        let polls = store.data().polls.clone();
        let instantiated = measured(&polls, self.pre.instantiate(&mut store)).await;
        match instantiated {
            Ok(guest) => Ok(Warm {
                store,
                guest,
                uses: 0,
            }),
            Err(err) => {
                let text = format!("{err:#}");
                if text.contains("maximum concurrent") || text.contains("pooling allocator") {
                    Err(PluginError::Overload {
                        plugin: self.shared.name.clone(),
                        message: text,
                    })
                } else {
                    Err(self.classify(err, &store))
                }
            }
        }
    }

    pub(super) fn timed_out(&self) -> PluginError {
        PluginError::Timeout {
            plugin: self.shared.name.clone(),
            timeout_ms: self.timeout.as_millis() as u64,
        }
    }

    /// `pooled`, holding `turn` from now on, or else a new instance.
    pub(super) async fn take(
        &self,
        pooled: Option<Warm>,
        turn: Option<OwnedSemaphorePermit>,
    ) -> Result<Warm, PluginError> {
        match pooled {
            Some(warm) => {
                *lock(&warm.store.data().long_turn) = turn;
                Ok(warm)
            }
            // Boxed: instantiation's future is large and most calls of a
            // pooled plugin never make one.
            None => Box::pin(self.instantiate(turn)).await,
        }
    }

    fn classify(&self, err: wasmtime::Error, store: &Store<HostState>) -> PluginError {
        if store.data().memory_exceeded {
            return PluginError::MemoryLimit {
                plugin: self.shared.name.clone(),
                limit_mb: (self.shared.memory_bytes >> 20) as u64,
            };
        }
        if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
            return self.timed_out();
        }
        // `{:#}` keeps wasmtime's wasm backtrace (a context in the chain)
        // without the host's Rust backtrace that `{:?}` would add.
        // Names in the backtrace come from the guest: printable, bounded.
        PluginError::Trap {
            plugin: self.shared.name.clone(),
            message: crate::plugin::printable(
                &format!("{err:#}"),
                crate::plugin::MAX_MESSAGE_BYTES,
            ),
        }
    }
}

/// The wall-time limit of a call passed.
pub(super) struct Elapsed;

/// How a call ended, for [`super::Plugin`]'s count of long runners.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// It returned an answer or failed on its own.
    ByItself,
    /// Its deadline cut it off.
    CutOff,
    /// No instance came back to tell: none could be made, or the long
    /// runners did not hand the call back in time.
    Unseen,
}

/// What a call showed about its plugin.
#[derive(Clone, Copy, Default)]
pub(super) struct Showed {
    /// It ran into an epoch tick (see `Plugin::long_running`).
    pub(super) reached_tick: bool,
    /// What its polls took, instantiation included (see [`PollClock`]).
    pub(super) busy: Duration,
}

/// A call's outcome, with what it showed about the plugin; a failed
/// call's instance is dropped where the call ran.
// Built and matched once per call, never stored (as `Call`).
#[allow(clippy::large_enum_variant)]
pub(super) enum Settled {
    Answered {
        warm: Warm,
        answer: Answer,
        showed: Showed,
    },
    Failed {
        error: PluginError,
        showed: Showed,
        ended: Ended,
    },
}

impl Settled {
    pub(super) fn unseen(error: PluginError) -> Settled {
        Settled::Failed {
            error,
            showed: Showed::default(),
            ended: Ended::Unseen,
        }
    }
}

impl Warm {
    /// Ready for one call of request `request_id`, `hops` callouts deep.
    pub(super) fn prepare(&mut self, request_id: &str, hops: u8, timeout: Duration) {
        let data = self.store.data_mut();
        request_id.clone_into(&mut data.request_id);
        data.hops = hops;
        data.call_deadline = Instant::now() + timeout;
        self.store.set_epoch_deadline(YIELD_TICKS);
    }
}

/// An instance after a call, and how the call went.
pub(super) type Ran = (Warm, Result<wasmtime::Result<Answer>, Elapsed>);

/// One call on `warm`, within `limit` of wall time.
pub(super) async fn run(mut warm: Warm, call: Call<'_>, limit: Duration) -> Ran {
    let out_of_time = warm.store.data().out_of_time.clone();
    let polls = warm.store.data().polls.clone();
    let guest = &warm.guest;
    let store = &mut warm.store;
    // Boxed: the guest call's future is kilobytes, and every future that
    // awaits it (this one, the timeout, the CPU count, the plugin's call,
    // the chain's) would hold and copy it again; one allocation is cheaper.
    let call = Box::pin(async move {
        match call {
            Call::ValidateConfig(json) => guest
                .validate_config(store, json)
                .await
                .map(Answer::ValidateConfig),
            Call::Request(req) => guest.on_request(store, req).await.map(Answer::Request),
            Call::Response(resp, req) => guest
                .on_response(store, resp, req)
                .await
                .map(Answer::Response),
        }
    });
    let result = within(limit, &out_of_time, measured(&polls, call)).await;
    (warm, result)
}

/// `guest_code`, each of its polls starting the guest's CPU count afresh
/// and adding what it took to `polls.busy_ns` (see [`PollClock`]).
async fn measured<F: Future>(polls: &PollClock, guest_code: F) -> F::Output {
    let mut guest_code = std::pin::pin!(guest_code);
    std::future::poll_fn(|cx| {
        polls.cpu_at_tick.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let polled = guest_code.as_mut().poll(cx);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        polls.busy_ns.fetch_add(took, Ordering::Relaxed);
        polled
    })
    .await
}

/// The calling thread's CPU time, in ns.
fn thread_cpu_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// `tokio::time::timeout`, with the timer armed only if the call has to
/// wait (a host import awaiting KV or HTTP, a long-running turn). Most
/// calls finish in their first poll and never touch the timer wheel. A
/// call whose deadline passed while it waited for a turn signals
/// `out_of_time` and ends at once.
async fn within<F: Future>(
    limit: Duration,
    out_of_time: &tokio::sync::Notify,
    call: F,
) -> Result<F::Output, Elapsed> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut call = std::pin::pin!(call);
    let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
    let mut abandoned = std::pin::pin!(out_of_time.notified());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = call.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if abandoned.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed));
        }
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        match timer.as_mut().as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| Err(Elapsed)),
            None => Poll::Pending,
        }
    })
    .await
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
