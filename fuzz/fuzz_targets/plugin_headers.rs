//! The host's checks on a plugin's answer (header operations, a local
//! response's header list, status, method, path and query), fed arbitrary
//! values. Beyond "never panics": whatever is accepted is valid `http`, never
//! touches a header the host owns, carries no CR/LF/NUL, and means exactly
//! what the plugin asked for.

#![no_main]


use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weir::plugin::bindings::types::HeaderOp;
use weir::plugin::convert::{
    apply_header_ops, check_header_list, check_header_ops, check_method, check_path_and_query,
    check_status, CheckedOp, MAX_PLUGIN_HEADERS,
};

/// The framing and connection headers the host owns (kept in step with
/// `FORBIDDEN` in host/src/plugin/convert.rs by hand, on purpose: the
/// fuzzer checks the host's list against this one).
const HOST_OWNED: [&str; 10] = [
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

/// Mirrors the WIT `header-op`.
#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Set(String, String),
    Append(String, String),
    Remove(String),
}

impl Op {
    fn name(&self) -> &str {
        match self {
            Op::Set(name, _) | Op::Append(name, _) | Op::Remove(name) => name,
        }
    }

    fn to_wit(&self) -> HeaderOp {
        match self.clone() {
            Op::Set(name, value) => HeaderOp::Set((name, value)),
            Op::Append(name, value) => HeaderOp::Append((name, value)),
            Op::Remove(name) => HeaderOp::Remove(name),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    list: Vec<(String, String)>,
    status: u16,
    method: String,
    path: String,
    query: Option<String>,
}

fn host_owned(name: &str) -> bool {
    HOST_OWNED
        .iter()
        .any(|owned| owned.eq_ignore_ascii_case(name))
}

fn assert_clean_value(value: &HeaderValue) {
    assert!(
        !value
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "accepted value with CR/LF/NUL: {value:?}"
    );
}

/// The name and value as the plugin sent them, checked against what the
/// host made of them.
fn assert_same(name: &HeaderName, value: Option<&HeaderValue>, sent: &Op) {
    assert!(
        !host_owned(name.as_str()),
        "accepted host-owned header {name}"
    );
    assert!(name.as_str().eq_ignore_ascii_case(sent.name()));
    if let (Some(value), Op::Set(_, text) | Op::Append(_, text)) = (value, sent) {
        assert_eq!(value.as_bytes(), text.as_bytes());
        assert_clean_value(value);
    }
}

/// A request as it might reach the chain, with headers the host owns.
fn base_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("example.com"));
    headers.insert("content-length", HeaderValue::from_static("5"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    headers
}

fn header_ops(ops: &[Op]) {
    let wit: Vec<HeaderOp> = ops.iter().map(Op::to_wit).collect();
    let checked = match check_header_ops(wit) {
        Ok(checked) => checked,
        Err(_) => {
            let any_bad = ops.len() > MAX_PLUGIN_HEADERS
                || ops.iter().any(|op| {
                    host_owned(op.name()) || HeaderName::from_bytes(op.name().as_bytes()).is_err()
                })
                || ops.iter().any(|op| match op {
                    Op::Set(_, v) | Op::Append(_, v) => HeaderValue::from_str(v).is_err(),
                    Op::Remove(_) => false,
                });
            assert!(any_bad, "rejected valid ops {ops:?}");
            return;
        }
    };
    assert_eq!(checked.len(), ops.len());
    assert!(
        !ops.iter().any(|op| host_owned(op.name())),
        "accepted ops touching a host-owned header: {ops:?}"
    );

    // A simple model of what the ops mean: (name, values) in order.
    let mut model: Vec<(HeaderName, Vec<HeaderValue>)> = Vec::new();
    let before = base_headers();
    for (name, value) in &before {
        match model.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.clone()),
            None => model.push((name.clone(), vec![value.clone()])),
        }
    }
    for (op, sent) in checked.iter().zip(ops) {
        match op {
            CheckedOp::Set(name, value) => {
                assert!(matches!(sent, Op::Set(..)));
                assert_same(name, Some(value), sent);
                model.retain(|(n, _)| n != name);
                model.push((name.clone(), vec![value.clone()]));
            }
            CheckedOp::Append(name, value) => {
                assert!(matches!(sent, Op::Append(..)));
                assert_same(name, Some(value), sent);
                match model.iter_mut().find(|(n, _)| n == name) {
                    Some((_, values)) => values.push(value.clone()),
                    None => model.push((name.clone(), vec![value.clone()])),
                }
            }
            CheckedOp::Remove(name) => {
                assert!(matches!(sent, Op::Remove(..)));
                assert_same(name, None, sent);
                model.retain(|(n, _)| n != name);
            }
        }
    }

