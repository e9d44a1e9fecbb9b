//! The request path, one direction, no back-and-forth:
//! limits → request phase (chain order) → upstream → response phase
//! (reverse order) → client. Bodies stream unless a plugin asked to see them.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, response, Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::access_log::{self, AccessLog};
use crate::body::{self, Body};
use crate::cache::{self, Outgoing, ResponseCache};
use crate::canonical::{self, Canonical};
use crate::config::Config;
use crate::error::ProxyError;
use crate::headers::{self, Forwarded};
use crate::metrics::{Metrics, RouteRequests};
use crate::otel::{RequestTrace, Traces};
use crate::plugin::bindings::types;
use crate::plugin::chain::ResponseState;
use crate::plugin::chain::Runs;
use crate::plugin::outbound;
use crate::plugin::{Chain, Exchange, RequestOutcome};
use crate::route::{self, Router};
use crate::upstream::{Replay, Upstreams};

const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// Facts about one client connection, shared by its requests.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<types::TlsInfo>,
}

/// Everything one configuration generation needs to serve. Swapped as a
/// whole on reload; in-flight requests finish on the generation they began
/// with.
pub struct Generation {
    pub config: Config,
    /// `[[routes]]`, indexed for matching.
    pub routes: Router<Route>,
    /// What serves the requests no route matches: the top-level chain.
    pub fallback: Route,
    /// Whether any route (or the fallback) runs plugins: only they read
    /// the connection facts, so a plugin-free proxy skips building them.
    pub has_plugins: bool,
    /// Shared with background cache revalidations.
    pub upstreams: Arc<Upstreams>,
    pub cache: Option<Arc<ResponseCache>>,
}

/// What serves the requests one route matches.
pub struct Route {
    /// `None` for the fallback.
    pub name: Option<String>,
    pub chain: Arc<Chain>,
    /// Used unless a plugin picks an upstream; else `default_upstream`.
    pub upstream: Option<String>,
    /// Whether the response cache (when configured) serves this route.
    pub cache: bool,
    pub max_request_body_bytes: u64,
    /// Overrides the upstream's `response_timeout_ms`.
    pub response_timeout: Option<Duration>,
    /// This route's `weir_requests_total` counters.
    pub requests: RouteRequests,
    /// This route's `weir_request_duration_seconds`.
    pub duration: crate::metrics::Histogram,
}

/// The proxy: the current generation plus process-wide state.
pub struct Proxy {
    current: ArcSwap<Generation>,
    metrics: Metrics,
    ids: RequestIds,
    access_log: Option<Arc<AccessLog>>,
    traces: Option<Arc<Traces>>,
}

impl Proxy {
    pub fn new(generation: Generation, metrics: Metrics) -> Proxy {
        Proxy {
            current: ArcSwap::from_pointee(generation),
            metrics,
            ids: RequestIds::new(),
            access_log: None,
            traces: None,
        }
    }

    /// Trace requests (`[traces]`).
    pub fn with_traces(mut self, traces: Arc<Traces>) -> Proxy {
        self.traces = Some(traces);
        self
    }

