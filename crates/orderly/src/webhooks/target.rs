//! Which URLs and addresses webhook deliveries may reach (SSRF protection).
//!
//! A webhook URL is chosen by a client but fetched by us, from inside our network. Left
//! unchecked it lets a client make us call loopback services, cloud metadata endpoints
//! (`169.254.169.254`) or anything else on a private network. The rule, for every address a
//! delivery may connect to: an address on the operator's allow-list
//! (`ORDERLY_WEBHOOK_ALLOWED_TARGETS`) is reachable over http or https; any other address only
//! when it is globally routable unicast and the URL is https.
//!
//! The rule is applied twice. [`TargetUrl::check`] applies it when a URL is registered, so a
//! client learns at once that it will never be delivered to. That check alone is not enough:
//! a name can resolve to a public address when checked and to `127.0.0.1` a moment later (DNS
//! rebinding), so any check made before the call is raced by the call's own resolution. The
//! delivery [`client`] therefore resolves names through [`SafeResolver`], which applies the
//! rule to the very addresses the connection is made to. reqwest never consults a resolver for
//! IP-literal hosts, so [`check_literal`] covers those before each request.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// How long registration waits for a host name to resolve before treating it as unresolvable.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per host: deliveries to one endpoint come in bursts, but each
/// endpoint is one of many, so a few suffice.
const MAX_IDLE_CONNECTIONS_PER_HOST: usize = 4;

/// The scheme of a webhook URL, which decides which addresses it may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn of(url: &Url) -> Result<Self, UrlRefusal> {
        match url.scheme() {
            "http" => Ok(Self::Http),
            "https" => Ok(Self::Https),
            other => Err(UrlRefusal::UnsupportedScheme(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operator's allow-list: addresses and host names webhooks may reach even though they are
/// not public, and over plain http.
///
/// Parsed from a comma-separated list of CIDR ranges (`127.0.0.0/8`, `fd00::/8`), single
/// addresses (`10.1.2.3`, `::1`) and host names (`hooks.internal`; exact, case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    ranges: Vec<IpNet>,
    /// Lowercase.
    hosts: Vec<String>,
}

/// An allow-list entry that is neither a CIDR range, an address nor a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a CIDR range (10.0.0.0/8), an IP address (10.1.2.3, ::1) or a host name (hooks.internal)")]
pub struct InvalidAllowListEntry(pub String);

impl FromStr for AllowList {
    type Err = InvalidAllowListEntry;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut allow = Self::default();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            if entry.contains('/') {
                let range = entry.parse::<IpNet>().map_err(|_| InvalidAllowListEntry(entry.to_owned()))?;
                allow.ranges.push(range.trunc());
            } else if let Ok(address) = entry.parse::<IpAddr>() {
                allow.ranges.push(IpNet::from(address));
            } else if is_host_name(entry) {
                allow.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(InvalidAllowListEntry(entry.to_owned()));
            }
        }
        Ok(allow)
    }
}

/// Whether `entry` can be the host of a URL as the URL parser leaves it. Names that the parser
/// would read as IPv4 addresses (`10.1`, `0x7f`) are refused: a URL never keeps them as names,
/// so such an entry could never match.
fn is_host_name(entry: &str) -> bool {
    let name = entry.strip_suffix('.').unwrap_or(entry);
    let labels_are_valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        });
    labels_are_valid && !name.rsplit('.').next().is_some_and(looks_like_ipv4_number)
}

/// The WHATWG URL parser's test for a last label that makes a host an IPv4 address.
fn looks_like_ipv4_number(label: &str) -> bool {
    let hex_digits = label.strip_prefix("0x").or_else(|| label.strip_prefix("0X"));
    match hex_digits {
        Some(digits) => digits.bytes().all(|byte| byte.is_ascii_hexdigit()),
        None => label.bytes().all(|byte| byte.is_ascii_digit()),
    }
}

impl AllowList {
    /// Whether the host name is on the list by name.
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host))
    }

    /// Whether the address is in one of the listed ranges.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        // A socket given `::ffff:10.1.2.3` connects to 10.1.2.3, so it counts as that address.
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.ranges.iter().any(|range| range.contains(&ip) || mapped.is_some_and(|v4| range.contains(&v4)))
    }

    /// Whether a delivery over `scheme` may connect to `ip`.
    pub fn permits(&self, ip: IpAddr, scheme: Scheme) -> bool {
        self.allows_ip(ip) || (is_public(ip) && scheme == Scheme::Https)
    }

    /// The refusal for connecting to `ip` (which `host` names), if any.
    fn refusal(&self, host: &str, ip: IpAddr, scheme: Scheme) -> Option<UrlRefusal> {
        if self.permits(ip, scheme) {
            None
        } else if is_public(ip) {
            Some(UrlRefusal::NotHttps)
        } else {
            Some(UrlRefusal::Unsafe { host: host.to_owned(), address: ip })
        }
    }
}

