//! Which bucket a client address counts in.
//!
//! One IPv6 client usually holds a whole /64 (SLAAC, privacy addresses), so
//! keying by the full address would hand it 2^64 buckets: IPv6 addresses
//! are keyed by their network, /64 unless configured. IPv4 addresses are
//! keyed whole unless configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const DEFAULT_IPV4_PREFIX: u8 = 32;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The prefix lengths client addresses are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpGrouping {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl IpGrouping {
    /// Checks the lengths: 1..=32 for IPv4, 1..=128 for IPv6 (0 would put
    /// every client in one bucket; use a `route` key for that).
    pub fn new(ipv4_prefix: u8, ipv6_prefix: u8) -> Result<IpGrouping, String> {
        if !(1..=32).contains(&ipv4_prefix) {
            return Err(format!("ipv4_prefix {ipv4_prefix} must be 1..=32"));
        }
        if !(1..=128).contains(&ipv6_prefix) {
            return Err(format!("ipv6_prefix {ipv6_prefix} must be 1..=128"));
        }
        Ok(IpGrouping {
            ipv4_prefix,
            ipv6_prefix,
        })
    }

    /// The bucket of a client address: the address itself at full length
    /// (`203.0.113.7`), else its network (`2001:db8:1:2::/64`). IPv4-mapped
    /// IPv6 addresses count as the IPv4 address. Text that is not an
    /// address (the host always sends one) is its own bucket.
    pub fn bucket(&self, client_ip: &str) -> String {
        match client_ip.trim().parse::<IpAddr>() {
            Ok(ip) => self.network(ip),
            Err(_) => client_ip.trim().to_owned(),
        }
    }

    /// An `overrides` key for a `client-ip` limit, as the bucket it names:
    /// an address (`"2001:db8:1:2::9"` names its /64) or a network written
    /// with the limit's own prefix length (`"2001:db8:1:2::/64"`).
    pub fn override_bucket(&self, text: &str) -> Result<String, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let ip = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?
            .to_canonical();
        if let Some(len) = len {
            let configured = match ip {
                IpAddr::V4(_) => ("ipv4_prefix", self.ipv4_prefix),
                IpAddr::V6(_) => ("ipv6_prefix", self.ipv6_prefix),
            };
            if len.parse::<u8>().ok() != Some(configured.1) {
                return Err(format!(
                    "{text:?}: clients are keyed by /{} ({} = {}), so only /{} networks can match",
                    configured.1, configured.0, configured.1, configured.1
                ));
            }
        }
        Ok(self.network(ip))
    }

    fn network(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) if self.ipv4_prefix == 32 => v4.to_string(),
            IpAddr::V4(v4) => {
                let mask = u32::MAX << (32 - self.ipv4_prefix);
                let network = Ipv4Addr::from(u32::from(v4) & mask);
                format!("{network}/{}", self.ipv4_prefix)
            }
            IpAddr::V6(v6) if self.ipv6_prefix == 128 => v6.to_string(),
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - self.ipv6_prefix);
                let network = Ipv6Addr::from(u128::from(v6) & mask);
                format!("{network}/{}", self.ipv6_prefix)
            }
        }
    }
}

impl Default for IpGrouping {
    fn default() -> Self {
        IpGrouping {
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_slash_64_and_ipv4_clients_are_whole() {
        let by = IpGrouping::default();
        assert_eq!(by.bucket("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(by.bucket("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64");
        assert_eq!(by.bucket("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(by.bucket("203.0.113.7"), "203.0.113.7");
        assert_eq!(by.bucket("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(by.bucket("not-an-ip"), "not-an-ip");
    }

    #[test]
    fn prefix_lengths_are_configurable() {
        let by = IpGrouping::new(24, 48).unwrap();
        assert_eq!(by.bucket("203.0.113.7"), "203.0.113.0/24");
        assert_eq!(by.bucket("2001:db8:1:2::1"), "2001:db8:1::/48");
        let whole = IpGrouping::new(32, 128).unwrap();
        assert_eq!(whole.bucket("2001:db8::1"), "2001:db8::1");
        let widest = IpGrouping::new(1, 1).unwrap();
        assert_eq!(widest.bucket("203.0.113.7"), "128.0.0.0/1");
        assert_eq!(widest.bucket("::1"), "::/1");
        for (v4, v6) in [(0, 64), (33, 64), (32, 0), (32, 129)] {
            assert!(IpGrouping::new(v4, v6).is_err(), "{v4} {v6}");
        }
    }

    #[test]
    fn overrides_name_buckets() {
        let by = IpGrouping::default();
        assert_eq!(
            by.override_bucket("2001:db8:1:2::9").unwrap(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            by.override_bucket("2001:db8:1:2::/64").unwrap(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(by.override_bucket("10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(by.override_bucket("10.0.0.1/32").unwrap(), "10.0.0.1");
        let err = by.override_bucket("2001:db8::/48").unwrap_err();
        assert!(err.contains("keyed by /64 (ipv6_prefix = 64)"), "{err}");
        assert!(by.override_bucket("gold").is_err());
    }
}
