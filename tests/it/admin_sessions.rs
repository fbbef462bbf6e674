//! Console sessions and sign-in, attacked (security audit 2: L3, L4, L5,
//! I4): a copied cookie after sign-out, idle and absolute expiry, token
//! guessing, a forged `Host` (DNS rebinding), hostile `next` targets, the
//! cookie's flags, masked header values.

use std::time::Duration;

use reqwest::StatusCode;

use super::admin::{http, T};
use super::admin_console::sign_in;
use crate::support::sidecar::{self, ADMIN_TOKEN};
use crate::support::{wait, TestDb};

/// Where a console GET with `cookie` ends up: 200, or the redirect's target.
async fn console_get(admin: &str, path: &str, cookie: &str) -> (StatusCode, String) {
    let resp = http()
        .get(format!("{admin}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status(), location)
}

fn signed_out(got: &(StatusCode, String)) -> bool {
    got.0 == StatusCode::SEE_OTHER && got.1.starts_with("/console/login")
}

/// The session id a cookie (`pgwebhooks_session=<id>.<expiry>.<mac>`) carries.
fn session_id(cookie: &str) -> String {
    cookie
        .split('=')
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn sign_out_ends_the_session_for_every_copy_of_its_cookie_on_every_replica() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let id = sidecar::endpoint(&c, "http://127.0.0.1:9/h", &["*"], "").await;
    let a = sidecar::start(sidecar::config_with_admin(&db)).await;
    let b = sidecar::start(sidecar::config_with_admin(&db)).await;
    let (cookie, csrf) = sign_in(&a.admin).await;
    let (other, _) = sign_in(&a.admin).await;
    // Only a hash of the id is stored.
    let sid = session_id(&cookie);
    let stored = |sql: &'static str| {
        let c = &c;
        let sid = sid.clone();
        async move { c.query_one(sql, &[&sid]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        stored("SELECT count(*) FROM webhooks.admin_sessions WHERE id_hash = sha256(convert_to($1, 'UTF8'))")
            .await,
        1
    );
    assert_eq!(
        stored(
            "SELECT count(*) FROM webhooks.admin_sessions
              WHERE encode(id_hash, 'hex') = $1 OR position(convert_to($1, 'UTF8') IN id_hash) > 0
                 OR client LIKE '%' || $1 || '%'"
        )
        .await,
        0
    );
    // The attacker's copy works on both replicas while the session lives.
    let copy = cookie.clone();
    assert_eq!(console_get(&a.admin, "/console", &copy).await.0, 200);
    assert_eq!(console_get(&b.admin, "/console", &copy).await.0, 200);

    let resp = http()
        .post(format!("{}/console/logout", a.admin))
        .header("cookie", &cookie)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/console/login");
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));

    // The copy is refused everywhere: pages, on the other replica, and POSTs
    // with the CSRF token the attacker also copied.
    for admin in [&a.admin, &b.admin] {
        for path in [
            "/console",
            "/console/endpoints",
            &format!("/console/endpoints/{id}"),
        ] {
            let got = console_get(admin, path, &copy).await;
            assert!(signed_out(&got), "{admin}{path}: {got:?}");
        }
        let resp = http()
            .post(format!("{admin}/console/endpoints/{id}/pause"))
            .header("cookie", &copy)
            .body(format!("csrf={csrf}&reason=owned"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let resp = http()
            .post(format!("{admin}/console/logout"))
            .header("cookie", &copy)
            .body(format!("csrf={csrf}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "signing out twice is no session either");
    }
    let enabled: bool = c
        .query_one("SELECT enabled FROM webhooks.endpoints WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(enabled);
    assert_eq!(
        stored("SELECT count(*) FROM webhooks.admin_sessions WHERE id_hash = sha256(convert_to($1, 'UTF8'))")
            .await,
        0
    );
    // Another session is not touched by this one's sign-out.
    assert_eq!(console_get(&b.admin, "/console", &other).await.0, 200);
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM webhooks.admin_actions WHERE action LIKE 'console.%' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        ["console.sign_in", "console.sign_in", "console.sign_out"]
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_unused_for_its_idle_time_and_at_its_absolute_end() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut config = sidecar::config_with_admin(&db);
    {
        let admin = config.admin.as_mut().unwrap();
        admin.session_idle = Duration::from_secs(1);
        admin.session_ttl = Duration::from_secs(3600);
    }
    let s = sidecar::start(config).await;
    let (cookie, _) = sign_in(&s.admin).await;
    assert_eq!(console_get(&s.admin, "/console", &cookie).await.0, 200);
    // Idle: wait (by the database's clock, which decides) until the session
    // has been unused for longer than its idle time; nothing touches it
    // meanwhile.
    let sid = session_id(&cookie);
    wait::until("the session to be idle for 1 s", T, || async {
        let idle: bool = c
            .query_one(
                "SELECT seen_at < now() - interval '1 second' FROM webhooks.admin_sessions
                  WHERE id_hash = sha256(convert_to($1, 'UTF8'))",
                &[&sid],
            )
            .await
            .unwrap()
            .get(0);
        idle.then_some(())
    })
    .await;
    let got = console_get(&s.admin, "/console", &cookie).await;
    assert!(signed_out(&got), "{got:?}");
    s.stop().await;

    // Absolute: used all the time, it still ends at its TTL.
    let mut config = sidecar::config_with_admin(&db);
    {
        let admin = config.admin.as_mut().unwrap();
        admin.session_idle = Duration::from_secs(3600);
        admin.session_ttl = Duration::from_secs(2);
    }
    let s = sidecar::start(config).await;
    let (cookie, _) = sign_in(&s.admin).await;
    let sid = session_id(&cookie);
    let ended = wait::until("the session to end at its TTL", T, || async {
        let got = console_get(&s.admin, "/console", &cookie).await;
        if signed_out(&got) {
            return Some(());
        }
        assert_eq!(got.0, 200, "{got:?}");
        None
    });
    ended.await;
    // Not before its time (the database's clock, a second of slack for the
    // cookie's own whole-second expiry).
    let early: bool = c
        .query_opt(
            "SELECT now() < created_at + interval '1 second' FROM webhooks.admin_sessions
              WHERE id_hash = sha256(convert_to($1, 'UTF8'))",
            &[&sid],
        )
        .await
        .unwrap()
        .is_some_and(|r| r.get(0));
    assert!(!early, "the session ended before its TTL");
    s.stop().await;
}

/// A GET with a forged `Host`: (status, body).
async fn get_as(url: &str, host: &str, bearer: bool) -> (StatusCode, String) {
    let mut req = http().get(url).header("host", host);
    if bearer {
        req = req.bearer_auth(ADMIN_TOKEN);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_request_for_a_host_we_do_not_serve_gets_421_and_nothing_of_ours() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut config = sidecar::config_with_admin(&db);
    config.admin.as_mut().unwrap().hosts = "admin.example.com, ops.example:8443"
        .parse::<pgwebhooks::admin::hosts::AllowedHosts>()
        .unwrap()
        .0;
    let s = sidecar::start(config).await;
    let port = s.admin.rsplit(':').next().unwrap().to_owned();
    // A DNS-rebinding page: evil.example now resolves to 127.0.0.1.
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        "admin.example.com.evil.example".to_owned(),
        "ops.example:9477".to_owned(),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        for (path, bearer) in [
            ("/console/login", false),
            ("/console", false),
            ("/console/assets/console.css", false),
            ("/api/v1/status", true),
            ("/api/v1/openapi.json", true),
        ] {
            let (status, body) = get_as(&format!("{}{path}", s.admin), &host, bearer).await;
            assert_eq!(status, 421, "{host} {path}");
            assert!(
                !body.contains("<form") && !body.contains("token") && !body.contains("openapi"),
                "{host} {path}: {body}"
            );
        }
        // Signing in from the rebound page, with the right token, sets nothing.
        let resp = http()
            .post(format!("{}/console/login", s.admin))
            .header("host", &host)
            .header("origin", format!("http://{host}"))
            .body(format!("token={ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 421, "{host}");
        assert!(resp.headers().get("set-cookie").is_none());
    }
    let sessions: i64 = c
        .query_one("SELECT count(*) FROM webhooks.admin_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 0);
    // An absolute-form target names the host too.
    let raw = raw_request(
        &s.admin,
        &format!("GET http://evil.example:{port}/console/login HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 421"), "{raw}");
    assert!(!raw.contains("<form"), "{raw}");
    // Ours: loopback names (a port-forward may change the port), the
    // listener's address, and the configured names.
    for host in [
        format!("localhost:{port}"),
        "localhost:8080".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "admin.example.com".to_owned(),
        "ADMIN.example.com:443".to_owned(),
        "ops.example:8443".to_owned(),
    ] {
        let (status, body) = get_as(&format!("{}/console/login", s.admin), &host, false).await;
        assert_eq!(status, 200, "{host}");
        assert!(body.contains("<form"), "{host}");
        assert_eq!(
            get_as(&format!("{}/api/v1/status", s.admin), &host, true).await.0,
            200,
            "{host}"
        );
    }
    s.stop().await;
}

/// Sends `request` as is and reads the whole answer.
async fn raw_request(admin: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

async fn sign_in_with(admin: &str, token: &str) -> reqwest::Response {
    http()
        .post(format!("{admin}/console/login"))
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn wrong_tokens_are_throttled_for_every_credential_and_the_bucket_recovers() {
    use pgwebhooks::admin::throttle::{Bucket, ThrottleConfig};
    let db = TestDb::new().await;
    let mut config = sidecar::config_with_admin(&db);
    config.admin.as_mut().unwrap().throttle = ThrottleConfig {
        per_client: Bucket {
            burst: 3,
            every: Duration::from_secs(5),
        },
        ..Default::default()
    };
    let s = sidecar::start(config).await;
    let (session, _) = sign_in(&s.admin).await;
    let wrong = format!("{ADMIN_TOKEN}x");
    for _ in 0..3 {
        assert_eq!(sign_in_with(&s.admin, &wrong).await.status(), 401);
    }
    // Full: not even the right token is checked (a full bucket is no
    // oracle), at sign-in or as a Bearer.
    let resp = sign_in_with(&s.admin, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 429);
    assert!((1..=5).contains(&retry_after(&resp)));
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.text().await.unwrap().contains("Too many wrong tokens"));
    for token in [ADMIN_TOKEN, wrong.as_str()] {
        let resp = http()
            .get(format!("{}/api/v1/status", s.admin))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert!((1..=5).contains(&retry_after(&resp)));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("too many wrong admin tokens"));
    }
    // A session signed in before is not throttled.
    assert_eq!(console_get(&s.admin, "/console", &session).await.0, 200);
    // The bucket drains: the operator signs in again without anyone's help.
    wait::until("the throttle to let the right token in", T, || async {
        let resp = sign_in_with(&s.admin, ADMIN_TOKEN).await;
        match resp.status() {
            StatusCode::SEE_OTHER => Some(()),
            StatusCode::TOO_MANY_REQUESTS => None,
            other => panic!("{other}"),
        }
    })
    .await;
    // Wrong Bearers fill the same bucket as wrong sign-ins.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = http()
            .get(format!("{}/api/v1/status", s.admin))
            .bearer_auth(&wrong)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    // (the bucket let the right token in with room for one more failure)
    assert_eq!((statuses[0], statuses[3]), (401, 429), "{statuses:?}");
    assert_eq!(sign_in_with(&s.admin, ADMIN_TOKEN).await.status(), 429);
    s.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_when_the_console_is_reached_through_tls_and_always_httponly_strict() {
    let db = TestDb::new().await;
    let mut config = sidecar::config_with_admin(&db);
    config.admin.as_mut().unwrap().hosts = "https://admin.example.com"
        .parse::<pgwebhooks::admin::hosts::AllowedHosts>()
        .unwrap()
        .0;
    let s = sidecar::start(config).await;
    let sign_in_as = |extra: &'static [(&'static str, &'static str)]| {
        let mut req = http()
            .post(format!("{}/console/login", s.admin))
            .body(format!("token={ADMIN_TOKEN}"));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 303, "{extra:?}");
            resp.headers()["set-cookie"].to_str().unwrap().to_owned()
        }
    };
    let flags = |set: &str| -> Vec<String> {
        let mut f: Vec<String> = set
            .split(';')
            .skip(1)
            .map(|a| a.trim().split('=').next().unwrap().to_owned())
            .collect();
        f.sort();
        f
    };
    // Through the TLS proxy's name, with its Origin.
    let tls = sign_in_as(&[
        ("host", "admin.example.com"),
        ("origin", "https://admin.example.com"),
    ])
    .await;
    assert_eq!(
        flags(&tls),
        ["HttpOnly", "Max-Age", "Path", "SameSite", "Secure"],
        "{tls}"
    );
    assert!(tls.contains("SameSite=Strict"), "{tls}");
    // A proxy that says so.
    let forwarded = sign_in_as(&[("x-forwarded-proto", "https")]).await;
    assert!(flags(&forwarded).contains(&"Secure".to_owned()), "{forwarded}");
    // Plain HTTP on loopback: a Secure cookie would never come back.
    let plain = sign_in_as(&[]).await;
    assert_eq!(
        flags(&plain),
        ["HttpOnly", "Max-Age", "Path", "SameSite"],
        "{plain}"
    );
    // Signing out through TLS clears it with the same flags.
    let cookie = tls.split(';').next().unwrap().to_owned();
    let html = http()
        .get(format!("{}/console", s.admin))
        .header("host", "admin.example.com")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let resp = http()
        .post(format!("{}/console/logout", s.admin))
        .header("host", "admin.example.com")
        .header("origin", "https://admin.example.com")
        .header("cookie", &cookie)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cleared = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Secure"),
        "{cleared}"
    );
    s.stop().await;
}

/// Percent-encodes all but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Signs in with the right token and `next`; where the browser is sent.
async fn sign_in_to(admin: &str, next: &str) -> String {
    let resp = http()
        .post(format!("{admin}/console/login"))
        .body(format!("token={ADMIN_TOKEN}&next={}", encode(next)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "{next:?}");
    assert!(resp.headers().get("set-cookie").is_some());
    resp.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn sign_in_goes_back_to_the_page_asked_for_and_never_to_another_site() {
    let db = TestDb::new().await;
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    // Asked for a page without a session: the sign-in page remembers it.
    let asked = "/console/deliveries?status=dead&event_type=a.b";
    let (status, location) = console_get(&s.admin, asked, "").await;
    assert_eq!(status, 303);
    assert_eq!(location, format!("/console/login?next={}", encode(asked)));
    let form = http()
        .get(format!("{}{location}", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains(r#"type="hidden" name="next""#), "{form}");
    // The form posts it back (as a browser would, decoded from the page).
    assert_eq!(sign_in_to(&s.admin, asked).await, asked);
    assert_eq!(
        sign_in_to(&s.admin, "/console/endpoints/7").await,
        "/console/endpoints/7"
    );
    // A wrong token keeps it for the next try.
    let resp = http()
        .post(format!("{}/console/login", s.admin))
        .body(format!("token=wrong-token-0123456789&next={}", encode(asked)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains(r#"name="next""#));
    // Anything that is not a path of ours goes to the overview instead.
    for hostile in [
        "//evil.example/console",
        "///evil.example",
        "/\\evil.example",
        "/\\/evil.example",
        "https://evil.example/console",
        "http:evil.example",
        "javascript:alert(1)",
        "evil.example",
        " /console",
        "/\t/evil.example",
        "/console\r\nSet-Cookie: pgwebhooks_session=fixed",
        "/console\nLocation: https://evil.example",
        "/console/\u{0}",
        "",
    ] {
        assert_eq!(sign_in_to(&s.admin, hostile).await, "/console", "{hostile:?}");
        let form = http()
            .get(format!("{}/console/login?next={}", s.admin, encode(hostile)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!form.contains(r#"name="next""#), "{hostile:?}");
    }
    s.stop().await;
}