/// Whether `ip` is globally routable unicast: the only addresses a webhook may reach without
/// the operator allow-listing them.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 ranges that are not globally routable unicast (RFC 6890 and the IANA special-purpose
/// registry).
const NON_PUBLIC_V4: &[(Ipv4Addr, u32)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !NON_PUBLIC_V4.iter().any(|&(network, prefix_len)| {
        let mask = u32::MAX << (32 - prefix_len);
        bits & mask == u32::from(network)
    })
}

/// IPv6 ranges inside global unicast (2000::/3) that are still not globally routable unicast.
const NON_PUBLIC_GLOBAL_V6: &[(Ipv6Addr, u32)] = &[
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
];

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Addresses that carry an IPv4 address reach that address (directly or through a
    // translator), so they are as public as it is. `::` and `::1` embed 0.0.0.0 and 0.0.0.1,
    // which the IPv4 rule refuses.
    if let Some(embedded) = embedded_ipv4(ip) {
        return is_public_v4(embedded);
    }
    // Everything else outside global unicast is loopback, unique local, link-local,
    // site-local, multicast, discard-only, local NAT64 (64:ff9b:1::/48) or unassigned.
    if !in_v6_range(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return false;
    }
    !NON_PUBLIC_GLOBAL_V6.iter().any(|&(network, prefix_len)| in_v6_range(ip, network, prefix_len))
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let last_32_bits = Ipv4Addr::from(u128::from(ip) as u32);
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(last_32_bits)
        }
        [0x2002, high, low, ..] => Some(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))),
        _ => None,
    }
}

fn in_v6_range(ip: Ipv6Addr, network: Ipv6Addr, prefix_len: u32) -> bool {
    let mask = u128::MAX << (128 - prefix_len);
    u128::from(ip) & mask == u128::from(network)
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("The URL is not valid: {0}.")]
    Malformed(String),
    #[error("The URL is longer than {MAX_URL_LEN} characters.")]
    TooLong,
    #[error("The URL has no host; give one, as in https://hooks.example.com/orders.")]
    NoHost,
    #[error("The URL's scheme `{0}` is not supported; webhook URLs must use https.")]
    UnsupportedScheme(String),
    #[error("Webhook URLs must use https; http is accepted only for hosts the operator has allow-listed.")]
    NotHttps,
    #[error("The URL must not contain a user name or password; authenticate with the webhook signature instead.")]
    Credentials,
    #[error("The host `{0}` could not be resolved; use a host name that resolves in public DNS.")]
    Unresolvable(String),
    #[error(
        "The host `{host}` points at {address}, which is not a public address; webhooks can only reach public addresses."
    )]
    Unsafe { host: String, address: IpAddr },
}

impl UrlRefusal {
    /// The machine-readable error code for an API response.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedScheme(_) | Self::NotHttps | Self::Credentials | Self::Unsafe { .. } => "unsafe_url",
            Self::Malformed(_) | Self::TooLong | Self::NoHost | Self::Unresolvable(_) => "invalid_url",
        }
    }
}

/// A webhook URL that passed [`TargetUrl::check`]: normalised, without a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    url: Url,
    scheme: Scheme,
}

impl TargetUrl {
    /// Parses `raw` and refuses it unless every address it leads to may be reached, resolving
    /// its host name if it has one.
    pub async fn check(raw: &str, allow: &AllowList) -> Result<TargetUrl, UrlRefusal> {
        // Checked before parsing too, so an enormous input is not parsed at all.
        if raw.len() > MAX_URL_LEN {
            return Err(UrlRefusal::TooLong);
        }
        // The WHATWG parser is the one HTTP clients use, so `http://2130706433/` and its kin
        // come out as the IP address they will connect to, not as a name.
        let mut url = Url::parse(raw).map_err(|error| UrlRefusal::Malformed(error.to_string()))?;
        let scheme = Scheme::of(&url)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefusal::Credentials);
        }
        url.set_fragment(None);
        if url.as_str().len() > MAX_URL_LEN {
            return Err(UrlRefusal::TooLong);
        }
        match target_host(&url)? {
            TargetHost::Address { text, ip } => check_address(allow, text, ip, scheme)?,
            TargetHost::Name(name) if allow.allows_host(name) => {}
            TargetHost::Name(name) => {
                let port = url.port_or_known_default().ok_or(UrlRefusal::NoHost)?;
                // Every address must be reachable: the connection may be made to any of them.
                for address in resolve(name, port).await? {
                    check_address(allow, name, address, scheme)?;
                }
            }
        }
        Ok(TargetUrl { url, scheme })
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// The host of an http(s) URL: an IP address or a name to resolve.
enum TargetHost<'a> {
    /// `text` is the host as written in the URL (`127.0.0.1`, `[::1]`).
    Address {
        text: &'a str,
        ip: IpAddr,
    },
    Name(&'a str),
}

