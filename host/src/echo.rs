//! `weir echo`: a small demo upstream that answers every request with a JSON
//! echo of its method, path, query, headers and body size. The body is
//! counted as it streams, never held. A `max_age=N` query parameter makes
//! the answer cacheable (`Cache-Control: public, max-age=N`), to show the
//! response cache at work. `--name` labels its answers (`x-echo-upstream`),
//! to show routing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::body::{self, Body};

#[derive(Serialize)]
struct Echo {
    method: String,
    path: String,
    query: Option<String>,
    version: String,
    headers: BTreeMap<String, Vec<String>>,
    body_bytes: u64,
}

async fn echo(req: Request<Incoming>, name: &str) -> Response<Body> {
    let (head, mut incoming) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "echo: request body failed");
                break;
            }
        }
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &head.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = Echo {
        method: head.method.to_string(),
        path: head.uri.path().to_owned(),
        query: head.uri.query().map(str::to_owned),
        version: format!("{:?}", head.version),
        headers,
        body_bytes,
    };
    let max_age = echo.query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("max_age="))
            .and_then(|n| n.parse::<u32>().ok())
    });
    let json = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    let mut response = Response::new(body::full(Bytes::from(json)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(age) = max_age {
        if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={age}")) {
            headers.insert(header::CACHE_CONTROL, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert("x-echo-upstream", value);
    }
    response
}

/// Serve the echo upstream until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve_named(listener, "echo", shutdown).await;
}

/// Serve the echo upstream, labelling answers with `name`.
pub async fn serve_named(listener: TcpListener, name: &str, shutdown: impl Future<Output = ()>) {
    let name: Arc<str> = name.into();
    let handler = move |req| {
        let name = name.clone();
        async move { echo(req, &name).await }
    };
    crate::server::serve_simple(
        listener,
        "echo",
        handler,
        crate::server::SimpleLimits::default(),
        None,
        shutdown,
    )
    .await;
}
