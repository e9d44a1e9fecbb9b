//! Building what a plugin answers: request changes, local responses,
//! response changes, cache directives and the load-time plugin info.
//!
//! Every builder starts from "unchanged" and each call adds one change, so
//! what a plugin does not mention is forwarded byte for byte.

use serde::Serialize;

use crate::bindings::weir::plugin::types::{
    CacheDirectives, HeaderInterest, HeaderOp, PluginInfo as Info, RequestAction as Action,
    RequestChanges as Changes, Response, ResponseChanges, Value,
};

impl Action {
    /// Go on down the chain; add changes with the [`Changes`] builder and
    /// finish with `.into()`.
    pub fn next() -> Changes {
        Changes::default()
    }

    /// Stop the chain and answer the client; build the response with the
    /// [`Response`] builder and finish with `.into()`.
    pub fn respond(status: u16) -> Response {
        Response::new(status)
    }
}

impl From<Changes> for Action {
    fn from(changes: Changes) -> Self {
        Action::Continue(changes)
    }
}

impl From<Response> for Action {
    fn from(response: Response) -> Self {
        Action::Respond(response)
    }
}

// These types are generated, and `additional_derives` would ask `Default`
// of variants too, so the `Default` impls are written out.
#[allow(clippy::derivable_impls)]
impl Default for Changes {
    fn default() -> Self {
        Changes {
            method: None,
            path: None,
            query: None,
            headers: Vec::new(),
            upstream: None,
            properties: Vec::new(),
            cache: None,
            body: None,
        }
    }
}

fn op(name: impl Into<String>, value: impl Into<String>) -> (String, String) {
    // The host's header lists are lower-case; a plugin's own names need not be.
    (name.into().to_ascii_lowercase(), value.into())
}

impl Changes {
    /// Replace every value of a header with this one.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Set(op(name, value)));
        self
    }

    /// Add one more value, keeping existing ones.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Append(op(name, value)));
        self
    }

    /// Remove every value of a header.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.headers
            .push(HeaderOp::Remove(name.into().to_ascii_lowercase()));
        self
    }

    /// Add header changes already built, in order.
    pub fn header_ops(mut self, ops: impl IntoIterator<Item = HeaderOp>) -> Self {
        self.headers.extend(ops);
        self
    }

    /// Set a property for the plugins after this one (same name replaces).
    pub fn set_property(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Forward to this upstream pool.
    pub fn upstream(mut self, name: impl Into<String>) -> Self {
        self.upstream = Some(name.into());
        self
    }

    /// A new path; must start with `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// A new query string without `?`; `""` removes the query.
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// How the response cache treats this request.
    pub fn cache(mut self, cache: CacheDirectives) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Replace the request body (only when the plugin asked for it).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Add a header value (a name may repeat).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(op(name, value));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A `text/plain` body.
    pub fn text(self, text: impl Into<String>) -> Self {
        self.header("content-type", "text/plain; charset=utf-8")
            .body(text.into())
    }

    /// An `application/json` body.
    pub fn json(self, body: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
}

/// The JSON error answer Weir's samples share:
/// `{"error":"<code>","detail":"<detail>"}`, not to be stored by caches.
/// `code` is a stable machine-readable word, `detail` a short human phrase;
/// neither should reveal internals.
pub fn json_error(status: u16, code: &str, detail: &str) -> Response {
    let body = ErrorBody {
        error: code,
        detail,
    };
    let body = serde_json::to_vec(&body).expect("two strings always serialise");
    Response::new(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(body)
}

/// A refusal: [`json_error`] with the status's own code (`unauthorized`,
/// `forbidden`, `not_found`, `too_many_requests`, else `denied`).
pub fn deny(status: u16, detail: &str) -> Response {
    let code = match status {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        429 => "too_many_requests",
        _ => "denied",
    };
    json_error(status, code, detail)
}

#[allow(clippy::derivable_impls)]
impl Default for ResponseChanges {
    fn default() -> Self {
        ResponseChanges {
            status: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

impl ResponseChanges {
    /// No changes; add them with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Replace every value of a header with this one.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Set(op(name, value)));
        self
    }

    /// Add one more value, keeping existing ones.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Append(op(name, value)));
        self
    }

    /// Remove every value of a header.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.headers
            .push(HeaderOp::Remove(name.into().to_ascii_lowercase()));
        self
    }

    /// Replace the response body (only when the plugin asked for it).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

#[allow(clippy::derivable_impls)]
impl Default for CacheDirectives {
    fn default() -> Self {
        CacheDirectives {
            bypass: false,
            ttl_cap: None,
            extra_key: Vec::new(),
            share_authenticated: false,
        }
    }
}

impl CacheDirectives {
    /// Neither look up nor store this request's response.
    pub fn bypass() -> Self {
        CacheDirectives {
            bypass: true,
            ..Self::default()
        }
    }

    /// Cap the freshness lifetime of a stored response.
    pub fn ttl_cap(mut self, seconds: u32) -> Self {
        self.ttl_cap = Some(seconds);
        self
    }

    /// Mix one more part into the cache key.
    pub fn key_part(mut self, part: impl Into<String>) -> Self {
        self.extra_key.push(part.into());
        self
    }

    /// Allow sharing responses to requests with `Authorization`, where the
    /// operator's config permits it.
    pub fn share_authenticated(mut self, share: bool) -> Self {
        self.share_authenticated = share;
        self
    }
}

impl Info {
    /// Call `on-request` only.
    ///
    /// Every header, the connection and the properties are given until
    /// narrowed with [`Info::request_headers`], [`Info::response_headers`],
    /// [`Info::connection`] and [`Info::properties`]: what a plugin does
    /// not read, it should not be sent (each value costs a copy into the
    /// plugin, per call).
    pub fn request_phase() -> Self {
        Info {
            on_request: true,
            on_response: false,
            request_body: false,
            response_body: false,
            request_headers: HeaderInterest::All,
            response_headers: HeaderInterest::All,
            connection: true,
            properties: true,
        }
    }

    /// Give the request phase only these request headers (any case).
    pub fn request_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request_headers = HeaderInterest::Named(names.into_iter().map(Into::into).collect());
        self
    }

    /// Give the response phase only these response headers (any case).
    pub fn response_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.response_headers = HeaderInterest::Named(names.into_iter().map(Into::into).collect());
        self
    }

    /// Whether `Request::connection` is filled in.
    pub fn connection(mut self, yes: bool) -> Self {
        self.connection = yes;
        self
    }

    /// Whether the properties are passed (both phases).
    pub fn properties(mut self, yes: bool) -> Self {
        self.properties = yes;
        self
    }

    /// Call `on-response` only.
    pub fn response_phase() -> Self {
        Info {
            on_request: false,
            on_response: true,
            ..Self::request_phase()
        }
    }

    /// Call both phases.
    pub fn both_phases() -> Self {
        Info {
            on_response: true,
            ..Self::request_phase()
        }
    }

    /// Also call `on-response` when `yes`.
    pub fn with_response_phase(mut self, yes: bool) -> Self {
        self.on_response = yes;
        self
    }

    /// Buffer the request body and pass it in.
    pub fn with_request_body(mut self) -> Self {
        self.request_body = true;
        self
    }

    /// Buffer the response body and pass it in.
    pub fn with_response_body(mut self) -> Self {
        self.response_body = true;
        self
    }
}
