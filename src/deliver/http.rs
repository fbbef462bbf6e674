//! The HTTP side of an attempt: one shared client with keep-alive, no
//! redirects, bounded timeouts, at most `excerpt` bytes of the answer
//! read, and only allowed targets connected to (`target`: the URL is
//! checked before sending, every DNS answer as it is used).

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::retry::parse_retry_after;
use super::target;
use crate::endpoints::Endpoint;
use crate::job::AttemptError;
use crate::sign;

pub const USER_AGENT_VALUE: &str = concat!("pgwebhooks/", env!("CARGO_PKG_VERSION"));

pub struct Http {
    /// With the environment's proxies; their hosts resolve unfiltered.
    client: reqwest::Client,
    /// Without proxies, every name filtered: for URLs that name a proxy
    /// host, so the proxies' exemption never covers a direct connection.
    direct: reqwest::Client,
    proxies: Vec<String>,
    allow_private: bool,
}

/// What came back.
#[derive(Debug, Default)]
pub struct Sent {
    pub status: Option<u16>,
    pub error: Option<AttemptError>,
    pub excerpt: String,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl Sent {
    /// Not sent: the URL is malformed or its target refused (`error` says
    /// why). Retrying will not help.
    pub fn refused(&self) -> bool {
        self.error.as_ref().is_some_and(AttemptError::is_refused)
    }
}

impl Http {
    /// `allow_private`: private, loopback and link-local targets are allowed
    /// (metadata services never are).
    pub fn new(allow_private: bool) -> Http {
        Self::with_proxy_hosts(allow_private, target::proxy_hosts())
    }

    /// [`Http::new`] with the proxy hosts given (tests; `new` reads them
    /// from the environment).
    pub fn with_proxy_hosts(allow_private: bool, proxies: Vec<String>) -> Http {
        install_crypto_provider();
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
        };
        let client = builder()
            .dns_resolver(target::Resolver::for_proxies(allow_private, proxies.clone()))
            .build()
            .expect("HTTP client");
        let direct = builder()
            .no_proxy()
            .dns_resolver(target::Resolver::new(allow_private))
            .build()
            .expect("HTTP client");
        Http {
            client,
            direct,
            proxies,
            allow_private,
        }
    }

    /// Signs and sends `body` to `endpoint`, with its extra headers
    /// (`user_headers`, placeholders already filled in).
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        msg_id: &str,
        endpoint: &Endpoint,
        body: &[u8],
        user_headers: &[(String, String)],
        now: SystemTime,
        timeout: Duration,
        excerpt: usize,
    ) -> Sent {
        let started = Instant::now();
        let mut sent = Sent::default();
        // Endpoints may be inserted with SQL: check every URL here too.
        let url = match target::check(&endpoint.url, self.allow_private) {
            Ok(url) => url,
            Err(e) => {
                sent.error = Some(AttemptError::Refused(e.to_string()));
                sent.duration = started.elapsed();
                return sent;
            }
        };
        let headers = match headers(msg_id, endpoint, body, user_headers, now) {
            Ok(h) => h,
            Err(e) => {
                sent.error = Some(AttemptError::Headers(e));
                return sent;
            }
        };
        // A URL naming a proxy host goes directly, every address checked.
        let client = if target::names_proxy(&url, &self.proxies) {
            &self.direct
        } else {
            // Through a proxy, which resolves the name itself: check here
            // what it resolves to (audit L2).
            if !self.proxies.is_empty() {
                if let Err(e) = target::check_behind_proxy(&url, self.allow_private).await {
                    sent.error = Some(AttemptError::Refused(e.to_string()));
                    sent.duration = started.elapsed();
                    return sent;
                }
            }
            &self.client
        };
        let request = client
            .post(url)
            .headers(headers)
            .body(body.to_vec())
            .timeout(timeout);
        match request.send().await {
            Ok(mut resp) => {
                sent.status = Some(resp.status().as_u16());
                sent.retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                if resp.status().is_redirection() {
                    let to = resp
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?");
                    sent.error = Some(AttemptError::Redirect {
                        to: crate::job::bounded(to).into_owned(),
                    });
                }
                let mut bytes = Vec::new();
                while bytes.len() < excerpt {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            bytes.extend_from_slice(&chunk[..chunk.len().min(excerpt - bytes.len())])
                        }
                        Ok(None) => break,
                        Err(_) => break,
                    }
                }
                sent.excerpt = String::from_utf8_lossy(&bytes).into_owned();
            }
            Err(e) => match target::find_refused(&e) {
                Some(refused) => sent.error = Some(AttemptError::Refused(refused.to_string())),
                None => sent.error = Some(describe(e.without_url(), timeout)),
            },
        }
        sent.duration = started.elapsed();
        sent
    }
}

