//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`, and
//! cache purge — `POST /cache/purge?key=K` (one exact key) or
//! `POST /cache/purge?prefix=P` (every key starting with P). Keys are
//! `scheme://host[:port]/path?query` as the cache builds them (lower-case
//! host, default port dropped, canonical path); without `scheme://` a key
//! or prefix names both schemes. `GET /readyz` says whether a generation is
//! serving.
//!
//! The JSON API under `/api/v1/` (see [`api`]) shows status, routes,
//! plugins, upstreams and the cache, and purges, reloads and drains.
//!
//! Every endpoint but `/healthz` and `/readyz` checks `Host` (only the
//! listener's own address, `localhost`, loopback literals and
//! `[admin] allowed_hosts`: a web page a browser was tricked into sending
//! here by DNS rebinding names its own host) and, when a token is
//! configured, `Authorization: Bearer <token>`. Purging always needs the
//! token, by POST: without one configured it is refused, since a plain
//! form POST from any web page would otherwise empty the cache.

mod api;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::config::{AdminSettings, Limits};
use crate::proxy::Proxy;
use crate::runner::Reloader;
use crate::server::SimpleLimits;
use crate::tls::ReloadingConfig;

fn text(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(body::full(text.into()));
    *response.status_mut() = status;
    response
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// Decode `%XX` escapes and `+` in a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request may not use an admin endpoint.
fn refusal(settings: &AdminSettings, req: &Request<Incoming>) -> Option<Response<Body>> {
    if !host_allowed(settings, req) {
        return Some(text(StatusCode::MISDIRECTED_REQUEST, "unknown Host\n"));
    }
    let Some(token) = &settings.token else {
        return None;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(presented) if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) => None,
        _ => {
            let mut response = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
            );
            Some(response)
        }
    }
}

/// `Host` names the listener itself, loopback, or a configured name.
fn host_allowed(settings: &AdminSettings, req: &Request<Incoming>) -> bool {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let Some(host) = host else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host.as_str(),
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == settings.address.ip())
        || settings.allowed_hosts.iter().any(|allowed| allowed == name)
}

/// What the admin endpoints serve from.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub settings: AdminSettings,
    /// Reloads, run on the data path's runtime.
    pub reload: Option<(Reloader, tokio::runtime::Handle)>,
    started: Instant,
}

impl Admin {
    pub fn new(
        proxy: Arc<Proxy>,
        settings: AdminSettings,
        reload: Option<(Reloader, tokio::runtime::Handle)>,
    ) -> Admin {
        Admin {
            proxy,
            settings,
            reload,
            started: Instant::now(),
        }
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        // A generation is always serving once the listener is up: a
        // failed reload keeps the old one.
        (&Method::GET, "/readyz") => return text(StatusCode::OK, "ready\n"),
        _ => {}
    }
    if let Some(refused) = refusal(&admin.settings, &req) {
        return refused;
    }
    let path = req.uri().path();
    if let Some(api_path) = path.strip_prefix("/api/v1/") {
        if let Some(response) = api::handle(admin, req.method(), api_path, query).await {
            return response;
        }
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => metrics(&admin.proxy),
        // The text form `weir ctl` predates; same checks as the API's.
        (&Method::POST, "/cache/purge") if admin.settings.token.is_none() => text(
            StatusCode::FORBIDDEN,
            "purging needs an admin token: set [admin] token_file or WEIR_ADMIN_TOKEN\n",
        ),
        (&Method::POST, "/cache/purge") => purge(&admin.proxy, query),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /metrics`: the gauges read at scrape time are set first.
fn metrics(proxy: &Proxy) -> Response<Body> {
    let generation = proxy.current();
    let host = proxy.metrics().host();
    host.set_plugin_gauges(&api::plugin_gauges(&generation));
    host.set_endpoint_health(&generation.upstreams.status());
    if let Some(cache) = &generation.cache {
        host.cache_entries
            .set(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
        host.cache_bytes
            .set(i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX));
    }
    let mut response = text(StatusCode::OK, proxy.metrics().render());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn purge(proxy: &Proxy, query: &str) -> Response<Body> {
    let generation = proxy.current();
    let Some(cache) = &generation.cache else {
        return text(StatusCode::NOT_FOUND, "no cache configured\n");
    };
    if let Some(key) = query_param(query, "key") {
        let existed = cache.purge_key(&key);
        text(StatusCode::OK, format!("purged {}\n", u8::from(existed)))
    } else if let Some(prefix) = query_param(query, "prefix") {
        match cache.purge_prefix(&prefix) {
            Ok(()) => text(StatusCode::OK, "purging\n"),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
        }
    } else {
        text(StatusCode::BAD_REQUEST, "give ?key=K or ?prefix=P\n")
    }
}

/// Serve the admin endpoints until `shutdown` resolves, with the main
/// listener's head limits and a connection cap of its own; over TLS (1.3,
/// see [`crate::tls::Versions::Tls13`]) when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    tls: Option<Arc<ReloadingConfig>>,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) {
    let simple = SimpleLimits {
        header_read_timeout: Some(limits.header_read_timeout),
        max_header_bytes: limits.max_header_bytes,
        max_connections: admin.settings.max_connections,
    };
    // The certificate files are watched like a data listener's.
    let watcher = tls.clone().map(|tls| tokio::spawn(tls.watch()));
    let admin = Arc::new(admin);
    let handler = move |req| {
        let admin = admin.clone();
        async move { handle(&admin, req).await }
    };
    crate::server::serve_simple(listener, "admin", handler, simple, tls, shutdown).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
}