/// The URL parser has already turned every host an http client would read as an address
/// (`2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`) into its canonical form, so a host is an
/// address exactly when that form parses as one.
fn target_host(url: &Url) -> Result<TargetHost<'_>, UrlRefusal> {
    let text = url.host_str().ok_or(UrlRefusal::NoHost)?;
    let ip = match text.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    Ok(match ip {
        Some(ip) => TargetHost::Address { text, ip },
        None => TargetHost::Name(text),
    })
}

fn check_address(allow: &AllowList, host: &str, ip: IpAddr, scheme: Scheme) -> Result<(), UrlRefusal> {
    allow.refusal(host, ip, scheme).map_or(Ok(()), Err)
}

/// The addresses `host` resolves to; none, an error or a timeout make it unresolvable.
async fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, UrlRefusal> {
    let unresolvable = || UrlRefusal::Unresolvable(host.to_owned());
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
    let addresses: Vec<IpAddr> =
        lookup.await.map_err(|_| unresolvable())?.map_err(|_| unresolvable())?.map(|address| address.ip()).collect();
    if addresses.is_empty() {
        return Err(unresolvable());
    }
    Ok(addresses)
}

/// Refuses a URL whose host is an IP address the rule does not permit. Call before every
/// delivery: reqwest connects to IP-literal hosts without asking [`SafeResolver`].
pub fn check_literal(url: &Url, allow: &AllowList) -> Result<(), UrlRefusal> {
    let scheme = Scheme::of(url)?;
    match target_host(url)? {
        TargetHost::Address { text, ip } => check_address(allow, text, ip, scheme),
        TargetHost::Name(_) => Ok(()),
    }
}

/// A DNS resolver that hands reqwest only the addresses a delivery over `scheme` may connect
/// to, so the address checked is the address connected to.
///
/// It resolves afresh on every call: a cached answer checked earlier is exactly what a
/// rebinding attack relies on. The resolver cannot see the URL's scheme, so a client built
/// with it must only be used for URLs of that scheme.
#[derive(Debug, Clone)]
pub struct SafeResolver {
    allow: Arc<AllowList>,
    scheme: Scheme,
}

impl SafeResolver {
    pub fn new(allow: Arc<AllowList>, scheme: Scheme) -> Self {
        Self { allow, scheme }
    }

    /// The resolved addresses a connection to `host` may use; an error when there are none.
    fn reachable(&self, host: &str, resolved: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
        let reachable: Vec<SocketAddr> = if self.allow.allows_host(host) {
            resolved
        } else {
            resolved.into_iter().filter(|address| self.allow.permits(address.ip(), self.scheme)).collect()
        };
        if reachable.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("webhook host `{host}` resolves to no address a {} delivery may reach", self.scheme),
            ));
        }
        Ok(reachable)
    }
}

impl Resolve for SafeResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in its place.
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let reachable = resolver.reachable(&host, resolved)?;
            let addresses: Addrs = Box::new(reachable.into_iter());
            Ok(addresses)
        })
    }
}

