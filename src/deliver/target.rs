//! Outgoing safety: which URLs and addresses a webhook may be sent to.
//!
//! An endpoint URL is `http` or `https`, has a host and carries no
//! credentials. Unless private targets are allowed
//! (`PGWEBHOOKS_ALLOW_PRIVATE_TARGETS`), an address that is loopback,
//! private, link-local, shared (CGNAT), unspecified, documentation or
//! reserved is refused — whether the URL names it literally or a host name
//! resolves (or re-resolves: DNS rebinding) to it. Cloud metadata services
//! (all of IPv4 link-local 169.254.0.0/16, fd00:ec2::/32, and the known
//! addresses and names of other clouds) and multicast/broadcast addresses
//! are refused even then. The checks are
//! pure functions of the address; [`Resolver`] applies them to every DNS
//! answer the HTTP client uses, so what was checked is what is connected to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// The setting that allows private targets, as error messages name it.
pub const ALLOW_SETTING: &str = "PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true (--allow-private-targets)";

/// Why an address is not an ordinary public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Loopback,
    Private,
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT.
    Shared,
    Unspecified,
    /// Documentation and benchmarking ranges.
    Documentation,
    Reserved,
    /// Never allowed: cloud metadata services hand out credentials.
    Metadata,
    /// Never allowed: not a unicast address.
    Multicast,
    Broadcast,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Loopback => "a loopback address",
            Kind::Private => "a private address",
            Kind::LinkLocal => "a link-local address",
            Kind::Shared => "a shared (carrier-grade NAT) address",
            Kind::Unspecified => "an unspecified address",
            Kind::Documentation => "a documentation/benchmarking address",
            Kind::Reserved => "a reserved address",
            Kind::Metadata => "a cloud metadata address",
            Kind::Multicast => "a multicast address",
            Kind::Broadcast => "the broadcast address",
        }
    }

    /// Allowed when private targets are.
    pub fn allowed_when_private(self) -> bool {
        !matches!(self, Kind::Metadata | Kind::Multicast | Kind::Broadcast)
    }
}

/// A target refused for what it is or resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The host name, when the URL named one.
    pub name: Option<String>,
    /// The address, when one was refused (a metadata host name has none).
    pub ip: Option<IpAddr>,
    pub kind: Kind,
}

impl Refused {
    /// What the target is: `127.0.0.1 is a loopback address`.
    pub fn what(&self) -> String {
        let what = self.kind.describe();
        match (&self.name, self.ip) {
            (Some(name), Some(ip)) => format!("{name} resolves to {ip}, {what}"),
            (None, Some(ip)) => format!("{ip} is {what}"),
            (Some(name), None) => format!("{name} is {what}"),
            (None, None) => what.to_owned(),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.what())?;
        if self.kind.allowed_when_private() {
            write!(f, "; set {ALLOW_SETTING} to allow private targets")
        } else {
            f.write_str("; never allowed as a webhook target")
        }
    }
}

impl std::error::Error for Refused {}

