//! Routes: which of `[[routes]]` serves a request, judged on the canonical
//! request (after admission), first match in config order.
//!
//! Matching is indexed, not a scan: routes are bucketed by host (exact
//! names in a map, `*.suffix` names by suffix, host-less routes apart), and
//! within a bucket by the literal leading segments of their path in a
//! segment trie. A request walks its host's buckets and its path's
//! segments once, collecting the few candidates whose host and path prefix
//! fit; the first of those (in config order) whose whole match holds wins.

use std::collections::HashMap;

use http::{HeaderMap, Method};

/// What a route matches. Every part given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Match {
    /// Empty: any host.
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// Empty: any method. `GET` admits `HEAD`.
    pub methods: Vec<Method>,
    /// Header name (lower case) and exact value.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Query parameter and exact value (as written in the query).
    pub query: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// This name exactly (lower case, no port).
    Exact(String),
    /// Any name ending in this suffix, which starts with `.` (from
    /// `*.example.com`: `a.example.com`, `a.b.example.com`).
    Suffix(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    /// On segment boundaries; stored without a trailing `/` (except `/`).
    Prefix(String),
    Pattern(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: one non-empty segment.
    One,
    /// `{*name}`: the rest of the path (possibly empty).
    Rest,
}

/// The parts of a request routes match on.
pub struct Request<'a> {
    /// The canonical authority (`host[:port]`, lower case).
    pub authority: &'a str,
    /// The canonical path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl HostMatch {
    pub fn parse(text: &str) -> Result<HostMatch, String> {
        let lower = text.to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |label: &str| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || !name.split('.').all(valid_label) {
            return Err(format!(
                "{text:?} is not a host name (e.g. \"api.example.com\" or \"*.example.com\"; no port)"
            ));
        }
        Ok(if suffix {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_owned())
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(name) => host == name,
            HostMatch::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// Whether every host this matches, `self` matches too.
    fn covers(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Suffix(a), HostMatch::Exact(b)) => b.len() > a.len() && b.ends_with(a),
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
            (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
        }
    }
}

impl PathMatch {
    pub fn exact(path: &str) -> Result<PathMatch, String> {
        check_path(path)?;
        Ok(PathMatch::Exact(path.to_owned()))
    }

    pub fn prefix(prefix: &str) -> Result<PathMatch, String> {
        check_path(prefix)?;
        let trimmed = prefix.trim_end_matches('/');
        Ok(PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }

    pub fn pattern(pattern: &str) -> Result<PathMatch, String> {
        check_path(pattern)?;
        let parts: Vec<&str> = pattern[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if name.starts_with('*') => {
                    if i + 1 != parts.len() {
                        return Err(format!("{pattern:?}: {{{name}}} must be the last segment"));
                    }
                    Segment::Rest
                }
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => Segment::One,
                _ if part.contains(['{', '}']) => {
                    return Err(format!(
                        "{pattern:?}: a segment is either literal, {{name}} or a final {{*name}}"
                    ))
                }
                _ => Segment::Literal((*part).to_owned()),
            };
            segments.push(segment);
        }
        Ok(PathMatch::Pattern(segments))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => has_prefix(path, prefix),
            PathMatch::Pattern(segments) => {
                let mut parts = path[1.min(path.len())..].split('/');
                for segment in segments {
                    match segment {
                        Segment::Rest => return true,
                        Segment::One => match parts.next() {
                            Some(part) if !part.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(literal) => {
                            if parts.next() != Some(literal.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }

    /// The literal leading segments every matching path starts with.
    fn literal_segments(&self) -> Vec<&str> {
        match self {
            PathMatch::Any => Vec::new(),
            PathMatch::Exact(path) | PathMatch::Prefix(path) => segments(path).collect(),
            PathMatch::Pattern(parts) => parts
                .iter()
                .map_while(|part| match part {
                    Segment::Literal(literal) => Some(literal.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Whether every path this matches, `self` matches too (conservative:
    /// `false` when unsure).
    fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, _) => true,
            (_, PathMatch::Any) => false,
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Exact(b) | PathMatch::Prefix(b)) => has_prefix(b, a),
            (PathMatch::Prefix(a), PathMatch::Pattern(_)) => {
                let literal = other.literal_segments();
                segments(a).count() <= literal.len() && {
                    let joined = format!("/{}", literal.join("/"));
                    has_prefix(&joined, a)
                }
            }
            (a, b) => a == b,
        }
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains(['?', '#']) || path.bytes().any(|b| b <= b' ') {
        return Err(format!(
            "{path:?} must be a canonical path: starting with /, no query, no spaces"
        ));
    }
    // Parameters of a pattern stand for a segment: check the literal rest.
    let literal: Vec<&str> = path
        .split('/')
        .map(|s| if s.starts_with('{') { "p" } else { s })
        .collect();
    let literal = literal.join("/");
    let canonical = crate::canonical::path(&literal, crate::canonical::PathOptions::default());
    if !matches!(&canonical, crate::canonical::Canonical::Path(c) if *c == literal) {
        return Err(format!(
            "{path:?} is not canonical (routes match the canonical path: no dot-segments, \
             no doubled slashes, unreserved characters unescaped)"
        ));
    }
    Ok(())
}

/// `path` starts with `prefix` on a segment boundary.
fn has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

impl Match {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        let host = host_of(req.authority);
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host)))
            && self.path.matches(req.path)
            && (self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| m == req.method || (*m == Method::GET && *req.method == Method::HEAD)))
            && self.headers.iter().all(|(name, value)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .any(|v| v == value.as_str())
            })
            && self.query.iter().all(|(name, value)| {
                req.query.is_some_and(|query| {
                    query.split('&').any(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        k == name && v == value
                    })
                })
            })
    }

    /// Whether every request this matches, `self` matches too: an earlier
    /// route that covers a later one shadows it. Conservative.
    pub fn covers(&self, other: &Match) -> bool {
        let hosts = self.hosts.is_empty()
            || (!other.hosts.is_empty()
                && other
                    .hosts
                    .iter()
                    .all(|o| self.hosts.iter().any(|s| s.covers(o))));
        let get_head = |m: &Method| *m == Method::HEAD && self.methods.contains(&Method::GET);
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other
                    .methods
                    .iter()
                    .all(|m| self.methods.contains(m) || get_head(m)));
        hosts
            && methods
            && self.path.covers(&other.path)
            && self.headers.iter().all(|h| other.headers.contains(h))
            && self.query.iter().all(|q| other.query.contains(q))
    }
}

/// The host of a canonical authority, without its port.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// Routes indexed for matching; `T` is what a route carries.
pub struct Router<T> {
    routes: Vec<(Match, T)>,
    exact_hosts: HashMap<String, Trie>,
    suffix_hosts: HashMap<String, Trie>,
    any_host: Trie,
}

/// Route indices by the literal leading segments of their paths.
#[derive(Default)]
struct Trie {
    /// Routes whose literal part ends at this node.
    here: Vec<usize>,
    children: HashMap<String, Trie>,
}

impl Trie {
    fn insert(&mut self, literal: &[&str], index: usize) {
        let mut node = self;
        for segment in literal {
            node = node.children.entry((*segment).to_owned()).or_default();
        }
        node.here.push(index);
    }

    /// Every route whose literal segments lead `path`.
    fn collect(&self, path: &str, into: &mut Vec<usize>) {
        let mut node = self;
        into.extend_from_slice(&node.here);
        for segment in segments(path) {
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    into.extend_from_slice(&node.here);
                }
                None => return,
            }
        }
    }
}

