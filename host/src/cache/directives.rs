//! Cache-Control as this cache reads it, before `http-cache-semantics`
//! judges a response: directive names in any case (`NO-CACHE`), quoted
//! field lists (`no-cache="set-cookie, x-a"`), targeted fields (RFC 9213:
//! `CDN-Cache-Control` and the operator's own, which take precedence over
//! `Cache-Control` for this cache and are not forwarded), timestamps with
//! stray whitespace, and an `Age` with trailing garbage. The crate splits directives on every comma and
//! compares names case-sensitively; these are handed to it normalised.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `CDN-Cache-Control` (RFC 9213), for every CDN-like cache.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// One directive: its name lower-cased, its value unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: Option<String>,
}

/// Parse Cache-Control field values, respecting quoted strings.
pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Vec<Directive> {
    let mut directives = Vec::new();
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while !rest.is_empty() {
            // Up to the next comma outside quotes.
            let mut in_quotes = false;
            let mut escaped = false;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if in_quotes => escaped = true,
                    '"' => in_quotes = !in_quotes,
                    ',' if !in_quotes => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let part = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("");
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                None => (part, None),
            };
            if !name.is_empty() {
                directives.push(Directive {
                    name: name.to_ascii_lowercase(),
                    value,
                });
            }
        }
    }
    directives
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped {
                    out.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => value.to_owned(),
    }
}

/// The field value for these directives (values quoted when they need it).
pub fn format(directives: &[Directive]) -> Option<HeaderValue> {
    let mut out = String::new();
    for directive in directives {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&directive.name);
        if let Some(value) = &directive.value {
            out.push('=');
            if !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                out.push_str(value);
            } else {
                out.push('"');
                out.push_str(&value.replace('\\', "\\\\").replace('"', "\\\""));
                out.push('"');
            }
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// A response head as the cache judges and stores it.
pub struct Prepared {
    /// What `http-cache-semantics` is given: the applicable directives
    /// (a targeted field's when present) under `Cache-Control`, names
    /// lower-cased, field-qualified `no-cache`/`private` resolved, dates
    /// with their whitespace normalised.
    pub policy_headers: HeaderMap,
    /// What is stored and sent to clients: the origin's headers without
    /// targeted fields, nor the fields `no-cache="…"`/`private="…"` name.
    pub client_headers: HeaderMap,
}

/// Prepare a response's headers; `targeted` is the operator's own field
/// (`[cache] targeted_field`), which wins over `CDN-Cache-Control`, which
/// wins over `Cache-Control` (RFC 9213 §2.2).
pub fn prepare(headers: &HeaderMap, targeted: &HeaderName) -> Prepared {
    let cdn = CDN_CACHE_CONTROL;
    let source = [targeted, &cdn]
        .into_iter()
        .find(|name| headers.contains_key(*name));
    let mut directives = match source {
        Some(name) => parse(headers.get_all(name)),
        None => parse(headers.get_all(header::CACHE_CONTROL)),
    };
    // `no-cache="a, b"` / `private="a, b"`: the response may be stored and
    // served without those fields (RFC 9111 §5.2.2.4, §5.2.2.7).
    let mut strip: Vec<HeaderName> = Vec::new();
    directives.retain(|d| match (&d.name[..], &d.value) {
        ("no-cache" | "private", Some(fields)) => {
            strip.extend(
                fields
                    .split(',')
                    .filter_map(|f| HeaderName::from_bytes(f.trim().as_bytes()).ok()),
            );
            false
        }
        _ => true,
    });
    let mut client_headers = headers.clone();
    strip_targeted(&mut client_headers, targeted);
    for name in &strip {
        client_headers.remove(name);
    }
    let mut policy_headers = client_headers.clone();
    policy_headers.remove(header::CACHE_CONTROL);
    if source.is_some() {
        // A targeted field replaces Cache-Control and Expires for us.
        policy_headers.remove(header::EXPIRES);
    }
    if let Some(value) = format(&directives).filter(|_| !directives.is_empty()) {
        policy_headers.insert(header::CACHE_CONTROL, value);
    }
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        if let Some(value) = policy_headers.get(&name).and_then(|v| v.to_str().ok()) {
            let squeezed = value.split_whitespace().collect::<Vec<_>>().join(" ");
            if squeezed != value {
                if let Ok(value) = HeaderValue::from_str(&squeezed) {
                    policy_headers.insert(name, value);
                }
            }
        }
    }
    // Age is delta-seconds; read a value with trailing garbage by its
    // leading digits (`3600abc` is 3600), and drop one without any.
    if let Some(age) = policy_headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
    {
        let digits: String = age
            .trim()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if digits.is_empty() {
            policy_headers.remove(header::AGE);
        } else if digits != age {
            if let Ok(value) = HeaderValue::from_str(&digits) {
                policy_headers.insert(header::AGE, value);
            }
        }
    }
    Prepared {
        policy_headers,
        client_headers,
    }
}