/// A client for delivering webhooks over `scheme` (use one client per scheme, matching
/// [`TargetUrl::scheme`]). Call [`check_literal`] before each request.
///
/// Redirects are not followed, since a redirect could lead to any URL, and proxies are not
/// used, since a proxy would resolve the name itself and bypass [`SafeResolver`]. Fails only
/// if `user_agent` is not a valid header value or the TLS backend cannot start.
pub fn client(
    allow: Arc<AllowList>,
    scheme: Scheme,
    timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(SafeResolver::new(allow, scheme)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(user_agent)
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS_PER_HOST)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn allow(text: &str) -> AllowList {
        text.parse().unwrap()
    }

    fn loopback_allowed() -> AllowList {
        allow("127.0.0.0/8,::1")
    }

    #[test]
    fn non_public_ipv4_classes_are_refused() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.254",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ];
        for address in refused {
            assert!(!is_public(ip(address)), "{address} should not be public");
        }
    }

    #[test]
    fn non_public_ipv6_classes_are_refused() {
        let refused = [
            "::",
            "::1",
            // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of non-public IPv4 addresses.
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "2002:7f00:0001::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            "64:ff9b:1::808:808",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:1::1",
            "2001:1ff::1",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "4000::1",
            "1000::1",
        ];
        for address in refused {
            assert!(!is_public(ip(address)), "{address} should not be public");
        }
    }

    #[test]
    fn globally_routable_addresses_are_public() {
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2a00:1450:4001::200e",
            "3ffe::1",
            "3fff:1000::1",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ];
        for address in public {
            assert!(is_public(ip(address)), "{address} should be public");
        }
    }

    #[test]
    fn allow_list_parses_ranges_addresses_and_host_names() {
        let list = allow(" 127.0.0.0/8, fd00::/8 ,::1,10.1.2.3, Hooks.Internal,, ");
        assert!(list.allows_ip(ip("127.9.9.9")));
        assert!(list.allows_ip(ip("fd00::42")));
        assert!(list.allows_ip(ip("::1")));
        assert!(list.allows_ip(ip("10.1.2.3")));
        assert!(!list.allows_ip(ip("10.1.2.4")));
        assert!(!list.allows_ip(ip("::2")));
        assert!(list.allows_host("hooks.internal"));
        assert!(list.allows_host("HOOKS.internal"));
        assert!(!list.allows_host("evil.hooks.internal"));
        assert!(!list.allows_host("hooks.internal.evil.example"));
    }

    #[test]
    fn allow_list_matches_ipv4_mapped_addresses_against_ipv4_ranges() {
        let list = allow("10.0.0.0/8");
        assert!(list.allows_ip(ip("::ffff:10.1.2.3")));
        assert!(!list.allows_ip(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn empty_allow_list_allows_nothing() {
        for text in ["", "  ", " , ,"] {
            assert_eq!(allow(text), AllowList::default());
        }
        assert!(!AllowList::default().allows_ip(ip("127.0.0.1")));
        assert!(!AllowList::default().allows_host("localhost"));
    }

    #[test]
    fn allow_list_refuses_bad_entries_by_name() {
        let bad = [
            "10.0.0.0/33",
            "10.0.0.0/x",
            "hooks internal",
            "http://hooks.internal",
            "-hooks",
            "a..b",
            "10.1",
            "0x7f",
            "*.internal",
            "fe80::1%eth0",
        ];
        for entry in bad {
            let error = format!("127.0.0.1, {entry}").parse::<AllowList>().unwrap_err();
            assert_eq!(error, InvalidAllowListEntry(entry.to_owned()));
            assert!(error.to_string().contains(entry));
        }
    }

    #[test]
    fn allow_listed_addresses_are_permitted_over_http_and_https() {
        let list = loopback_allowed();
        for scheme in [Scheme::Http, Scheme::Https] {
            assert!(list.permits(ip("127.0.0.1"), scheme));
            assert!(list.permits(ip("::1"), scheme));
            assert!(list.permits(ip("::ffff:127.0.0.1"), scheme));
        }
    }

    #[test]
    fn other_addresses_are_permitted_only_when_public_and_https() {
        let list = loopback_allowed();
        let cases = [
            ("8.8.8.8", Scheme::Https, true),
            ("8.8.8.8", Scheme::Http, false),
            ("2606:4700:4700::1111", Scheme::Https, true),
            ("2606:4700:4700::1111", Scheme::Http, false),
            ("10.0.0.1", Scheme::Https, false),
            ("169.254.169.254", Scheme::Https, false),
            ("::ffff:10.0.0.1", Scheme::Https, false),
        ];
        for (address, scheme, expected) in cases {
            assert_eq!(list.permits(ip(address), scheme), expected, "{address} over {scheme}");
        }
    }

    #[tokio::test]
    async fn unsafe_urls_are_refused_at_registration() {
        let nothing_allowed = AllowList::default();
        let cases = [
            ("ftp://example.com/hook", "unsafe_url"),
            ("javascript:alert(1)", "unsafe_url"),
            ("https://user:pw@example.com/", "unsafe_url"),
            ("https://user@example.com/", "unsafe_url"),
            ("http://8.8.8.8/", "unsafe_url"),
            ("https://127.0.0.1/", "unsafe_url"),
            ("https://2130706433/", "unsafe_url"),
            ("https://0x7f.1/", "unsafe_url"),
            ("https://0177.0.0.1/", "unsafe_url"),
            ("https://127.1/", "unsafe_url"),
            ("https://[::1]/", "unsafe_url"),
            ("https://[::]/", "unsafe_url"),
            ("https://[::ffff:127.0.0.1]/", "unsafe_url"),
            ("https://[::ffff:7f00:1]/", "unsafe_url"),
            ("https://[64:ff9b::a9fe:a9fe]/", "unsafe_url"),
            ("https://[2002:7f00:1::1]/", "unsafe_url"),
            ("https://169.254.169.254/latest/meta-data", "unsafe_url"),
            ("https://[fe80::1]/", "unsafe_url"),
            ("https://0.0.0.0/", "unsafe_url"),
            ("https://10.0.0.1:8443/hook", "unsafe_url"),
            ("https://localhost/", "unsafe_url"),
            ("http://localhost/", "unsafe_url"),
            ("not a url", "invalid_url"),
            ("https://", "invalid_url"),
            ("https://256.0.0.1/", "invalid_url"),
        ];
        for (raw, code) in cases {
            let refusal = TargetUrl::check(raw, &nothing_allowed).await.unwrap_err();
            assert_eq!(refusal.code(), code, "{raw}: {refusal}");
        }
    }

    #[tokio::test]
    async fn refusals_say_why() {
        let nothing_allowed = AllowList::default();
        let cases = [
            ("ftp://example.com/", UrlRefusal::UnsupportedScheme("ftp".to_owned())),
            ("https://user:pw@example.com/", UrlRefusal::Credentials),
            ("http://8.8.8.8/", UrlRefusal::NotHttps),
            ("https://2130706433/", UrlRefusal::Unsafe { host: "127.0.0.1".to_owned(), address: ip("127.0.0.1") }),
            (
                "https://[::ffff:127.0.0.1]/",
                UrlRefusal::Unsafe { host: "[::ffff:7f00:1]".to_owned(), address: ip("::ffff:127.0.0.1") },
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(TargetUrl::check(raw, &nothing_allowed).await.unwrap_err(), expected, "{raw}");
        }
    }

    #[tokio::test]
    async fn overlong_urls_are_refused() {
        let raw = format!("https://8.8.8.8/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(TargetUrl::check(&raw, &AllowList::default()).await.unwrap_err(), UrlRefusal::TooLong);
        // Percent-encoding can push a URL over the limit after parsing.
        let raw = format!("https://8.8.8.8/{}x", " ".repeat(MAX_URL_LEN - 20));
        assert_eq!(TargetUrl::check(&raw, &AllowList::default()).await.unwrap_err(), UrlRefusal::TooLong);
    }

    #[test]
    fn refusal_codes_separate_unsafe_targets_from_invalid_urls() {
        let cases = [
            (UrlRefusal::UnsupportedScheme("ftp".to_owned()), "unsafe_url"),
            (UrlRefusal::NotHttps, "unsafe_url"),
            (UrlRefusal::Credentials, "unsafe_url"),
            (UrlRefusal::Unsafe { host: "localhost".to_owned(), address: ip("127.0.0.1") }, "unsafe_url"),
            (UrlRefusal::Malformed("empty host".to_owned()), "invalid_url"),
            (UrlRefusal::TooLong, "invalid_url"),
            (UrlRefusal::NoHost, "invalid_url"),
            (UrlRefusal::Unresolvable("hooks.example".to_owned()), "invalid_url"),
        ];
        for (refusal, code) in cases {
            assert_eq!(refusal.code(), code, "{refusal}");
        }
    }

    #[tokio::test]
    async fn public_https_addresses_are_accepted_without_their_fragment() {
        let target = TargetUrl::check("https://8.8.8.8/hook#section", &AllowList::default()).await.unwrap();
        assert_eq!(target.as_str(), "https://8.8.8.8/hook");
        assert_eq!(target.to_string(), "https://8.8.8.8/hook");
        assert_eq!(target.scheme(), Scheme::Https);
        let target = TargetUrl::check("https://[2606:4700:4700::1111]:8443/x", &AllowList::default()).await.unwrap();
        assert_eq!(target.url().port(), Some(8443));
    }

    #[tokio::test]
    async fn allow_listed_local_targets_are_accepted_over_http() {
        let list = loopback_allowed();
        for raw in ["http://127.0.0.1:8080/hook", "http://localhost:9/x", "https://localhost/", "http://[::1]/"] {
            let target = TargetUrl::check(raw, &list).await.unwrap_or_else(|refusal| panic!("{raw}: {refusal}"));
            assert_eq!(target.as_str(), raw);
        }
        let target = TargetUrl::check("http://127.0.0.1:8080/hook", &list).await.unwrap();
        assert_eq!(target.scheme(), Scheme::Http);
    }

    #[tokio::test]
    async fn host_names_on_the_allow_list_skip_the_address_check() {
        // Resolution is skipped too, so the name need not exist here.
        let list = allow("Hooks.Internal");
        let target = TargetUrl::check("http://hooks.internal/x", &list).await.unwrap();
        assert_eq!(target.as_str(), "http://hooks.internal/x");
    }

    #[test]
    fn literal_hosts_are_checked_before_delivery() {
        let url = |raw: &str| Url::parse(raw).unwrap();
        let nothing_allowed = AllowList::default();
        assert!(check_literal(&url("https://8.8.8.8/"), &nothing_allowed).is_ok());
        assert!(check_literal(&url("https://hooks.example.com/"), &nothing_allowed).is_ok());
        assert_eq!(check_literal(&url("http://8.8.8.8/"), &nothing_allowed), Err(UrlRefusal::NotHttps));
        for raw in ["https://127.0.0.1/", "https://[::1]/", "https://[::ffff:10.0.0.1]/", "https://169.254.169.254/"] {
            assert_eq!(check_literal(&url(raw), &nothing_allowed).unwrap_err().code(), "unsafe_url", "{raw}");
        }
        assert!(check_literal(&url("http://127.0.0.1:8080/"), &loopback_allowed()).is_ok());
    }

    fn resolver(list: &str, scheme: Scheme) -> SafeResolver {
        SafeResolver::new(Arc::new(allow(list)), scheme)
    }

    fn socket(address: &str) -> SocketAddr {
        SocketAddr::new(ip(address), 0)
    }

    #[test]
    fn resolver_keeps_only_permitted_addresses() {
        let resolved = vec![socket("127.0.0.1"), socket("8.8.8.8"), socket("10.0.0.1")];
        let https = resolver("", Scheme::Https);
        assert_eq!(https.reachable("mixed.example", resolved.clone()).unwrap(), vec![socket("8.8.8.8")]);
        let http = resolver("127.0.0.0/8", Scheme::Http);
        assert_eq!(http.reachable("mixed.example", resolved).unwrap(), vec![socket("127.0.0.1")]);
    }

    #[test]
    fn resolver_refuses_a_host_with_no_permitted_address() {
        let error = resolver("", Scheme::Https).reachable("rebound.example", vec![socket("127.0.0.1")]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("rebound.example"));
        let public_over_http = resolver("", Scheme::Http).reachable("public.example", vec![socket("8.8.8.8")]);
        assert!(public_over_http.is_err());
    }

    #[test]
    fn resolver_passes_every_address_of_an_allow_listed_name() {
        let resolved = vec![socket("10.0.0.1"), socket("127.0.0.1")];
        let reachable = resolver("hooks.internal", Scheme::Http).reachable("HOOKS.internal", resolved.clone()).unwrap();
        assert_eq!(reachable, resolved);
    }

    #[tokio::test]
    async fn resolver_resolves_and_filters_real_names() {
        let name = |host: &str| host.parse::<Name>().unwrap();
        let allowed = resolver("127.0.0.0/8,::1", Scheme::Http).resolve(name("localhost")).await.unwrap();
        assert!(allowed.map(|address| address.ip()).all(|address| address.is_loopback()));
        let refused = resolver("", Scheme::Https).resolve(name("localhost")).await.err().unwrap();
        let refused = refused.downcast_ref::<io::Error>().unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
    }

    #[tokio::test]
    async fn client_refuses_to_connect_to_a_name_resolving_to_a_non_public_address() {
        let http =
            client(Arc::new(AllowList::default()), Scheme::Https, Duration::from_secs(5), "orderly-test").unwrap();
        let error = http.get("https://localhost:9/hook").send().await.unwrap_err();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut denied = false;
        while let Some(current) = source {
            denied |=
                current.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied);
            source = current.source();
        }
        assert!(denied, "expected the resolver's refusal, got {error:?}");
    }
}
