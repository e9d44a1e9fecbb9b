//! Reading the request, the response head and property values.

use std::fmt;

pub use crate::bindings::weir::plugin::types::Request;
use crate::bindings::weir::plugin::types::{
    ConnectionInfo, Headers, HttpVersion, ResponseHead, Value,
};

/// The first value of a header, by case-insensitive name.
fn first<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Every value of a header, in arrival order.
fn all<'a>(headers: &'a Headers, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// A property by name.
fn property<'a>(properties: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value)
}

impl Request {
    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    /// Every value of a header, in arrival order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        all(&self.headers, name)
    }

    /// A property set by an earlier plugin (or by this one, in the response
    /// phase).
    pub fn property(&self, name: &str) -> Option<&Value> {
        property(&self.properties, name)
    }

    /// A property's text, if it is a `text` value.
    pub fn property_text(&self, name: &str) -> Option<&str> {
        self.property(name).and_then(Value::as_text)
    }

    /// A property's list, if it is a `texts` value.
    pub fn property_texts(&self, name: &str) -> Option<&[String]> {
        self.property(name).and_then(Value::as_texts)
    }

    /// The query's `name=value` pairs as sent: not percent-decoded, a
    /// parameter without `=` has the value `""`.
    pub fn query_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    }

    /// The first value of a query parameter, as sent (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query_pairs()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    /// The client's IP address as text; `None` unless the plugin's
    /// [`Info`](crate::Info) asked for the connection.
    pub fn client_ip(&self) -> Option<&str> {
        self.connection.as_ref().map(|c| c.client_ip.as_str())
    }

    /// A request to feed a plugin in tests; see [`crate::testing`].
    pub fn builder(method: &str, path: &str) -> crate::testing::RequestBuilder {
        crate::testing::request(method, path)
    }
}

impl ResponseHead {
    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    /// A property the request phase set (given when the plugin's
    /// [`Info`](crate::Info) asked for properties).
    pub fn property(&self, name: &str) -> Option<&Value> {
        property(&self.properties, name)
    }

    /// A property's text, if it is a `text` value.
    pub fn property_text(&self, name: &str) -> Option<&str> {
        self.property(name).and_then(Value::as_text)
    }

    /// A property's list, if it is a `texts` value.
    pub fn property_texts(&self, name: &str) -> Option<&[String]> {
        self.property(name).and_then(Value::as_texts)
    }

    /// Every value of a header, in arrival order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        all(&self.headers, name)
    }
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_texts(&self) -> Option<&[String]> {
        match self {
            Value::Texts(texts) => Some(texts),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_flag(&self) -> Option<bool> {
        match self {
            Value::Flag(b) => Some(*b),
            _ => None,
        }
    }
}

/// The value as one line of text, e.g. for a cache key: lists are joined
/// with `,`, bytes are shown as a list of numbers.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => f.write_str(text),
            Value::Integer(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::Bytes(bytes) => write!(f, "{bytes:?}"),
            Value::Texts(texts) => f.write_str(&texts.join(",")),
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_string())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Integer(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Flag(b)
    }
}

impl From<Vec<String>> for Value {
    fn from(texts: Vec<String>) -> Self {
        Value::Texts(texts)
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Bytes(bytes)
    }
}

impl Default for ConnectionInfo {
    /// A plain HTTP/1.1 connection from 127.0.0.1, for tests.
    fn default() -> Self {
        ConnectionInfo {
            client_ip: "127.0.0.1".to_string(),
            client_port: 40000,
            local_ip: "127.0.0.1".to_string(),
            local_port: 8080,
            http_version: HttpVersion::Http11,
            tls: None,
        }
    }
}