/// How long past freshness a response may still be served (RFC 5861):
/// `stale-while-revalidate` (while one revalidation runs in the
/// background) and `stale-if-error` (when the upstream fails), from the
/// applicable directives of [`Prepared::policy_headers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleWindows {
    pub while_revalidate: Option<std::time::Duration>,
    pub if_error: Option<std::time::Duration>,
}

pub fn stale_windows(policy_headers: &HeaderMap) -> StaleWindows {
    let mut windows = StaleWindows::default();
    for directive in parse(policy_headers.get_all(header::CACHE_CONTROL)) {
        let seconds = directive
            .value
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        match directive.name.as_str() {
            "stale-while-revalidate" => windows.while_revalidate = seconds,
            "stale-if-error" => windows.if_error = seconds,
            _ => {}
        }
    }
    windows
}

/// Remove the targeted fields: they are for this cache (and CDNs), not for
/// the client.
pub fn strip_targeted(headers: &mut HeaderMap, targeted: &HeaderName) {
    headers.remove(targeted);
    headers.remove(CDN_CACHE_CONTROL);
}

/// A request's Cache-Control and Pragma with directive names lower-cased.
pub fn normalise_request(headers: &mut HeaderMap) {
    if headers.contains_key(header::CACHE_CONTROL) {
        let directives = parse(headers.get_all(header::CACHE_CONTROL));
        match format(&directives) {
            Some(value) if !directives.is_empty() => {
                headers.insert(header::CACHE_CONTROL, value);
            }
            _ => {
                headers.remove(header::CACHE_CONTROL);
            }
        }
    }
    if let Some(pragma) = headers.get(header::PRAGMA).and_then(|v| v.to_str().ok()) {
        let lower = pragma.to_ascii_lowercase();
        if lower != pragma {
            if let Ok(value) = HeaderValue::from_str(&lower) {
                headers.insert(header::PRAGMA, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn names_are_lowered_and_quoted_lists_kept_whole() {
        let map = headers(&[("cache-control", "NO-CACHE=\"Set-Cookie, X-A\", Max-Age=60")]);
        let parsed = parse(map.get_all("cache-control"));
        assert_eq!(
            parsed,
            [
                Directive {
                    name: "no-cache".into(),
                    value: Some("Set-Cookie, X-A".into())
                },
                Directive {
                    name: "max-age".into(),
                    value: Some("60".into())
                },
            ]
        );
    }

    #[test]
    fn a_targeted_field_wins_and_is_not_forwarded() {
        let weir = HeaderName::from_static("weir-cache-control");
        let map = headers(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=30"),
            ("weir-cache-control", "max-age=600"),
            ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ]);
        let prepared = prepare(&map, &weir);
        assert_eq!(prepared.policy_headers["cache-control"], "max-age=600");
        assert!(!prepared.policy_headers.contains_key("expires"));
        assert_eq!(prepared.client_headers["cache-control"], "no-store");
        assert!(!prepared.client_headers.contains_key("cdn-cache-control"));
        assert!(!prepared.client_headers.contains_key("weir-cache-control"));
        let cdn_only = headers(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=30"),
        ]);
        assert_eq!(
            prepare(&cdn_only, &weir).policy_headers["cache-control"],
            "max-age=30"
        );
    }

    #[test]
    fn qualified_no_cache_and_private_strip_their_fields() {
        let map = headers(&[
            (
                "cache-control",
                "max-age=60, private=\"x-user\", no-cache=\"set-cookie\"",
            ),
            ("x-user", "alice"),
            ("set-cookie", "s=1"),
            ("x-kept", "1"),
        ]);
        let prepared = prepare(&map, &HeaderName::from_static("weir-cache-control"));
        assert_eq!(prepared.policy_headers["cache-control"], "max-age=60");
        assert!(!prepared.client_headers.contains_key("x-user"));
        assert!(!prepared.client_headers.contains_key("set-cookie"));
        assert!(prepared.client_headers.contains_key("x-kept"));
    }

    #[test]
    fn an_age_with_trailing_garbage_counts_by_its_digits() {
        let weir = HeaderName::from_static("weir-cache-control");
        let prepared = prepare(&headers(&[("age", "3600abc")]), &weir);
        assert_eq!(prepared.policy_headers["age"], "3600");
        let prepared = prepare(&headers(&[("age", "abc")]), &weir);
        assert!(!prepared.policy_headers.contains_key("age"));
    }

    #[test]
    fn dates_lose_their_extra_spaces() {
        let map = headers(&[("expires", "Thu,  01 Dec  2094 16:00:00 GMT")]);
        let prepared = prepare(&map, &HeaderName::from_static("weir-cache-control"));
        assert_eq!(
            prepared.policy_headers["expires"],
            "Thu, 01 Dec 2094 16:00:00 GMT"
        );
    }
}
