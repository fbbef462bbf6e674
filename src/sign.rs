//! Standard Webhooks signatures (HMAC-SHA256 over "id.timestamp.body").
//!
//! Pure: every input, the timestamp included, is an argument.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A signing secret: `whsec_<base64>` (the key is the decoded bytes, as the
/// spec says) or a plain shared string (the key is its bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    secret: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a whsec_ secret must be base64 after the prefix")]
    Base64,
    #[error("a secret must be at least 8 printable characters without spaces")]
    Weak,
}

impl SigningKey {
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        if secret.len() < 8 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::Weak);
        }
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => B64.decode(b64).map_err(|_| KeyError::Base64)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(KeyError::Base64);
        }
        Ok(SigningKey {
            secret: secret.to_owned(),
            key,
        })
    }

    /// The secret as configured, for the opt-in `x-webhook-secret` header.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// `sha256=<hex HMAC of body>`, for receivers that check a plain HMAC.
    pub fn sign_hex(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Constant-time check of one `v1,<sig>` entry.
    fn verify_entry(&self, msg_id: &str, timestamp: i64, body: &[u8], entry: &str) -> bool {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = B64.decode(sig) else { return false };
        let mut mac = self.mac();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    }
}

/// The `webhook-signature` value: one entry per key, space-separated.
pub fn signature_header(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a signed request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing webhook-id, webhook-timestamp or webhook-signature")]
    Missing,
    #[error("webhook-timestamp is not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// Verifies Standard Webhooks headers against any of `keys`, with the
/// timestamp within `tolerance_s` seconds of `now` (unix seconds).
pub fn verify(
    keys: &[SigningKey],
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let (Some(id), Some(ts), Some(sig)) = (msg_id, timestamp, signature) else {
        return Err(VerifyError::Missing);
    };
    let ts: i64 = ts.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    // abs_diff: any i64 may come in, and `now - ts` can overflow.
    if now.abs_diff(ts) > tolerance_s.unsigned_abs() {
        return Err(VerifyError::Stale);
    }
    let ok = sig
        .split_whitespace()
        .any(|entry| keys.iter().any(|k| k.verify_entry(id, ts, body, entry)));
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// A new `whsec_` secret: 24 bytes from the OS's CSPRNG.
pub fn generate_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("whsec_{}", B64.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn known_answer_from_the_spec() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn one_entry_per_key_and_verification() {
        let a = SigningKey::parse(SECRET).unwrap();
        let b = SigningKey::parse(&generate_secret().unwrap()).unwrap();
        let header = signature_header(&[a.clone(), b.clone()], "id1", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(
            verify(
                std::slice::from_ref(&b),
                Some("id1"),
                Some("100"),
                Some(&header),
                b"{}",
                100,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&b),
                Some("id1"),
                Some("100"),
                Some(&header),
                b"{ }",
                100,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&b),
                Some("id1"),
                Some("100"),
                Some(&header),
                b"{}",
                1000,
                300
            ),
            Err(VerifyError::Stale)
        );
        // Timestamps at the ends of i64 are stale, not an overflow.
        for ts in [i64::MIN, i64::MAX] {
            let header = signature_header(std::slice::from_ref(&b), "id1", ts, b"{}");
            let ts = ts.to_string();
            let got = verify(
                std::slice::from_ref(&b),
                Some("id1"),
                Some(&ts),
                Some(&header),
                b"{}",
                100,
                300,
            );
            assert_eq!(got, Err(VerifyError::Stale));
        }
        assert_eq!(
            verify(&[b], None, Some("100"), Some(&header), b"{}", 100, 300),
            Err(VerifyError::Missing)
        );
    }

    #[test]
    fn plain_secrets_and_hex_signatures() {
        let k = SigningKey::parse("shared-secret-1").unwrap();
        // echo -n 'hello' | openssl dgst -sha256 -hmac 'shared-secret-1'
        assert_eq!(k.sign_hex(b"hello").len(), 7 + 64);
        assert!(k.sign_hex(b"hello").starts_with("sha256="));
        assert_eq!(SigningKey::parse("short"), Err(KeyError::Weak));
        assert_eq!(SigningKey::parse("whsec_!!!notbase64"), Err(KeyError::Base64));
        assert_eq!(format!("{k:?}"), "SigningKey(***)");
    }
}
