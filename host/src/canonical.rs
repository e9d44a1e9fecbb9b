//! The canonical request: the one view of a request's path and authority
//! that every plugin, the cache key and the upstream share (DESIGN.md, the
//! request-truth rule). Computed once, before the request phase; a path a
//! plugin sets goes through the same function.
//!
//! The path (anchors: Envoy `normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`; nginx `merge_slashes`):
//! * percent-encoded unreserved characters are decoded (`%61` → `a`), the
//!   remaining escapes are upper-cased (`%c3` → `%C3`), and bytes that may
//!   not stand raw in a path are encoded;
//! * dot-segments are removed (RFC 3986 §5.2.4), `%2e` forms included;
//! * runs of `/` are merged into one (configurable, on by default).
//!
//! Forms that servers read differently are *ambiguous* and get the
//! configured [`Ambiguous`] action, reject (400) by default: an encoded
//! `/` or `\` (`%2F`, `%5C`), a raw `\`, a `;` path parameter (`/admin;x`,
//! `..;`), and double encoding (`%25` followed by two hex digits). Encoded
//! controls (`%00`–`%1F`, `%7F`) and broken escapes are always refused.

use std::fmt;

/// What to do with an ambiguous path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ambiguous {
    /// Refuse the request with 400.
    #[default]
    Reject,
    /// Forward the ambiguous bytes as they are (still upper-casing escapes,
    /// removing dot-segments and merging slashes around them).
    Keep,
    /// Decode `%2F`/`%5C`/`\` to `/`, drop `;` parameters, decode one level
    /// of double encoding, and redirect the client (308) to the result.
    Redirect,
}

/// How paths are canonicalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub merge_slashes: bool,
    pub ambiguous: Ambiguous,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            ambiguous: Ambiguous::Reject,
        }
    }
}

/// Why a path was refused. Each names the form, never echoes the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BrokenEscape,
    Control,
    EncodedSlash,
    Backslash,
    Parameter,
    DoubleEncoding,
}

impl PathError {
    /// Whether the `ambiguous` action applies (the rest are always refused).
    fn is_ambiguous(self) -> bool {
        matches!(
            self,
            PathError::EncodedSlash
                | PathError::Backslash
                | PathError::Parameter
                | PathError::DoubleEncoding
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path does not start with /",
            PathError::BrokenEscape => "broken percent-escape in path",
            PathError::Control => "control character in path",
            PathError::EncodedSlash => "encoded slash in path",
            PathError::Backslash => "backslash in path",
            PathError::Parameter => "path parameter (;) in path",
            PathError::DoubleEncoding => "double percent-encoding in path",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PathError {}

/// The outcome of canonicalising a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canonical {
    /// Serve this path. Borrowed from nothing: always owned, but equal to
    /// the input when the input was canonical already.
    Path(String),
    /// Ambiguous, and the action is redirect: send the client here.
    Redirect(String),
    /// Refused.
    Refused(PathError),
}

/// Canonicalise a request path (the part before `?`).
pub fn path(raw: &str, options: PathOptions) -> Canonical {
    match canonical(raw, options.merge_slashes, Ambiguous::Reject) {
        Ok(path) => Canonical::Path(path),
        Err(err) if !err.is_ambiguous() => Canonical::Refused(err),
        Err(err) => match options.ambiguous {
            Ambiguous::Reject => Canonical::Refused(err),
            Ambiguous::Keep => match canonical(raw, options.merge_slashes, Ambiguous::Keep) {
                Ok(path) => Canonical::Path(path),
                Err(err) => Canonical::Refused(err),
            },
            Ambiguous::Redirect => {
                match canonical(raw, options.merge_slashes, Ambiguous::Redirect) {
                    // What the redirect decoded may itself be ambiguous
                    // (`%252F` → `%2F`): then it is refused, not looped.
                    Ok(path) => match canonical(&path, options.merge_slashes, Ambiguous::Reject) {
                        Ok(again) => Canonical::Redirect(again),
                        Err(err) => Canonical::Refused(err),
                    },
                    Err(err) => Canonical::Refused(err),
                }
            }
        },
    }
}

/// Whether `raw` is canonical already, found by one scan without
/// allocating: only bytes that stand raw in a canonical path, no escapes,
/// no dot-segments, and no empty segment but a trailing one (when merging).
/// Most paths are; they skip [`path`] entirely.
pub fn is_canonical(raw: &str, merge_slashes: bool) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(|b| b == b'/' || is_raw_pchar(b)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." | ".." => return false,
            "" if merge_slashes && !last => return false,
            _ => {}
        }
    }
    true
}

