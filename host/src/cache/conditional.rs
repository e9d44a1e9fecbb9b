//! A client's own conditional request (`If-None-Match`,
//! `If-Modified-Since`) answered from a fresh stored response (RFC 9111
//! §4.3.2, RFC 9110 §13.1): a matching one gets a 304 from the cache, and
//! the conditional is not forwarded on a miss, so that what is stored is
//! the full response (a client's 304 is never stored in its place).

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

/// What the client asked to be told only if it changed.
#[derive(Debug, Clone, Default)]
pub struct ClientConditional {
    if_none_match: Option<String>,
    if_modified_since: Option<SystemTime>,
}

impl ClientConditional {
    /// Take the conditionals out of a request about to be forwarded.
    pub fn take(headers: &mut HeaderMap) -> ClientConditional {
        let if_none_match = headers
            .remove(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok().map(str::to_owned));
        let if_modified_since = headers.remove(header::IF_MODIFIED_SINCE).and_then(|v| {
            v.to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
        });
        ClientConditional {
            if_none_match,
            if_modified_since,
        }
    }

    /// Whether a 200 with these headers would be "not modified" for the
    /// client. `If-None-Match` decides when present (weak comparison);
    /// else `If-Modified-Since` against `Last-Modified`, or `Date`.
    pub fn not_modified(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status != StatusCode::OK {
            return false;
        }
        if let Some(wanted) = &self.if_none_match {
            let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let etag = weak(etag);
            return wanted
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || weak(tag) == etag);
        }
        if let Some(since) = self.if_modified_since {
            let modified = [header::LAST_MODIFIED, header::DATE]
                .iter()
                .find_map(|name| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok());
            return modified.is_some_and(|modified| modified <= since);
        }
        false
    }
}

/// An entity tag without its weakness marker (weak comparison).
fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The headers of a 304 made from a 200's (RFC 9110 §15.4.5): those a
/// cache needs to update its copy, no representation metadata.
pub fn not_modified_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
        header::AGE,
    ] {
        for value in headers.get_all(&name) {
            kept.append(name.clone(), HeaderValue::clone(value));
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditional(pairs: &[(&'static str, &'static str)]) -> ClientConditional {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        let taken = ClientConditional::take(&mut headers);
        assert!(headers.is_empty());
        taken
    }

    fn stored(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn etags_compare_weakly_and_win_over_dates() {
        let headers = stored(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(conditional(&[("if-none-match", "\"v0\", \"v1\"")])
            .not_modified(StatusCode::OK, &headers));
        assert!(conditional(&[("if-none-match", "*")]).not_modified(StatusCode::OK, &headers));
        assert!(!conditional(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ])
        .not_modified(StatusCode::OK, &headers));
        assert!(!conditional(&[("if-none-match", "\"v1\"")])
            .not_modified(StatusCode::NOT_FOUND, &headers));
    }

    #[test]
    fn modification_dates_compare_with_last_modified_then_date() {
        let headers = stored(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let later = conditional(&[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]);
        let earlier = conditional(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]);
        assert!(later.not_modified(StatusCode::OK, &headers));
        assert!(!earlier.not_modified(StatusCode::OK, &headers));
        let dated = stored(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(later.not_modified(StatusCode::OK, &dated));
        assert!(!later.not_modified(StatusCode::OK, &HeaderMap::new()));
    }
}