impl<T> Router<T> {
    pub fn new(routes: Vec<(Match, T)>) -> Router<T> {
        let mut router = Router {
            routes: Vec::new(),
            exact_hosts: HashMap::new(),
            suffix_hosts: HashMap::new(),
            any_host: Trie::default(),
        };
        for (index, (matcher, _)) in routes.iter().enumerate() {
            let literal = matcher.path.literal_segments();
            if matcher.hosts.is_empty() {
                router.any_host.insert(&literal, index);
            }
            for host in &matcher.hosts {
                let trie = match host {
                    HostMatch::Exact(name) => router.exact_hosts.entry(name.clone()),
                    HostMatch::Suffix(suffix) => router.suffix_hosts.entry(suffix.clone()),
                };
                trie.or_default().insert(&literal, index);
            }
        }
        router.routes = routes;
        router
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route's value, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|(_, value)| value)
    }

    /// The first route (in config order) that matches.
    pub fn find(&self, req: &Request<'_>) -> Option<&T> {
        let host = host_of(req.authority);
        let mut candidates = Vec::new();
        if let Some(trie) = self.exact_hosts.get(host) {
            trie.collect(req.path, &mut candidates);
        }
        if !self.suffix_hosts.is_empty() {
            // Every proper suffix that starts at a dot: `.b.example.com`,
            // `.example.com`, `.com`.
            for (at, _) in host.match_indices('.') {
                if let Some(trie) = self.suffix_hosts.get(&host[at..]) {
                    trie.collect(req.path, &mut candidates);
                }
            }
        }
        self.any_host.collect(req.path, &mut candidates);
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .map(|index| &self.routes[index])
            .find(|(matcher, _)| matcher.matches(req))
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests;
