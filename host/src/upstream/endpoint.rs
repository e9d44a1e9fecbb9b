//! One endpoint's health: outstanding requests, passive ejection after
//! consecutive failures with exponential backoff, and the active checker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::uri::Authority;
use http::Request;

use super::conn::{self, Connector, IdleConns};
use crate::body;
use crate::config::{HealthCheck, UpstreamSpec};
use crate::metrics::Metrics;

/// Milliseconds since the first call: a cheap monotonic clock that fits an
/// atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pub struct Endpoint {
    pub authority: Authority,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Set by the active checker when the endpoint fails its check.
    down: AtomicBool,
    /// Set by an operator (`weir ctl drain`): no new request is sent here;
    /// requests already here finish.
    draining: AtomicBool,
    /// Open connections waiting for a request, and the cap on open ones.
    idle: Arc<IdleConns>,
    max_connections: usize,
}

impl Endpoint {
    pub fn new(authority: Authority, max_connections: usize, max_idle: usize) -> Endpoint {
        Endpoint {
            authority,
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            idle: Arc::new(IdleConns::new(max_connections, max_idle)),
            max_connections,
        }
    }

    /// Where a response's connection goes when its body ends.
    pub fn home(&self) -> Arc<IdleConns> {
        self.idle.clone()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// What the admin API shows of this endpoint.
    pub fn status(&self) -> EndpointStatus {
        let ejected_for_ms = self
            .ejected_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms());
        let state = if self.is_draining() {
            "draining"
        } else if self.down.load(Ordering::Relaxed) {
            "down"
        } else if ejected_for_ms > 0 {
            "ejected"
        } else {
            "up"
        };
        EndpointStatus {
            address: self.authority.to_string(),
            state,
            healthy: self.is_healthy(),
            outstanding: self.outstanding(),
            connections: self.idle.open_count(self.max_connections),
            ejected_for_ms,
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// Count a failure; eject after `max_fails` in a row, for `eject`
    /// doubled per repeated ejection (capped at 8×).
    pub fn record_failure(&self, spec: &UpstreamSpec, metrics: &Metrics) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < spec.max_fails {
            return;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32 << ejections.min(3);
        let period = spec.eject * factor;
        self.ejected_until_ms
            .store(now_ms() + period.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(
            upstream = %spec.name,
            endpoint = %self.authority,
            failures,
            eject_ms = period.as_millis() as u64,
            "endpoint ejected"
        );
        metrics.counter_add(
            "weir_upstream_ejections_total",
            &[("upstream", &spec.name)],
            1,
        );
    }
}

/// One endpoint, as `GET /api/upstreams` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    pub address: String,
    /// `up`, `ejected` (passive health), `down` (active check) or `draining`.
    pub state: &'static str,
    pub healthy: bool,
    pub outstanding: usize,
    /// Connections open now, idle and busy (at most
    /// `max_connections_per_endpoint`).
    pub connections: usize,
    pub ejected_for_ms: u64,
    pub consecutive_failures: u32,
}

/// Counts a request as outstanding on an endpoint while alive.
pub struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    pub fn start(endpoint: &'a Endpoint) -> InFlight<'a> {
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Probe every endpoint with `GET <path>` each interval; a 2xx answer within
/// the timeout marks it up, anything else down. Runs until aborted.
pub async fn check_health(
    upstream: String,
    endpoints: Vec<Arc<Endpoint>>,
    connector: Arc<Connector>,
    check: HealthCheck,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for endpoint in &endpoints {
            let healthy = probe(&connector, endpoint, &check).await;
            let was_down = endpoint.down.swap(!healthy, Ordering::Relaxed);
            if was_down == healthy {
                tracing::warn!(
                    upstream = %upstream,
                    endpoint = %endpoint.authority,
                    healthy,
                    "health check changed state"
                );
            }
        }
    }
}

async fn probe(connector: &Connector, endpoint: &Endpoint, check: &HealthCheck) -> bool {
    let Ok(target) = http::Uri::try_from(check.path.as_str()) else {
        return false;
    };
    let mut request = Request::new(body::empty());
    *request.uri_mut() = target;
    if let Ok(host) = http::HeaderValue::from_str(endpoint.authority.as_str()) {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let exchange = conn::exchange(connector, &endpoint.authority, endpoint.home(), request);
    let answer = tokio::time::timeout(check.timeout, exchange).await;
    matches!(answer, Ok(Ok(response)) if response.status().is_success())
}
