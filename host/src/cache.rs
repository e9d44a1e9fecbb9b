//! The host response cache: moka, bounded in bytes, with RFC 9111 semantics
//! from `http-cache-semantics` (freshness, `Age`, `Vary`, `no-store`,
//! `private`, `s-maxage`, `Authorization`, revalidation) rather than
//! hand-written rules. Plugins can only narrow it (bypass, TTL cap, extra
//! key parts), or share authenticated responses where config allows.
//!
//! Concurrent misses for one key make one upstream request: the first
//! becomes the leader and streams the response to its client while the body
//! is copied into the cache; the others wait for it, then hit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, request, response, HeaderValue, Method};
use http_body::{Frame, SizeHint};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use moka::sync::Cache;
use moka::Expiry;
use tokio::sync::watch;

use crate::body::{Body, BodyError};
use crate::config::CacheSettings;

/// RFC 9211 `Cache-Status` name of this cache.
const CACHE_NAME: &str = "weir";
/// Most variants (by `Vary`) kept for one URL.
const MAX_VARIANTS: usize = 8;

/// One stored response.
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
}

impl Stored {
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
pub enum Lookup {
    /// Fresh: serve this; `ttl` is its remaining freshness, for
    /// `Cache-Status: ttl=` (none once past a plugin's cap).
    Hit {
        response: http::Response<Bytes>,
        ttl: Option<Duration>,
    },
    /// Stale but revalidatable: send this conditional request upstream.
    Revalidate {
        stored: Arc<Stored>,
        request: request::Parts,
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
            Status::Bypass(why) => format!("{CACHE_NAME}; fwd={why}"),
        };
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("weir"))
    }
}

pub struct ResponseCache {
    entries: Cache<String, Variants>,
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    settings: CacheSettings,
}

/// Held by the one request fetching a key; waiters wake when it drops.
pub struct Leader {
    cache: Arc<ResponseCache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.cache
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
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
            inflight: Mutex::new(HashMap::new()),
            settings,
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
        let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
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

