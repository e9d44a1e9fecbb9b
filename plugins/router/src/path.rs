//! Paths and hosts as the router compares them, and the segment patterns
//! rules match paths with. Pure functions, no WIT types.

/// The path the router matches and forwards: unreserved characters
/// percent-decoded and dot segments removed (RFC 3986 §6.2.2, §5.2.4).
///
/// Matching the raw path would let `/%61dmin` or `/public/../admin` slip
/// past a rule for `/admin` while the upstream still serves `/admin`.
/// Other escapes (`%2F`, `%20`, …) are left encoded: decoding them changes
/// what the path means.
pub fn normalize(raw: &str) -> String {
    let decoded = decode_unreserved(raw);
    let rest = decoded.strip_prefix('/').unwrap_or(&decoded);
    let segments: Vec<&str> = rest.split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => {
                kept.push(other);
                continue;
            }
        }
        // `/a/b/..` is the directory `/a/`: keep the trailing slash.
        if last {
            kept.push("");
        }
    }
    format!("/{}", kept.join("/"))
}

fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let byte = hi << 4 | lo;
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(byte));
                    i += 3;
                    continue;
                }
            }
        }
        // Copy one whole character, so multi-byte text survives.
        let len = raw[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&raw[i..i + len]);
        i += len;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Whether `path` is `prefix` or lies below it. Prefixes match whole
/// segments: `/api` matches `/api` and `/api/x`, not `/apiary`.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `path` with a matching `prefix` (see [`has_prefix`]) replaced by
/// `replacement`; `path` unchanged when the prefix does not match.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    if !has_prefix(path, prefix) {
        return path.to_owned();
    }
    // The part below the prefix, always "" or starting with '/': a prefix
    // written with a trailing slash gives that slash back.
    let rest = match &path[prefix.len()..] {
        rest if prefix.ends_with('/') => format!("/{rest}"),
        rest => rest.to_owned(),
    };
    // `/api/x` with `/api` → `/` is `/x`, not `//x`.
    let joined = match rest.strip_prefix('/') {
        Some(below) if replacement.ends_with('/') => format!("{replacement}{below}"),
        _ => format!("{replacement}{rest}"),
    };
    debug_assert!(joined.is_empty() || joined.starts_with('/'));
    if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    }
}

/// The host name of an authority (`Host` header): lower-case, without the
/// port and without a trailing dot, so `API.Example.com.:8080` is
/// `api.example.com`.
pub fn host_of(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// One segment of a [`Pattern`].
#[derive(Debug, PartialEq)]
enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `{name}` or `*`: any one non-empty segment.
    Any,
    /// `**`, last only: zero or more remaining segments.
    Rest,
}

/// A segment pattern such as `/users/{id}/orders/*` or `/static/**`.
#[derive(Debug)]
pub struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(pattern: &str) -> Result<Pattern, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err("must start with '/'".into());
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let segment = match *part {
                "**" if last => Segment::Rest,
                "**" => return Err("'**' may only be the last segment".into()),
                "*" => Segment::Any,
                // A trailing slash: `/docs/` matches only `/docs/`.
                "" if last => Segment::Literal(String::new()),
                "" => return Err("empty segment ('//')".into()),
                part if part.starts_with('{') && part.ends_with('}') => {
                    let name = &part[1..part.len() - 1];
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!(
                            "segment {part:?}: a parameter name is letters, digits and '_'"
                        ));
                    }
                    Segment::Any
                }
                part if part.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "segment {part:?}: '*' and '{{name}}' must be a whole segment"
                    ));
                }
                part => Segment::Literal(part.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Pattern { segments })
    }

    pub fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, _) => return true,
                (Segment::Any, Some(part)) if !part.is_empty() => {}
                (Segment::Literal(text), Some(part)) if text == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dot_segments_and_unreserved_escapes() {
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/a/./b"), "/a/b");
        assert_eq!(normalize("/a/b/.."), "/a/");
        assert_eq!(normalize("/public/../admin"), "/admin");
        assert_eq!(normalize("/public/%2e%2E/admin"), "/admin");
        assert_eq!(normalize("/../../x"), "/x");
        assert_eq!(normalize("/%61dmin%2Fx%20y"), "/admin%2Fx%20y");
        assert_eq!(normalize("/caf\u{e9}/%"), "/caf\u{e9}/%");
        assert_eq!(normalize("/a%4"), "/a%4");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(has_prefix("/api", "/api"));
        assert!(has_prefix("/api/x", "/api"));
        assert!(!has_prefix("/apiary", "/api"));
        assert!(has_prefix("/api/x", "/api/"));
        assert!(has_prefix("/anything", "/"));
        assert_eq!(
            replace_prefix("/api/v1/users", "/api/v1", "/v1"),
            "/v1/users"
        );
        assert_eq!(replace_prefix("/api/users", "/api", ""), "/users");
        assert_eq!(replace_prefix("/api", "/api", ""), "/");
        assert_eq!(replace_prefix("/api/x", "/api", "/"), "/x");
        assert_eq!(replace_prefix("/other", "/api", "/v1"), "/other");
        assert_eq!(replace_prefix("/api/x", "/api/", ""), "/x");
        assert_eq!(replace_prefix("/api/x", "/api/", "/v1"), "/v1/x");
        assert_eq!(replace_prefix("/api/", "/api/", ""), "/");
        assert_eq!(replace_prefix("/x", "/", "/v1/"), "/v1/x");
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_of("example.com."), "example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(host_of(""), "");
    }

    #[test]
    fn patterns_match_segments() {
        let p = Pattern::parse("/users/{id}/orders/*").unwrap();
        assert!(p.matches("/users/42/orders/7"));
        assert!(!p.matches("/users/42/orders"));
        assert!(!p.matches("/users/42/orders/7/items"));
        assert!(!p.matches("/users//orders/7"));
        let p = Pattern::parse("/static/**").unwrap();
        assert!(p.matches("/static"));
        assert!(p.matches("/static/a/b.css"));
        assert!(!p.matches("/statics/a"));
        assert!(Pattern::parse("/").unwrap().matches("/"));
        assert!(!Pattern::parse("/").unwrap().matches("/x"));
        for bad in [
            "users", "/a/**/b", "/a//b", "/a*", "/{}", "/{a-b}", "/x{id}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
