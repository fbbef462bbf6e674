//! Just enough X.509 to check a server certificate the way libpq (with
//! OpenSSL) does where webpki would not: the validity period and intended
//! use of a certificate that `sslrootcert` trusts directly, and the host
//! name, which libpq matches against the subjectAltName DNS and IP entries
//! or, when there are none of the host's kind, the subject Common Name.
//!
//! The reader takes DER only and answers [`Malformed`] to anything else:
//! a bad tag or length, a truncated or trailing value. It never panics
//! (no indexing, no unchecked arithmetic; the tests feed it truncated and
//! mutated certificates). Callers only parse certificates that are already
//! trusted: one byte-identical to a certificate in `sslrootcert`, or a leaf
//! whose chain webpki has verified.

use std::net::IpAddr;

/// The certificate is not DER X.509 as this reader understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed(pub &'static str);

type Result<T> = std::result::Result<T, Malformed>;

/// A DER reader over a byte slice.
#[derive(Clone, Copy)]
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next tag and its content.
    fn any(&mut self) -> Result<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first().ok_or(Malformed("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(Malformed("multi-byte tag"));
        }
        let (&first, rest) = rest.split_first().ok_or(Malformed("truncated length"))?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(Malformed("unsupported length"));
            }
            let (bytes, rest) = rest.split_at_checked(n).ok_or(Malformed("truncated length"))?;
            if bytes.first() == Some(&0) {
                return Err(Malformed("non-minimal length"));
            }
            let len = bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            if len < 0x80 {
                return Err(Malformed("non-minimal length"));
            }
            (usize::try_from(len).map_err(|_| Malformed("length"))?, rest)
        };
        let (content, rest) = rest.split_at_checked(len).ok_or(Malformed("truncated value"))?;
        self.0 = rest;
        Ok((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8]> {
        match self.any()? {
            (t, content) if t == tag => Ok(content),
            _ => Err(Malformed("unexpected tag")),
        }
    }

    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>> {
        if self.peek() == Some(tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    fn end(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing data"))
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const BIT_STRING: u8 = 0x03;

// Object identifiers, DER content bytes.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e]; // 2.5.29.14
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f]; // 2.5.29.15
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23]; // 2.5.29.35
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25]; // 2.5.29.37
const OID_NETSCAPE_CERT_TYPE: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x86, 0xf8, 0x42, 0x01, 0x01]; // 2.16.840.1.113730.1.1
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01]; // 1.3.6.1.5.5.7.3.1
const OID_NETSCAPE_SGC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x86, 0xf8, 0x42, 0x04, 0x01]; // 2.16.840.1.113730.4.1
const OID_MICROSOFT_SGC: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x0a, 0x03, 0x03]; // 1.3.6.1.4.1.311.10.3.3

/// The extensions OpenSSL's verifier handles (`X509_supported_extension`
/// in OpenSSL 3.0); any other extension marked critical fails verification.
const OPENSSL_SUPPORTED: &[&[u8]] = &[
    OID_NETSCAPE_CERT_TYPE,
    OID_KEY_USAGE,
    OID_SUBJECT_ALT_NAME,
    &[0x55, 0x1d, 0x13], // basicConstraints
    &[0x55, 0x1d, 0x20], // certificatePolicies
    &[0x55, 0x1d, 0x1f], // cRLDistributionPoints
    OID_EXT_KEY_USAGE,
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x07], // sbgp-ipAddrBlock
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x08], // sbgp-autonomousSysNum
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x05], // OCSP noCheck
    &[0x55, 0x1d, 0x24],                               // policyConstraints
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x0e], // proxyCertInfo
    &[0x55, 0x1d, 0x1e],                               // nameConstraints
    &[0x55, 0x1d, 0x21],                               // policyMappings
    &[0x55, 0x1d, 0x36],                               // inhibitAnyPolicy
];

struct Extension<'a> {
    oid: &'a [u8],
    critical: bool,
    value: &'a [u8],
}

