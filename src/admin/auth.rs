//! Who may use the admin listener. One secret, `PGWEBHOOKS_ADMIN_TOKEN`:
//!
//! - the API takes it as `Authorization: Bearer <token>` on every request
//!   (never a cookie, so a browser cannot be made to call the API);
//! - the console's login form takes it once and sets a session cookie
//!   (HttpOnly, SameSite=Strict, `Secure` over TLS):
//!   `<session id>.<expiry>.<HMAC>`, signed with a key derived from the
//!   token, so a forged or stale cookie is refused without a query and
//!   every session dies when the token changes. The session itself is a
//!   row of `webhooks.admin_sessions` (only a SHA-256 of its id), checked
//!   on every request: sign-out deletes it, and it ends after
//!   `session_idle` unused or `session_ttl` in all, on every replica;
//! - every console POST must come from the console's own origin
//!   (`Origin`, `Sec-Fetch-Site`) and carry the session's CSRF token
//!   (an HMAC of the session id).
//!
//! Comparisons are constant-time over SHA-256 digests (no length leak).
//! The token and cookies are never logged; an action records the session
//! id's first 8 characters as its actor.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Admin, Failure, Shared};
use crate::config::Secret;
use crate::inbound::auth::same;

pub const COOKIE: &str = "pgwebhooks_session";

pub struct Keys {
    token_digest: [u8; 32],
    session_key: [u8; 32],
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    pub fn new(token: &Secret) -> Keys {
        Keys {
            token_digest: digest(token.expose().as_bytes()),
            session_key: digest(format!("pgwebhooks admin session key\0{}", token.expose()).as_bytes()),
        }
    }

    /// Is `presented` the token? Constant-time, whatever its length.
    pub fn token_ok(&self, presented: &str) -> bool {
        !presented.is_empty() && same(&digest(presented.as_bytes()), &self.token_digest)
    }

    fn mac(&self, what: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.session_key).expect("any key length");
        m.update(what.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    /// A new session: the cookie's value and the session.
    pub fn session_new(&self, ttl: Duration, now: SystemTime) -> std::io::Result<(String, Session)> {
        let mut id = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
        let id = hex(&id);
        let expires = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + ttl.as_secs();
        let mac = self.mac(&format!("session|{id}|{expires}"));
        let value = format!("{id}.{expires}.{mac}");
        Ok((value, self.session(id)))
    }

    fn session(&self, id: String) -> Session {
        Session {
            csrf: self.mac(&format!("csrf|{id}"))[..32].to_owned(),
            id,
        }
    }

    /// The session a cookie value proves, if it is ours and current.
    pub fn session_check(&self, value: &str, now: SystemTime) -> Option<Session> {
        let mut parts = value.split('.');
        let (id, expires, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let want = self.mac(&format!("session|{id}|{expires}"));
        if !same(&digest(mac.as_bytes()), &digest(want.as_bytes())) {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        (now.duration_since(UNIX_EPOCH).ok()?.as_secs() < expires).then(|| self.session(id.to_owned()))
    }
}

/// A signed-in console session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// The token every POST of this session must carry.
    pub csrf: String,
}

impl Session {
    /// What `webhooks.admin_sessions` knows it by.
    pub fn id_hash(&self) -> [u8; 32] {
        digest(self.id.as_bytes())
    }

    /// Who, in `webhooks.admin_actions`.
    pub fn actor(&self) -> String {
        format!("console session {}", &self.id[..8])
    }

    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| same(&digest(p.as_bytes()), &digest(self.csrf.as_bytes())))
    }
}

/// The request's console session: its cookie is ours and unexpired, and
/// its row in `webhooks.admin_sessions` is current (not signed out, used
/// within `session_idle`, younger than `session_ttl`); its use is noted.
/// A forged or stale cookie costs no query.
pub async fn session_current(a: &Admin, headers: &HeaderMap) -> Result<Option<Session>, Failure> {
    let Some(s) = cookie(headers).and_then(|v| a.keys.session_check(v, SystemTime::now())) else {
        return Ok(None);
    };
    let c = a.pool.get().await?;
    let current = crate::db::sessions::session_touch(&c, &s.id_hash(), a.config.session_idle).await?;
    Ok(current.then_some(s))
}

/// The `Set-Cookie` value for a session (or, with `None`, its removal);
/// `secure` when the console is reached through TLS ([`OverTls`]).
pub fn set_cookie(value: Option<&str>, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ttl.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Was this request made through TLS? The listener itself speaks plain
/// HTTP, so only a proxy in front ends TLS: its name is an `https://`
/// entry of `PGWEBHOOKS_ADMIN_HOSTS` (`hosts::Served`), or it says
/// `X-Forwarded-Proto: https`. (A client that claims it falsely only gets
/// a cookie its browser will not send back over plain HTTP.)
#[derive(Debug, Clone, Copy)]
pub struct OverTls(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for OverTls {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let named = parts
            .extensions
            .get::<super::hosts::Served>()
            .is_some_and(|s| s.https);
        let forwarded = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        Ok(OverTls(named || forwarded))
    }
}

/// Where sign-in may send the browser next: a path of ours only. It
/// starts with one `/` (`//evil.example` and `/\\evil.example` are other
/// hosts to a browser), holds no backslash, and only visible ASCII
/// (browsers drop tabs and line breaks from URLs, and CR/LF would split
/// the `Location` header); nothing absolute.
pub fn safe_next(next: &str) -> Option<&str> {
    let b = next.as_bytes();
    let ok = b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && b.len() <= 2048
        && b.iter().all(|c| c.is_ascii_graphic() && *c != b'\\');
    ok.then_some(next)
}

/// The session cookie's value in a request.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Did this request come from a page of ours? A browser says where a
/// request comes from (`Sec-Fetch-Site`, `Origin`); another site's form
/// or script is refused whatever else it carries.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let get = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get(header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = get(header::HOST).unwrap_or_default();
            !host.is_empty()
                && origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|o| o == host)
        }
    }
}

