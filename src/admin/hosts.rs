//! Which `Host` the admin listener answers to (security audit 2, L5: DNS
//! rebinding). A page on `evil.example` whose name the attacker points at
//! 127.0.0.1 reaches a loopback listener from the victim's browser as a
//! same-origin page; its requests say `Host: evil.example`, so any name we
//! were not told about is refused (421) before anything is served, the
//! sign-in form included.
//!
//! Answered: `localhost` and loopback addresses (any port: a port-forward
//! may change it, and a page cannot rebind a port), the address the
//! connection came in on (an address is not a name an attacker can point
//! elsewhere), and the names in `PGWEBHOOKS_ADMIN_HOSTS`: `name` (any
//! port), `name:port`, `[v6]:port`, or `https://name[:port]`, which also
//! says the console is reached there through TLS (a proxy in front ends
//! it), so its cookie is `Secure`.

use std::net::{IpAddr, SocketAddr};

/// A name the listener answers to (`PGWEBHOOKS_ADMIN_HOSTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lowercase; an IPv6 address without brackets.
    pub name: String,
    /// `None`: any port.
    pub port: Option<u16>,
    /// Reached through TLS (`https://`).
    pub https: bool,
}

impl std::str::FromStr for AllowedHost {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowedHost, String> {
        let raw = s.trim();
        let (https, rest) = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some(_) => return Err(format!("{raw:?}: only http:// or https:// (or no scheme)")),
            None => (false, raw),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let bad = || {
            format!(
                "{raw:?}: a host name, host:port or [IPv6]:port, optionally after https:// \
                 (no path, user or wildcard)"
            )
        };
        let (name, port) = split(rest).ok_or_else(bad)?;
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        };
        let valid = !name.is_empty()
            && (name.parse::<IpAddr>().is_ok()
                || name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid {
            return Err(bad());
        }
        Ok(AllowedHost {
            name: name.to_ascii_lowercase(),
            port,
            https,
        })
    }
}

/// `PGWEBHOOKS_ADMIN_HOSTS`: entries separated by commas; empty is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(pub Vec<AllowedHost>);

impl std::str::FromStr for AllowedHosts {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowedHosts, String> {
        s.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(AllowedHosts)
    }
}

/// `host[:port]` → (host, port text); an IPv6 address in brackets.
fn split(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        return match after {
            "" => Some((v6, None)),
            _ => Some((v6, Some(after.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => None, // a bare IPv6 address: ambiguous
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

/// How a request was addressed, once its `Host` is one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Through TLS, by the name's `https://` entry.
    pub https: bool,
}

/// Is `host` (the request's `Host` header) one the listener answers to?
/// `local`: the address the connection came in on.
pub fn served(allowed: &[AllowedHost], host: &str, local: Option<SocketAddr>) -> Option<Served> {
    let (name, port) = split(host.trim())?;
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let name = name.to_ascii_lowercase();
    if let Some(entry) = allowed
        .iter()
        .find(|e| e.name == name && (e.port.is_none() || e.port == port))
    {
        return Some(Served { https: entry.https });
    }
    let plain = Some(Served { https: false });
    if name == "localhost" {
        return plain;
    }
    let ip = name.parse::<IpAddr>().ok()?.to_canonical();
    if ip.is_loopback() || local.is_some_and(|l| l.ip().to_canonical() == ip) {
        return plain;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_nonsense_is_refused() {
        let e = |s: &str| s.parse::<AllowedHost>();
        assert_eq!(
            e("Admin.Example.com").unwrap(),
            AllowedHost {
                name: "admin.example.com".into(),
                port: None,
                https: false
            }
        );
        assert_eq!(
            e("https://ops.example:8443/").unwrap(),
            AllowedHost {
                name: "ops.example".into(),
                port: Some(8443),
                https: true
            }
        );
        assert_eq!(e("[fd00::5]:9477").unwrap().name, "fd00::5");
        assert_eq!(e("10.0.0.5").unwrap().port, None);
        assert_eq!("".parse::<AllowedHosts>().unwrap().0, []);
        assert_eq!(
            " a.example , ,https://b.example "
                .parse::<AllowedHosts>()
                .unwrap()
                .0
                .len(),
            2
        );
        assert!("a.example,*.b".parse::<AllowedHosts>().is_err());
        for bad in [
            "",
            "*.example.com",
            "ftp://x",
            "x:99999",
            "x:",
            "user@x",
            "x/path",
            "fd00::5",
            "[nope]:1",
            "https://",
        ] {
            assert!(e(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_our_names_and_addresses_are_served() {
        let allowed: Vec<AllowedHost> = ["admin.example.com", "https://ops.example:8443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let local: SocketAddr = "10.1.2.3:9477".parse().unwrap();
        let yes = |h: &str| served(&allowed, h, Some(local));
        for ok in [
            "localhost:9477",
            "LOCALHOST:8080",
            "127.0.0.1:9477",
            "127.0.0.1",
            "[::1]:9477",
            "10.1.2.3:9477",
            "admin.example.com",
            "admin.example.com:1234",
        ] {
            assert_eq!(yes(ok), Some(Served { https: false }), "{ok}");
        }
        assert_eq!(yes("ops.example:8443"), Some(Served { https: true }));
        for refused in [
            "evil.example",
            "evil.example:9477",
            "localhost.evil.example:9477",
            "admin.example.com.evil.example",
            "admin.example.com:1234:5",
            "ops.example:9477",
            "ops.example",
            "localhost.:9477",
            "10.1.2.4:9477",
            "",
            "[::1",
            "::1",
        ] {
            assert_eq!(yes(refused), None, "{refused:?}");
        }
    }
}
