//! The host response cache: moka, bounded in bytes, with RFC 9111 semantics
//! from `http-cache-semantics` (freshness, `Age`, `Vary`, `no-store`,
//! `private`, `s-maxage`, `Authorization`, revalidation) rather than
//! hand-written rules. Plugins can only narrow it (bypass, TTL cap, extra
//! key parts), or share authenticated responses where config allows.
//!
//! Concurrent misses for one key make one upstream request: the first
//! becomes the leader; a task reads the response into the cache at the
//! upstream's pace (see [`fill`]) and the leader and the others stream from
//! it, each at its own pace.
//!
//! [`ResponseCache::forward`] is the whole flow: bypass, lookup, coalesce,
//! revalidate, forward, store.

mod conditional;
mod directives;
mod fill;
mod range;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, request, response, HeaderValue, Method};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use moka::sync::Cache;
use moka::Expiry;
use tokio::sync::watch;
use tracing::Instrument;

use crate::body::{self, Body};
use crate::config::CacheSettings;
use conditional::ClientConditional;
use directives::StaleWindows;
use fill::Fill;
use range::ClientRange;

/// RFC 9211 `Cache-Status` name of this cache.
const CACHE_NAME: &str = "weir";
/// Most variants (by `Vary`) kept for one URL.
const MAX_VARIANTS: usize = 8;
/// Most URLs remembered as having entries with plugin key parts.
const MAX_KEYED: u64 = 100_000;
/// Stored fields a 304 does not replace: they describe the stored body.
const KEEP_ON_REFRESH: [header::HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];
/// The RFC 9211 response header.
const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");
/// How long a cache miss waits for a concurrent request fetching the same
/// key, when it cannot stream from it, before fetching itself.
const COALESCE_WAIT: Duration = Duration::from_secs(30);

/// One stored response.
#[derive(Clone)]
pub struct Stored {
    policy: CachePolicy,
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    /// Freshness as narrowed by the plugin's TTL cap and `max_ttl`.
    fresh_until: SystemTime,
    /// Drop the entry from memory at this point (stale entries with
    /// validators are kept a while for revalidation).
    keep_until: Instant,
    /// Which request this variant answers (see `Vary`).
    vary_key: Vec<(String, Option<HeaderValue>)>,
    /// How long past `fresh_until` it may still be served (RFC 5861).
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

/// How a stored response serves a request.
enum Judged {
    /// As it is: this head; `ttl` is its remaining freshness, for
    /// `Cache-Status: ttl=` (none once past a plugin's cap).
    Fresh {
        head: response::Parts,
        ttl: Option<Duration>,
    },
    /// Once revalidated with this conditional request.
    Stale(request::Parts),
    /// Not at all (another variant).
    Other,
}

impl Stored {
    /// How this response serves `req` at `now`.
    fn judge(&self, req: &request::Parts, now: SystemTime) -> Judged {
        if let Some(fresh) = self.plainly_fresh(req, now) {
            return fresh;
        }
        // Past the plugin's cap: judge it as if its lifetime were over.
        let judged_at = if now >= self.fresh_until {
            now + Duration::from_secs(100 * 365 * 24 * 3600)
        } else {
            now
        };
        match self.policy.before_request(req, judged_at) {
            BeforeRequest::Fresh(_) => {
                // The stored headers as the origin sent them (its Date, its
                // Cache-Control), not the policy's rewritten copy.
                let (mut head, ()) = http::Response::new(()).into_parts();
                head.status = self.status;
                head.headers = self.headers.clone();
                let mut ttl = None;
                if judged_at == now {
                    let age = self.policy.age(now).as_secs();
                    head.headers.insert(header::AGE, HeaderValue::from(age));
                    let capped = self.fresh_until.duration_since(now).unwrap_or_default();
                    ttl = Some(self.policy.time_to_live(now).min(capped));
                }
                Judged::Fresh { head, ttl }
            }
            BeforeRequest::Stale {
                request,
                matches: true,
            } => Judged::Stale(request),
            BeforeRequest::Stale { .. } => Judged::Other,
        }
    }

    /// The common hit, decided without re-evaluating the stored policy:
    /// within the freshness computed at store time (`fresh_until` is the
    /// policy's own expiry, or earlier under a cap), for a request that
    /// adds no cache directives of its own and selects this variant. The
    /// policy would say the same; anything else goes to it.
    fn plainly_fresh(&self, req: &request::Parts, now: SystemTime) -> Option<Judged> {
        let left = self.fresh_until.duration_since(now).ok()?;
        if req.headers.contains_key(header::CACHE_CONTROL)
            || req.headers.contains_key(header::PRAGMA)
            || !self
                .vary_key
                .iter()
                .all(|(name, value)| req.headers.get(name.as_str()) == value.as_ref())
        {
            return None;
        }
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = self.status;
        head.headers = self.headers.clone();
        let age = self.policy.age(now).as_secs();
        head.headers.insert(header::AGE, HeaderValue::from(age));
        Some(Judged::Fresh {
            head,
            ttl: Some(left),
        })
    }