fn headers(
    msg_id: &str,
    endpoint: &Endpoint,
    body: &[u8],
    user_headers: &[(String, String)],
    now: SystemTime,
) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    let ts = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let value = |s: String| HeaderValue::from_str(&s).map_err(|_| "unprintable header value".to_owned());
    let name =
        |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name {n:?}"));
    h.insert("webhook-id", value(msg_id.to_owned())?);
    h.insert("webhook-timestamp", value(ts.to_string())?);
    let keys = endpoint.active_keys(now);
    if endpoint.styles.standard && !keys.is_empty() {
        h.insert(
            "webhook-signature",
            value(sign::signature_header(&keys, msg_id, ts, body))?,
        );
    }
    if let Some(key) = keys.first() {
        if endpoint.styles.sha256_hex {
            h.insert(name(&endpoint.signature_header)?, value(key.sign_hex(body))?);
        }
        if endpoint.styles.secret_header {
            let mut v = value(key.secret().to_owned())?;
            v.set_sensitive(true);
            h.insert(name(&endpoint.secret_header)?, v);
        }
    }
    // A user's header replaces ours (user-agent), never a signature's or
    // content-type (refused when configured; skipped here for rows written
    // with SQL).
    for (n, v) in user_headers {
        if endpoint.protects(n) {
            continue;
        }
        // Filled-in values may hold anything: control characters become spaces.
        let cleaned: String = v
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect();
        let mut v = HeaderValue::from_bytes(cleaned.as_bytes())
            .map_err(|_| format!("unprintable value for header {n:?}"))?;
        v.set_sensitive(true);
        h.insert(name(n)?, v);
    }
    Ok(h)
}

/// The error without the URL (a Make.com URL is a credential).
fn describe(e: reqwest::Error, timeout: Duration) -> AttemptError {
    if e.is_timeout() {
        AttemptError::TimedOut(timeout)
    } else if e.is_connect() {
        AttemptError::Connect(crate::errors::error_chain(&e))
    } else {
        AttemptError::Transport(crate::errors::error_chain(&e))
    }
}

/// reqwest is built without a default TLS crypto provider; use ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL whose host is also a proxy's host is not exempt from the
    /// checks: only the connection to the proxy is.
    #[tokio::test]
    async fn a_url_naming_the_proxy_host_is_checked_like_any_other() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
        // The proxy is configured (for https, say) on host `localhost`.
        let http = Http::with_proxy_hosts(false, vec!["LocalHost.".into()]);
        let endpoint = Endpoint::test(1, &format!("http://localhost:{port}/hook"));
        let sent = http
            .send(
                "msg_1",
                &endpoint,
                b"{}",
                &[],
                SystemTime::now(),
                Duration::from_secs(2),
                64,
            )
            .await;
        assert!(sent.refused(), "{sent:?}");
        assert!(
            sent.error
                .as_ref()
                .is_some_and(|e| e.to_string().contains("a loopback address")),
            "{sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !accepted.is_finished(),
            "nothing connected to the private address"
        );
        accepted.abort();
    }
}
