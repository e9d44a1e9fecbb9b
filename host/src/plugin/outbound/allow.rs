//! `allow_hosts` entries, and the strict reading of a host as a plugin's
//! URL or an entry spells it.
//!
//! An entry is `[scheme://]host[:port]`:
//! * `api.example.com` allows `http://api.example.com:80` and
//!   `https://api.example.com:443`: without a port, only each scheme's
//!   default port — never every port;
//! * `api.example.com:8443` allows both schemes on port 8443;
//! * `https://api.example.com` allows only `https` on 443,
//!   `http://10.0.0.5:8080` only `http` on 8080.
//!
//! Hosts are names (letters, digits, `-`, `_`, dot-separated), canonical
//! dotted-quad IPv4 (`10.0.0.5`) or bracketed canonical IPv6 (`[::1]`,
//! RFC 5952 form). Anything a resolver would also read as an IPv4 address
//! — `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`, a trailing dot — and
//! IPv4-mapped IPv6 (`[::ffff:127.0.0.1]`) is refused, in entries and in
//! URLs alike: two spellings of one address would let a plugin reach an
//! address under a name the allow-list check did not recognise.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::address::{self, Class};

/// The schemes `http-client` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn parse(text: &str) -> Option<Scheme> {
        match text.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A host, read strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lower-cased.
    Name(String),
    /// An IP literal in its canonical spelling.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Why a host was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// An IP address written other than canonically (`127.1`).
    NonCanonical { written: String, canonical: Host },
    /// An IPv6 address that embeds an IPv4 one (`[::ffff:127.0.0.1]`).
    EmbedsV4 { written: String, v4: Ipv4Addr },
    /// Neither a name nor an IP address.
    Invalid { written: String, why: &'static str },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::NonCanonical { written, canonical } => write!(
                f,
                "{written:?} is a non-canonical spelling of the IP address {canonical}; \
                 write {canonical}"
            ),
            HostError::EmbedsV4 { written, v4 } => write!(
                f,
                "{written:?} is an IPv6 form of the IPv4 address {v4}; write {v4}"
            ),
            HostError::Invalid { written, why } => write!(f, "{written:?} {why}"),
        }
    }
}

/// Read a host as written in a URL authority or an allow-list entry
/// (IPv6 in brackets).
pub fn parse_host(written: &str) -> Result<Host, HostError> {
    let invalid = |why| HostError::Invalid {
        written: written.to_owned(),
        why,
    };
    if let Some(inner) = written.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| invalid("has an unclosed '['"))?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| invalid("is not an IPv6 address"))?;
        if let Some(v4) = address::v4_spelling(ip) {
            return Err(HostError::EmbedsV4 {
                written: written.to_owned(),
                v4,
            });
        }
        let host = Host::Ip(IpAddr::V6(ip));
        if inner != ip.to_string() {
            return Err(HostError::NonCanonical {
                written: written.to_owned(),
                canonical: host,
            });
        }
        return Ok(host);
    }
    if ends_in_number(written) {
        // What `inet_aton` (and so `getaddrinfo`) and WHATWG URL parsers
        // read as IPv4; only the canonical spelling is accepted.
        let ip = legacy_ipv4(written).ok_or_else(|| invalid("is not a valid IPv4 address"))?;
        let host = Host::Ip(IpAddr::V4(ip));
        if written != ip.to_string() {
            return Err(HostError::NonCanonical {
                written: written.to_owned(),
                canonical: host,
            });
        }
        return Ok(host);
    }
    if written.is_empty() || written.len() > 253 {
        return Err(invalid("is not a host name"));
    }
    for label in written.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(invalid(
                "is not a host name (letters, digits, '-', '_', separated by single dots)",
            ));
        }
    }
    Ok(Host::Name(written.to_ascii_lowercase()))
}

/// WHATWG's "ends in a number": the last label (ignoring one trailing
/// dot) is decimal digits or `0x` hex. Such a host is an IPv4 address or
/// nothing.
fn ends_in_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// Parse IPv4 as `inet_aton` does: one to four parts, each decimal, octal
/// (leading `0`) or hex (`0x`), the last filling the remaining bytes.
fn legacy_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        numbers.push(legacy_number(part)?);
    }
    let (last, leading) = numbers.split_last()?;
    let mut value: u64 = 0;
    for (i, &n) in leading.iter().enumerate() {
        if n > 255 {
            return None;
        }
        value |= n << (8 * (3 - i));
    }
    let room = 8 * (4 - leading.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    value |= last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn legacy_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // `0x` alone is zero to WHATWG.
        return (radix == 16).then_some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) || digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// One `allow_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// `None`: both schemes.
    pub scheme: Option<Scheme>,
    pub host: Host,
    /// `None`: the default port of the scheme used.
    pub port: Option<u16>,
}

impl AllowEntry {
    /// Parse an entry; the error says what is wrong and what to write.
    pub fn parse(text: &str) -> Result<AllowEntry, String> {
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => match Scheme::parse(scheme) {
                Some(scheme) => (Some(scheme), rest),
                None => {
                    return Err(format!(
                        "{text:?}: scheme {scheme:?} is not supported (http or https)"
                    ))
                }
            },
            None => (None, text),
        };
        if rest.contains('*') {
            return Err(format!(
                "{text:?}: wildcards are not supported; list each host"
            ));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?}: write [scheme://]host[:port], without a path or credentials"
            ));
        }
        let (host, port) = split_port(rest).map_err(|why| format!("{text:?}: {why}"))?;
        let host = parse_host(&host.to_ascii_lowercase()).map_err(|e| e.to_string())?;
        if let Host::Ip(ip) = host {
            let class = address::classify(ip);
            if matches!(class, Class::Unspecified | Class::NotUnicast) {
                return Err(format!(
                    "{text:?}: {ip} is a {class} address, not a destination"
                ));
            }
        }
        Ok(AllowEntry { scheme, host, port })
    }

    /// Whether this entry allows `scheme://host:port`.
    pub fn allows(&self, scheme: Scheme, host: &Host, port: u16) -> bool {
        self.scheme.is_none_or(|s| s == scheme)
            && self.host == *host
            && self.port.unwrap_or(scheme.default_port()) == port
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = self.scheme {
            write!(f, "{}://", scheme.as_str())?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Split `host[:port]` (IPv6 bracketed); a port must be 1–65535.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => {
                let (host, rest) = text.split_at(end + 1);
                match rest {
                    "" => (host, None),
                    _ => match rest.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => return Err("unexpected text after ']'".into()),
                    },
                }
            }
            None => return Err("unclosed '['".into()),
        }
    } else {
        match text.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err("an IPv6 address goes in brackets, e.g. \"[2001:db8::1]:443\"".into())
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => {
            let number = port
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| port.parse::<u16>().ok())
                .flatten()
                .filter(|&p| p != 0);
            match number {
                Some(number) => Some(number),
                None => return Err(format!("port {port:?} is not 1-65535")),
            }
        }
    };
    Ok((host, port))
}