/// The parts of a certificate these checks need.
pub(super) struct Cert<'a> {
    serial: &'a [u8],
    issuer: &'a [u8],
    subject: &'a [u8],
    /// Seconds since the Unix epoch.
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    extensions: Vec<Extension<'a>>,
}

impl<'a> Cert<'a> {
    pub(super) fn parse(der: &'a [u8]) -> Result<Cert<'a>> {
        let mut outer = Der(der);
        let mut cert = Der(outer.expect(SEQUENCE)?);
        outer.end()?;
        let mut tbs = Der(cert.expect(SEQUENCE)?);
        cert.expect(SEQUENCE)?; // signatureAlgorithm
        cert.expect(BIT_STRING)?; // signature
        cert.end()?;

        if let Some(version) = tbs.optional(0xa0)? {
            let mut v = Der(version);
            let n = v.expect(INTEGER)?;
            v.end()?;
            if !matches!(n, [0] | [1] | [2]) {
                return Err(Malformed("unknown version"));
            }
        }
        let serial = tbs.expect(INTEGER)?;
        tbs.expect(SEQUENCE)?; // signature
        let issuer = tbs.expect(SEQUENCE)?;
        let mut validity = Der(tbs.expect(SEQUENCE)?);
        let not_before = time(&mut validity)?;
        let not_after = time(&mut validity)?;
        validity.end()?;
        let subject = tbs.expect(SEQUENCE)?;
        tbs.expect(SEQUENCE)?; // subjectPublicKeyInfo
        tbs.optional(0x81)?; // issuerUniqueID
        tbs.optional(0x82)?; // subjectUniqueID
        let mut extensions = Vec::new();
        if let Some(explicit) = tbs.optional(0xa3)? {
            let mut wrapper = Der(explicit);
            let mut list = Der(wrapper.expect(SEQUENCE)?);
            wrapper.end()?;
            while !list.is_empty() {
                let mut ext = Der(list.expect(SEQUENCE)?);
                let oid = ext.expect(OID)?;
                let critical = match ext.optional(BOOLEAN)? {
                    None | Some([0x00]) => false,
                    Some([0xff]) => true,
                    Some(_) => return Err(Malformed("bad boolean")),
                };
                let value = ext.expect(OCTET_STRING)?;
                ext.end()?;
                if extensions.iter().any(|e: &Extension| e.oid == oid) {
                    // OpenSSL marks such a certificate invalid.
                    return Err(Malformed("duplicate extension"));
                }
                extensions.push(Extension { oid, critical, value });
            }
        }
        tbs.end()?;
        // Names must at least be well formed.
        rdn_values(subject, |_, _| ())?;
        rdn_values(issuer, |_, _| ())?;
        Ok(Cert {
            serial,
            issuer,
            subject,
            not_before,
            not_after,
            extensions,
        })
    }

    fn extension(&self, oid: &[u8]) -> Option<&'a [u8]> {
        self.extensions.iter().find(|e| e.oid == oid).map(|e| e.value)
    }

