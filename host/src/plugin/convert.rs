//! Conversion between hyper's types and the WIT records, and validation of
//! everything a plugin hands back. A plugin's answer is checked completely
//! before any of it is applied, so a rejected answer changes nothing.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::bindings::types::{self, HeaderOp};

/// Headers a plugin may not set or remove: they describe the framing of the
/// message or the connection, which the host owns. Letting a plugin change
/// them would open request smuggling and response splitting.
const FORBIDDEN: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// Most header operations (or headers in a local response) one plugin
/// answer may carry. `http::HeaderMap` panics past 32 768 entries; a
/// plugin must not be able to reach that, and no real answer needs more.
pub const MAX_PLUGIN_HEADERS: usize = 1024;

/// A header list for the guest. Invalid UTF-8 is replaced, see the WIT.
pub fn headers_to_wit(headers: &HeaderMap) -> types::Headers {
    headers
        .iter()
        .map(|(name, value)| header_to_wit(name, value))
        .collect()
}

/// One header for the guest.
pub fn header_to_wit(name: &HeaderName, value: &HeaderValue) -> (String, String) {
    (
        name.as_str().to_owned(),
        String::from_utf8_lossy(value.as_bytes()).into_owned(),
    )
}

/// A header operation the host has checked.
pub enum CheckedOp {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    if FORBIDDEN.contains(&parsed.as_str()) {
        return Err(format!("header {parsed} is managed by the host"));
    }
    Ok(parsed)
}

fn header_value(name: &HeaderName, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))
}

/// Check a list of header operations.
pub fn check_header_ops(ops: Vec<HeaderOp>) -> Result<Vec<CheckedOp>, String> {
    if ops.len() > MAX_PLUGIN_HEADERS {
        return Err(format!(
            "{} header operations (at most {MAX_PLUGIN_HEADERS})",
            ops.len()
        ));
    }
    ops.into_iter()
        .map(|op| match op {
            HeaderOp::Set((name, value)) => {
                let name = header_name(&name)?;
                let value = header_value(&name, &value)?;
                Ok(CheckedOp::Set(name, value))
            }
            HeaderOp::Append((name, value)) => {
                let name = header_name(&name)?;
                let value = header_value(&name, &value)?;
                Ok(CheckedOp::Append(name, value))
            }
            HeaderOp::Remove(name) => Ok(CheckedOp::Remove(header_name(&name)?)),
        })
        .collect()
}

/// Apply checked operations in order. Fails (instead of panicking) if the
/// header map would outgrow what `http` can hold.
pub fn apply_header_ops(headers: &mut HeaderMap, ops: Vec<CheckedOp>) -> Result<(), String> {
    for op in ops {
        match op {
            CheckedOp::Set(name, value) => {
                headers
                    .try_insert(name, value)
                    .map_err(|_| "too many headers".to_owned())?;
            }
            CheckedOp::Append(name, value) => {
                headers
                    .try_append(name, value)
                    .map_err(|_| "too many headers".to_owned())?;
            }
            CheckedOp::Remove(name) => {
                headers.remove(name);
            }
        }
    }
    Ok(())
}

/// Check a full header list (a plugin's local response).
pub fn check_header_list(list: types::Headers) -> Result<HeaderMap, String> {
    if list.len() > MAX_PLUGIN_HEADERS {
        return Err(format!(
            "{} headers in a local response (at most {MAX_PLUGIN_HEADERS})",
            list.len()
        ));
    }
    let mut headers = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let name = header_name(&name)?;
        let value = header_value(&name, &value)?;
        headers
            .try_append(name, value)
            .map_err(|_| "too many headers".to_owned())?;
    }
    Ok(headers)
}

/// Check a status code from a plugin.
pub fn check_status(status: u16) -> Result<http::StatusCode, String> {
    match http::StatusCode::from_u16(status) {
        Ok(code) if (200..=599).contains(&status) => Ok(code),
        _ => Err(format!("status {status} is not a final status (200-599)")),
    }
}

/// Check a path + query rewrite and build the new path-and-query.
pub fn check_path_and_query(
    path: &str,
    query: Option<&str>,
) -> Result<http::uri::PathAndQuery, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    // A '?' or '#' in the path would silently move part of it into the
    // query (or fragment) the upstream sees: found by fuzzing.
    if path.contains(['?', '#']) {
        return Err(format!(
            "path {path:?} must not contain '?' or '#' (set the query separately)"
        ));
    }
    if query.is_some_and(|q| q.contains('#')) {
        return Err("query must not contain '#'".into());
    }
    let text = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    let parsed: http::uri::PathAndQuery = text
        .parse()
        .map_err(|_| format!("invalid path or query {text:?}"))?;
    if parsed.as_str() != text {
        return Err(format!("invalid path or query {text:?}"));
    }
    Ok(parsed)
}

/// Check a method from a plugin.
pub fn check_method(method: &str) -> Result<http::Method, String> {
    http::Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_mark_in_the_path_cannot_move_into_the_query() {
        assert!(check_path_and_query("/a?p", None).is_err());
        assert!(check_path_and_query("/admin?x", Some("y=1")).is_err());
        assert!(check_path_and_query("/a#frag", None).is_err());
        let pq = check_path_and_query("/a/b", Some("x=1&y=2")).unwrap();
        assert_eq!((pq.path(), pq.query()), ("/a/b", Some("x=1&y=2")));
        assert_eq!(check_path_and_query("/a", Some("")).unwrap().query(), None);
    }

    #[test]
    fn framing_headers_and_injection_are_refused() {
        for name in ["content-length", "Transfer-Encoding", "host", "connection"] {
            let op = HeaderOp::Set((name.into(), "1".into()));
            assert!(check_header_ops(vec![op]).is_err(), "{name}");
        }
        let op = HeaderOp::Set(("x-ok".into(), "a\r\nx-injected: 1".into()));
        assert!(check_header_ops(vec![op]).is_err());
        let many = (0..MAX_PLUGIN_HEADERS + 1)
            .map(|i| HeaderOp::Append((format!("x-{i}"), "v".into())))
            .collect();
        assert!(check_header_ops(many).is_err());
    }
}
