//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`, and
//! cache purge — `POST /cache/purge?key=K` (one exact key) or
//! `POST /cache/purge?prefix=P` (every key starting with P). Keys are
//! `scheme://host[:port]/path?query` as the cache builds them (lower-case
//! host, default port dropped, canonical path); without `scheme://` a key
//! or prefix names both schemes.
//! Bind it to loopback or a private network: it has no authentication.

use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::proxy::Proxy;

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

async fn handle(proxy: &Proxy, req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, proxy.metrics().render());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/cache/purge") => {
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
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serve the admin endpoints until `shutdown` resolves.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let handler = move |req| {
        let proxy = proxy.clone();
        async move { handle(&proxy, req).await }
    };
    crate::server::serve_simple(listener, "admin", handler, shutdown).await;
}
