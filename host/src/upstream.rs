//! Named upstream pools: endpoints, round-robin balancing, a pooled
//! keep-alive client per pool, connect and response-head timeouts, and the
//! classification of failures into connect (→ 502), timeout (→ 504) and
//! protocol (→ 502).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::UpstreamSpec;

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
}

/// Every configured pool, by name.
pub struct Upstreams {
    pools: BTreeMap<String, Pool>,
}

struct Pool {
    spec: UpstreamSpec,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    client: Client<HttpConnector, Body>,
}

impl Upstreams {
    pub fn new(specs: &BTreeMap<String, UpstreamSpec>) -> Upstreams {
        let pools = specs
            .iter()
            .map(|(name, spec)| (name.clone(), Pool::new(spec)))
            .collect();
        Upstreams { pools }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// Send a request (head already prepared: hop-by-hop stripped, forwarding
    /// headers set) to one endpoint of the named pool.
    pub async fn send(
        &self,
        name: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Some(pool) = self.pools.get(name) else {
            return Err(UpstreamError::Protocol {
                upstream: name.to_owned(),
                endpoint: String::new(),
                message: "no such upstream".into(),
            });
        };
        let endpoint = pool.pick();
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Protocol {
            upstream: name.to_owned(),
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
        // The upstream always speaks HTTP/1.1 to us, whatever the client spoke.
        *request.version_mut() = http::Version::HTTP_11;

        let timeout = pool.spec.response_timeout;
        match tokio::time::timeout(timeout, pool.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is_connect() => Err(UpstreamError::Connect {
                upstream: name.to_owned(),
                endpoint: endpoint.to_string(),
                message: error_chain(&err),
            }),
            Ok(Err(err)) => Err(UpstreamError::Protocol {
                upstream: name.to_owned(),
                endpoint: endpoint.to_string(),
                message: error_chain(&err),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: name.to_owned(),
                endpoint: endpoint.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

impl Pool {
    fn new(spec: &UpstreamSpec) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(spec.max_idle_per_endpoint)
            // Keep the client's Host header as sent; do not derive it from
            // the endpoint address.
            .set_host(false)
            .build(connector);
        Pool {
            spec: spec.clone(),
            // Checked by config validation; skip anything unparsable.
            endpoints: spec
                .endpoints
                .iter()
                .filter_map(|e| e.parse().ok())
                .collect(),
            next: AtomicUsize::new(0),
            client,
        }
    }

    fn pick(&self) -> Authority {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints[n % self.endpoints.len()].clone()
    }
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