    /// Self-signed as OpenSSL decides it (`EXFLAG_SS`) before trusting a
    /// certificate of the trust store on its own: the subject is the issuer
    /// and an authority key identifier, if any, names this certificate.
    pub(super) fn is_self_signed(&self) -> Result<bool> {
        if self.subject != self.issuer {
            return Ok(false);
        }
        let Some(akid) = self.extension(OID_AUTHORITY_KEY_ID) else {
            return Ok(true);
        };
        let mut outer = Der(akid);
        let mut akid = Der(outer.expect(SEQUENCE)?);
        outer.end()?;
        let key_id = akid.optional(0x80)?;
        let issuer_names = akid.optional(0xa1)?;
        let serial = akid.optional(0x82)?;
        akid.end()?;
        if let (Some(key_id), Some(skid)) = (key_id, self.extension(OID_SUBJECT_KEY_ID)) {
            let mut s = Der(skid);
            let skid = s.expect(OCTET_STRING)?;
            s.end()?;
            if key_id != skid {
                return Ok(false);
            }
        }
        if serial.is_some_and(|s| s != self.serial) {
            return Ok(false);
        }
        if let Some(names) = issuer_names {
            let mut names = Der(names);
            while !names.is_empty() {
                if let (0xa4, directory) = names.any()? {
                    let mut d = Der(directory);
                    let name = d.expect(SEQUENCE)?;
                    d.end()?;
                    if name != self.issuer {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Whether the certificate may identify a TLS server, as OpenSSL's
    /// `ssl_server` purpose check: an extended key usage, if present, lists
    /// serverAuth (or server-gated crypto); a key usage, if present, allows
    /// digitalSignature, keyEncipherment or keyAgreement; a Netscape cert
    /// type, if present, allows an SSL server.
    pub(super) fn is_for_tls_server(&self) -> Result<bool> {
        if let Some(eku) = self.extension(OID_EXT_KEY_USAGE) {
            let mut outer = Der(eku);
            let mut list = Der(outer.expect(SEQUENCE)?);
            outer.end()?;
            let mut server = false;
            while !list.is_empty() {
                let oid = list.expect(OID)?;
                server |= [OID_SERVER_AUTH, OID_NETSCAPE_SGC, OID_MICROSOFT_SGC].contains(&oid);
            }
            if !server {
                return Ok(false);
            }
        }
        if let Some(ku) = self.extension(OID_KEY_USAGE) {
            // digitalSignature (bit 0), keyEncipherment (2), keyAgreement (4).
            if bit_string_first_byte(ku)? & 0b1010_1000 == 0 {
                return Ok(false);
            }
        }
        if let Some(ns) = self.extension(OID_NETSCAPE_CERT_TYPE) {
            // SSL server (bit 1).
            if bit_string_first_byte(ns)? & 0b0100_0000 == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether an extension marked critical is one OpenSSL's verifier does
    /// not handle (it then refuses the certificate).
    pub(super) fn has_unhandled_critical_extension(&self) -> bool {
        self.extensions
            .iter()
            .any(|e| e.critical && !OPENSSL_SUPPORTED.contains(&e.oid))
    }

    /// The subject's first Common Name, for messages.
    pub(super) fn common_name(&self) -> Option<String> {
        let mut cn = None;
        rdn_values(self.subject, |oid, value| {
            if oid == OID_COMMON_NAME && cn.is_none() {
                cn = Some(String::from_utf8_lossy(value).into_owned());
            }
        })
        .ok()?;
        cn
    }

    /// Checks `host` as libpq's `pgtls_verify_peer_name_matches_certificate_guts`
    /// (PostgreSQL 14 and later): every subjectAltName dNSName and iPAddress
    /// entry is tried; the subject's (first) Common Name is tried only when
    /// no subjectAltName entry has the host's kind (IP address or DNS name).
    /// Names match case-insensitively, or through a wildcard that is the
    /// whole leftmost label.
    pub(super) fn check_host(&self, host: &str) -> std::result::Result<(), NameError> {
        let host_ip = host.parse::<IpAddr>().ok();
        let mut examined = 0usize;
        let mut first: Option<String> = None;
        let mut check_cn = true;
        if let Some(san) = self.extension(OID_SUBJECT_ALT_NAME) {
            let mut outer = Der(san);
            let mut names = Der(outer.expect(SEQUENCE).map_err(NameError::Malformed)?);
            outer.end().map_err(NameError::Malformed)?;
            while !names.is_empty() {
                let (tag, value) = names.any().map_err(NameError::Malformed)?;
                let matched = match tag {
                    0x82 => {
                        check_cn &= host_ip.is_some();
                        examined += 1;
                        let name = name_bytes(value)?;
                        first.get_or_insert_with(|| String::from_utf8_lossy(name).into_owned());
                        name_matches(name, host.as_bytes())
                    }
                    0x87 => {
                        check_cn &= host_ip.is_none();
                        examined += 1;
                        let ip = match *value {
                            [a, b, c, d] => IpAddr::from([a, b, c, d]),
                            _ => match <[u8; 16]>::try_from(value) {
                                Ok(v6) => IpAddr::from(v6),
                                Err(_) => return Err(NameError::BadIpLength(value.len())),
                            },
                        };
                        first.get_or_insert(ip.to_string());
                        host_ip == Some(ip)
                    }
                    _ => false,
                };
                if matched {
                    return Ok(());
                }
            }
        }
        if check_cn {
            let mut cn = None;
            rdn_values(self.subject, |oid, value| {
                if oid == OID_COMMON_NAME && cn.is_none() {
                    cn = Some(value);
                }
            })
            .map_err(NameError::Malformed)?;
            if let Some(cn) = cn {
                examined += 1;
                let name = name_bytes(cn)?;
                if name_matches(name, host.as_bytes()) {
                    return Ok(());
                }
                first.get_or_insert_with(|| String::from_utf8_lossy(name).into_owned());
            }
        }
        Err(match first {
            Some(first) => NameError::Mismatch {
                first,
                others: examined.saturating_sub(1),
                host: host.to_owned(),
            },
            None => NameError::NoNames,
        })
    }
}

/// Why a certificate does not name the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NameError {
    Mismatch {
        first: String,
        others: usize,
        host: String,
    },
    NoNames,
    EmbeddedNul,
    BadIpLength(usize),
    Malformed(Malformed),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Mismatch { first, others: 0, host } => {
                write!(f, "server certificate for {first:?} does not match host name {host:?}")
            }
            NameError::Mismatch { first, others, host } => write!(
                f,
                "server certificate for {first:?} (and {others} other name{}) does not match host name {host:?}",
                if *others == 1 { "" } else { "s" }
            ),
            NameError::NoNames => write!(f, "could not get server's host name from server certificate"),
            NameError::EmbeddedNul => write!(f, "SSL certificate's name contains embedded null"),
            NameError::BadIpLength(n) => write!(f, "certificate contains IP address with invalid length {n}"),
            NameError::Malformed(m) => write!(f, "the server certificate is malformed ({})", m.0),
        }
    }
}

impl std::error::Error for NameError {}

/// A name as libpq compares it: the raw bytes of the string, whatever its
/// ASN.1 string type; an embedded NUL is an error, as in libpq.
fn name_bytes(bytes: &[u8]) -> std::result::Result<&[u8], NameError> {
    if bytes.contains(&0) {
        return Err(NameError::EmbeddedNul);
    }
    Ok(bytes)
}

/// libpq's `pq_verify_peer_name_matches_certificate_name`: equal ignoring
/// ASCII case, or `*.rest` where the host is `label.rest` with a non-empty
/// label that has no dot. (libpq only looks for a dot before the label's
/// last byte; the difference, a host with an empty label such as `a..rest`,
/// is not a valid TLS server name and never gets this far.)
fn name_matches(name: &[u8], host: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = name.strip_prefix(b"*") else {
        return false;
    };
    if !suffix.starts_with(b".") || name.len() < 3 || name.len() > host.len() {
        return false;
    }
    let Some((label, rest)) = host.split_at_checked(host.len() - suffix.len()) else {
        return false;
    };
    rest.eq_ignore_ascii_case(suffix) && !label.contains(&b'.')
}

/// Calls `f(oid, value)` for every attribute of a Name, in order.
fn rdn_values<'a>(name: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Result<()> {
    let mut rdns = Der(name);
    while !rdns.is_empty() {
        let mut set = Der(rdns.expect(SET)?);
        while !set.is_empty() {
            let mut atv = Der(set.expect(SEQUENCE)?);
            let oid = atv.expect(OID)?;
            let (_, value) = atv.any()?;
            atv.end()?;
            f(oid, value);
        }
    }
    Ok(())
}

/// The first byte of flags of a BIT STRING extension value (0 if empty).
fn bit_string_first_byte(value: &[u8]) -> Result<u8> {
    let mut outer = Der(value);
    let bits = outer.expect(BIT_STRING)?;
    outer.end()?;
    match bits {
        [unused, rest @ ..] if *unused < 8 => Ok(rest.first().copied().unwrap_or(0)),
        _ => Err(Malformed("bad bit string")),
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as
/// RFC 5280 requires them, in seconds since the Unix epoch.
fn time(d: &mut Der) -> Result<i64> {
    let bad = Malformed("bad time");
    let (year, rest) = match d.any()? {
        (0x17, s) if s.len() == 13 => {
            let yy = digits(s.get(..2).ok_or(bad)?)?;
            (
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                s.get(2..).ok_or(bad)?,
            )
        }
        (0x18, s) if s.len() == 15 => (digits(s.get(..4).ok_or(bad)?)?, s.get(4..).ok_or(bad)?),
        _ => return Err(bad),
    };
    let field = |at: usize| rest.get(at..at + 2).ok_or(bad).and_then(digits);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if rest.get(10..) != Some(b"Z") {
        return Err(bad);
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad),
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return Err(bad);
    }
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn digits(s: &[u8]) -> Result<i64> {
    s.iter().try_fold(0i64, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + i64::from(b - b'0'))
        } else {
            Err(Malformed("bad time"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    // Made with openssl 3.0, EC P-256 keys, valid 2026-12-06 15:55:51 to
    // 2126-11-12 15:55:51 (a UTCTime and a GeneralizedTime).
    // A: PostgreSQL's documented recipe (`openssl req -x509 ... -subj
    //    "/CN=dbhost.yourdomain.com"`): self-signed, CA:TRUE, no SAN.
    // B: self-signed, subject O=Example/CN=cn.example, SAN DNS:*.example.com,
    //    DNS:db.example.org, IP:10.0.0.1, IP:::1, email; EKU clientAuth;
    //    keyUsage=critical,keyCertSign.
    // C: self-signed, CN=db.example, SAN IP:127.0.0.1 only, CA:FALSE,
    //    digitalSignature, serverAuth, and a critical unknown extension.
    // D: a version 1 leaf CN=leaf.example issued by A.
    const A: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIIBlzCCAT2gAwIBAgIUU2oiJQU6SvFvSqG0O4GxhsBUIlEwCgYIKoZIzj0EAwIw\n\
    IDEeMBwGA1UEAwwVZGJob3N0LnlvdXJkb21haW4uY29tMCAXDTI2MTIwNjE1NTU1\n\
    MVoYDzIxMjYxMTEyMTU1NTUxWjAgMR4wHAYDVQQDDBVkYmhvc3QueW91cmRvbWFp\n\
    bi5jb20wWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASga2wM11SSEJ4xXT0awc9m\n\
    r+kWqrg52L/vlnAVNGc49QWdT6CLDsAV8PkYHU0ZNo9LWmKh3Qv9i/XL63TIiEiM\n\
    o1MwUTAdBgNVHQ4EFgQUtDiexE01PDYhAY9E8QKhNR8uIjYwHwYDVR0jBBgwFoAU\n\
    tDiexE01PDYhAY9E8QKhNR8uIjYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD\n\
    AgNIADBFAiEA/YStcs1uLYbdvgqTh8m4moPEWLeS+FVwyU40sAXNCiACIHjZLky+\n\
    7W8LeRxO/wCTh7MpdUgch+4VmyzFvTdMKaq+\n\
    -----END CERTIFICATE-----\n\
    ";
    const B: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIICGzCCAcGgAwIBAgIUCziHOxsseheTN0r078iusUcizq0wCgYIKoZIzj0EAwIw\n\
    JzEQMA4GA1UECgwHRXhhbXBsZTETMBEGA1UEAwwKY24uZXhhbXBsZTAgFw0yNjEy\n\
    MDYxNTU1NTFaGA8yMTI2MTExMjE1NTU1MVowJzEQMA4GA1UECgwHRXhhbXBsZTET\n\
    MBEGA1UEAwwKY24uZXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNgX\n\
    qgNT961PB6bBYA8lBSBMfoxx33+YCF2MnZcEE81a6zqZR0IWFlLmcEPBJLtZFhpI\n\
    VxnjCUDLjU+SjED5FgmjgcgwgcUwHQYDVR0OBBYEFDD5jQANFfTpZPk+PZE0NEg0\n\
    +3d5MB8GA1UdIwQYMBaAFDD5jQANFfTpZPk+PZE0NEg0+3d5MA8GA1UdEwEB/wQF\n\
    MAMBAf8wTQYDVR0RBEYwRIINKi5leGFtcGxlLmNvbYIOZGIuZXhhbXBsZS5vcmeH\n\
    BAoAAAGHEAAAAAAAAAAAAAAAAAAAAAGBC2FAYi5leGFtcGxlMBMGA1UdJQQMMAoG\n\
    CCsGAQUFBwMCMA4GA1UdDwEB/wQEAwICBDAKBggqhkjOPQQDAgNIADBFAiBrr8nk\n\
    uwCALgYuFeL9CSvwcOOgM44rqOsnrlRfyYWI+wIhAOIFSFX9cPQVqNWtykYMZybD\n\
    S9yL42b3fNfCzAmhZrs8\n\
    -----END CERTIFICATE-----\n\
    ";
    const C: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIIBwjCCAWigAwIBAgIUHUzZXGac6kA10HGQKGhNW6DQX5cwCgYIKoZIzj0EAwIw\n\
    FTETMBEGA1UEAwwKZGIuZXhhbXBsZTAgFw0yNjEyMDYxNTU1NTFaGA8yMTI2MTEx\n\
    MjE1NTU1MVowFTETMBEGA1UEAwwKZGIuZXhhbXBsZTBZMBMGByqGSM49AgEGCCqG\n\
    SM49AwEHA0IABBgHQHfOpdblDlioIGkOwkMXG+ETe/80R/G5pUvAbDeiznjrVd6w\n\
    jVC3Y8Ktw/XqcvpWQeXduDJPCeiAVVM7cqijgZMwgZAwHQYDVR0OBBYEFDtIkgIV\n\
    U+E+3J1WyaqgvdqJDonmMB8GA1UdIwQYMBaAFDtIkgIVU+E+3J1WyaqgvdqJDonm\n\
    MA8GA1UdEQQIMAaHBH8AAAEwDAYDVR0TAQH/BAIwADALBgNVHQ8EBAMCB4AwEwYD\n\
    VR0lBAwwCgYIKwYBBQUHAwEwDQYDKgMEAQH/BAMMAXgwCgYIKoZIzj0EAwIDSAAw\n\
    RQIhAJr5/MFP6FcDiEyjfxal7kWqhNwqEYzMywhEBLHilQdjAiBqmy8Bz1IyBm1m\n\
    srmzI9UWHnu9xrdRCABz2Jxs2b+0xQ==\n\
    -----END CERTIFICATE-----\n\
    ";
    const D: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIIBMzCB2gIUC6a91n19/RQmk4/nsdUwc+0V3GIwCgYIKoZIzj0EAwIwIDEeMBwG\n\
    A1UEAwwVZGJob3N0LnlvdXJkb21haW4uY29tMCAXDTI2MTIwNjE1NTU1MVoYDzIx\n\
    MjYxMTEyMTU1NTUxWjAXMRUwEwYDVQQDDAxsZWFmLmV4YW1wbGUwWTATBgcqhkjO\n\
    PQIBBggqhkjOPQMBBwNCAAQaBjhbQS1eM/gP7uViYY3MiIYJUM/MUYv4ymQXdrTl\n\
    vAm3Q9Qn8qPwHoeItnrbGwcC/0O5LLRwJxIB1gm6auuyMAoGCCqGSM49BAMCA0gA\n\
    MEUCIHu/ZyTuRPD/Ps22NKG8wLEaWWyRAiT/uIgR/KAvuyzPAiEAgvN+DexOhFuL\n\
    mhYm+pzIchtC4eHXsGSaE5u8CKHJapo=\n\
    -----END CERTIFICATE-----\n\
    ";

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    const NOT_BEFORE: i64 = 1_796_572_551; // 2026-12-06T15:55:51Z
    const NOT_AFTER: i64 = 4_950_172_551; // 2126-11-12T15:55:51Z

    #[test]
    fn reads_the_fields_libpq_looks_at() {
        for pem in [A, B, C, D] {
            let der = der(pem);
            let cert = Cert::parse(&der).unwrap();
            assert_eq!((cert.not_before, cert.not_after), (NOT_BEFORE, NOT_AFTER));
        }
        let (a, b, c, d) = (der(A), der(B), der(C), der(D));
        let (a, b, c, d) = (
            Cert::parse(&a).unwrap(),
            Cert::parse(&b).unwrap(),
            Cert::parse(&c).unwrap(),
            Cert::parse(&d).unwrap(),
        );
        assert!(a.is_self_signed().unwrap() && b.is_self_signed().unwrap());
        assert!(!d.is_self_signed().unwrap(), "issued by A");
        assert!(a.is_for_tls_server().unwrap(), "no key usage at all");
        assert!(c.is_for_tls_server().unwrap());
        assert!(!b.is_for_tls_server().unwrap(), "clientAuth and keyCertSign only");
        assert!(
            !a.has_unhandled_critical_extension(),
            "basicConstraints is handled"
        );
        assert!(!b.has_unhandled_critical_extension(), "keyUsage is handled");
        assert!(c.has_unhandled_critical_extension(), "1.2.3.4");
    }

    #[test]
    fn host_names_as_libpq_matches_them() {
        let (a, b, c, d) = (der(A), der(B), der(C), der(D));
        let (a, b, c, d) = (
            Cert::parse(&a).unwrap(),
            Cert::parse(&b).unwrap(),
            Cert::parse(&c).unwrap(),
            Cert::parse(&d).unwrap(),
        );
        // No SAN: the Common Name, ignoring ASCII case.
        assert_eq!(a.check_host("dbhost.yourdomain.com"), Ok(()));
        assert_eq!(a.check_host("DBHost.YourDomain.COM"), Ok(()));
        assert_eq!(d.check_host("leaf.example"), Ok(()));
        let e = a.check_host("localhost").unwrap_err();
        assert_eq!(
            e.to_string(),
            "server certificate for \"dbhost.yourdomain.com\" does not match host name \"localhost\""
        );
        assert!(a.check_host("127.0.0.1").is_err());
        assert!(a.check_host("other.yourdomain.com").is_err());

        // DNS SANs present: the CN is ignored for a DNS host; a wildcard is
        // the whole leftmost label only.
        assert_eq!(b.check_host("db.example.org"), Ok(()));
        assert_eq!(b.check_host("a.example.com"), Ok(()));
        assert_eq!(b.check_host("A-Long-Label.EXAMPLE.com"), Ok(()));
        for host in [
            "example.com",
            "a.b.example.com",
            ".example.com",
            "cn.example",
            "db.example.org.evil",
        ] {
            assert!(b.check_host(host).is_err(), "{host}");
        }
        assert_eq!(
            b.check_host("cn.example").unwrap_err().to_string(),
            "server certificate for \"*.example.com\" (and 3 other names) does not match host name \"cn.example\""
        );
        // IP SANs present: an IP host matches them, and not the CN.
        assert_eq!(b.check_host("10.0.0.1"), Ok(()));
        assert_eq!(b.check_host("::1"), Ok(()));
        assert!(b.check_host("10.0.0.2").is_err());
        // Only an IP SAN: a DNS host falls back to the CN; an IP host does not.
        assert_eq!(c.check_host("db.example"), Ok(()));
        assert_eq!(c.check_host("127.0.0.1"), Ok(()));
        assert!(c.check_host("127.0.0.2").is_err());
        assert!(c.check_host("other.example").is_err());
    }

    #[test]
    fn wildcards() {
        let m = |name: &str, host: &str| name_matches(name.as_bytes(), host.as_bytes());
        assert!(m("*.example.com", "x.example.com"));
        assert!(
            m("*.com", "example.com"),
            "libpq allows a wildcard over a single label"
        );
        assert!(!m("*.example.com", "x.y.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(!m("*example.com", "xexample.com"));
        assert!(!m("x*.example.com", "xy.example.com"));
        assert!(!m("*.", "a."), "too short a pattern");
        assert!(!m("*", "anything"));
        assert!(!m("", "a"));
        assert!(m("", ""));
    }

    #[test]
    fn times() {
        let t = |tag: u8, s: &str| {
            let mut bytes = vec![tag, s.len() as u8];
            bytes.extend_from_slice(s.as_bytes());
            time(&mut Der(&bytes))
        };
        assert_eq!(t(0x17, "700101000000Z"), Ok(0));
        assert_eq!(t(0x17, "491231235959Z"), Ok(2_524_607_999));
        assert_eq!(t(0x17, "500101000000Z"), Ok(-631_152_000));
        assert_eq!(t(0x18, "20000301000000Z"), Ok(951_868_800));
        assert_eq!(t(0x18, "20240229120000Z"), Ok(1_709_208_000));
        for bad in [
            (0x18, "20230229120000Z"),
            (0x18, "20231301000000Z"),
            (0x18, "20230100000000Z"),
            (0x18, "20230101240000Z"),
            (0x18, "20230101000060Z"),
            (0x18, "2023010100000Z"),
            (0x18, "20230101000000+"),
            (0x17, "20230101000000Z"),
            (0x17, "7001010000-0Z"),
            (0x04, "700101000000Z"),
        ] {
            assert!(t(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    /// Everything a verifier calls on a parsed certificate.
    fn exercise(der: &[u8]) {
        if let Ok(cert) = Cert::parse(der) {
            let _ = cert.is_self_signed();
            let _ = cert.is_for_tls_server();
            let _ = cert.has_unhandled_critical_extension();
            for host in ["dbhost.yourdomain.com", "a.example.com", "10.0.0.1", "::1", ""] {
                let _ = cert.check_host(host).map_err(|e| e.to_string());
            }
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        for pem in [A, B, C, D] {
            let der = der(pem);
            // Every truncation is refused (the outer length no longer fits).
            for n in 0..der.len() {
                assert!(Cert::parse(&der[..n]).is_err(), "prefix of {n} bytes");
                exercise(&der[n..]);
            }
            // Trailing bytes are refused.
            let mut longer = der.clone();
            longer.push(0);
            assert!(Cert::parse(&longer).is_err());
            // Random corruption: bytes replaced, lengths and tags included.
            let mut rng = fastrand::Rng::with_seed(24);
            for _ in 0..20_000 {
                let mut bad = der.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..bad.len());
                    bad[at] = match rng.u8(..4) {
                        0 => 0xff,
                        1 => 0x80 | rng.u8(..8),
                        2 => bad[at] ^ (1 << rng.u8(..8)),
                        _ => rng.u8(..),
                    };
                }
                exercise(&bad);
                // And cut short somewhere.
                let cut = rng.usize(..bad.len());
                exercise(&bad[..cut]);
            }
        }
        // Lengths that lie, indefinite and oversized lengths, high tags,
        // deep nesting of junk.
        let cases: &[&[u8]] = &[
            &[],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x81, 0x05, 0x00],
            &[0x30, 0x81, 0x7f],
            &[0x30, 0x82, 0x00, 0x80],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00],
            &[0x30, 0x89, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x1f, 0x81, 0x01, 0x00],
            &[0x30, 0x02, 0x30, 0x05],
            &[0x30, 0x03, 0x30, 0x01, 0x30],
        ];
        for case in cases {
            assert!(Cert::parse(case).is_err(), "{case:02x?}");
        }
        let mut nested = Vec::new();
        for _ in 0..10_000 {
            nested = [
                vec![0x30, 0x84],
                (nested.len() as u32).to_be_bytes().to_vec(),
                nested,
            ]
            .concat();
        }
        assert!(Cert::parse(&nested).is_err());
    }
}