    /// Write a line per request to this log.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Proxy {
        self.access_log = Some(log);
        self
    }

    pub fn access_log(&self) -> Option<&Arc<AccessLog>> {
        self.access_log.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The generation serving new requests.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Replace the serving generation (reload).
    pub fn swap(&self, generation: Generation) {
        self.current.store(Arc::new(generation));
    }

    /// Serve one request. Never fails: errors become responses here.
    ///
    /// Boxed with an explicit `Send` so the connection task that awaits it
    /// is `Send` without the compiler proving it through every await.
    pub fn handle<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnMeta,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> {
        Box::pin(self.handle_inner(req, conn))
    }

    async fn handle_inner(&self, req: Request<Incoming>, conn: &ConnMeta) -> Response<Body> {
        let generation = self.current.load_full();
        let id = self.ids.for_request(&req);
        let span = tracing::info_span!(
            "request",
            id = %id,
            method = %req.method(),
            path = %req.uri().path(),
            client = %conn.client,
            route = tracing::field::Empty,
        );
        let started = Instant::now();
        async {
            let trace = self.traces.as_ref().and_then(|t| t.begin(&req, &id));
            let mut served = Served {
                route: &generation.fallback,
                log: self.access_log.as_ref().map(|_| {
                    let mut logged = Logged::new(&req, &id, conn);
                    if let Some(trace) = &trace {
                        logged.entry.trace_id = Some(trace.trace_id());
                    }
                    Box::new(logged)
                }),
                trace,
                runs: None,
            };
            let result = generation.serve(req, conn, id.clone(), &mut served).await;
            let mut response = result.unwrap_or_else(|err| {
                match &err {
                    // Already logged, with its backtrace, where it failed.
                    ProxyError::Plugin(_) => tracing::debug!(error = %err, "request failed"),
                    _ => tracing::warn!(error = %err, "request failed"),
                }
                err.to_response()
            });
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(X_REQUEST_ID, value);
            }
            let status = response.status();
            // Its plugins first: each judges its share of the workers on
            // the proxy's count less the requests through it.
            for plugin in served.route.chain.plugins() {
                plugin.served_through();
            }
            Metrics::request_served(&served.route.requests, status.as_u16());
            served
                .route
                .duration
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(
                status = status.as_u16(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "served"
            );
            let response = match (&self.access_log, served.log) {
                (Some(log), Some(logged)) if log.wants(status.as_u16()) => {
                    logged.finish(response, served.route, log.clone(), started)
                }
                _ => response,
            };
            // Outermost, so its span is finished (reading the plugin runs)
            // before the log line takes them: a body's wrapper is dropped
            // before the body it wraps.
            match served.trace {
                Some(trace) => trace_to_the_end(response, trace, served.runs),
                None => response,
            }
        }
        .instrument(span)
        .await
    }
}

/// What serving a request found out, for its metrics, log line and trace.
struct Served<'g> {
    route: &'g Route,
    /// Only when the access log is on.
    log: Option<Box<Logged>>,
    /// Only when the request is traced and sampled.
    trace: Option<Arc<RequestTrace>>,
    /// The plugin calls, when the request is traced.
    runs: Option<Runs>,
}

/// End the request's server span, with its plugin spans, once the body
/// has been sent (or the client left).
fn trace_to_the_end(
    response: Response<Body>,
    trace: Arc<RequestTrace>,
    runs: Option<Runs>,
) -> Response<Body> {
    let status = response.status().as_u16();
    response.map(|body| {
        body::on_drop(body, move |_| match runs {
            Some(runs) => {
                let runs = runs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                trace.finish(status, &runs);
            }
            None => trace.finish(status, &[]),
        })
    })
}

/// The access-log facts of a request, gathered as it is served.
struct Logged {
    entry: access_log::Entry,
    runs: Runs,
    bytes_in: Arc<AtomicU64>,
}