    /// This response served past its freshness, with its `Age`.
    fn stale_response(&self, now: SystemTime) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body.clone());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        let age = self.policy.age(now).as_secs();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        response
    }

    fn windows(&self) -> StaleWindows {
        StaleWindows {
            while_revalidate: Some(self.stale_while_revalidate),
            if_error: Some(self.stale_if_error),
        }
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }
}

/// The variants stored under one primary key.
#[derive(Clone, Default)]
struct Variants(Vec<Arc<Stored>>);

struct KeepUntil;

impl Expiry<String, Variants> for KeepUntil {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Variants,
        created_at: Instant,
    ) -> Option<Duration> {
        let until = value.0.iter().map(|s| s.keep_until).max()?;
        Some(until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Variants,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// What a plugin asked of the cache for this request.
#[derive(Debug, Clone, Default)]
pub struct Directives {
    pub bypass: bool,
    pub ttl_cap: Option<Duration>,
    pub extra_key: Vec<String>,
    pub share_authenticated: bool,
}

/// What the cache must know of a request beyond its head: the parts of
/// its key the head does not carry, and how the client sent it.
pub struct Facts<'a> {
    pub scheme: &'a str,
    /// Validated and normalised (see `canonical::authority`).
    pub authority: &'a str,
    /// The client sent credentials (`Authorization`), or a plugin consumed
    /// one; judged before the chain, so a plugin stripping `Authorization`
    /// does not make the response look shareable.
    pub credentialed: bool,
    pub directives: Directives,
}

/// The outcome of a lookup.
enum Lookup {
    /// Fresh: serve this; `ttl` is its remaining freshness, for
    /// `Cache-Status: ttl=` (none once past a plugin's cap).
    Hit {
        response: http::Response<Bytes>,
        ttl: Option<Duration>,
    },
    /// Stale, but still of use: revalidate it with this request (a
    /// conditional one when it has validators), serve it meanwhile within
    /// its stale-while-revalidate window, or if the upstream fails within
    /// its stale-if-error window.
    Stale {
        stored: Arc<Stored>,
        request: request::Parts,
        while_revalidate: bool,
        if_error: bool,
    },
    Miss,
}

/// The `Cache-Status` value (RFC 9211) for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss {
        stored: bool,
    },
    Revalidated,
    /// Streamed from a concurrent request's response while it filled.
    Collapsed,
    /// Served stale while a background revalidation runs (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Served stale because the upstream failed: its status, or none when
    /// it could not be reached (RFC 5861 §4).
    StaleIfError(Option<u16>),
    /// Not looked up: the method, the client, or a plugin said so.
    Bypass(&'static str),
}

impl Status {
    pub fn header_value(self, ttl: Option<Duration>) -> HeaderValue {
        let text = match self {
            Status::Hit => match ttl {
                Some(ttl) => format!("{CACHE_NAME}; hit; ttl={}", ttl.as_secs()),
                None => format!("{CACHE_NAME}; hit"),
            },
            Status::Miss { stored: true } => format!("{CACHE_NAME}; fwd=miss; stored"),
            Status::Miss { stored: false } => format!("{CACHE_NAME}; fwd=miss"),
            Status::Revalidated => format!("{CACHE_NAME}; fwd=stale; fwd-status=304"),
            Status::Collapsed => format!("{CACHE_NAME}; fwd=miss; collapsed"),
            Status::StaleWhileRevalidate => {
                format!("{CACHE_NAME}; hit; detail=stale-while-revalidate")
            }
            Status::StaleIfError(Some(status)) => {
                format!("{CACHE_NAME}; fwd=stale; fwd-status={status}; detail=stale-if-error")
            }
            Status::StaleIfError(None) => {
                format!("{CACHE_NAME}; fwd=stale; detail=stale-if-error")
            }
            Status::Bypass(why) => format!("{CACHE_NAME}; fwd={why}"),
        };
        HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or(HeaderValue::from_static("weir"))
    }
}

