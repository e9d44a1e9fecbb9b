//! Outbound HTTP for plugins (`http-client.fetch`): only to hosts the
//! plugin's `allow_hosts` lists, with a deadline and a response size cap, and
//! with errors that say which class of failure happened.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use super::bindings::weir::plugin::http_client::{FetchError, OutboundRequest, OutboundResponse};

/// Largest response body handed back to a plugin.
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Deadline when the plugin gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One plugin's outbound client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    allow: Arc<[String]>,
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(allow_hosts: &[String]) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Client {
            allow: allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            client: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    fn allowed(&self, uri: &Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let with_port = format!("{host}:{port}");
        self.allow.iter().any(|a| *a == host || *a == with_port)
    }

    pub async fn fetch(&self, req: OutboundRequest) -> Result<OutboundResponse, FetchError> {
        let uri: Uri = req
            .url
            .parse()
            .map_err(|e| FetchError::InvalidRequest(format!("url {:?}: {e}", req.url)))?;
        if !self.allowed(&uri) {
            return Err(FetchError::NotAllowed(format!(
                "{} is not in allow_hosts",
                uri.authority().map(|a| a.as_str()).unwrap_or("<no host>")
            )));
        }
        if uri.scheme_str() != Some("http") {
            return Err(FetchError::InvalidRequest(
                "only http:// callouts are supported by this build".into(),
            ));
        }
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| FetchError::InvalidRequest(format!("method {:?}", req.method)))?;
        let mut request = Request::new(Full::new(Bytes::from(req.body)));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        for (name, value) in req.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FetchError::InvalidRequest(format!("header name {name:?}")))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| FetchError::InvalidRequest(format!("header {name} value")))?;
            request.headers_mut().append(name, value);
        }
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(DEFAULT_TIMEOUT);

        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    FetchError::Connect(e.to_string())
                } else {
                    FetchError::Protocol(e.to_string())
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| FetchError::Protocol(format!("response body: {e}")))?
                .to_bytes();
            Ok(OutboundResponse {
                status: parts.status.as_u16(),
                headers: crate::plugin::convert::headers_to_wit(&parts.headers),
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}
