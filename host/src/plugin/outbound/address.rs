//! What a destination address is, for the outbound rule "public unicast
//! addresses only, unless the allow-list names the literal IP".
//!
//! An address is judged by what it reaches, not by how it is written: an
//! IPv6 address that embeds an IPv4 one (`::ffff:127.0.0.1`, the deprecated
//! IPv4-compatible `::127.0.0.1`, NAT64's `64:ff9b::127.0.0.1`) is judged
//! as that IPv4 address, because the kernel or a NAT64 gateway delivers it
//! there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of network an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Routable on the internet: the only class reachable through a name.
    Public,
    /// `127.0.0.0/8`, `::1`: this machine, its admin listener included.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`), IPv6 ULA `fc00::/7`
    /// and the deprecated site-local `fec0::/10`.
    Private,
    /// `169.254/16` (cloud metadata services live here), `fe80::/10`.
    LinkLocal,
    /// `0.0.0.0/8` and `::`: connecting to them reaches this machine.
    Unspecified,
    /// `100.64/10`, carrier-grade NAT: a provider's internal network.
    SharedNat,
    /// Multicast, broadcast and reserved (`224/4`, `240/4`, `ff00::/8`):
    /// never a unicast destination.
    NotUnicast,
}

impl Class {
    pub fn is_public(self) -> bool {
        self == Class::Public
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Loopback => "loopback",
            Class::Private => "private",
            Class::LinkLocal => "link-local",
            Class::Unspecified => "unspecified",
            Class::SharedNat => "shared (CGNAT)",
            Class::NotUnicast => "multicast or reserved",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of `ip`, looking through IPv6 forms that embed IPv4.
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 one delivers to, if it embeds one: an IPv4
/// spelling ([`v4_spelling`]) or NAT64's well-known prefix `64:ff9b::/96`.
pub fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let nat64 = v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    v4_spelling(v6).or_else(|| nat64.then(|| low_v4(v6)))
}

/// The IPv4 address an IPv6 address merely spells: mapped (`::ffff:0:0/96`)
/// or IPv4-compatible (`::/96`, other than `::` and `::1`). The kernel
/// delivers these to the IPv4 address itself.
pub fn v4_spelling(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let compatible = v6.segments()[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback();
    compatible.then(|| low_v4(v6))
}

fn low_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let [.., a, b, c, d] = v6.octets();
    Ipv4Addr::new(a, b, c, d)
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let [a, b, ..] = ip.octets();
    match (a, b) {
        (0, _) => Class::Unspecified,
        (127, _) => Class::Loopback,
        (10, _) | (192, 168) => Class::Private,
        (172, 16..=31) => Class::Private,
        (169, 254) => Class::LinkLocal,
        (100, 64..=127) => Class::SharedNat,
        (224.., _) => Class::NotUnicast,
        _ => Class::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Class::Unspecified
    } else if ip.is_loopback() {
        Class::Loopback
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        Class::Private
    } else if first & 0xffc0 == 0xfe80 {
        Class::LinkLocal
    } else if first & 0xff00 == 0xff00 {
        Class::NotUnicast
    } else {
        Class::Public
    }
}