impl Logged {
    /// What the client sent, before admission (a refused request is
    /// logged as it came).
    fn new(req: &Request<Incoming>, id: &str, conn: &ConnMeta) -> Logged {
        // Cut here, not only when the line is written: the entry is held
        // for the whole request.
        let clipped = |value: &str| access_log::clipped(value).into_owned();
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(clipped)
        };
        let trace_id = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('-').nth(1))
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        Logged {
            entry: access_log::Entry {
                start: Some(std::time::SystemTime::now()),
                request_id: id.to_owned(),
                trace_id,
                client_ip: Some(conn.client.ip()),
                method: clipped(req.method().as_str()),
                authority: req
                    .uri()
                    .authority()
                    .map(|a| clipped(a.as_str()))
                    .or_else(|| header(header::HOST))
                    .unwrap_or_default(),
                path: req.uri().path().to_owned(),
                protocol: protocol(req.version()),
                user_agent: header(header::USER_AGENT),
                referer: header(header::REFERER),
                ..access_log::Entry::default()
            },
            runs: Runs::default(),
            bytes_in: Arc::default(),
        }
    }

    /// The request was admitted: log its canonical view from here on.
    fn admitted(&mut self, ex: &mut Exchange) {
        self.entry.authority.clone_from(&ex.authority);
        self.entry.path = ex.head.uri.path().to_owned();
        ex.runs = Some(self.runs.clone());
    }

    /// Fill in the answer; the line is written when its body has been
    /// sent (or the client left).
    fn finish(
        self: Box<Self>,
        response: Response<Body>,
        route: &Route,
        log: Arc<AccessLog>,
        started: Instant,
    ) -> Response<Body> {
        let mut logged = *self;
        let (parts, body) = response.into_parts();
        let entry = &mut logged.entry;
        entry.status = parts.status.as_u16();
        entry.route = route.name.clone();
        if let Some(call) = parts.extensions.get::<UpstreamCall>() {
            entry.upstream = Some(call.upstream.clone());
            entry.upstream_time = Some(call.elapsed);
        }
        entry.endpoint = parts
            .extensions
            .get::<crate::upstream::AnsweredBy>()
            .map(|e| e.0.clone());
        entry.cache = parts
            .headers
            .get(&CACHE_STATUS)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("weir; ").unwrap_or(v).to_owned());
        let body = body::on_drop(body, move |bytes_out| {
            let mut entry = logged.entry;
            entry.bytes_out = bytes_out;
            entry.bytes_in = logged.bytes_in.load(Ordering::Relaxed);
            entry.total_time = started.elapsed();
            entry.plugins = std::mem::take(
                &mut *logged
                    .runs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            log.log(&entry);
        });
        Response::from_parts(parts, body)
    }
}

/// An upstream call's facts, carried on its response (extensions).
#[derive(Clone)]
struct UpstreamCall {
    upstream: String,
    elapsed: Duration,
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

fn cache_directives(wit: Option<&types::CacheDirectives>) -> cache::Directives {
    match wit {
        None => cache::Directives::default(),
        Some(d) => cache::Directives {
            bypass: d.bypass,
            ttl_cap: d.ttl_cap.map(|s| Duration::from_secs(s.into())),
            extra_key: d.extra_key.clone(),
            share_authenticated: d.share_authenticated,
        },
    }
}

/// What admission made of a request.
enum Admitted {
    /// Serve this canonical request.
    Serve(Box<Exchange>),
    /// Its path is ambiguous and the config says redirect: answer this.
    Redirect(Response<Body>),
}

impl Generation {
    /// The request path, as named steps: admit (limits, the canonical
    /// request) → route → request phase → forward (through the cache or
    /// straight to the upstream) → response phase → respond. `served`
    /// learns the route and, for the access log, the canonical view.
    async fn serve<'g>(
        &'g self,
        req: Request<Incoming>,
        conn: &ConnMeta,
        id: String,
        served: &mut Served<'g>,
    ) -> Result<Response<Body>, ProxyError> {
        let (head, incoming) = req.into_parts();
        let mut ex = match self.admit(head, conn, id)? {
            // Kept boxed: every future down to the upstream's holds the
            // exchange, a pointer instead of its 600 bytes.
            Admitted::Serve(ex) => ex,
            Admitted::Redirect(response) => return Ok(response),
        };
        let route = self.route(&mut ex)?;
        served.route = route;
        let counter = served.log.as_mut().map(|log| {
            log.admitted(&mut ex);
            log.bytes_in.clone()
        });
        if let Some(trace) = &served.trace {
            trace.admitted(&ex.authority, ex.head.uri.path(), route.name.as_deref());
            ex.head.extensions.insert(trace.clone());
            served.runs = Some(ex.runs.get_or_insert_with(Runs::default).clone());
        }
        let version = ex.head.version;
        let body = self.request_body(route, &mut ex, incoming, counter).await?;
        if let RequestOutcome::Respond {
            plugins_ran,
            response,
        } = route.chain.request_phase(&mut ex).await?
        {
            let (head, bytes) = response.into_parts();
            let state = ResponseState {
                head,
                body: Some(bytes),
            };
            return self.respond(route, &ex, plugins_ran, state, version).await;
        }
        // The response phase sees the request as the chain left it.
        let plugins_ran = route.chain.len();
        let view = route
            .chain
            .has_response_phase(plugins_ran)
            .then(|| Box::new(ex.snapshot()));
        let (head, streamed) = self.forward(route, ex, body, conn).await?;
        match view {
            Some(view) => {
                self.response_phase(route, &view, plugins_ran, head, streamed, version)
                    .await
            }
            None => {
                let mut head = head;
                self.config.proxy.via.append(&mut head.headers, version);
                Ok(Response::from_parts(head, streamed))
            }
        }
    }