pub struct ResponseCache {
    entries: Cache<String, Variants>,
    /// Primary keys (without plugin key parts) that have entries with
    /// plugin key parts, so invalidating a URI finds those too. Bounded
    /// like the entries it indexes.
    keyed: Cache<String, ()>,
    inflight: Mutex<HashMap<String, InFlight>>,
    settings: CacheSettings,
    counters: Counters,
}

/// A key some request is fetching right now.
struct InFlight {
    /// Closed when the fetch is over (stored, or given up).
    done: watch::Receiver<()>,
    /// Set once its response is filling and may be shared.
    shared: Option<Shared>,
}

/// A response filling the cache that concurrent requests may stream.
#[derive(Clone)]
struct Shared {
    stored: Arc<Stored>,
    fill: Arc<Fill>,
}

/// Held by the one request fetching a key; waiters wake when it drops.
pub struct Leader {
    cache: Arc<ResponseCache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.cache.inflight().remove(&self.key);
    }
}

/// What a miss became when it met the requests fetching the same key.
enum Coalesced {
    /// Nobody was: fetch it.
    Lead(Leader),
    /// Stream the response that is filling.
    Follow(response::Parts, Body),
    /// The other fetch ended (or took too long): look up again.
    LookAgain,
}

/// Sends a revalidation upstream from a task of the cache's own (for
/// stale-while-revalidate), after the request that found the entry stale
/// has been answered; `None` when the upstream could not be reached.
pub type Revalidator = Arc<
    dyn Fn(
            request::Parts,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Option<(response::Parts, Body)>> + Send>>
        + Send
        + Sync,
>;

/// Which body the cache asks the upstream request to carry.
pub enum Outgoing {
    /// The client's request body, as admitted.
    Client,
    /// None: a conditional request revalidating a stored response.
    Conditional,
}

/// One request's dealings with the cache.
struct Visit<'a> {
    key: String,
    /// The request as the cache policy judges it.
    policy_req: request::Parts,
    directives: &'a Directives,
    is_head: bool,
    /// The client's own conditional, answered here rather than forwarded.
    client: ClientConditional,
    /// The client's `Range`, answered from stored responses.
    range: ClientRange,
    counters: &'a Counters,
}

impl ResponseCache {
    pub fn new(settings: CacheSettings) -> ResponseCache {
        let entries = Cache::builder()
            .max_capacity(settings.capacity_bytes)
            .weigher(|_key: &String, value: &Variants| {
                value
                    .0
                    .iter()
                    .map(|s| s.weight())
                    .fold(0u32, u32::saturating_add)
            })
            .expire_after(KeepUntil)
            .support_invalidation_closures()
            .build();
        ResponseCache {
            entries,
            keyed: Cache::new(MAX_KEYED),
            inflight: Mutex::new(HashMap::new()),
            settings,
            counters: Counters::default(),
        }
    }