    pub fn lookup(&self, key: &str, req: &request::Parts) -> Lookup {
        let Some(variants) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let now = SystemTime::now();
        for stored in &variants.0 {
            // Past the plugin's cap: judge it as if its lifetime were over.
            let judged_at = if now >= stored.fresh_until {
                now + Duration::from_secs(100 * 365 * 24 * 3600)
            } else {
                now
            };
            match stored.policy.before_request(req, judged_at) {
                BeforeRequest::Fresh(parts) => {
                    let mut response = http::Response::new(stored.body.clone());
                    *response.status_mut() = stored.status;
                    *response.headers_mut() = parts.headers;
                    let mut ttl = None;
                    if judged_at == now {
                        let age = stored.policy.age(now).as_secs();
                        if let Ok(age) = HeaderValue::from_str(&age.to_string()) {
                            response.headers_mut().insert(header::AGE, age);
                        }
                        ttl = Some(
                            stored
                                .policy
                                .time_to_live(now)
                                .min(stored.fresh_until.duration_since(now).unwrap_or_default()),
                        );
                    }
                    return Lookup::Hit { response, ttl };
                }
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } if has_validators(&stored.headers) => {
                    return Lookup::Revalidate {
                        stored: stored.clone(),
                        request,
                    };
                }
                BeforeRequest::Stale { .. } => {}
            }
        }
        Lookup::Miss
    }

    /// Become the leader for `key`, or wait for the current leader to finish
    /// (then `None`: look up again).
    pub async fn lead_or_wait(self: &Arc<Self>, key: &str, wait: Duration) -> Option<Leader> {
        let waiting = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            match inflight.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(());
                    inflight.insert(key.to_owned(), rx);
                    return Some(Leader {
                        cache: self.clone(),
                        key: key.to_owned(),
                        _done: tx,
                    });
                }
            }
        };
        let mut waiting = waiting;
        // Resolves with Err when the leader drops its sender.
        let _ = tokio::time::timeout(wait, waiting.changed()).await;
        None
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
        let stored = Arc::new(stored);
        let mut variants = self.entries.get(&key).unwrap_or_default();
        // Replace the variant this response is for (same Vary'd request).
        variants.0.retain(|old| !same_variant(old, &stored));
        variants.0.insert(0, stored);
        variants.0.truncate(MAX_VARIANTS);
        self.entries.insert(key, variants);
    }

    fn stored(
        &self,
        policy: CachePolicy,
        head: &response::Parts,
        body: Bytes,
        directives: &Directives,
        vary_key: Vec<(String, Option<HeaderValue>)>,
    ) -> Stored {
        let now = SystemTime::now();
        let mut ttl = policy.time_to_live(now).min(self.settings.max_ttl);
        if let Some(cap) = directives.ttl_cap {
            ttl = ttl.min(cap);
        }
        let keep = if has_validators(&head.headers) {
            ttl + self.settings.stale_keep
        } else {
            ttl
        };
        Stored {
            policy,
            status: head.status,
            headers: head.headers.clone(),
            body,
            fresh_until: now + ttl,
            keep_until: Instant::now() + keep,
            vary_key,
        }
    }

    /// Wrap a response body so that, when it has streamed completely, it is
    /// stored. The leader guard (if any) is released when the body ends.
    #[allow(clippy::too_many_arguments)]
    pub fn store_on_completion(
        self: &Arc<Self>,
        key: String,
        policy_req: &request::Parts,
        policy: CachePolicy,
        head: &response::Parts,
        body: Body,
        directives: &Directives,
        leader: Option<Leader>,
    ) -> Body {
        let vary = vary_key(&policy_req.headers, &head.headers);
        let template = self.stored(policy, head, Bytes::new(), directives, vary);
        let tee = TeeBody {
            inner: body,
            buffer: Some(BytesMut::new()),
            limit: self.settings.max_entry_bytes,
            pending: Some(PendingStore {
                cache: self.clone(),
                key,
                template,
                _leader: leader,
            }),
        };
        http_body_util::BodyExt::boxed(tee)
    }

    /// A 304 answered a revalidation: refresh the entry, serve its body.
    pub fn refreshed(
        &self,
        key: String,
        stored: &Stored,
        conditional: &request::Parts,
        not_modified: &response::Parts,
        directives: &Directives,
    ) -> Option<http::Response<Bytes>> {
        match stored
            .policy
            .after_response(conditional, not_modified, SystemTime::now())
        {
            AfterResponse::NotModified(policy, parts) => {
                let mut head = parts;
                head.status = stored.status;
                let refreshed = self.stored(
                    policy,
                    &head,
                    stored.body.clone(),
                    directives,
                    stored.vary_key.clone(),
                );
                self.insert(key, refreshed);
                let mut response = http::Response::new(stored.body.clone());
                *response.status_mut() = stored.status;
                *response.headers_mut() = head.headers;
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

struct PendingStore {
    cache: Arc<ResponseCache>,
    key: String,
    template: Stored,
    _leader: Option<Leader>,
}

/// A body that copies what it streams, and stores it when complete.
struct TeeBody {
    inner: Body,
    buffer: Option<BytesMut>,
    limit: usize,
    pending: Option<PendingStore>,
}

impl TeeBody {
    /// The whole body has streamed: store it.
    fn finish(&mut self) {
        if let (Some(buffer), Some(pending)) = (self.buffer.take(), self.pending.take()) {
            let mut stored = pending.template;
            stored.body = buffer.freeze();
            pending.cache.insert(pending.key, stored);
        }
    }
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(buffer)) = (frame.data_ref(), this.buffer.as_mut()) {
                    if buffer.len() + data.len() > this.limit {
                        // Too large to cache: keep streaming, store nothing.
                        this.buffer = None;
                        this.pending = None;
                    } else {
                        buffer.extend_from_slice(data);
                    }
                }
                // hyper stops polling once a body says it has ended, so a
                // sized body may never yield the final `None`.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // A broken body is never stored.
                this.buffer = None;
                this.pending = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