/// Unreserved characters (RFC 3986 §2.3): always decoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that stand raw in a canonical path segment (pchar minus `%`,
/// minus `;`, which is handled as a parameter).
fn is_raw_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// One pass: decode and re-encode into segments, then remove dot-segments.
/// `mode` says what to do with ambiguous forms (`Reject` = fail on them).
fn canonical(raw: &str, merge: bool, mode: Ambiguous) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Segments of the decoded path, each already in canonical spelling.
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut i = 1;
    // Whether the current segment has a `;` parameter being skipped
    // (Redirect mode drops it).
    let mut in_parameter = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                segments.push(std::mem::take(&mut current));
                in_parameter = false;
                i += 1;
                continue;
            }
            b'\\' => match mode {
                Ambiguous::Reject => return Err(PathError::Backslash),
                Ambiguous::Keep => push_escaped(&mut current, b),
                Ambiguous::Redirect => {
                    segments.push(std::mem::take(&mut current));
                    in_parameter = false;
                    i += 1;
                    continue;
                }
            },
            b';' => match mode {
                Ambiguous::Reject => return Err(PathError::Parameter),
                Ambiguous::Keep => current.push(';'),
                Ambiguous::Redirect => in_parameter = true,
            },
            b'%' => {
                let decoded = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => match (hex(h), hex(l)) {
                        (Some(h), Some(l)) => h << 4 | l,
                        _ => return Err(PathError::BrokenEscape),
                    },
                    _ => return Err(PathError::BrokenEscape),
                };
                i += 3;
                if in_parameter {
                    continue;
                }
                match decoded {
                    0x00..=0x1f | 0x7f => return Err(PathError::Control),
                    b'/' | b'\\' => match mode {
                        Ambiguous::Reject => return Err(PathError::EncodedSlash),
                        Ambiguous::Keep => push_escaped(&mut current, decoded),
                        Ambiguous::Redirect => segments.push(std::mem::take(&mut current)),
                    },
                    d if is_unreserved(d) => current.push(char::from(d)),
                    d => push_escaped(&mut current, d),
                }
                continue;
            }
            0x00..=0x1f | 0x7f => return Err(PathError::Control),
            _ if in_parameter => {}
            b if is_raw_pchar(b) => current.push(char::from(b)),
            b => push_escaped(&mut current, b),
        }
        i += 1;
    }
    segments.push(std::mem::take(&mut current));
    // Double encoding is judged on the decoded segments, so that what this
    // pass writes is judged the same way when it is read again.
    match mode {
        Ambiguous::Reject if segments.iter().any(|s| double_encoded(s).is_some()) => {
            return Err(PathError::DoubleEncoding);
        }
        // One level decoded: `%2561` → `%61`, which the caller then
        // canonicalises.
        Ambiguous::Redirect => {
            for segment in &mut segments {
                while let Some(at) = double_encoded(segment) {
                    segment.replace_range(at..at + 3, "%");
                }
            }
        }
        _ => {}
    }
    Ok(join(segments, merge))
}

/// Where `%25` is followed by two hex digits (an escape spelled twice).
fn double_encoded(segment: &str) -> Option<usize> {
    let bytes = segment.as_bytes();
    segment.match_indices("%25").map(|(at, _)| at).find(|&at| {
        matches!(
            (
                bytes.get(at + 3).copied().and_then(hex),
                bytes.get(at + 4).copied().and_then(hex)
            ),
            (Some(_), Some(_))
        )
    })
}

/// Remove dot-segments (RFC 3986 §5.2.4) and, when merging, empty
/// segments; a path that named a directory keeps its trailing slash.
fn join(segments: Vec<String>, merge: bool) -> String {
    let last = segments.len().saturating_sub(1);
    let mut kept: Vec<String> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (index, segment) in segments.into_iter().enumerate() {
        let is_last = index == last;
        match segment.as_str() {
            "." => trailing_slash = is_last,
            ".." => {
                kept.pop();
                trailing_slash = is_last;
            }
            "" if merge || is_last => trailing_slash = is_last,
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(kept.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Why an authority was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAuthority;

/// Validate and normalise `host[:port]` (RFC 3986 §3.2.2: reg-name, IPv4,
/// or an IP-literal in brackets): lower-cased, the scheme's default port
/// removed. Anything else (userinfo, a path, spaces, an empty host, a bad
/// port) is refused.
pub fn authority(raw: &str, scheme: &str) -> Result<String, BadAuthority> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(BadAuthority)?;
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| BadAuthority)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(BadAuthority)?),
        };
        (&raw[..literal.len() + 2], port)
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    if host.is_empty() {
        return Err(BadAuthority);
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(BadAuthority);
    }
    let port = match port {
        None => None,
        Some(port) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadAuthority);
            }
            let number: u32 = port.parse().map_err(|_| BadAuthority)?;
            if number > 65535 {
                return Err(BadAuthority);
            }
            let default = match scheme {
                "https" => 443,
                _ => 80,
            };
            (number != default).then_some(number)
        }
    };
    let mut out = host.to_ascii_lowercase();
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