/// Why an endpoint URL cannot be used. Messages never repeat the URL (a
/// Make.com URL is a credential), only its host.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Only [`check_resolved`]: the host did not resolve (checked again at
    /// every delivery).
    #[error("cannot resolve {host}: {source}")]
    Unresolved {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// See [`check_resolved`].
    #[error("cannot resolve {host} ({source}), and deliveries go through a proxy (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY) that would resolve it where its address cannot be checked: use a name that resolves here, or allow private targets")]
    UnresolvedBehindProxy {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses an endpoint URL and checks its form: `http` or `https`, a host,
/// no `user:password@`.
pub fn parse(url: &str) -> Result<Url, TargetError> {
    let parsed = Url::parse(url.trim()).map_err(|e| TargetError::Invalid(format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Invalid(format!(
            "the URL must be http:// or https:// (not {}://)",
            parsed.scheme()
        )));
    }
    // The URL parser forgives `http:///path` and `http:host` by taking the
    // first path segment as the host: require `scheme://host` as written.
    let written_host = url
        .trim()
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .map(|authority| authority.rsplit_once('@').map_or(authority, |(_, h)| h));
    if parsed.host_str().is_none_or(str::is_empty) || written_host.is_none_or(str::is_empty) {
        return Err(TargetError::Invalid(
            "the URL has no host (expected http://host/path or https://host/path)".into(),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Invalid(
            "the URL carries credentials (user:password@); send them in a header instead \
             (--header 'authorization: Basic …')"
                .into(),
        ));
    }
    Ok(parsed)
}

pub use crate::redact::redact;

/// What a URL's host is.
enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

fn host(url: &Url) -> Option<Host<'_>> {
    let h = url.host_str()?;
    // The URL parser normalises IPv4 forms (2130706433, 0x7f.1) to dotted
    // quads and brackets IPv6 literals.
    if let Some(v6) = h.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return v6.parse().ok().map(|ip| Host::Ip(IpAddr::V6(ip)));
    }
    Some(match h.parse::<Ipv4Addr>() {
        Ok(ip) => Host::Ip(IpAddr::V4(ip)),
        Err(_) => Host::Name(h),
    })
}

/// Everything that can be checked without DNS: the form, an IP-literal
/// host, and metadata host names. Host names are checked as they resolve
/// ([`Resolver`], [`check_resolved`]).
pub fn check(url: &str, allow_private: bool) -> Result<Url, TargetError> {
    let parsed = parse(url)?;
    match host(&parsed) {
        Some(Host::Ip(ip)) => check_ip(ip, allow_private).map_err(|kind| Refused {
            name: None,
            ip: Some(ip),
            kind,
        })?,
        Some(Host::Name(name)) => check_name(name, allow_private)?,
        None => return Err(TargetError::Invalid("the URL has no host".into())),
    }
    Ok(parsed)
}

/// Host names of cloud metadata services (the addresses are refused too).
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Refuses metadata service names, and loopback names (`localhost`,
/// `*.localhost`, with or without the final dot: RFC 6761) unless private
/// targets are allowed, before any lookup: a name a proxy resolves for us
/// is never looked up here.
pub fn check_name(name: &str, allow_private: bool) -> Result<(), Refused> {
    let n = normalize(name);
    let kind = if METADATA_NAMES.contains(&n.as_str()) {
        Kind::Metadata
    } else if !allow_private && (n == "localhost" || n.ends_with(".localhost")) {
        Kind::Loopback
    } else {
        return Ok(());
    };
    Err(Refused {
        name: Some(n),
        ip: None,
        kind,
    })
}

/// Is this address allowed? `Err` says what it is.
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), Kind> {
    match classify(ip) {
        None => Ok(()),
        Some(kind) if allow_private && kind.allowed_when_private() => Ok(()),
        Some(kind) => Err(kind),
    }
}

/// What an address is; `None` for an ordinary public address. An IPv6
/// address embedding an IPv4 one (mapped, NAT64, 6to4) is what its IPv4
/// address is.
pub fn classify(ip: IpAddr) -> Option<Kind> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Addresses of metadata services outside 169.254.0.0/16 (all of which is
/// treated as metadata: AWS/GCP/Azure/OpenStack/Oracle 169.254.169.254, AWS
/// ECS 169.254.170.2, EKS Pod Identity 169.254.170.23, Tencent 169.254.0.23,
/// the AWS DNS resolver 169.254.169.253, and whatever a cloud adds next):
/// Alibaba (100.100.100.200), Azure's WireServer (168.63.129.16).
const METADATA_V4: &[[u8; 4]] = &[[100, 100, 100, 200], [168, 63, 129, 16]];

fn classify_v4(ip: Ipv4Addr) -> Option<Kind> {
    let o = ip.octets();
    if METADATA_V4.contains(&o) {
        return Some(Kind::Metadata);
    }
    Some(match o {
        [0, ..] => Kind::Unspecified,
        [127, ..] => Kind::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => Kind::Private,
        // IPv4 link-local is where clouds serve credentials.
        [169, 254, ..] => Kind::Metadata,
        [100, 64..=127, ..] => Kind::Shared,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] | [198, 18..=19, ..] => Kind::Documentation,
        [192, 0, 0, _] | [192, 88, 99, _] => Kind::Reserved,
        [255, 255, 255, 255] => Kind::Broadcast,
        [224..=239, ..] => Kind::Multicast,
        [240..=255, ..] => Kind::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Kind> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    Some(match s {
        // AWS's IPv6 metadata and credential services (IMDS fd00:ec2::254,
        // EKS Pod Identity fd00:ec2::23, DNS fd00:ec2::253, …).
        [0xfd00, 0xec2, ..] => Kind::Metadata,
        [0, 0, 0, 0, 0, 0, 0, 0] => Kind::Unspecified,
        [0, 0, 0, 0, 0, 0, 0, 1] => Kind::Loopback,
        // IPv4-compatible (deprecated) and IPv4-translated (SIIT).
        [0, 0, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Kind::Reserved,
        // NAT64 (well-known prefix) and 6to4 carry an IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        // RFC 8215 local-use NAT64: the /96 form carries the IPv4 address
        // last, like the well-known prefix; a longer form (RFC 6052 /48,
        // /56, /64) is refused, as metadata if any reading of it is.
        [0x64, 0xff9b, 1, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => return Some(local_nat64(ip)),
        [0x2002, hi, lo, ..] => return classify_v4(embedded(hi, lo)),
        [0x100, 0, 0, 0, ..] => Kind::Reserved,
        [0x2001, 0xdb8, ..] | [0x3fff, 0..=0x0fff, ..] | [0x2001, 0x2, 0, ..] => Kind::Documentation,
        [0x2001, 0..=0x1ff, ..] => Kind::Reserved,
        [0xfc00..=0xfdff, ..] => Kind::Private,
        [0xfe80..=0xfebf, ..] => Kind::LinkLocal,
        [0xfec0..=0xfeff, ..] => Kind::Private,
        [0xff00..=0xffff, ..] => Kind::Multicast,
        _ => return None,
    })
}

/// A 64:ff9b:1::/48 address not in its /96 form: the IPv4 address it embeds
/// depends on a prefix length only the network knows (RFC 6052 2.2).
fn local_nat64(ip: Ipv6Addr) -> Kind {
    let b = ip.octets();
    // The IPv4 address under a /48, /56 and /64 prefix (octet 8 is `u`).
    let readings = [
        [b[6], b[7], b[9], b[10]],
        [b[7], b[9], b[10], b[11]],
        [b[9], b[10], b[11], b[12]],
    ];
    if readings
        .iter()
        .any(|o| classify_v4(Ipv4Addr::from(*o)) == Some(Kind::Metadata))
    {
        Kind::Metadata
    } else {
        Kind::Reserved
    }
}

/// Keeps the allowed addresses of `name`'s DNS answer; refuses when none
/// is left, naming the first refused address.
pub fn filter(
    name: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Refused> {
    let mut first_refused = None;
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match check_ip(a.ip(), allow_private) {
            Ok(()) => true,
            Err(kind) => {
                first_refused.get_or_insert((a.ip(), kind));
                false
            }
        })
        .collect();
    match first_refused {
        Some((ip, kind)) if allowed.is_empty() => Err(Refused {
            name: Some(normalize(name)),
            ip: Some(ip),
            kind,
        }),
        _ => Ok(allowed),
    }
}

/// [`check`], then resolves a host name and applies [`filter`]: what
/// `pgwebhooks endpoint add` and the API run. A name that does not
/// resolve is [`TargetError::Unresolved`] (the caller may accept it: its
/// addresses are checked at every delivery), except behind a proxy
/// (`HTTP_PROXY`…) with private targets refused: the proxy resolves it
/// where we cannot check, so it is refused ([`TargetError::UnresolvedBehindProxy`]).
pub async fn check_resolved(url: &str, allow_private: bool) -> Result<Url, TargetError> {
    let parsed = check(url, allow_private)?;
    if let Some(Host::Name(name)) = host(&parsed) {
        let addrs = match tokio::net::lookup_host((name, 0)).await {
            Ok(addrs) => addrs,
            Err(source) if !allow_private && !proxy_hosts().is_empty() => {
                return Err(TargetError::UnresolvedBehindProxy {
                    host: name.to_owned(),
                    source,
                })
            }
            Err(source) => {
                return Err(TargetError::Unresolved {
                    host: name.to_owned(),
                    source,
                })
            }
        };
        filter(name, addrs, allow_private)?;
    }
    Ok(parsed)
}

/// At send, for a request a proxy will make: the proxy resolves the name,
/// so check here what it resolves to (where it resolves here; a name only
/// the proxy knows passes, and the proxy's own rules apply to it).
pub async fn check_behind_proxy(url: &Url, allow_private: bool) -> Result<(), TargetError> {
    if allow_private {
        return Ok(());
    }
    if let Some(Host::Name(name)) = host(url) {
        if let Ok(addrs) = tokio::net::lookup_host((name, 0)).await {
            filter(name, addrs, allow_private)?;
        }
    }
    Ok(())
}

/// The HTTP client's DNS resolver: resolves through tokio (the system
/// resolver) and drops refused addresses, so a name that resolves — now or
/// after a rebinding — to a refused address is never connected to.
///
/// The hosts of configured HTTP proxies (`HTTPS_PROXY`…) are the operator's
/// choice: a resolver made [`Resolver::for_proxies`] does not filter them.
/// Such a resolver must only serve a client that never connects directly to
/// a URL naming a proxy host: `http::Http` sends those URLs through a second
/// client, without proxies, whose resolver ([`Resolver::new`]) filters
/// every name. So the exemption covers only connections to the proxy.
pub struct Resolver {
    allow_private: bool,
    proxies: Vec<String>,
}

impl Resolver {
    /// Filters every name.
    pub fn new(allow_private: bool) -> Resolver {
        Resolver {
            allow_private,
            proxies: Vec::new(),
        }
    }

    /// Leaves these proxy hosts unfiltered (see the type's documentation).
    pub fn for_proxies(allow_private: bool, proxies: Vec<String>) -> Resolver {
        Resolver {
            allow_private,
            proxies: proxies.iter().map(|p| normalize(p)).collect(),
        }
    }
}

/// Does this URL name one of these proxy hosts?
pub fn names_proxy(url: &Url, proxies: &[String]) -> bool {
    match host(url) {
        Some(Host::Name(name)) => {
            let name = normalize(name);
            proxies.iter().any(|p| normalize(p) == name)
        }
        _ => false,
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        let unfiltered = self.proxies.contains(&normalize(&name));
        Box::pin(resolve_checked(name, unfiltered, self.allow_private))
    }
}

async fn resolve_checked(
    name: String,
    unfiltered: bool,
    allow_private: bool,
) -> Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> {
    if unfiltered {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
        return Ok(Box::new(addrs.into_iter()));
    }
    check_name(&name, allow_private)?;
    let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
    Ok(Box::new(filter(&name, addrs, allow_private)?.into_iter()))
}

/// Hosts of the proxies reqwest takes from the environment.
pub fn proxy_hosts() -> Vec<String> {
    [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok())
    .filter(|v| !v.trim().is_empty())
    .filter_map(|v| {
        let v = v.trim();
        Url::parse(v)
            .ok()
            .filter(|u| u.host_str().is_some())
            .or_else(|| Url::parse(&format!("http://{v}")).ok())
    })
    .filter_map(|u| u.host_str().map(normalize))
    .collect()
}

/// The refusal somewhere in an error's chain (the resolver's, wrapped by
/// the HTTP client).
pub fn find_refused<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_written_host_are_refused() {
        for url in [
            "http:///nohost",
            "https:///a/b",
            "http:nohost/x",
            "http://",
            "http://@/x",
            "http://?q",
        ] {
            let e = parse(url).expect_err(url).to_string();
            assert!(e.contains("no host") || e.contains("empty host"), "{url}: {e}");
        }
        for url in [
            "http://h/x",
            "https://h:8443",
            "http://[::1]:80/",
            "https://hook.eu1.make.com/abc",
        ] {
            assert!(parse(url).is_ok(), "{url}");
        }
    }
    use Kind::*;

    #[test]
    fn addresses() {
        let cases: &[(&str, Option<Kind>)] = &[
            ("8.8.8.8", None),
            ("93.184.215.14", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("223.255.255.255", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.1.2", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.254", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("169.254.0.1", Some(Metadata)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.170.23", Some(Metadata)),
            ("169.254.0.23", Some(Metadata)),
            ("169.254.169.253", Some(Metadata)),
            ("169.254.255.255", Some(Metadata)),
            ("169.253.255.255", None),
            ("169.255.0.1", None),
            ("169.254.170.2", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("168.63.129.16", Some(Metadata)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("198.18.0.1", Some(Documentation)),
            ("198.19.255.255", Some(Documentation)),
            ("192.0.0.8", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("2606:4700::1111", None),
            ("2a00:1450:4001:80b::200e", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Reserved)),
            ("::ffff:0:a00:1", Some(Reserved)),
            ("64:ff9b::a9fe:a9fe", Some(Metadata)),
            ("64:ff9b::c0a8:101", Some(Private)),
            ("64:ff9b::808:808", None),
            // RFC 8215 local-use NAT64, /96 form.
            ("64:ff9b:1::7f00:1", Some(Loopback)),
            ("64:ff9b:1::a9fe:a9fe", Some(Metadata)),
            ("64:ff9b:1::a00:1", Some(Private)),
            ("64:ff9b:1::808:808", None),
            // Longer forms: refused; as metadata when a reading is (/48, /56, /64).
            ("64:ff9b:1:808:8:800::", Some(Reserved)),
            ("64:ff9b:1:a9fe:a9:fe00::", Some(Metadata)),
            ("64:ff9b:1:a9:fe:a9fe::", Some(Metadata)),
            ("64:ff9b:1:0:a9:fea9:fe00:0", Some(Metadata)),
            ("64:ff9b:2::7f00:1", None),
            ("2002:7f00:1::", Some(Loopback)),
            ("2002:a00:1::1", Some(Private)),
            ("2002:808:808::1", None),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fd00:ec2::23", Some(Metadata)),
            ("fd00:ec2::253", Some(Metadata)),
            ("fd00:ec2:ffff::1", Some(Metadata)),
            ("fd00:ec3::23", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Private)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Documentation)),
            ("2001::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
        ];
        for (ip, kind) in cases {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(parsed), *kind, "{ip}");
        }
    }

    #[test]
    fn the_setting_allows_private_but_never_metadata_or_multicast() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(check_ip(ip("8.8.8.8"), false), Ok(()));
        assert_eq!(check_ip(ip("127.0.0.1"), false), Err(Loopback));
        for allowed in [
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "fe80::1",
            "100.64.0.1",
            "fd00:ec3::1",
        ] {
            assert_eq!(check_ip(ip(allowed), true), Ok(()), "{allowed}");
        }
        for refused in [
            "169.254.169.254",
            "fd00:ec2::254",
            "224.0.0.1",
            "255.255.255.255",
            // EKS Pod Identity, Tencent, the AWS resolver, any link-local.
            "169.254.170.23",
            "fd00:ec2::23",
            "169.254.0.23",
            "169.254.169.253",
            "169.254.1.1",
            "64:ff9b:1::a9fe:aa17",
        ] {
            assert!(check_ip(ip(refused), true).is_err(), "{refused}");
        }
    }

    #[test]
    fn redacted_urls_keep_only_scheme_host_and_port() {
        for (url, shown) in [
            (
                "https://hook.eu1.make.com/abcSECRETTOKENxyz",
                "https://hook.eu1.make.com/…",
            ),
            (
                "https://example.com:8443/hook?key=SECRET",
                "https://example.com:8443/…",
            ),
            ("https://example.com?key=SECRET", "https://example.com/…"),
            ("https://example.com#SECRET", "https://example.com/…"),
            ("http://user:SECRET@example.com/x", "http://example.com/…"),
            ("http://a@b@example.com", "http://example.com"),
            ("http://[::1]:8080/", "http://[::1]:8080/"),
            ("https://example.com", "https://example.com"),
            ("no scheme SECRET", "…"),
            ("a/b://SECRET", "…"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn url_form() {
        for ok in [
            "http://example.com/hook",
            "https://hook.eu1.make.com/abc?x=1",
            "HTTPS://Example.COM:8443/",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("ftp://example.com/", "http:// or https://"),
            ("file:///etc/passwd", "http:// or https://"),
            ("not a url", "not a URL"),
            ("http://", "not a URL"),
            ("https://user:pass@example.com/", "credentials"),
            ("https://token@example.com/", "credentials"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(
                !e.contains("pass@") && !e.contains("token@"),
                "never repeats credentials: {e}"
            );
        }
    }

    #[test]
    fn literal_hosts_and_metadata_names() {
        let refused = |url: &str, allow: bool| match check(url, allow) {
            Err(TargetError::Refused(r)) => Some(r),
            Ok(_) => None,
            Err(e) => panic!("{url}: {e}"),
        };
        assert!(refused("https://example.com/", false).is_none());
        assert!(refused("https://8.8.8.8/", false).is_none());
        let r = refused("http://169.254.169.254/latest/meta-data/", false).unwrap();
        assert_eq!(r.kind, Metadata);
        assert_eq!(
            r.to_string(),
            "refused: 169.254.169.254 is a cloud metadata address; never allowed as a webhook target"
        );
        let r = refused("http://10.0.0.5:8080/hook", false).unwrap();
        assert_eq!(
            r.to_string(),
            format!("refused: 10.0.0.5 is a private address; set {ALLOW_SETTING} to allow private targets")
        );
        assert!(refused("http://10.0.0.5:8080/hook", true).is_none());
        // Other spellings of loopback, normalised by the URL parser.
        for url in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert_eq!(refused(url, false).map(|r| r.kind), Some(Loopback), "{url}");
        }
        assert_eq!(
            refused("http://[::ffff:a00:1]/", false).map(|r| r.kind),
            Some(Private)
        );
        for url in [
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./",
            "http://metadata/",
        ] {
            let r = refused(url, true).unwrap();
            assert_eq!(r.kind, Metadata, "{url}");
            assert!(r.to_string().starts_with("refused: metadata"), "{r}");
        }
    }

    #[test]
    fn resolved_answers_keep_only_allowed_addresses() {
        let sa = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let mixed = [sa("10.0.0.1"), sa("93.184.215.14")];
        assert_eq!(
            filter("mixed.example", mixed, false),
            Ok(vec![sa("93.184.215.14")])
        );
        let r = filter("Rebound.Example.", [sa("127.0.0.1"), sa("::1")], false).unwrap_err();
        assert_eq!(
            r.to_string(),
            format!(
                "refused: rebound.example resolves to 127.0.0.1, a loopback address; set {ALLOW_SETTING} \
                 to allow private targets"
            )
        );
        assert_eq!(filter("x", [sa("127.0.0.1")], true), Ok(vec![sa("127.0.0.1")]));
        assert!(filter("x", [sa("169.254.169.254")], true).is_err());
    }

    #[test]
    fn metadata_urls_are_refused_even_when_private_targets_are_allowed() {
        for url in [
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/",
            "http://169.254.0.23/",
            "http://169.254.169.253/",
            "http://[64:ff9b:1::a9fe:a9fe]/",
        ] {
            match check(url, true) {
                Err(TargetError::Refused(r)) => assert_eq!(r.kind, Metadata, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(matches!(
            check("http://[64:ff9b:1::7f00:1]/", false),
            Err(TargetError::Refused(Refused { kind: Loopback, .. }))
        ));
        assert!(check("http://[64:ff9b:1::7f00:1]/", true).is_ok());
    }

    #[test]
    fn loopback_names_are_refused_by_name_unless_private_targets_are_allowed() {
        for url in [
            "http://localhost/",
            "http://localhost.:8080/",
            "http://LOCALHOST/",
            "http://db.localhost/",
            "http://a.b.localhost./x",
        ] {
            match check(url, false) {
                Err(TargetError::Refused(r)) => {
                    assert_eq!((r.kind, r.ip), (Loopback, None), "{url}");
                    assert!(r.to_string().contains("is a loopback address"), "{r}");
                }
                other => panic!("{url}: {other:?}"),
            }
            assert!(check(url, true).is_ok(), "{url}");
        }
        // Only whole labels: these are ordinary names.
        for url in [
            "http://notlocalhost/",
            "http://localhost.example.com/",
            "http://mylocalhost./",
        ] {
            assert!(check(url, false).is_ok(), "{url}");
        }
    }

    #[tokio::test]
    async fn behind_a_proxy_what_a_name_resolves_to_here_is_checked() {
        let url = |s: &str| Url::parse(s).unwrap();
        // `localhost` resolves here (to a loopback address): refused by
        // address too, whatever its name.
        assert!(matches!(
            check_behind_proxy(&url("http://localhost:9/"), false).await,
            Err(TargetError::Refused(Refused { kind: Loopback, .. }))
        ));
        assert!(check_behind_proxy(&url("http://localhost:9/"), true)
            .await
            .is_ok());
        // A name only the proxy can resolve passes (its rules apply).
        assert!(check_behind_proxy(&url("http://no-such-host.invalid/"), false)
            .await
            .is_ok());
    }

    #[test]
    fn only_urls_naming_a_proxy_host_are_told_apart() {
        let proxies = vec!["Proxy.internal.".to_owned()];
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(names_proxy(&url("http://Proxy.Internal.:8080/x"), &proxies));
        assert!(names_proxy(&url("https://proxy.internal/"), &proxies));
        assert!(!names_proxy(&url("https://example.com/"), &proxies));
        assert!(!names_proxy(&url("http://10.0.0.1/"), &proxies));
    }

    #[tokio::test]
    async fn only_a_resolver_for_proxies_leaves_their_hosts_unfiltered() {
        use reqwest::dns::Resolve;
        let err = Resolver::new(false)
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("refused");
        assert_eq!(find_refused(&*err).map(|r| r.kind), Some(Loopback));
        let addrs: Vec<SocketAddr> = Resolver::for_proxies(false, vec!["LOCALHOST".into()])
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_allowed() {
        use reqwest::dns::Resolve;
        let err = Resolver::new(false)
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("refused");
        let refused = find_refused(&*err).expect("a Refused in the chain");
        assert_eq!(refused.kind, Loopback);
        let addrs: Vec<SocketAddr> = Resolver::new(true)
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
        assert!(check_resolved("http://localhost:9/", false).await.is_err());
        assert!(check_resolved("http://localhost:9/", true).await.is_ok());
    }
}
