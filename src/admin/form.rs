//! `application/x-www-form-urlencoded` bodies and query strings, as pairs
//! (a repeated name, such as the dead-letter page's `id` checkboxes, keeps
//! every value).

use crate::urlencoded::percent_decode;

/// The pairs of `text`, percent- and `+`-decoded (invalid UTF-8 replaced).
pub(super) fn pairs(text: &[u8]) -> Vec<(String, String)> {
    text.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|b| *b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &b""[..]),
            };
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The first value named `name`.
pub(super) fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Percent-encodes a query value.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_repeated_names_plus_and_percent() {
        let p = pairs(b"id=1&id=2&q=appointments+42&x=%41%zz%&csrf=");
        assert_eq!(
            p,
            vec![
                ("id".into(), "1".into()),
                ("id".into(), "2".into()),
                ("q".into(), "appointments 42".into()),
                ("x".into(), "A%zz%".into()),
                ("csrf".into(), "".into())
            ]
        );
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(pairs(b"%00=%00")[0].1, "\0");
    }
}
