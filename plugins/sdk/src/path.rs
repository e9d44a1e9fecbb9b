//! Matching the request path against configured prefixes.
//!
//! The host canonicalises every request path before the first plugin runs
//! (unreserved escapes decoded, other escapes upper-cased, dot segments
//! removed, repeated slashes merged; ambiguous spellings refused), and
//! forwards what the chain leaves. So `req.path` is the path the upstream
//! will read, and a plugin compares it as it is: a plugin that normalised
//! it again would hold a second view of the request, and any difference
//! between the two views is a bypass.
//!
//! What a plugin still needs is to compare *whole segments* and to refuse,
//! at config time, a prefix no canonical path could ever match.

use std::fmt;

/// A configured path prefix that matches whole segments of a canonical
/// path: `/admin` matches `/admin`, `/admin/` and `/admin/x`, not
/// `/administrator`; `/admin/` matches only what lies below it; `/`
/// matches every path.
///
/// ```
/// use weir_plugin::PathPrefix;
///
/// let admin = PathPrefix::new("/admin").unwrap();
/// assert!(admin.matches("/admin/users"));
/// assert!(!admin.matches("/administrator"));
/// assert!(!admin.matches("/ADMIN"));
/// assert!(admin.case_insensitive(true).matches("/ADMIN"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPrefix {
    prefix: String,
    case_insensitive: bool,
}

impl PathPrefix {
    /// A case-sensitive prefix, refused unless it is a canonical path (see
    /// [`check_canonical`]): such a prefix could never match, and a rule
    /// that silently never applies is worse than a config that fails.
    pub fn new(prefix: &str) -> Result<PathPrefix, String> {
        check_canonical(prefix)?;
        Ok(PathPrefix {
            prefix: prefix.to_owned(),
            case_insensitive: false,
        })
    }

    /// Compare ASCII letters without regard to case (for upstreams that
    /// serve `/Admin` and `/admin` alike). Non-ASCII text arrives
    /// percent-encoded, so it still compares byte for byte.
    pub fn case_insensitive(mut self, yes: bool) -> PathPrefix {
        self.case_insensitive = yes;
        self
    }

    pub fn is_case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    /// The prefix as configured.
    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    /// Whether `path` (a canonical request path) is the prefix or lies
    /// below it.
    pub fn matches(&self, path: &str) -> bool {
        self.rest(path).is_some()
    }

    /// The part of `path` below the prefix, when it matches: `""` or text
    /// starting with `/`. `/api` gives `/x` for `/api/x` and `""` for
    /// `/api`; a prefix written with a trailing slash gives that slash
    /// back (`/api/` gives `/` for `/api/`).
    pub fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        let head = path.get(..self.prefix.len())?;
        let same = match self.case_insensitive {
            true => head.eq_ignore_ascii_case(&self.prefix),
            false => head == self.prefix,
        };
        if !same {
            return None;
        }
        if self.prefix.ends_with('/') {
            // Keep the prefix's own slash: `rest` always starts with `/`.
            return Some(&path[self.prefix.len() - 1..]);
        }
        let rest = &path[self.prefix.len()..];
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    /// `path` with the matched prefix replaced by `replacement` (`""`
    /// strips it), or `None` when the prefix does not match. The join never
    /// doubles a slash, and an empty result is `/`.
    pub fn replace(&self, path: &str, replacement: &str) -> Option<String> {
        let rest = self.rest(path)?;
        // `/api/x` with `/api` → `/` is `/x`, not `//x`.
        let joined = match rest.strip_prefix('/') {
            Some(below) if replacement.ends_with('/') => format!("{replacement}{below}"),
            _ => format!("{replacement}{rest}"),
        };
        Some(match joined.is_empty() {
            true => "/".to_owned(),
            false => joined,
        })
    }

    /// Whether every path `other` matches is matched by `self` too: a rule
    /// under a public prefix that covers it could never apply.
    pub fn covers(&self, other: &PathPrefix) -> bool {
        // `other` matches case variants of its text that `self` would miss,
        // unless `self` ignores case too or has no letters to differ in.
        let case_ok = self.case_insensitive
            || !other.case_insensitive
            || !self.prefix.bytes().any(|b| b.is_ascii_alphabetic());
        case_ok && self.matches(&other.prefix)
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

/// Checks that `path` is a path as the host hands it to plugins: starting
/// with `/`, no empty (`//`), `.` or `..` segments, printable ASCII without
/// `\`, `;`, `?` or `#`, and escapes that are upper-case, not of unreserved
/// characters, not `%2F`/`%5C`, and not double encodings (`%25` + two hex
/// digits), which the host refuses. The error starts with the path, quoted,
/// so callers can prefix the config key: `rules[0].prefix "/a//b" is not …`.
pub fn check_canonical(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    match non_canonical(path) {
        Some(why) => Err(format!(
            "{path:?} is not a canonical path ({why}), so no request path could match it"
        )),
        None => Ok(()),
    }
}

/// Why `path` (starting with `/`) is not canonical, if it is not.
fn non_canonical(path: &str) -> Option<String> {
    let segments = || path[1..].split('/');
    if let Some(dots) = segments().find(|s| matches!(*s, "." | "..")) {
        return Some(format!("a {dots:?} segment"));
    }
    // Only the last segment may be empty: that is a trailing slash.
    if segments().rev().skip(1).any(str::is_empty) {
        return Some("an empty segment '//'".into());
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let escape = path.get(i..i + 3).unwrap_or(&path[i..]);
                let Some(byte) = bytes
                    .get(i + 1..i + 3)
                    .and_then(|pair| Some(hex(pair[0])? << 4 | hex(pair[1])?))
                else {
                    return Some(format!("{escape:?} is not an escape: write '%' as %25"));
                };
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    return Some(format!(
                        "{escape} is an escaped unreserved character: write {:?}",
                        char::from(byte)
                    ));
                }
                if byte == b'/' || byte == b'\\' {
                    return Some(format!(
                        "{escape} is an encoded separator, which the host refuses"
                    ));
                }
                if escape.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Some(format!(
                        "{escape} has lower-case hex: the host writes {}",
                        escape.to_ascii_uppercase()
                    ));
                }
                let escaped_hex = bytes
                    .get(i + 3..i + 5)
                    .is_some_and(|pair| pair.iter().all(|&b| hex(b).is_some()));
                if byte == b'%' && escaped_hex {
                    return Some(format!(
                        "{escape} followed by hex digits is a double encoding, which the host refuses"
                    ));
                }
                i += 3;
            }
            b'\\' | b';' | b'?' | b'#' => {
                return Some(format!("{:?} is not allowed", char::from(b)));
            }
            b if !b.is_ascii_graphic() => {
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                return Some(format!("{ch:?} must be percent-encoded"));
            }
            _ => i += 1,
        }
    }
    None
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}
