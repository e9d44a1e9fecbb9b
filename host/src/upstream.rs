//! Named upstream pools: endpoints chosen round-robin or by least
//! outstanding requests, passive health (an endpoint failing `max_fails`
//! times in a row sits out for a backoff period), optional active health
//! checks, retries where safe, and the classification of failures into
//! connect (→ 502), timeout (→ 504) and protocol (→ 502).

mod conn;
mod endpoint;
mod retry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{request, Method, Request, Response, StatusCode};
use http_body_util::LengthLimitError;
use tokio::task::JoinHandle;

use crate::body::{self, Body};
use crate::config::{LoadBalancing, UpstreamSpec};
use crate::metrics::Metrics;
use crate::otel::RequestTrace;
use crate::tls::{self, TlsError};
use conn::{Connector, ExchangeError};
pub use endpoint::EndpointStatus;
use endpoint::{Endpoint, InFlight};
use retry::Budget;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream}: connect to {endpoint} failed: {message}")]
    Connect {
        upstream: String,
        endpoint: String,
        message: String,
    },
    #[error("upstream {upstream}: no response head from {endpoint} within {timeout_ms} ms")]
    Timeout {
        upstream: String,
        endpoint: String,
        timeout_ms: u64,
    },
    #[error("upstream {upstream}: exchange with {endpoint} failed: {message}")]
    Protocol {
        upstream: String,
        endpoint: String,
        message: String,
    },
    /// The client's body grew past `max_request_body_bytes` while it was
    /// being streamed upstream.
    #[error("request body exceeded the limit while streaming to {upstream}")]
    RequestBodyTooLarge { upstream: String },
    /// The client's body failed (e.g. the client went away) mid-stream.
    #[error("request body failed while streaming to {upstream}: {message}")]
    RequestBody { upstream: String, message: String },
    /// Every endpoint tried had `max_connections_per_endpoint` open, and
    /// none came free within the connect timeout.
    #[error(
        "upstream {upstream}: {endpoint} has {max_connections} connections open (max_connections_per_endpoint), none free within {timeout_ms} ms"
    )]
    Saturated {
        upstream: String,
        endpoint: String,
        max_connections: usize,
        timeout_ms: u64,
    },
}

/// How a request body can be sent again for a retry.
pub enum Replay {
    /// No body: any attempt can resend it.
    Empty,
    /// A buffered body: cheap to clone.
    Buffered(Bytes),
    /// A streamed body: sent once, never retried.
    Streamed,
}

/// The endpoint that answered, carried on the response (extensions).
#[derive(Debug, Clone)]
pub struct AnsweredBy(pub String);

/// Every configured pool, by name. Dropping it stops the health checkers.
pub struct Upstreams {
    pools: BTreeMap<String, Arc<Pool>>,
    checkers: Vec<JoinHandle<()>>,
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for checker in &self.checkers {
            checker.abort();
        }
    }
}

struct Pool {
    spec: UpstreamSpec,
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    connector: Arc<Connector>,
    budget: Budget,
    metrics: Metrics,
    /// `weir_upstream_request_duration_seconds` of this pool.
    duration: crate::metrics::Histogram,
    /// `weir_upstream_requests_total` by outcome: 1xx–5xx, then error.
    outcomes: [Arc<std::sync::atomic::AtomicU64>; 6],
}

/// One pool, as `GET /api/upstreams` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub lb: &'static str,
    pub active_health_check: bool,
    pub endpoints: Vec<endpoint::EndpointStatus>,
}

/// Why an endpoint could not be drained.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no upstream named {0:?}")]
    NoUpstream(String),
    #[error("upstream {upstream:?} has no endpoint {endpoint:?}")]
    NoEndpoint { upstream: String, endpoint: String },
}

/// The `outcome` label values of `weir_upstream_requests_total`.
const OUTCOMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