/// The client's address, when the listener knows it (our own server puts
/// it in every request; a router served otherwise may not have it).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client::of(parts))
    }
}

impl Client {
    fn of(parts: &Parts) -> Client {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        Client(peer)
    }
}

/// An API request that presented the token.
pub struct ApiCaller;

impl FromRequestParts<Shared> for ApiCaller {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Shared) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(presented) = presented else {
            return Err(with_challenge(Failure(
                StatusCode::UNAUTHORIZED,
                "missing admin token: send Authorization: Bearer <PGWEBHOOKS_ADMIN_TOKEN>".into(),
            ))
            .into_response());
        };
        let Client(client) = Client::of(parts);
        let now = std::time::Instant::now();
        if let Err(wait) = admin.throttle.admit(client, now) {
            return Err(throttled(wait).into_response());
        }
        if admin.keys.token_ok(presented) {
            return Ok(ApiCaller);
        }
        if admin.throttle.failed(client, now) {
            tracing::warn!(client = ?client, "api: too many wrong admin tokens; throttling");
        } else {
            tracing::warn!(client = ?client, "api: a wrong admin token was refused");
        }
        Err(with_challenge(Failure(StatusCode::UNAUTHORIZED, "invalid admin token".into())).into_response())
    }
}

/// 429 for a client whose wrong tokens filled its bucket (`throttle.rs`).
pub fn throttled(wait: std::time::Duration) -> impl axum::response::IntoResponse {
    let secs = super::throttle::retry_after(wait);
    (
        [(header::RETRY_AFTER, secs.to_string())],
        Failure(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong admin tokens from this address: try again in {secs} s"),
        ),
    )
}

fn with_challenge(f: Failure) -> impl axum::response::IntoResponse {
    ([(header::WWW_AUTHENTICATE, "Bearer")], f)
}

impl ApiCaller {
    pub fn actor(&self) -> &'static str {
        "api token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_expire_and_die_with_the_token() {
        let keys = Keys::new(&Secret::new("a-token-of-sixteen+"));
        let now = SystemTime::now();
        let (value, s) = keys.session_new(Duration::from_secs(60), now).unwrap();
        let back = keys.session_check(&value, now).unwrap();
        assert_eq!(back.id, s.id);
        assert_eq!(back.csrf, s.csrf);
        assert!(keys
            .session_check(&value, now + Duration::from_secs(61))
            .is_none());
        let other = Keys::new(&Secret::new("another-token-of-16"));
        assert!(other.session_check(&value, now).is_none());
        // Tampering with any part is refused.
        let (id, rest) = value.split_once('.').unwrap();
        let (exp, mac) = rest.split_once('.').unwrap();
        let later = format!("{id}.{}.{mac}", exp.parse::<u64>().unwrap() + 3600);
        assert!(keys.session_check(&later, now).is_none());
        for bad in [
            "",
            "x",
            "a.b.c",
            &format!("{value}.x"),
            &value.replace(id, &"0".repeat(32)),
        ] {
            assert!(keys.session_check(bad, now).is_none(), "{bad}");
        }
        assert!(s.csrf_ok(Some(&s.csrf)));
        assert!(!s.csrf_ok(None) && !s.csrf_ok(Some("")) && !s.csrf_ok(Some(&s.csrf[1..])));
        assert!(keys.token_ok("a-token-of-sixteen+"));
        assert!(!keys.token_ok("") && !keys.token_ok("a-token-of-sixteen"));
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(same_origin(&h(&[("host", "127.0.0.1:9477")])));
        assert!(same_origin(&h(&[
            ("host", "127.0.0.1:9477"),
            ("origin", "http://127.0.0.1:9477")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "127.0.0.1:9477"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "127.0.0.1:9477"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "a"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "a"),
            ("sec-fetch-site", "same-site")
        ])));
        assert!(same_origin(&h(&[
            ("host", "a"),
            ("sec-fetch-site", "same-origin")
        ])));
        for bad in [
            "",
            "console",
            "//evil.example",
            "//evil.example/console",
            "/\\evil.example",
            "/console\\..\\x",
            "https://evil.example/",
            "http:/evil.example",
            "javascript:alert(1)",
            " /console",
            "/\t/evil.example",
            "/console\r\nSet-Cookie: x=y",
            "/console\n",
            "/console/é",
            "/console/a b",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
        for good in [
            "/console",
            "/console/deliveries?status=dead&endpoint_id=3",
            "/console/endpoints/7",
        ] {
            assert_eq!(safe_next(good), Some(good));
        }
        let cookies = h(&[("cookie", "a=b; pgwebhooks_session=v.1.m; c=d")]);
        assert_eq!(cookie(&cookies), Some("v.1.m"));
    }
}