    /// The route serving this canonical request: the first of `[[routes]]`
    /// that matches, else the fallback (the top-level chain). Its body
    /// limit is checked here, before any plugin runs.
    fn route(&self, ex: &mut Exchange) -> Result<&Route, ProxyError> {
        let route = if self.routes.is_empty() {
            &self.fallback
        } else {
            let request = route::Request {
                authority: &ex.authority,
                path: ex.head.uri.path(),
                query: ex.head.uri.query(),
                method: &ex.head.method,
                headers: &ex.head.headers,
            };
            self.routes.find(&request).unwrap_or(&self.fallback)
        };
        if let Some(name) = &route.name {
            tracing::Span::current().record("route", name.as_str());
            ex.route = Some(name.clone());
        }
        if let Some(length) = content_length(&ex.head.headers)? {
            if length > route.max_request_body_bytes {
                return Err(ProxyError::RequestBodyTooLarge {
                    limit: route.max_request_body_bytes,
                });
            }
        }
        Ok(route)
    }

    /// The request body, bounded by the route's limit: buffered into the
    /// exchange when a plugin of the route reads it (then `None`), else
    /// left to stream.
    async fn request_body(
        &self,
        route: &Route,
        ex: &mut Exchange,
        incoming: Incoming,
        counter: Option<Arc<AtomicU64>>,
    ) -> Result<Option<Body>, ProxyError> {
        let mut body: Body = Limited::new(incoming, route.max_request_body_bytes as usize).boxed();
        if let Some(counter) = counter {
            body = body::counted(body, counter);
        }
        if route.chain.wants_request_body() {
            ex.body = Some(buffer(body, self.config.limits.max_buffered_body_bytes).await?);
            Ok(None)
        } else {
            Ok(Some(body))
        }
    }

