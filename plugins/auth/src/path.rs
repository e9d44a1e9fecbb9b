//! The path as rules see it.
//!
//! Public prefixes and scope rules are security decisions, so they must not be
//! dodged by spelling a path differently from how the upstream will read it:
//! `/%61dmin`, `//admin` and `/x/../admin` all reach `/admin` upstream. Rules
//! therefore match a normalised copy of the path; the request itself is
//! forwarded unchanged.

/// RFC 3986 normalisation, minus case folding: percent-encoded unreserved
/// characters are decoded, runs of `/` collapse to one, and `.`/`..` segments
/// are removed. Encoded reserved characters (`%2F`, `%3F`…) stay encoded.
pub fn normalize(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normalized = format!("/{}", segments.join("/"));
    if trailing && normalized.len() > 1 {
        normalized.push('/');
    }
    normalized
}

/// Whether `path` lies under `prefix` segment-wise: `/health` covers
/// `/health` and `/health/live`, not `/healthz`. A prefix ending in `/`
/// covers everything below it.
pub fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = hex_pair(bytes[i + 1], bytes[i + 2]) {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(byte as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Paths arrive percent-encoded, so every other byte is ASCII; a
        // stray non-ASCII character is copied whole.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The byte two hex digits spell, if they are hex digits.
pub fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    Some(digit(high)? << 4 | digit(low)?)
}
