//! Who may post a callback: a shared secret (in `x-webhook-secret`,
//! `x-make-apikey`, `authorization: Bearer …` or `?secret=`) or a Standard
//! Webhooks signature made with it. Compared in constant time. An empty
//! credential is no credential, and a signed request must carry a
//! non-empty `webhook-id` (it is what makes a replay a duplicate).

use axum::http::HeaderMap;

use crate::sign::{self, SigningKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credential was presented.
    Missing,
    /// A credential was presented and it is wrong (or stale).
    Invalid,
    /// The server has no secret for this route: nobody can be let in.
    NotConfigured,
    /// Signed, but without a `webhook-id`: the signature would not pin the
    /// callback's identity, so replays would be applied again.
    MissingId,
}

impl Denied {
    /// The 401's `error`. A missing or wrong secret is said in the words of
    /// the apps whose endpoints routes replace (the task tracker's
    /// `?secret=` endpoint, reference 003), so what read them keeps working.
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "Unauthorized: Missing secret parameter",
            Denied::Invalid => "Unauthorized: Invalid secret",
            Denied::NotConfigured => "Unauthorized: no inbound secret is configured",
            Denied::MissingId => "Unauthorized: a signed callback needs a non-empty webhook-id header",
        }
    }
}

/// Constant-time equality (length may leak; content does not).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of `secret` in a query string, percent-decoded.
pub fn query_secret(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "secret").then(|| crate::urlencoded::percent_decode(v.as_bytes()))
    })
}

/// Whether the request carries a (non-empty) Standard Webhooks signature.
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers
        .get("webhook-signature")
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
}

/// Checks a request against `secret`. `now` is unix seconds.
pub fn check(
    secret: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), Denied> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let bearer =
        header("authorization").and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let query = query_secret(query);
    let presented: Vec<&str> = [
        header("x-webhook-secret"),
        header("x-make-apikey"),
        bearer,
        query.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .filter(|p| !p.is_empty())
    .collect();
    let signed = is_signed(headers);
    let Some(secret) = secret.filter(|s| !s.trim().is_empty()) else {
        return Err(Denied::NotConfigured);
    };
    if presented.is_empty() && !signed {
        return Err(Denied::Missing);
    }
    if signed && header("webhook-id").is_none() {
        return Err(Denied::MissingId);
    }
    if presented.iter().any(|p| same(p.as_bytes(), secret.as_bytes())) {
        return Ok(());
    }
    if signed {
        if let Ok(key) = SigningKey::parse(secret) {
            let ok = sign::verify(
                &[key],
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                body,
                now,
                tolerance_s,
            );
            if ok.is_ok() {
                return Ok(());
            }
        }
    }
    Err(Denied::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn every_carrier_and_constant_time_compare() {
        let s = Some("s3cret-value");
        let ok = |h: HeaderMap, q: Option<&str>| check(s, &h, q, b"{}", 0, 300);
        assert_eq!(ok(headers(&[("x-webhook-secret", "s3cret-value")]), None), Ok(()));
        assert_eq!(ok(headers(&[("x-make-apikey", "s3cret-value")]), None), Ok(()));
        assert_eq!(
            ok(headers(&[("authorization", "Bearer s3cret-value")]), None),
            Ok(())
        );
        assert_eq!(ok(HeaderMap::new(), Some("a=1&secret=s3cret-value")), Ok(()));
        assert_eq!(ok(HeaderMap::new(), Some("secret=s3cret%2Dvalue")), Ok(()));
        assert_eq!(
            ok(headers(&[("x-webhook-secret", "s3cret-valuf")]), None),
            Err(Denied::Invalid)
        );
        assert_eq!(ok(HeaderMap::new(), None), Err(Denied::Missing));
        assert_eq!(
            check(None, &headers(&[("x-webhook-secret", "x")]), None, b"", 0, 1),
            Err(Denied::NotConfigured)
        );
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn empty_credentials_and_secrets_let_nobody_in() {
        for secret in [Some(""), Some("   ")] {
            for (h, q) in [
                (headers(&[("x-webhook-secret", "")]), None),
                (headers(&[("x-make-apikey", " ")]), None),
                (headers(&[("authorization", "Bearer ")]), None),
                (HeaderMap::new(), Some("secret=")),
                (HeaderMap::new(), Some("secret=+")),
            ] {
                assert_eq!(check(secret, &h, q, b"{}", 0, 300), Err(Denied::NotConfigured));
            }
        }
        let s = Some("s3cret-value-long-enough");
        assert_eq!(
            check(
                s,
                &headers(&[("x-webhook-secret", "")]),
                Some("secret="),
                b"{}",
                0,
                300
            ),
            Err(Denied::Missing),
            "an empty credential is no credential"
        );
    }

    #[test]
    fn a_signed_request_needs_a_webhook_id() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::parse(secret).unwrap();
        let sig = key.sign("", 1000, b"{}");
        let h = headers(&[
            ("webhook-id", ""),
            ("webhook-timestamp", "1000"),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(
            check(Some(secret), &h, None, b"{}", 1000, 300),
            Err(Denied::MissingId)
        );
    }

    #[test]
    fn standard_webhooks_signature_with_tolerance() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::parse(secret).unwrap();
        let sig = key.sign("msg_1", 1000, b"{\"a\":1}");
        let h = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1000"),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(check(Some(secret), &h, None, b"{\"a\":1}", 1100, 300), Ok(()));
        assert_eq!(
            check(Some(secret), &h, None, b"{\"a\":2}", 1100, 300),
            Err(Denied::Invalid)
        );
        assert_eq!(
            check(Some(secret), &h, None, b"{\"a\":1}", 5000, 300),
            Err(Denied::Invalid),
            "replayed late"
        );
    }
}