impl Upstreams {
    /// Build the pools; starts active health checkers, so call it inside the
    /// tokio runtime.
    pub fn new(
        specs: &BTreeMap<String, UpstreamSpec>,
        metrics: &Metrics,
    ) -> Result<Upstreams, TlsError> {
        let mut pools = BTreeMap::new();
        for (name, spec) in specs {
            pools.insert(name.clone(), Arc::new(Pool::new(spec, metrics.clone())?));
        }
        let checkers = pools
            .iter()
            .filter_map(|(name, pool)| {
                let check = pool.spec.health_check.clone()?;
                Some(tokio::spawn(endpoint::check_health(
                    name.clone(),
                    pool.endpoints.clone(),
                    pool.connector.clone(),
                    check,
                )))
            })
            .collect();
        Ok(Upstreams { pools, checkers })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// Every pool and its endpoints' health, by name.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.pools
            .iter()
            .map(|(name, pool)| UpstreamStatus {
                name: name.clone(),
                lb: match pool.spec.lb {
                    LoadBalancing::RoundRobin => "round_robin",
                    LoadBalancing::LeastOutstanding => "least_outstanding",
                },
                active_health_check: pool.spec.health_check.is_some(),
                endpoints: pool.endpoints.iter().map(|e| e.status()).collect(),
            })
            .collect()
    }

    /// Stop (or, with `draining = false`, resume) sending new requests to
    /// one endpoint of a pool. Requests already there finish. It lasts
    /// until undone or until a reload rebuilds the pool.
    pub fn set_draining(
        &self,
        upstream: &str,
        endpoint: &str,
        draining: bool,
    ) -> Result<(), DrainError> {
        let pool = self
            .pools
            .get(upstream)
            .ok_or_else(|| DrainError::NoUpstream(upstream.to_owned()))?;
        let found = pool
            .endpoints
            .iter()
            .find(|e| e.authority.as_str().eq_ignore_ascii_case(endpoint))
            .ok_or_else(|| DrainError::NoEndpoint {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            })?;
        found.set_draining(draining);
        tracing::info!(upstream, endpoint, draining, "endpoint drain changed");
        Ok(())
    }

    /// Send a request (head prepared: hop-by-hop stripped, forwarding
    /// headers set) to the named pool, retrying where safe. Each attempt
    /// may take `response_timeout` (a route's), else the upstream's own.
    pub async fn send(
        &self,
        name: &str,
        head: request::Parts,
        body: Body,
        replay: Replay,
        response_timeout: Option<Duration>,
    ) -> Result<Response<Body>, UpstreamError> {
        let Some(pool) = self.pools.get(name) else {
            return Err(UpstreamError::Protocol {
                upstream: name.to_owned(),
                endpoint: String::new(),
                message: "no such upstream".into(),
            });
        };
        let timeout = response_timeout.unwrap_or(pool.spec.response_timeout);
        let started = std::time::Instant::now();
        let sent = pool.send(head, body, replay, timeout).await;
        pool.duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &sent {
            Ok(response) => usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1,
            Err(_) => 5,
        };
        pool.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        let response = sent?;
        let idle = pool.spec.idle_timeout;
        Ok(response.map(|body| body::idle_timeout(body, idle)))
    }
}

impl Pool {
    fn new(spec: &UpstreamSpec, metrics: Metrics) -> Result<Pool, TlsError> {
        let connector = match &spec.tls {
            Some(tls) => {
                let server_name = match &tls.server_name {
                    Some(name) => Some(
                        rustls::pki_types::ServerName::try_from(name.clone())
                            .map_err(|e| TlsError::Rustls(format!("server_name {name:?}: {e}")))?,
                    ),
                    None => None,
                };
                Connector::tls(spec.connect_timeout, tls::client_config(tls)?, server_name)
            }
            None => Connector::plain(spec.connect_timeout),
        };
        Ok(Pool {
            spec: spec.clone(),
            // Checked by config validation; anything unparsable is skipped.
            endpoints: spec
                .endpoints
                .iter()
                .filter_map(|e| e.parse().ok())
                .map(|authority| {
                    Arc::new(Endpoint::new(
                        authority,
                        spec.max_connections_per_endpoint,
                        spec.max_idle_per_endpoint,
                    ))
                })
                .collect(),
            next: AtomicUsize::new(0),
            connector: Arc::new(connector),
            budget: Budget::new(spec.retry_budget_percent),
            duration: metrics.host().upstream_duration(&spec.name),
            outcomes: OUTCOMES.map(|outcome| {
                metrics.counter_handle(
                    "weir_upstream_requests_total",
                    &[("upstream", &spec.name), ("outcome", outcome)],
                )
            }),
            metrics,
        })
    }

