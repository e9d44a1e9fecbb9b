//! Unit-testing a plugin natively, with plain `cargo test`.
//!
//! The phases are ordinary functions of [`Plugin`], so a test parses a
//! config the way the host's `validate-config` does, builds a request, calls
//! the phase and looks at the answer. [`kv`](crate::kv),
//! [`clock`](crate::clock), [`log`](crate::log) and
//! [`metrics`](crate::metrics) work natively (an in-process store, a clock a
//! test can pin, stderr, nothing); end-to-end behaviour still belongs in the
//! e2e suite, against the real host.
//!
//! ```ignore
//! use weir_plugin::testing::{self, request};
//!
//! let config = testing::config::<Tagger>(r#"{"tag":"edge"}"#);
//! let req = request("GET", "/admin").header("x-env", "dev").build();
//! let action = Tagger::on_request(&config, &req);
//! testing::check_action(&action);
//! ```

use serde::de::DeserializeOwned;

use crate::bindings::weir::plugin::types::{ConnectionInfo, Headers, Properties};
use crate::{Action, Changes, HeaderOp, Info, Plugin, Request, Response, ResponseChanges, Value};

/// Builds a [`Request`] as the host would pass it; see [`request`].
#[derive(Clone)]
pub struct RequestBuilder {
    request: Request,
}

/// A request with this method and path (and, unless changed, authority
/// `example.com`, scheme `http`, client `127.0.0.1`, no headers, no body).
pub fn request(method: &str, path: &str) -> RequestBuilder {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (path, None),
    };
    RequestBuilder {
        request: Request {
            id: "test-request".to_string(),
            route: None,
            method: method.to_string(),
            scheme: "http".to_string(),
            authority: "example.com".to_string(),
            path: path.to_string(),
            query,
            headers: Headers::new(),
            connection: Some(ConnectionInfo::default()),
            upstream: None,
            properties: Properties::new(),
            body: None,
        },
    }
}

impl RequestBuilder {
    /// Add a header (the name is lower-cased, as the host does).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.request.headers.push((name, value.to_string()));
        self
    }

    /// The query string, without `?`.
    pub fn query(mut self, query: &str) -> Self {
        self.request.query = Some(query.to_string());
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.request.authority = authority.to_string();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.request.scheme = scheme.to_string();
        self
    }

    pub fn client_ip(mut self, ip: &str) -> Self {
        self.request
            .connection
            .get_or_insert_with(ConnectionInfo::default)
            .client_ip = ip.to_string();
        self
    }

    /// A property as if an earlier plugin had set it.
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        self.request.properties.retain(|(n, _)| n != name);
        self.request.properties.push((name.to_string(), value));
        self
    }

    pub fn upstream(mut self, name: &str) -> Self {
        self.request.upstream = Some(name.to_string());
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = Some(body.into());
        self
    }

    pub fn build(self) -> Request {
        self.request
    }
}

/// Deserialises a config type from JSON as [`export_plugin!`](crate::export_plugin)
/// does, without the plugin's [`Plugin::validate`]: for testing a config
/// type on its own.
pub fn parse<C: DeserializeOwned>(json: &str) -> Result<C, String> {
    crate::__private::from_json(json)
}

/// Parses a config as `validate-config` does; panics with the refusal
/// message if it is refused.
pub fn config<P: Plugin>(json: &str) -> P::Config {
    crate::__private::parse_config::<P>(json)
        .unwrap_or_else(|e| panic!("config refused: {e}\nconfig: {json}"))
}

/// What `validate-config` answers for this config text.
pub fn validate<P: Plugin>(json: &str) -> Result<Info, String> {
    crate::__private::validate_config::<P>(json)
}

/// Asserts the config is refused and returns the message, for checking
/// that it names the problem.
pub fn check_config_rejected<P: Plugin>(json: &str) -> String {
    match validate::<P>(json) {
        Ok(_) => panic!("config was accepted, expected a refusal: {json}"),
        Err(message) => {
            assert!(!message.is_empty(), "refusal without a message: {json}");
            message
        }
    }
}

/// Asserts that a valid config with one unknown key added at the top is
/// refused: typos must fail at load, not be silently ignored.
pub fn check_unknown_keys_rejected<P: Plugin>(valid_json: &str) {
    let mut value: serde_json::Value = serde_json::from_str(valid_json).expect("valid JSON");
    let object = value
        .as_object_mut()
        .expect("a plugin config is a JSON object");
    object.insert("no_such_setting".to_string(), serde_json::Value::Bool(true));
    let message = check_config_rejected::<P>(&value.to_string());
    assert!(
        message.contains("no_such_setting"),
        "the refusal should name the unknown key: {message}"
    );
}