    let mut headers = before.clone();
    apply_header_ops(&mut headers, checked).expect("at most MAX_PLUGIN_HEADERS ops fit");
    for owned in ["host", "content-length", "connection"] {
        assert_eq!(
            headers.get_all(owned).iter().collect::<Vec<_>>(),
            before.get_all(owned).iter().collect::<Vec<_>>()
        );
    }
    let model_len: usize = model.iter().map(|(_, values)| values.len()).sum();
    assert_eq!(headers.len(), model_len, "applied {ops:?}");
    for (name, values) in &model {
        let got: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        let want: Vec<&HeaderValue> = values.iter().collect();
        assert_eq!(got, want, "header {name} after {ops:?}");
    }
    for value in headers.values() {
        assert_clean_value(value);
    }
}

fn header_list(list: &[(String, String)]) {
    let Ok(headers) = check_header_list(list.to_vec()) else {
        return;
    };
    assert!(list.len() <= MAX_PLUGIN_HEADERS);
    assert_eq!(headers.len(), list.len());
    for (name, value) in &headers {
        assert!(
            !host_owned(name.as_str()),
            "accepted host-owned header {name}"
        );
        assert_clean_value(value);
    }
    // Same headers, same order per name.
    for (name, value) in list {
        let got: Vec<&[u8]> = headers
            .get_all(name.as_str())
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let want: Vec<&[u8]> = list
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
            .collect();
        assert_eq!(got, want, "header {name} = {value:?}");
    }
}

fn status(code: u16) {
    match check_status(code) {
        Ok(status) => {
            assert!((200..=599).contains(&code));
            assert_eq!(status.as_u16(), code);
        }
        Err(_) => assert!(!(200..=599).contains(&code)),
    }
}

fn method(text: &str) {
    if let Ok(method) = check_method(text) {
        assert_eq!(method.as_str(), text);
        assert!(!text.is_empty());
        assert!(
            !text
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
            "accepted method {text:?}"
        );
    }
}

fn path_and_query(path: &str, query: Option<&str>) {
    let Ok(pq) = check_path_and_query(path, query) else {
        return;
    };
    let text = pq.as_str();
    assert!(text.starts_with('/'), "{text:?}");
    assert!(
        !text
            .bytes()
            .any(|b| matches!(b, b'\r' | b'\n' | 0 | b' ' | b'#')),
        "{text:?}"
    );
    // Round trip: the text parses back to the same thing.
    let again: http::uri::PathAndQuery = text.parse().expect("accepted text parses again");
    assert_eq!(again, pq);
    assert_eq!(again.as_str(), text);
    // The host then builds a URI from it (chain.rs); that must not fail
    // after the answer was accepted.
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq.clone());
    let uri = http::Uri::from_parts(parts).expect("accepted path builds a URI");
    assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some(text));
    // And it means what the plugin asked for: this path, this query.
    // (A '?' inside `path` used to be taken as the start of the query; the
    // host now refuses such a path — see fuzz/README.md, "Findings".)
    assert_eq!(pq.path(), path, "path {path:?} query {query:?}");
    let query = query.filter(|q| !q.is_empty());
    assert_eq!(pq.query(), query, "path {path:?} query {query:?}");
}

fuzz_target!(|input: Input| {
    header_ops(&input.ops);
    header_list(&input.list);
    status(input.status);
    method(&input.method);
    path_and_query(&input.path, input.query.as_deref());
});