    /// Choose an endpoint not yet tried by this request: healthy ones
    /// first; if every untried one is unhealthy, try one anyway rather than
    /// fail without asking (Envoy calls this panic mode).
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // A draining endpoint is never chosen, not even in panic mode: the
        // operator took it out.
        let order = (0..count)
            .map(|i| (start + i) % count)
            .filter(|i| !tried.contains(i) && !self.endpoints[*i].is_draining());
        let healthy: Vec<usize> = order
            .clone()
            .filter(|&i| self.endpoints[i].is_healthy())
            .collect();
        let candidates: Vec<usize> = if healthy.is_empty() {
            order.collect()
        } else {
            healthy
        };
        match self.spec.lb {
            LoadBalancing::RoundRobin => candidates.first().copied(),
            LoadBalancing::LeastOutstanding => candidates
                .iter()
                .copied()
                .min_by_key(|&i| self.endpoints[i].outstanding()),
        }
    }

    async fn send(
        &self,
        head: request::Parts,
        body: Body,
        replay: Replay,
        response_timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        self.budget.deposit();
        let idempotent = is_idempotent(&head.method);
        let mut first_body = Some(body);
        let mut tried = Vec::new();
        let mut attempt = 0u32;
        loop {
            let Some(index) = self.pick(&tried) else {
                // Every endpoint was tried; `tried` is never empty here.
                return Err(self.connect_error("every endpoint", "no endpoint left to try"));
            };
            tried.push(index);
            if tried.len() == self.endpoints.len() {
                // Allow going round again for status/timeout retries.
                tried.clear();
            }
            let endpoint = &self.endpoints[index];
            let body = match first_body.take() {
                Some(body) => body,
                None => match &replay {
                    Replay::Empty => body::empty(),
                    Replay::Buffered(bytes) => body::full(bytes.clone()),
                    Replay::Streamed => unreachable_replay(),
                },
            };
            let mut request = request_for(&head, body);
            // Boxed: held across the exchange, and most requests are not
            // traced.
            let traced = head.extensions.get::<Arc<RequestTrace>>().map(|trace| {
                Box::new(trace.attempt(&self.spec.name, endpoint.authority.as_str(), attempt))
            });
            if let Some(span) = &traced {
                span.propagate(request.headers_mut());
            }
            let can_retry = attempt < self.spec.retries && !matches!(replay, Replay::Streamed);

            let outcome = {
                let _in_flight = InFlight::start(endpoint);
                let exchange = conn::exchange(
                    &self.connector,
                    &endpoint.authority,
                    endpoint.home(),
                    request,
                );
                tokio::time::timeout(response_timeout, exchange).await
            };
            if let Some(span) = traced {
                span.finish(match &outcome {
                    Ok(Ok(response)) => Ok(response.status().as_u16()),
                    Ok(Err(ExchangeError::ConnectTimeout)) => Err("connect_timeout"),
                    Ok(Err(ExchangeError::Connect(_))) => Err("connect"),
                    Ok(Err(ExchangeError::Http(_) | ExchangeError::Closed)) => Err("protocol"),
                    Ok(Err(ExchangeError::Saturated)) => Err("connection_limit"),
                    Err(_elapsed) => Err("timeout"),
                });
            }
            match outcome {
                Ok(Ok(mut response)) => {
                    response
                        .extensions_mut()
                        .insert(AnsweredBy(endpoint.authority.to_string()));
                    let status = response.status();
                    if !is_retryable_status(status) {
                        endpoint.record_success();
                        return Ok(response);
                    }
                    endpoint.record_failure(&self.spec, &self.metrics);
                    let wait = retry::retry_after(response.headers());
                    let wait_ok = wait.is_none_or(|w| w <= self.spec.max_retry_after);
                    if !(can_retry && idempotent && wait_ok && self.budget.try_spend()) {
                        return Ok(response);
                    }
                    drop(response);
                    let delay = wait.unwrap_or_else(|| retry::backoff(&self.spec, attempt));
                    self.note_retry(endpoint, &status.to_string());
                    tokio::time::sleep(delay).await;
                }
                Ok(Err(ExchangeError::ConnectTimeout)) => {
                    endpoint.record_failure(&self.spec, &self.metrics);
                    if !(can_retry && self.budget.try_spend()) {
                        return Err(UpstreamError::Timeout {
                            upstream: self.spec.name.clone(),
                            endpoint: endpoint.authority.to_string(),
                            timeout_ms: self.spec.connect_timeout.as_millis() as u64,
                        });
                    }
                    self.note_retry(endpoint, "connect_timeout");
                }
                Ok(Err(ExchangeError::Connect(message))) => {
                    endpoint.record_failure(&self.spec, &self.metrics);
                    // Nothing was sent: any method may move on, if the body
                    // can be produced again.
                    if !(can_retry && self.budget.try_spend()) {
                        return Err(self.connect_error(endpoint.authority.as_str(), &message));
                    }
                    self.note_retry(endpoint, "connect");
                }
                Ok(Err(ExchangeError::Saturated)) => {
                    // Busy, not broken: no failure is counted against the
                    // endpoint. Nothing was sent, so another endpoint may
                    // take it.
                    self.metrics.counter_add(
                        "weir_upstream_connection_limit_total",
                        &[("upstream", &self.spec.name)],
                        1,
                    );
                    if !(can_retry && self.budget.try_spend()) {
                        return Err(UpstreamError::Saturated {
                            upstream: self.spec.name.clone(),
                            endpoint: endpoint.authority.to_string(),
                            max_connections: self.spec.max_connections_per_endpoint,
                            timeout_ms: self.spec.connect_timeout.as_millis() as u64,
                        });
                    }
                    self.note_retry(endpoint, "connection_limit");
                }
                Ok(Err(ExchangeError::Http(err))) if caused_by::<LengthLimitError>(&err) => {
                    return Err(UpstreamError::RequestBodyTooLarge {
                        upstream: self.spec.name.clone(),
                    });
                }
                Ok(Err(ExchangeError::Http(err))) if is_user_body_error(&err) => {
                    return Err(UpstreamError::RequestBody {
                        upstream: self.spec.name.clone(),
                        message: error_chain(&err),
                    });
                }
                Ok(Err(ExchangeError::Http(err))) => {
                    return Err(UpstreamError::Protocol {
                        upstream: self.spec.name.clone(),
                        endpoint: endpoint.authority.to_string(),
                        message: error_chain(&err),
                    });
                }
                Ok(Err(ExchangeError::Closed)) => {
                    return Err(UpstreamError::Protocol {
                        upstream: self.spec.name.clone(),
                        endpoint: endpoint.authority.to_string(),
                        message: conn::Closed.to_string(),
                    });
                }
                Err(_elapsed) => {
                    endpoint.record_failure(&self.spec, &self.metrics);
                    if !(can_retry && idempotent && self.budget.try_spend()) {
                        return Err(UpstreamError::Timeout {
                            upstream: self.spec.name.clone(),
                            endpoint: endpoint.authority.to_string(),
                            timeout_ms: response_timeout.as_millis() as u64,
                        });
                    }
                    self.note_retry(endpoint, "timeout");
                    tokio::time::sleep(retry::backoff(&self.spec, attempt)).await;
                }
            }
            attempt += 1;
        }
    }

    fn note_retry(&self, endpoint: &Endpoint, reason: &str) {
        tracing::info!(
            upstream = %self.spec.name,
            endpoint = %endpoint.authority,
            reason,
            "retrying upstream request"
        );
        self.metrics.counter_add(
            "weir_upstream_retries_total",
            &[("upstream", &self.spec.name), ("reason", reason)],
            1,
        );
    }

    fn connect_error(&self, endpoint: &str, message: &str) -> UpstreamError {
        UpstreamError::Connect {
            upstream: self.spec.name.clone(),
            endpoint: endpoint.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// The request for one attempt: origin-form target (the connection already
/// goes to the endpoint), the head as prepared, HTTP/1.1 whatever the
/// client spoke.
fn request_for(head: &request::Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    if let Some(target) = head.uri.path_and_query() {
        *request.uri_mut() = http::Uri::from(target.clone());
    }
    *request.headers_mut() = head.headers.clone();
    *request.version_mut() = http::Version::HTTP_11;
    request
}

/// `Replay::Streamed` requests are never retried (`can_retry` is false), so
/// a second body is never asked for. Kept as a function so the invariant is
/// stated once.
fn unreachable_replay() -> Body {
    body::empty()
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether `E` appears in the error's source chain.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The request body (the client's side) failed, not the upstream.
fn is_user_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(hyper_err) = e.downcast_ref::<hyper::Error>() {
            if hyper_err.is_user() {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// The error and its causes on one line, for logs (never for clients).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