    /// Send the request as the chain left it to its upstream (a plugin's
    /// choice, the route's, or `default_upstream`), through the cache when
    /// one is configured and the route uses it.
    async fn forward(
        &self,
        route: &Route,
        ex: Box<Exchange>,
        body: Option<Body>,
        conn: &ConnMeta,
    ) -> Result<(response::Parts, Body), ProxyError> {
        let upstream = match ex
            .upstream
            .clone()
            .or_else(|| route.upstream.clone())
            .or_else(|| self.config.default_upstream.clone())
        {
            Some(name) if self.upstreams.contains(&name) => name,
            Some(name) => return Err(ProxyError::UnknownUpstream(name)),
            None => return Err(ProxyError::NoUpstream),
        };
        let mut head = ex.head;
        let host = HeaderValue::from_str(&ex.authority).ok();
        headers::set_forwarded(
            &mut head.headers,
            &Forwarded {
                client_ip: conn.client.ip(),
                scheme: ex.scheme,
                host: host.as_ref(),
                version: head.version,
                via: &self.config.proxy.via,
                trust_incoming: self.config.proxy.is_trusted(conn.client.ip()),
            },
        );
        if let Some(host) = host {
            head.headers.insert(header::HOST, host);
        }
        if !head.headers.contains_key(X_REQUEST_ID) {
            if let Ok(value) = HeaderValue::from_str(&ex.id) {
                head.headers.insert(X_REQUEST_ID, value);
            }
        }
        let (body, replay) = match (ex.body, body) {
            (Some(buffered), _) => {
                head.headers.remove(header::CONTENT_LENGTH);
                (body::full(buffered.clone()), Replay::Buffered(buffered))
            }
            (None, Some(streamed)) if streamed.is_end_stream() => (streamed, Replay::Empty),
            (None, Some(streamed)) => (streamed, Replay::Streamed),
            (None, None) => (body::empty(), Replay::Empty),
        };
        let cache = match &self.cache {
            Some(cache) if route.cache => cache,
            _ => return self.send(route, &upstream, head, body, replay).await,
        };
        let facts = cache::Facts {
            scheme: ex.scheme,
            authority: &ex.authority,
            credentialed: ex.credentialed,
            directives: cache_directives(ex.cache.as_ref()),
        };
        // For stale-while-revalidate: the same upstream, from a task of
        // the cache's own after this request has been answered.
        let background: cache::Revalidator = {
            let (upstreams, upstream) = (self.upstreams.clone(), upstream.clone());
            let timeout = route.response_timeout;
            Arc::new(move |head| {
                let (upstreams, upstream) = (upstreams.clone(), upstream.clone());
                Box::pin(async move {
                    let sent = upstreams
                        .send(&upstream, head, body::empty(), Replay::Empty, timeout)
                        .await;
                    let (mut parts, body) = sent.ok()?.into_parts();
                    headers::strip_hop_by_hop(&mut parts.headers);
                    Some((parts, body))
                })
            })
        };
        // Boxed: the cache's future holds an upstream send of its own, and
        // inline it would make every request's future (cached route or
        // not) larger by its size.
        Box::pin(
            cache.forward(&facts, head, background, |head, outgoing| match outgoing {
                Outgoing::Client => self.send(route, &upstream, head, body, replay),
                Outgoing::Conditional => {
                    self.send(route, &upstream, head, body::empty(), Replay::Empty)
                }
            }),
        )
        .await
    }

    /// To the upstream; hop-by-hop headers stripped from the answer.
    async fn send(
        &self,
        route: &Route,
        upstream: &str,
        head: request::Parts,
        body: Body,
        replay: Replay,
    ) -> Result<(response::Parts, Body), ProxyError> {
        let started = Instant::now();
        let response = self
            .upstreams
            .send(upstream, head, body, replay, route.response_timeout)
            .await?;
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.extensions.insert(UpstreamCall {
            upstream: upstream.to_owned(),
            elapsed: started.elapsed(),
        });
        Ok((parts, body))
    }

    /// The route's response phase over the upstream's (or the cache's)
    /// answer: buffered if a plugin reads the body, streamed otherwise.
    async fn response_phase(
        &self,
        route: &Route,
        view: &Exchange,
        plugins_ran: usize,
        head: response::Parts,
        streamed: Body,
        version: Version,
    ) -> Result<Response<Body>, ProxyError> {
        if route.chain.wants_response_body(plugins_ran) {
            let bytes = buffer(streamed, self.config.limits.max_buffered_body_bytes)
                .await
                .map_err(|_| ProxyError::ResponseTooLargeForPlugin)?;
            let state = ResponseState {
                head,
                body: Some(bytes),
            };
            return self.respond(route, view, plugins_ran, state, version).await;
        }
        let mut state = ResponseState { head, body: None };
        route
            .chain
            .response_phase(view, plugins_ran, &mut state)
            .await?;
        self.config
            .proxy
            .via
            .append(&mut state.head.headers, version);
        if forbids_content(state.head.status) {
            // A plugin made it a 204 or 304: it has no content (RFC 9110 §6.4.1).
            drop_content(&mut state.head.headers);
            return Ok(Response::from_parts(state.head, body::empty()));
        }
        Ok(Response::from_parts(state.head, streamed))
    }

