//! `application/x-www-form-urlencoded` values (a query's `?secret=`, the
//! console's forms): `+` is a space, `%XX` a byte; a malformed escape stays
//! as written, and invalid UTF-8 becomes U+FFFD.

/// One value (or key), decoded.
pub(crate) fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() && s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit() => {
                out.push(hex(s[i + 1]) << 4 | hex(s[i + 2]));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        _ => (d | 0x20) - b'a' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_and_leaves_malformed_escapes_as_written() {
        assert_eq!(percent_decode(b"a+b%20c%2Fd%2f"), "a b c/d/");
        assert_eq!(percent_decode(b"%"), "%");
        assert_eq!(percent_decode(b"%4"), "%4");
        assert_eq!(percent_decode(b"%zz%4g"), "%zz%4g");
        // Not a sign either (from_str_radix would read "+1" as 1): the
        // "%" stays and the "+" is a space.
        assert_eq!(percent_decode(b"%+1%-1"), "% 1%-1");
        assert_eq!(percent_decode(b"%ff"), "\u{fffd}");
    }
}
