//! `weir echo`: a small demo upstream that answers every request with a JSON
//! echo of its method, path, query, headers and body size. The body is
//! counted as it streams, never held.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
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

async fn echo(req: Request<Incoming>) -> Response<Body> {
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
    let json = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    let mut response = Response::new(body::full(Bytes::from(json)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serve the echo upstream until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "echo: accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let service =
                service_fn(|req| async { Ok::<_, std::convert::Infallible>(echo(req).await) });
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "echo: connection error");
            }
        });
    }
}
