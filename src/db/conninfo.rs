//! Pre-parsing of `DATABASE_URL`: takes out the TLS keys libpq knows but
//! tokio-postgres does not (`sslrootcert`, `sslcert`, `sslkey`, and the
//! `sslmode` values `verify-ca`/`verify-full`) and leaves the rest, in the
//! same form, for the driver's own parser. Never echoes the string: it may
//! hold a password.

/// The TLS keys found in a connection string (the last occurrence wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsKeys {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl TlsKeys {
    /// Takes `key` if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Splits `s` (a `postgres://` URL or a `key=value` string) into what the
/// driver should parse and the TLS keys. Errors name the problem, never
/// the string.
pub fn split(s: &str) -> Result<(String, TlsKeys), String> {
    let s = s.trim();
    let mut keys = TlsKeys::default();
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| s.strip_prefix(p).map(|rest| (p, rest)));
    let Some((_, after_scheme)) = rest else {
        return split_key_value(s, &mut keys).map(|rest| (rest, keys));
    };
    // As the driver does: the credentials end at the first '@'.
    let authority_start = s.len() - after_scheme.len() + after_scheme.find('@').map_or(0, |i| i + 1);
    let Some(q) = s[authority_start..].find('?').map(|i| authority_start + i) else {
        return Ok((s.to_owned(), keys));
    };
    let mut kept = Vec::new();
    for param in s[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode(key)?;
        if !keys.take(&key, percent_decode(value)?) {
            kept.push(param);
        }
    }
    let mut out = s[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, keys))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding in a URL query parameter")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a URL query parameter is not UTF-8 once decoded".to_owned())
}

/// libpq's `key = value` form: values may be single-quoted, and `\` escapes
/// the next character. The kept pairs are written back single-quoted.
fn split_key_value(s: &str, keys: &mut TlsKeys) -> Result<String, String> {
    let mut chars = s.chars().peekable();
    let mut kept: Vec<String> = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected `=` after `{key}` in the connection string"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value for `{key}`")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if !keys.take(&key, value.clone()) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_form_takes_tls_keys_and_keeps_the_rest() {
        let (rest, keys) = split(
            "postgres://u:p%3Fw@db.example:5433/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%3Fw@db.example:5433/app?application_name=x");
        assert_eq!(keys.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(keys.sslrootcert.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(keys.sslcert.as_deref(), Some("/c.pem"));
        assert_eq!(keys.sslkey.as_deref(), Some("/k.pem"));
    }

    #[test]
    fn url_form_without_query_or_only_tls_keys() {
        let (rest, keys) = split("postgresql://h/db").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(keys, TlsKeys::default());
        let (rest, keys) = split("postgres://u:a?b@h/db?sslmode=require").unwrap();
        assert_eq!(
            rest, "postgres://u:a?b@h/db",
            "a '?' in the password is not the query"
        );
        assert_eq!(keys.sslmode.as_deref(), Some("require"));
        assert!(split("postgres://h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn key_value_form() {
        let (rest, keys) = split(
            "host=localhost  port = 5432 password='it\\'s x' sslmode=verify-ca sslrootcert='/tmp/my ca.pem' user=a\\ b",
        )
        .unwrap();
        assert_eq!(
            rest,
            "host='localhost' port='5432' password='it\\'s x' user='a b'"
        );
        assert_eq!(keys.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(keys.sslrootcert.as_deref(), Some("/tmp/my ca.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's x"[..]));
        assert_eq!(config.get_user(), Some("a b"));
        assert!(split("host=h sslmode").unwrap_err().contains("sslmode"));
        assert!(split("host='h").unwrap_err().contains("unterminated"));
    }
}