/// Runs the contract on a plugin: the config is accepted and stays
/// accepted with its keys intact but not with an unknown one, and every
/// request gets a well-formed answer in each phase the plugin asked for
/// (with a plain `200` response in the response phase).
pub fn check_conformance<P: Plugin>(config_json: &str, requests: &[Request]) {
    let info = validate::<P>(config_json)
        .unwrap_or_else(|e| panic!("config refused: {e}\nconfig: {config_json}"));
    check_unknown_keys_rejected::<P>(config_json);
    let config = config::<P>(config_json);
    assert_eq!(
        P::info(&config),
        info,
        "info must depend on the config only"
    );
    for req in requests {
        let req = &as_seen(&info, req);
        let mut properties = req.properties.clone();
        if info.on_request {
            let action = P::on_request(&config, req);
            check_action(&action);
            if let Action::Continue(changes) = &action {
                assert!(
                    changes.body.is_none() || info.request_body,
                    "{} {}: replaced a body it did not ask for",
                    req.method,
                    req.path
                );
                for (name, value) in &changes.properties {
                    properties.retain(|(n, _)| n != name);
                    properties.push((name.clone(), value.clone()));
                }
            }
        }
        if info.on_response {
            let ok = response_as_seen(&info, req, 200, properties);
            let changes = P::on_response(&config, &ok);
            check_response_changes(&changes);
            assert!(
                changes.body.is_none() || info.response_body,
                "{} {}: replaced a response body it did not ask for",
                req.method,
                req.path
            );
        }
    }
}

/// Asserts a request-phase answer is one the host accepts: header names are
/// lower-case tokens the host does not own (framing and connection headers
/// such as `content-length`), values have no line breaks, a new path starts
/// with `/`, statuses are final (200–599) and property names are not empty.
pub fn check_action(action: &Action) {
    match action {
        Action::Continue(changes) => check_changes(changes),
        Action::Respond(response) => check_response(response),
    }
}

fn check_changes(changes: &Changes) {
    if let Some(path) = &changes.path {
        assert!(path.starts_with('/'), "new path {path:?} must start with /");
    }
    if let Some(query) = &changes.query {
        assert!(
            !query.starts_with('?'),
            "query {query:?} must not start with ?"
        );
    }
    if let Some(method) = &changes.method {
        assert!(is_token(method), "method {method:?} is not a token");
    }
    check_ops(&changes.headers);
    for (name, _) in &changes.properties {
        assert!(!name.is_empty(), "a property needs a name");
    }
}

fn check_response(response: &Response) {
    assert!(
        (200..=599).contains(&response.status),
        "status {} is not a final status (200-599)",
        response.status
    );
    for (name, value) in &response.headers {
        check_header(name, Some(value));
    }
}

/// Asserts a response-phase answer is one the host accepts.
pub fn check_response_changes(changes: &ResponseChanges) {
    if let Some(status) = changes.status {
        assert!(
            (200..=599).contains(&status),
            "status {status} is not a final status (200-599)"
        );
    }
    check_ops(&changes.headers);
}

fn check_ops(ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Set((name, value)) | HeaderOp::Append((name, value)) => {
                check_header(name, Some(value))
            }
            HeaderOp::Remove(name) => check_header(name, None),
        }
    }
}

fn check_header(name: &str, value: Option<&str>) {
    assert!(
        is_token(name) && !name.bytes().any(|b| b.is_ascii_uppercase()),
        "header name {name:?} must be a lower-case token"
    );
    assert!(
        !crate::HOST_OWNED_HEADERS.contains(&name),
        "header {name} is managed by the host"
    );
    if let Some(value) = value {
        assert!(
            !value.contains(['\r', '\n', '\0']),
            "header {name} has a line break or NUL in {value:?}"
        );
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Pins [`crate::clock::now_ms`] for this test's thread (`None` unpins).
#[cfg(not(target_arch = "wasm32"))]
pub fn set_now_ms(now: Option<u64>) {
    crate::clock::native::PINNED_MS.with(|pinned| pinned.set(now));
}

/// Empties this thread's stand-in KV store.
#[cfg(not(target_arch = "wasm32"))]
pub fn clear_kv() {
    crate::kv::native::clear();
}

/// `req` as the host gives it to a plugin declaring `info`: only the
/// headers it named, the connection and properties only if it asked. Feed
/// this to a phase in tests so a plugin that reads what it did not declare
/// fails there, not in production.
pub fn as_seen(info: &Info, req: &Request) -> Request {
    let mut seen = req.clone();
    seen.headers = interesting(&info.request_headers, &req.headers);
    if !info.connection {
        seen.connection = None;
    }
    if !info.properties {
        seen.properties.clear();
    }
    if !info.request_body {
        seen.body = None;
    }
    seen
}

/// A `status` response to `req` with a `content-type: text/plain` header,
/// as the host gives it to a plugin declaring `info` in the response phase:
/// `properties` are the request's as the request phase left them.
pub fn response_as_seen(
    info: &Info,
    req: &Request,
    status: u16,
    properties: Properties,
) -> crate::ResponseHead {
    let headers = vec![("content-type".to_string(), "text/plain".to_string())];
    crate::ResponseHead {
        request_id: req.id.clone(),
        status,
        headers: interesting(&info.response_headers, &headers),
        properties: if info.properties {
            properties
        } else {
            Properties::new()
        },
        body: None,
    }
}

fn interesting(interest: &crate::HeaderInterest, headers: &Headers) -> Headers {
    match interest {
        crate::HeaderInterest::All => headers.clone(),
        crate::HeaderInterest::Named(names) => names
            .iter()
            .flat_map(|name| {
                headers
                    .iter()
                    .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                    .cloned()
            })
            .collect(),
    }
}
