//! Hosts as the router compares them, and the segment patterns rules match
//! paths with. Pure functions, no WIT types.
//!
//! Paths need no preparing: the host canonicalises them before any plugin
//! runs, and the router matches (and forwards) `req.path` as it is.
//! Prefixes are [`weir_plugin::PathPrefix`].

use weir_plugin::path::check_canonical;

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
    case_insensitive: bool,
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
            if let Segment::Literal(text) = &segment {
                // A literal no canonical path holds would never match.
                check_canonical(&format!("/{text}"))
                    .map_err(|e| format!("segment {part:?}: {e}"))?;
            }
            segments.push(segment);
        }
        Ok(Pattern {
            segments,
            case_insensitive: false,
        })
    }

    /// Compare literal segments in any ASCII case.
    pub fn case_insensitive(mut self, yes: bool) -> Pattern {
        self.case_insensitive = yes;
        self
    }

    pub fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, _) => return true,
                (Segment::Any, Some(part)) if !part.is_empty() => {}
                (Segment::Literal(text), Some(part)) if self.literal_is(text, part) => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    fn literal_is(&self, text: &str, part: &str) -> bool {
        match self.case_insensitive {
            true => text.eq_ignore_ascii_case(part),
            false => text == part,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "users", "/a/**/b", "/a//b", "/a*", "/{}", "/{a-b}", "/x{id}", "/%61/*", "/a/../b",
            "/a;b/**",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_are_case_sensitive_unless_asked() {
        let p = Pattern::parse("/Users/{id}/**").unwrap();
        assert!(p.matches("/Users/7/x"));
        assert!(!p.matches("/users/7/x"));
        let p = p.case_insensitive(true);
        assert!(p.matches("/users/7/x"));
        assert!(p.matches("/USERS/7"));
        assert!(!p.matches("/usersx/7"));
    }
}
