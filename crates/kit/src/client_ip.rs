//! Which client a request came from: the peer address, or, when the peer is a configured
//! trusted proxy, the address that proxy reports in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read from the right: each trusted proxy appends the address it
//! received the request from, so the first entry from the right that is not a trusted proxy is
//! the client. Entries left of it were written by the client itself and are ignored, so a
//! client cannot choose its own address. A peer that is not trusted is the client, whatever
//! headers it sends.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use http::HeaderMap;
use ipnet::IpNet;

/// Addresses whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of addresses and CIDR ranges: `10.0.0.0/8, 127.0.0.1, ::1`.
    fn from_str(text: &str) -> Result<Self, String> {
        let nets = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{entry}` is not an IP address or CIDR range"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(nets))
    }
}

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address for a request from `peer` with these headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Later header lines were appended later, so walk lines and entries right to left.
        let entries =
            headers.get_all("x-forwarded-for").iter().rev().flat_map(|line| {
                line.to_str().unwrap_or("").rsplit(',').map(str::trim).collect::<Vec<_>>().into_iter()
            });
        for entry in entries {
            match entry.parse::<IpAddr>() {
                Ok(address) => {
                    client = address.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                // Garbage is not an address: the last hop we could vouch for is the client.
                Err(_) => break,
            }
        }
        client
    }
}

/// The key a client is limited by: its IPv4 address, or its IPv6 /64, since one host is
/// usually given a whole /64 and could otherwise step around a per-address limit.
pub fn limit_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(proxies.client_ip(ip("203.0.113.9"), &headers(&["198.51.100.1"])), ip("203.0.113.9"));
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client_ip(ip("127.0.0.1"), &headers(&["198.51.100.1"])), ip("127.0.0.1"));
    }

    #[test]
    fn through_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 127.0.0.1".parse().unwrap();
        // The client forged the leftmost entry; the proxy appended the real address.
        let forwarded = headers(&["1.1.1.1, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &forwarded), ip("198.51.100.7"));
        // Only proxies in the chain: the leftmost one is as far as can be told.
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &headers(&["10.0.0.5"])), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &headers(&["198.51.100.7, nonsense"])), ip("127.0.0.1"));
    }

    #[test]
    fn proxies_parse_addresses_and_ranges() {
        assert!("".parse::<TrustedProxies>().unwrap().0.is_empty());
        assert_eq!("::1, 10.0.0.0/8".parse::<TrustedProxies>().unwrap().0.len(), 2);
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("localhost".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_slash_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), "2001:db8:1:2::/64");
        assert_eq!(limit_key(ip("192.0.2.4")), "192.0.2.4");
        assert_eq!(limit_key(ip("::ffff:192.0.2.4").to_canonical()), "192.0.2.4");
    }
}
