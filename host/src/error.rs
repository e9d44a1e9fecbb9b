//! The request-path error type and the **one** function that turns an error
//! into a response. Every synthetic error response Weir sends is built here,
//! so status codes are never chosen at call sites and bodies never leak
//! internals: they name the failure class only.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::plugin::PluginError;
use crate::upstream::UpstreamError;

/// Why a request could not be answered normally.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("request body exceeds the configured limit of {limit} bytes")]
    RequestBodyTooLarge { limit: u64 },
    #[error("request body could not be read: {0}")]
    RequestBody(String),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("refused path: {0}")]
    Path(#[from] crate::canonical::PathError),
    #[error("upstream response too large to buffer for a plugin")]
    ResponseTooLargeForPlugin,
    #[error("no upstream chosen for this request and no default_upstream configured")]
    NoUpstream,
    #[error("plugin chose unknown upstream {0:?}")]
    UnknownUpstream(String),
    /// The request came through more plugin callouts than allowed: a
    /// plugin is calling Weir (or another Weir calling back) in a loop.
    #[error("request is {hops} plugin callouts deep; at most {max} are allowed")]
    LoopDetected { hops: u64, max: u8 },
}

impl ProxyError {
    /// The status code and the short, public failure class.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Upstream(UpstreamError::Connect { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream connect failed")
            }
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
            ProxyError::Upstream(UpstreamError::Saturated { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connections exhausted",
            ),
            ProxyError::Upstream(UpstreamError::Protocol { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream sent an invalid response")
            }
            ProxyError::Upstream(UpstreamError::RequestBodyTooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            ProxyError::Upstream(UpstreamError::RequestBody { .. }) => {
                (StatusCode::BAD_REQUEST, "request body unreadable")
            }
            ProxyError::Plugin(err) if err.is_overload() => {
                (StatusCode::SERVICE_UNAVAILABLE, "plugin capacity exhausted")
            }
            ProxyError::Plugin(err) if err.is_timeout() => {
                (StatusCode::SERVICE_UNAVAILABLE, "plugin timed out")
            }
            ProxyError::Plugin(_) => (StatusCode::INTERNAL_SERVER_ERROR, "plugin failed"),
            ProxyError::RequestBodyTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            ProxyError::RequestBody(_) => (StatusCode::BAD_REQUEST, "request body unreadable"),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad request"),
            ProxyError::Path(err) => (StatusCode::BAD_REQUEST, err.as_str()),
            ProxyError::ResponseTooLargeForPlugin => {
                (StatusCode::BAD_GATEWAY, "upstream response too large")
            }
            ProxyError::NoUpstream | ProxyError::UnknownUpstream(_) => {
                (StatusCode::BAD_GATEWAY, "no upstream for this request")
            }
            ProxyError::LoopDetected { .. } => (StatusCode::LOOP_DETECTED, "loop detected"),
        }
    }

    /// The synthetic response sent to the client for this error.
    pub fn to_response(&self) -> Response<Body> {
        let (status, class) = self.status();
        let mut response = plain_response(status, class);
        if self.closes_connection() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// After a malformed or oversized request the rest of the connection's
    /// byte stream cannot be trusted: close it.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::RequestBodyTooLarge { .. }
                | ProxyError::RequestBody(_)
                | ProxyError::Upstream(UpstreamError::RequestBodyTooLarge { .. })
                | ProxyError::Upstream(UpstreamError::RequestBody { .. })
        )
    }
}

/// `308 Permanent Redirect` to the canonical spelling of an ambiguous path
/// (`[proxy] ambiguous_paths = "redirect"`). The method and body are kept
/// by the client, unlike 301.
pub fn redirect_response(location: &str) -> Response<Body> {
    let mut response = plain_response(StatusCode::PERMANENT_REDIRECT, "canonical path");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A short `text/plain` response: `"<code> <reason>: <class>\n"`.
pub fn plain_response(status: StatusCode, class: &str) -> Response<Body> {
    let text = format!(
        "{} {}: {class}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("error")
    );
    let mut response = Response::new(body::full(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