    /// Count what the cache does in `weir_cache_requests_total`.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> ResponseCache {
        self.counters = Counters::new(metrics);
        self
    }

    /// Bytes held (bodies and headers), as the capacity counts them.
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answer a request through the cache: from a stored or filling
    /// response when one serves, otherwise by `send`ing it upstream (once
    /// for all concurrent misses of a key) and storing what may be stored.
    /// Every answer carries `Cache-Status` (RFC 9211).
    pub async fn forward<F, Fut, E>(
        self: &Arc<Self>,
        facts: &Facts<'_>,
        head: request::Parts,
        background: Revalidator,
        send: F,
    ) -> Result<(response::Parts, Body), E>
    where
        F: FnOnce(request::Parts, Outgoing) -> Fut,
        Fut: Future<Output = Result<(response::Parts, Body), E>>,
    {
        if let Some(why) = self.bypass_reason(&head.method, &facts.directives) {
            let unsafe_method = !is_safe(&head.method);
            let target = target_of(&head).to_owned();
            let (mut parts, body) = send(head, Outgoing::Client).await?;
            if unsafe_method && (parts.status.is_success() || parts.status.is_redirection()) {
                self.invalidate(facts, &target, &parts.headers);
            }
            directives::strip_targeted(&mut parts.headers, &self.settings.targeted_field);
            self.counters
                .set_status(&mut parts, Status::Bypass(why), None);
            return Ok((parts, body));
        }
        let mut head = head;
        let client = ClientConditional::take(&mut head.headers);
        let visit = Visit {
            key: ResponseCache::key(facts, &head),
            policy_req: self.policy_request(&head, facts),
            directives: &facts.directives,
            is_head: head.method == Method::HEAD,
            client,
            range: ClientRange::read(&head.headers),
            counters: &self.counters,
        };
        let mut leader = None;
        for attempt in 0..2 {
            match self.lookup(&visit.key, &visit.policy_req) {
                Lookup::Hit { response, ttl } => {
                    return Ok(visit.answer(response, Status::Hit, ttl));
                }
                Lookup::Stale {
                    stored,
                    request,
                    while_revalidate: true,
                    ..
                } => {
                    self.revalidate_in_background(
                        &visit,
                        stored.clone(),
                        request,
                        head,
                        background,
                    );
                    let response = stored.stale_response(SystemTime::now());
                    return Ok(visit.answer(response, Status::StaleWhileRevalidate, None));
                }
                Lookup::Stale {
                    stored,
                    request,
                    if_error,
                    ..
                } => {
                    return self
                        .revalidate(visit, &stored, request, head, send, if_error)
                        .await;
                }
                Lookup::Miss if attempt == 0 => {
                    match self.lead_or_follow(&visit.key, &visit.policy_req).await {
                        Coalesced::Lead(lead) => {
                            leader = Some(lead);
                            break;
                        }
                        Coalesced::Follow(parts, body) => {
                            return Ok(visit.respond(parts, body, Status::Collapsed, None));
                        }
                        // Another request fetched this key meanwhile.
                        Coalesced::LookAgain => {}
                    }
                }
                Lookup::Miss => break,
            }
        }
        let (parts, body) = send(head, Outgoing::Client).await?;
        Ok(self.store(visit, parts, body, leader))
    }

    /// Ask the upstream whether a stale response is still good; serve it
    /// refreshed on a 304, or whatever came instead.
    async fn revalidate<F, Fut, E>(
        self: &Arc<Self>,
        visit: Visit<'_>,
        stored: &Stored,
        conditional: request::Parts,
        head: request::Parts,
        send: F,
        stale_if_error: bool,
    ) -> Result<(response::Parts, Body), E>
    where
        F: FnOnce(request::Parts, Outgoing) -> Fut,
        Fut: Future<Output = Result<(response::Parts, Body), E>>,
    {
        let head = with_validators(head, &conditional);
        let (parts, body) = match send(head, Outgoing::Conditional).await {
            Ok(answer) => answer,
            // Could not reach the upstream: stale is better than an error.
            Err(_) if stale_if_error => {
                let response = stored.stale_response(SystemTime::now());
                return Ok(visit.answer(response, Status::StaleIfError(None), None));
            }
            Err(err) => return Err(err),
        };
        // The final status after any retries: a 5xx is the upstream's.
        if parts.status.is_server_error() && stale_if_error {
            let status = Status::StaleIfError(Some(parts.status.as_u16()));
            return Ok(visit.answer(stored.stale_response(SystemTime::now()), status, None));
        }
        if parts.status == http::StatusCode::NOT_MODIFIED {
            let refreshed =
                self.refreshed(&visit.key, visit.directives, stored, &conditional, &parts);
            if let Some(response) = refreshed {
                return Ok(visit.answer(response, Status::Revalidated, None));
            }
        }
        Ok(self.store(visit, parts, body, None))
    }

    /// Revalidate a stale entry from a task of its own (at most one per
    /// key at a time), while the stale copy is served.
    fn revalidate_in_background(
        self: &Arc<Self>,
        visit: &Visit<'_>,
        stored: Arc<Stored>,
        conditional: request::Parts,
        head: request::Parts,
        background: Revalidator,
    ) {
        let Some(leader) = self.try_lead(&visit.key) else {
            return; // already being fetched
        };
        let cache = self.clone();
        let key = visit.key.clone();
        let directives = visit.directives.clone();
        let policy_req = visit.policy_req.clone();
        let head = with_validators(head, &conditional);
        tokio::spawn(
            async move {
                let Some((parts, body)) = background(head).await else {
                    return;
                };
                if parts.status == http::StatusCode::NOT_MODIFIED {
                    cache.refreshed(&key, &directives, &stored, &conditional, &parts);
                    return;
                }
                if parts.status.is_server_error() {
                    return; // keep serving what is stored
                }
                let visit = Visit {
                    key,
                    policy_req,
                    directives: &directives,
                    is_head: false,
                    client: ClientConditional::default(),
                    range: ClientRange::default(),
                    counters: &cache.counters,
                };
                // Nobody reads this copy: drain it so the fill completes.
                let (_, reader) = cache.store(visit, parts, body, Some(leader));
                let _ = http_body_util::BodyExt::collect(reader).await;
            }
            .in_current_span(),
        );
    }

    /// Store the upstream's response if it may be stored: it is read into
    /// the cache by a task of its own, and the client streams from that.
    fn store(
        self: &Arc<Self>,
        visit: Visit<'_>,
        mut parts: response::Parts,
        body: Body,
        leader: Option<Leader>,
    ) -> (response::Parts, Body) {
        let prepared = directives::prepare(&parts.headers, &self.settings.targeted_field);
        directives::strip_targeted(&mut parts.headers, &self.settings.targeted_field);
        let policy_head = head_with(parts.status, prepared.policy_headers);
        let policy = (!visit.is_head)
            .then(|| self.storable(&visit.policy_req, &policy_head))
            .flatten();
        let Some(policy) = policy else {
            return visit.respond(parts, body, Status::Miss { stored: false }, None);
        };
        let length = declared_length(&parts.headers);
        let limit = self.settings.max_entry_bytes;
        if length.is_some_and(|length| length > limit as u64) {
            return visit.respond(parts, body, Status::Miss { stored: false }, None);
        }
        let vary = vary_key(&visit.policy_req.headers, &parts.headers);
        let stored_head = head_with(parts.status, prepared.client_headers);
        let windows = directives::stale_windows(&policy_head.headers);
        let stored = self.stored(
            policy,
            &stored_head,
            Bytes::new(),
            visit.directives,
            (vary, windows),
        );
        let fill = Fill::new(length);
        let reader = fill.reader(true);
        if let (Some(leader), Some(_)) = (&leader, length) {
            // Its size is known to fit: others may stream it while it fills.
            if let Some(flight) = self.inflight().get_mut(&leader.key) {
                flight.shared = Some(Shared {
                    stored: Arc::new(stored.clone()),
                    fill: fill.clone(),
                });
            }
        }
        let cache = self.clone();
        let key = visit.key.clone();
        tokio::spawn(
            async move {
                if let Some(whole) = fill.run(body, limit).await {
                    let mut stored = stored;
                    stored.body = whole;
                    cache.insert(key, stored);
                }
                drop(leader);
            }
            .in_current_span(),
        );
        visit.respond(parts, reader, Status::Miss { stored: true }, None)
    }

    /// A successful unsafe request (POST, PUT, DELETE, or a method not
    /// known to be safe) invalidates what is stored for its URI, and for
    /// the same-origin URIs in `Location` and `Content-Location` (RFC 9111
    /// §4.4), every variant and every plugin key part.
    fn invalidate(&self, facts: &Facts<'_>, target: &str, response: &http::HeaderMap) {
        let origin = format!("{}://{}", facts.scheme, facts.authority);
        let mut targets = vec![target.to_owned()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(value) = response.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let path = match value.strip_prefix(&origin) {
                Some(rest) if rest.starts_with('/') => rest,
                Some(_) => continue,
                None if value.starts_with('/') && !value.starts_with("//") => value,
                None => continue,
            };
            targets.push(path.to_owned());
        }
        for target in targets {
            let base = format!("{origin}{target}");
            self.entries.remove(&base);
            if self.keyed.contains_key(&base) {
                // Entries with plugin key parts: `base` U+001F ….
                let prefix = format!("{base}\u{1f}");
                if let Err(err) = self
                    .entries
                    .invalidate_entries_if(move |key, _| key.starts_with(&prefix))
                {
                    tracing::warn!(error = %err, "cache invalidation failed");
                }
                self.keyed.invalidate(&base);
            }
        }
    }

    /// Why this request may not use the cache, if it may not.
    pub fn bypass_reason(&self, method: &Method, directives: &Directives) -> Option<&'static str> {
        if directives.bypass {
            Some("bypass")
        } else if method != Method::GET && method != Method::HEAD {
            Some("method")
        } else {
            None
        }
    }

    /// The primary key, from typed parts encoded so that two distinct
    /// requests never share one: `scheme://authority` (validated: no `/`,
    /// `?`, `@` or controls), the canonical origin-form path and query
    /// (no controls), then each plugin key part as U+001F, its byte length,
    /// `:` and the part. Method is not part of it: only GET responses are
    /// stored and HEAD is answered from them.
    pub fn key(facts: &Facts<'_>, head: &request::Parts) -> String {
        let target = target_of(head);
        let mut key = format!("{}://{}{target}", facts.scheme, facts.authority);
        for part in &facts.directives.extra_key {
            key.push('\u{1f}');
            key.push_str(&part.len().to_string());
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// The request as the cache policy judges it. A request the client sent
    /// with credentials is judged as authenticated (RFC 9111 §3.5) even if
    /// a plugin removed them; `Authorization` is hidden only when sharing
    /// authenticated responses is both allowed by the operator and asked
    /// for by a plugin.
    pub fn policy_request(&self, head: &request::Parts, facts: &Facts<'_>) -> request::Parts {
        let mut head = head.clone();
        if head.method == Method::HEAD {
            head.method = Method::GET;
        }
        directives::normalise_request(&mut head.headers);
        if facts.directives.share_authenticated && self.settings.allow_shared_authenticated {
            head.headers.remove(header::AUTHORIZATION);
        } else if facts.credentialed && !head.headers.contains_key(header::AUTHORIZATION) {
            head.headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_static("consumed-by-plugin"),
            );
        }
        head
    }

    fn lookup(&self, key: &str, req: &request::Parts) -> Lookup {
        let Some(variants) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let now = SystemTime::now();
        for stored in &variants.0 {
            match stored.judge(req, now) {
                Judged::Fresh { head, ttl } => {
                    let response = http::Response::from_parts(head, stored.body.clone());
                    return Lookup::Hit { response, ttl };
                }
                Judged::Stale(request) => {
                    let late = now.duration_since(stored.fresh_until).unwrap_or_default();
                    let while_revalidate = late <= stored.stale_while_revalidate;
                    let if_error = late <= stored.stale_if_error;
                    if has_validators(&stored.headers) || while_revalidate || if_error {
                        return Lookup::Stale {
                            stored: stored.clone(),
                            request,
                            while_revalidate,
                            if_error,
                        };
                    }
                }
                Judged::Other => {}
            }
        }
        Lookup::Miss
    }

    /// Become the leader for `key` unless some request already is.
    fn try_lead(self: &Arc<Self>, key: &str) -> Option<Leader> {
        let mut inflight = self.inflight();
        if inflight.contains_key(key) {
            return None;
        }
        let (tx, rx) = watch::channel(());
        let flight = InFlight {
            done: rx,
            shared: None,
        };
        inflight.insert(key.to_owned(), flight);
        Some(Leader {
            cache: self.clone(),
            key: key.to_owned(),
            _done: tx,
        })
    }

    /// Become the leader for `key`; or stream the leader's response if it
    /// is filling and serves this request; or wait for the leader to finish
    /// (then look up again).
    async fn lead_or_follow(self: &Arc<Self>, key: &str, req: &request::Parts) -> Coalesced {
        let mut done = {
            let mut inflight = self.inflight();
            match inflight.get(key) {
                Some(flight) => {
                    if let Some(Shared { stored, fill }) = &flight.shared {
                        if let Judged::Fresh { head, .. } = stored.judge(req, SystemTime::now()) {
                            return Coalesced::Follow(head, fill.reader(false));
                        }
                    }
                    flight.done.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(());
                    let flight = InFlight {
                        done: rx,
                        shared: None,
                    };
                    inflight.insert(key.to_owned(), flight);
                    return Coalesced::Lead(Leader {
                        cache: self.clone(),
                        key: key.to_owned(),
                        _done: tx,
                    });
                }
            }
        };
        // Resolves with Err when the leader drops its sender.
        let _ = tokio::time::timeout(COALESCE_WAIT, done.changed()).await;
        Coalesced::LookAgain
    }

    /// Decide whether a response may be stored; returns its policy.
    pub fn storable(
        &self,
        policy_req: &request::Parts,
        head: &response::Parts,
    ) -> Option<CachePolicy> {
        if policy_req.method != Method::GET {
            return None;
        }
        // Interim responses are never stored; nor is a partial one as if
        // it were the whole (RFC 9111 §3, §3.3).
        if head.status.is_informational() || head.status == http::StatusCode::PARTIAL_CONTENT {
            return None;
        }
        if head.headers.contains_key(header::SET_COOKIE) && !self.settings.store_set_cookie {
            return None;
        }
        let options = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let policy = CachePolicy::new_options(policy_req, head, SystemTime::now(), options);
        (policy.is_storable() && policy.time_to_live(SystemTime::now()) > Duration::ZERO)
            .then_some(policy)
    }

    fn insert(&self, key: String, stored: Stored) {
        if let Some((base, _)) = key.split_once('\u{1f}') {
            self.keyed.insert(base.to_owned(), ());
        }
        let stored = Arc::new(stored);
        let mut variants = self.entries.get(&key).unwrap_or_default();
        // Replace the variant this response is for (same Vary'd request).
        variants.0.retain(|old| !same_variant(old, &stored));
        variants.0.insert(0, stored);
        variants.0.truncate(MAX_VARIANTS);
        self.entries.insert(key, variants);
    }

    /// `(vary_key, windows)`: which request it answers, and how long it
    /// may be served stale.
    fn stored(
        &self,
        policy: CachePolicy,
        head: &response::Parts,
        body: Bytes,
        directives: &Directives,
        (vary_key, windows): (Vec<(String, Option<HeaderValue>)>, StaleWindows),
    ) -> Stored {
        let now = SystemTime::now();
        let mut ttl = policy.time_to_live(now).min(self.settings.max_ttl);
        if let Some(cap) = directives.ttl_cap {
            ttl = ttl.min(cap);
        }
        let stale_while_revalidate = windows.while_revalidate.unwrap_or_default();
        let stale_if_error = windows
            .if_error
            .unwrap_or(self.settings.serve_stale_on_error);
        let revalidate_keep = if has_validators(&head.headers) {
            self.settings.stale_keep
        } else {
            Duration::ZERO
        };
        let keep = ttl
            + revalidate_keep
                .max(stale_while_revalidate)
                .max(stale_if_error);
        Stored {
            policy,
            status: head.status,
            headers: head.headers.clone(),
            body,
            fresh_until: now + ttl,
            keep_until: Instant::now() + keep,
            vary_key,
            stale_while_revalidate,
            stale_if_error,
        }
    }

    /// A 304 answered a revalidation: refresh the entry, serve its body.
    fn refreshed(
        &self,
        key: &str,
        directives: &Directives,
        stored: &Stored,
        conditional: &request::Parts,
        not_modified: &response::Parts,
    ) -> Option<http::Response<Bytes>> {
        let prepared = directives::prepare(&not_modified.headers, &self.settings.targeted_field);
        let policy_304 = head_with(not_modified.status, prepared.policy_headers);
        match stored
            .policy
            .after_response(conditional, &policy_304, SystemTime::now())
        {
            AfterResponse::NotModified(policy, _) => {
                // The 304's fields replace the stored ones (its Date too),
                // except those describing the body (RFC 9111 §3.2, §4.3.4).
                let mut headers = stored.headers.clone();
                for name in prepared.client_headers.keys() {
                    if KEEP_ON_REFRESH.contains(name) {
                        continue;
                    }
                    headers.remove(name);
                    for value in prepared.client_headers.get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
                let head = head_with(stored.status, headers);
                let mut windows = directives::stale_windows(&policy_304.headers);
                if !policy_304.headers.contains_key(header::CACHE_CONTROL) {
                    windows = stored.windows();
                }
                let refreshed = self.stored(
                    policy,
                    &head,
                    stored.body.clone(),
                    directives,
                    (stored.vary_key.clone(), windows),
                );
                self.insert(key.to_owned(), refreshed);
                let mut response = http::Response::from_parts(head, stored.body.clone());
                response
                    .headers_mut()
                    .insert(header::AGE, HeaderValue::from_static("0"));
                Some(response)
            }
            AfterResponse::Modified(..) => None,
        }
    }

    /// Purge one exact primary key (every variant). A key given without a
    /// scheme (`host/path?query`) names both its `http` and `https` entry.
    /// Returns whether any existed.
    pub fn purge_key(&self, key: &str) -> bool {
        if key.contains("://") {
            return self.entries.remove(key).is_some();
        }
        let http = self.entries.remove(&format!("http://{key}")).is_some();
        let https = self.entries.remove(&format!("https://{key}")).is_some();
        http || https
    }

    /// Purge every key starting with `prefix`; without a scheme, the
    /// prefix is matched after either.
    pub fn purge_prefix(&self, prefix: &str) -> Result<(), String> {
        let prefix = prefix.to_owned();
        let with_scheme = prefix.contains("://");
        self.entries
            .invalidate_entries_if(move |key, _| {
                if with_scheme {
                    return key.starts_with(&prefix);
                }
                ["http://", "https://"].iter().any(|scheme| {
                    key.strip_prefix(scheme)
                        .is_some_and(|rest| rest.starts_with(&prefix))
                })
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

impl Visit<'_> {
    /// A stored response, as this request gets it.
    fn answer(
        &self,
        response: http::Response<Bytes>,
        status: Status,
        ttl: Option<Duration>,
    ) -> (response::Parts, Body) {
        let (mut parts, bytes) = response.into_parts();
        // A conditional that matches wins over the range (RFC 9110 §13.2.2).
        if !self.is_head && !self.client.not_modified(parts.status, &parts.headers) {
            if let Some(ranged) = self.range.answer(parts.status, &parts.headers, &bytes) {
                parts.status = ranged.status;
                ranged.headers(&mut parts.headers);
                self.counters.set_status(&mut parts, status, ttl);
                return (parts, body::full(ranged.body));
            }
        }
        self.respond(parts, body::full(bytes), status, ttl)
    }

    /// Any response, as this request gets it: with its `Cache-Status`,
    /// without a body for HEAD, and as a 304 when the client's own
    /// conditional matches it.
    fn respond(
        &self,
        mut parts: response::Parts,
        body: Body,
        status: Status,
        ttl: Option<Duration>,
    ) -> (response::Parts, Body) {
        if self.client.not_modified(parts.status, &parts.headers) {
            parts.status = http::StatusCode::NOT_MODIFIED;
            parts.headers = conditional::not_modified_headers(&parts.headers);
            self.counters.set_status(&mut parts, status, ttl);
            return (parts, body::empty());
        }
        self.counters.set_status(&mut parts, status, ttl);
        let body = if self.is_head { body::empty() } else { body };
        (parts, body)
    }
}

/// The request as forwarded, with the validators of the policy's
/// conditional request (only those: the policy's copy may carry a
/// stand-in `Authorization`).
fn with_validators(mut head: request::Parts, conditional: &request::Parts) -> request::Parts {
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        if let Some(value) = conditional.headers.get(&name) {
            head.headers.insert(name, value.clone());
        }
    }
    head
}

/// Methods that never change what is stored (RFC 9110 §9.2.1).
fn is_safe(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// A request's origin-form target (path and query).
fn target_of(head: &request::Parts) -> &str {
    head.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// A response head with this status and these headers.
fn head_with(status: http::StatusCode, headers: http::HeaderMap) -> response::Parts {
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = status;
    head.headers = headers;
    head
}

/// `weir_cache_requests_total` by result, and the `Cache-Status` header.
#[derive(Default)]
struct Counters(Option<[Arc<std::sync::atomic::AtomicU64>; 6]>);

/// The `result` label values of `weir_cache_requests_total`.
const RESULTS: [&str; 6] = ["hit", "miss", "stale", "revalidated", "collapsed", "bypass"];

impl Counters {
    fn new(metrics: &crate::metrics::Metrics) -> Counters {
        Counters(Some(RESULTS.map(|result| {
            metrics.counter_handle("weir_cache_requests_total", &[("result", result)])
        })))
    }

    fn set_status(&self, parts: &mut response::Parts, status: Status, ttl: Option<Duration>) {
        parts.headers.insert(CACHE_STATUS, status.header_value(ttl));
        if let Some(counters) = &self.0 {
            let result = match status {
                Status::Hit => 0,
                Status::Miss { .. } => 1,
                Status::StaleWhileRevalidate | Status::StaleIfError(_) => 2,
                Status::Revalidated => 3,
                Status::Collapsed => 4,
                Status::Bypass(_) => 5,
            };
            counters[result].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The body length the upstream declared, if it did.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn has_validators(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Two stored responses are the same variant if they were selected by the
/// same values of the request headers their `Vary` names.
fn same_variant(a: &Stored, b: &Stored) -> bool {
    a.vary_key == b.vary_key
}

/// The request header values named by the response's `Vary`.
fn vary_key(
    request: &http::HeaderMap,
    response: &http::HeaderMap,
) -> Vec<(String, Option<HeaderValue>)> {
    response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .map(|name| {
            let value = request.get(name.as_str()).cloned();
            (name, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scheme: &str, authority: &str, target: &str, extra: &[&str]) -> String {
        let (head, ()) = http::Request::builder()
            .uri(target)
            .body(())
            .expect("request")
            .into_parts();
        let facts = Facts {
            scheme,
            authority,
            credentialed: false,
            directives: Directives {
                extra_key: extra.iter().map(|s| s.to_string()).collect(),
                ..Directives::default()
            },
        };
        ResponseCache::key(&facts, &head)
    }

    #[test]
    fn distinct_requests_never_share_a_key() {
        let keys = [
            key("http", "a.example", "/x", &[]),
            key("https", "a.example", "/x", &[]),
            key("http", "a.example", "/x?", &[]),
            key("http", "a.example", "/x?y", &[]),
            key("http", "a.example:8080", "/x", &[]),
            key("http", "a.example", "/x", &[""]),
            key("http", "a.example", "/x", &["a", "b"]),
            key("http", "a.example", "/x", &["a\u{1f}1:b"]),
            key("http", "a.example", "/x", &["ab"]),
            key("http", "a.example", "/x", &["a\u{1f}b"]),
        ];
        let unique: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{keys:#?}");
        assert_eq!(keys[0], "http://a.example/x");
    }
}
