//! Proxy header hygiene: hop-by-hop headers are stripped both ways
//! (RFC 9110 §7.6.1, including every header the `Connection` header names);
//! forwarding and identity headers from peers that are not trusted proxies
//! are removed before any plugin sees the request; the client address is
//! read through the trusted chain only; and `X-Forwarded-For/-Proto/-Host`
//! and `Via` are set on the way up.

use std::net::IpAddr;

use crate::config::{ClientIpHeader, ProxySettings, Underscores};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// Hop-by-hop headers that never cross the proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that claim facts about the client, its connection or an earlier
/// hop. Only a trusted proxy may send them; from anyone else they would let
/// a client choose its own address, scheme, certificate or method.
const CLIENT_CLAIMS: [HeaderName; 8] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-client-cert"),
    HeaderName::from_static("x-forwarded-client-cert"),
    HeaderName::from_static("x-client-ip"),
];

/// Families of the same: every `x-forwarded-*` and `x-ssl-*`.
const CLIENT_CLAIM_PREFIXES: [&str; 2] = ["x-forwarded-", "x-ssl-"];

fn is_client_claim(name: &HeaderName) -> bool {
    CLIENT_CLAIMS.contains(name)
        || CLIENT_CLAIM_PREFIXES
            .iter()
            .any(|prefix| name.as_str().starts_with(prefix))
}

/// Why request headers were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderscoreHeader;

/// Clean the client's headers before anything reads them: from a peer that
/// is not a trusted proxy, drop every forwarding and identity claim; drop
/// (or refuse, per config) header names with `_`.
pub fn sanitize_incoming(
    headers: &mut HeaderMap,
    peer_trusted: bool,
    underscores: Underscores,
) -> Result<(), UnderscoreHeader> {
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            (!peer_trusted && is_client_claim(name))
                || (underscores != Underscores::Allow && name.as_str().contains('_'))
        })
        .cloned()
        .collect();
    for name in dropped {
        if underscores == Underscores::Reject && name.as_str().contains('_') {
            return Err(UnderscoreHeader);
        }
        headers.remove(name);
    }
    Ok(())
}

/// The client's address: the peer's, unless the peer is a trusted proxy,
/// then the nearest address in `client_ip_header` that is not itself a
/// trusted proxy (nginx `real_ip_recursive on`). Unparseable entries stop
/// the walk: nothing to their left can be believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, settings: &ProxySettings) -> IpAddr {
    if !settings.is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = match settings.client_ip_header {
        ClientIpHeader::XForwardedFor => headers.get_all(X_FORWARDED_FOR),
        ClientIpHeader::XRealIp => headers.get_all("x-real-ip"),
    };
    let hops: Vec<&str> = hops
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !settings.is_trusted(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Remove hop-by-hop headers, including those listed in `Connection`.
/// `TE: trailers` survives (gRPC needs it); any other `TE` does not.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names present
    // instead of a lookup per hop-by-hop name. Headers `Connection` names
    // matter only when it is there, and it is one of them.
    if !headers
        .keys()
        .any(|name| name == header::TE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The facts the forwarding headers are made of.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    pub scheme: &'static str,
    /// The canonical authority, as the upstream's `Host` gets it.
    pub host: Option<&'a HeaderValue>,
    pub version: Version,
    pub via: &'a Via,
    /// Keep client-sent `X-Forwarded-*` (append to them) instead of replacing.
    pub trust_incoming: bool,
}

/// Set `X-Forwarded-For/-Proto/-Host` and append to `Via` on a request going
/// upstream.
pub fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let client = fwd.client_ip.to_string();
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if fwd.trust_incoming && !prior.trim().is_empty() => {
            format!("{prior}, {client}")
        }
        _ => client,
    };
    // Taken as it is, not copied: an address (and what a trusted proxy
    // sent) is visible ASCII.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let keep = fwd.trust_incoming;
    if !(keep && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.scheme));
    }
    if !(keep && headers.contains_key(X_FORWARDED_HOST)) {
        if let Some(host) = fwd.host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
    fwd.via.append(headers, fwd.version);
}