    /// Check the request against the limits and build its one canonical
    /// view (DESIGN.md, the request-truth rule): the authority validated
    /// and normalised, the path canonicalised, the client address read
    /// through trusted proxies only, forwarding and identity claims from
    /// anyone else removed, and whether the client sent credentials. Every
    /// plugin, the cache key and the upstream read what this returns.
    fn admit(
        &self,
        mut head: request::Parts,
        conn: &ConnMeta,
        id: String,
    ) -> Result<Admitted, ProxyError> {
        let settings = &self.config.proxy;
        // Before any plugin runs: a request too many callouts deep must
        // not make more.
        let hops = outbound::take_hops(&mut head.headers)?;
        let scheme = if conn.tls.is_some() { "https" } else { "http" };
        let authority = authority(&head, scheme)?;
        // Most paths are canonical already: one scan, no allocation.
        let raw = head.uri.path();
        let canonical = if canonical::is_canonical(raw, settings.paths.merge_slashes) {
            None
        } else {
            match canonical::path(raw, settings.paths) {
                Canonical::Path(path) => Some(path),
                Canonical::Redirect(path) => {
                    let location = match head.uri.query() {
                        Some(query) => format!("{path}?{query}"),
                        None => path,
                    };
                    let response = crate::error::redirect_response(&location);
                    return Ok(Admitted::Redirect(response));
                }
                Canonical::Refused(why) => return Err(ProxyError::Path(why)),
            }
        };
        // Origin-form from here on: an absolute-form target's authority was
        // taken above (RFC 9112 §3.2.2) and the upstream gets a Host of it.
        if canonical.is_some() || head.uri.scheme().is_some() {
            let path = canonical.unwrap_or_else(|| head.uri.path().to_owned());
            head.uri = origin_form(&path, head.uri.query())?;
        }
        if !authority.is_empty() {
            if let Ok(host) = HeaderValue::from_str(&authority) {
                head.headers.insert(header::HOST, host);
            }
        }
        let credentialed = head.headers.contains_key(header::AUTHORIZATION)
            || head.headers.contains_key(header::PROXY_AUTHORIZATION);
        let peer_trusted = settings.is_trusted(conn.client.ip());
        let client_ip = if peer_trusted {
            headers::client_ip(conn.client.ip(), &head.headers, settings)
        } else {
            conn.client.ip()
        };
        headers::sanitize_incoming(&mut head.headers, peer_trusted, settings.underscores)
            .map_err(|_| ProxyError::BadRequest("header name with an underscore"))?;
        headers::strip_hop_by_hop(&mut head.headers);
        // Plugins and the upstream see the id this request is logged under:
        // the client's when it was sane, else the one generated for it
        // (a plugin may still replace it).
        if let Some(sent) = head.headers.get(X_REQUEST_ID) {
            if sent.as_bytes() != id.as_bytes() {
                if let Ok(value) = HeaderValue::from_str(&id) {
                    head.headers.insert(X_REQUEST_ID, value);
                }
            }
        }
        let version = head.version;
        Ok(Admitted::Serve(Box::new(Exchange {
            id,
            route: None,
            scheme,
            authority,
            // Only plugins read it: the plain path skips formatting addresses.
            connection: if !self.has_plugins {
                no_connection_info()
            } else {
                connection_info(conn, client_ip, version)
            },
            head,
            properties: Vec::new(),
            upstream: None,
            cache: None,
            hops,
            body: None,
            credentialed,
            runs: None,
        })))
    }

    /// Run the response phase over a buffered response and build it.
    async fn respond(
        &self,
        route: &Route,
        ex: &Exchange,
        plugins_ran: usize,
        mut state: ResponseState,
        version: Version,
    ) -> Result<Response<Body>, ProxyError> {
        route
            .chain
            .response_phase(ex, plugins_ran, &mut state)
            .await?;
        self.config
            .proxy
            .via
            .append(&mut state.head.headers, version);
        // The body may have been replaced: let the server frame it anew.
        drop_content(&mut state.head.headers);
        if forbids_content(state.head.status) {
            return Ok(Response::from_parts(state.head, body::empty()));
        }
        let bytes = state.body.unwrap_or_default();
        Ok(Response::from_parts(state.head, body::full(bytes)))
    }
}

/// 204 and 304 responses never have content (RFC 9110 §6.4.1), whatever
/// the upstream or a plugin left in them.
fn forbids_content(status: http::StatusCode) -> bool {
    status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED
}

