//! What may be shown of a URL where secrets are hidden (logs, `status`,
//! the console): Make.com's URLs are credentials. And what may be shown of
//! a receiver's text in a log or on a terminal: no control character.

use std::borrow::Cow;

/// `text` with every control character (ESC, NUL, CR, LF, …) escaped as
/// Rust writes it (`\u{1b}`, `\u{0}`, `\n`): a receiver's words in a text log
/// or on a terminal can neither colour it, move its cursor, nor forge a
/// line of their own.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The URL as it may be shown where secrets are hidden: scheme, host and
/// port, with the path and query (a Make.com URL's token, an API key in a
/// query) and any `user:password@` replaced: `https://hook.eu1.make.com/…`.
/// The SQL function `webhooks.url_redact` says the same.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url
        .split_once("://")
        .filter(|(scheme, _)| !scheme.contains([':', '/', '?', '#']))
    else {
        return "…".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = if tail.is_empty() || tail == "/" {
        tail
    } else {
        "/…"
    };
    format!("{scheme}://{host}{tail}")
}

/// `text` with every URL in it redacted ([`redact`]): an error may
/// quote one (a redirect's `Location`), and URLs can be credentials.
pub(crate) fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | ','))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("HTTP 503: down ✓"), Cow::Borrowed(_)));
        assert_eq!(
            printable("x\n2026 ERROR forged\u{1b}[31mRED\u{1b}[0m\0\r"),
            "x\\n2026 ERROR forged\\u{1b}[31mRED\\u{1b}[0m\\u{0}\\r"
        );
    }
}