/// This hop's entry in `Via` (RFC 9110 §7.6.3), `1.1 weir` and the like:
/// made once per protocol version from `proxy.via_name`, not per message.
#[derive(Debug, Clone)]
pub struct Via {
    name: String,
    /// Received over HTTP/0.9, 1.0, 1.1, 2 and 3.
    hops: [HeaderValue; 5],
}

/// `proxy.via_name` cannot name this hop in `Via`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a pseudonym or host[:port] `Via` can carry: use letters, digits and any of !#$%&'*+-.^_`|~:[] (e.g. \"weir\")")]
pub struct InvalidViaName(pub String);

impl Via {
    /// `name` is a token (RFC 9110 §5.6.2) or a `host[:port]`.
    pub fn new(name: &str) -> Result<Via, InvalidViaName> {
        let invalid = || InvalidViaName(name.to_owned());
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:[]".contains(&b);
        if name.is_empty() || !name.bytes().all(allowed) {
            return Err(invalid());
        }
        let hop = |protocol: &str| {
            HeaderValue::from_str(&format!("{protocol} {name}")).map_err(|_| invalid())
        };
        Ok(Via {
            name: name.to_owned(),
            hops: [hop("0.9")?, hop("1.0")?, hop("1.1")?, hop("2")?, hop("3")?],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Append this hop to `Via`, for a message received over `version`.
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        let hop = match version {
            Version::HTTP_09 => 0,
            Version::HTTP_10 => 1,
            Version::HTTP_2 => 3,
            Version::HTTP_3 => 4,
            _ => 2,
        };
        headers.append(header::VIA, self.hops[hop].clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_headers_named_by_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("keep-alive").is_none());
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
        assert_eq!(headers.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn untrusted_forwarded_for_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        let via = Via::new("weir").unwrap();
        let host = HeaderValue::from_static("example.com");
        let fwd = Forwarded {
            client_ip: "10.0.0.1".parse().unwrap(),
            scheme: "http",
            host: Some(&host),
            version: Version::HTTP_11,
            via: &via,
            trust_incoming: false,
        };
        set_forwarded(&mut headers, &fwd);
        assert_eq!(headers.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1");
        assert_eq!(headers.get(header::VIA).unwrap(), "1.1 weir");
        let trusted = Forwarded {
            trust_incoming: true,
            ..fwd
        };
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut headers, &trusted);
        assert_eq!(headers.get(X_FORWARDED_FOR).unwrap(), "6.6.6.6, 10.0.0.1");
        assert_eq!(headers.get(X_FORWARDED_HOST).unwrap(), "example.com");
        assert_eq!(headers.get(X_FORWARDED_PROTO).unwrap(), "http");
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
        // Any one of them takes the whole path: TE that is not `trailers`.
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }

    #[test]
    fn via_names_this_hop_by_the_protocol_it_was_received_over() {
        let via = Via::new("edge-1.example:8443").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::VIA, HeaderValue::from_static("1.0 client-proxy"));
        via.append(&mut headers, Version::HTTP_2);
        via.append(&mut headers, Version::HTTP_10);
        via.append(&mut headers, Version::HTTP_11);
        let all: Vec<_> = headers.get_all(header::VIA).iter().collect();
        assert_eq!(
            all,
            [
                "1.0 client-proxy",
                "2 edge-1.example:8443",
                "1.0 edge-1.example:8443",
                "1.1 edge-1.example:8443"
            ]
        );
        for bad in [
            "",
            "my proxy",
            "weir\r\nx-injected: 1",
            "wéir",
            "a,b",
            "(weir)",
        ] {
            assert_eq!(
                Via::new(bad).unwrap_err(),
                InvalidViaName(bad.to_owned()),
                "{bad:?}"
            );
        }
    }
}