/// Remove the framing of a body about to be replaced or dropped.
fn drop_content(headers: &mut http::HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
}

/// Read a body into memory, refusing more than `limit` bytes.
async fn buffer(mut body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    let mut buffered = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            if is_length_limit(err.as_ref()) {
                ProxyError::RequestBodyTooLarge {
                    limit: limit as u64,
                }
            } else {
                ProxyError::RequestBody(err.to_string())
            }
        })?;
        if let Some(data) = frame.data_ref() {
            if buffered.len() + data.len() > limit {
                return Err(ProxyError::RequestBodyTooLarge {
                    limit: limit as u64,
                });
            }
            buffered.extend_from_slice(data);
        }
    }
    Ok(buffered.freeze())
}

fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The declared body length, refusing ambiguous framing.
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Content-Length"));
    }
    first
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or(ProxyError::BadRequest("invalid Content-Length"))
}

/// The authority the client addressed, validated and normalised: the
/// target's (HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target,
/// whose authority wins over `Host` per RFC 9112 §3.2.2), else `Host`.
/// HTTP/2 requests whose `Host` names another authority are malformed
/// (RFC 9113 §8.3.1).
fn authority(head: &http::request::Parts, scheme: &str) -> Result<String, ProxyError> {
    let bad = |_| ProxyError::BadRequest("invalid Host or :authority");
    let host = match head
        .headers
        .get_all(header::HOST)
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [] => None,
        [one] => Some(
            one.to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        ),
        _ => return Err(ProxyError::BadRequest("duplicate Host header")),
    };
    if let Some(target) = head.uri.authority() {
        let target = canonical::authority(target.as_str(), scheme).map_err(bad)?;
        if head.version == Version::HTTP_2 {
            if let Some(host) = host {
                if canonical::authority(host, scheme).map_err(bad)? != target {
                    return Err(ProxyError::BadRequest("Host differs from :authority"));
                }
            }
        }
        return Ok(target);
    }
    match host {
        Some(host) => canonical::authority(host, scheme).map_err(bad),
        None if head.version == Version::HTTP_10 => Ok(String::new()),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}

/// An origin-form request target from a canonical path and the query.
fn origin_form(path: &str, query: Option<&str>) -> Result<http::Uri, ProxyError> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    http::Uri::try_from(text).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// A placeholder that allocates nothing, for requests no plugin sees.
fn no_connection_info() -> types::ConnectionInfo {
    types::ConnectionInfo {
        client_ip: String::new(),
        client_port: 0,
        local_ip: String::new(),
        local_port: 0,
        http_version: types::HttpVersion::Http11,
        tls: None,
    }
}

/// The connection facts plugins see. The client is the one the trusted
/// proxy chain named; its port is known only when it is the peer itself.
fn connection_info(conn: &ConnMeta, client_ip: IpAddr, version: Version) -> types::ConnectionInfo {
    let client_port = if client_ip == conn.client.ip() {
        conn.client.port()
    } else {
        0
    };
    types::ConnectionInfo {
        client_ip: client_ip.to_string(),
        client_port,
        local_ip: conn.local.ip().to_string(),
        local_port: conn.local.port(),
        http_version: match version {
            Version::HTTP_10 | Version::HTTP_09 => types::HttpVersion::Http10,
            Version::HTTP_2 => types::HttpVersion::Http2,
            Version::HTTP_3 => types::HttpVersion::Http3,
            _ => types::HttpVersion::Http11,
        },
        tls: conn.tls.clone(),
    }
}

/// Request ids: the client's `X-Request-Id` when it is sane, else a fresh
/// one from a per-process random prefix and a counter (unique, cheap).
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        use std::hash::{BuildHasher, RandomState};
        RequestIds {
            prefix: RandomState::new().hash_one(std::process::id()),
            counter: AtomicU64::new(0),
        }
    }

    fn for_request<B>(&self, req: &Request<B>) -> String {
        if let Some(id) = req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                return id.to_owned();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:08x}", self.prefix, n)
    }
}
