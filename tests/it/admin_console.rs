//! The console over HTTP (issue #17): sign-in with the token, the session
//! cookie, CSRF and cross-site refusals, every page rendered without a
//! secret, the search box. The same in a real browser: `console_browser.rs`.

use reqwest::StatusCode;

use super::admin::{count, http, T};
use crate::support::sidecar::{self, ADMIN_TOKEN, SECRET};
use crate::support::{wait, TestDb};

/// A console session: the cookie and the CSRF token of its pages.
pub async fn sign_in(admin: &str) -> (String, String) {
    let resp = http()
        .post(format!("{admin}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = http()
        .get(format!("{admin}/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn the_console_signs_in_with_the_token_and_refuses_posts_without_csrf_or_from_elsewhere() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let id = sidecar::endpoint(&c, "http://127.0.0.1:9/hook-path-secret", &["*"], "name = 'crm'").await;
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    let admin = s.admin.clone();
    // Not signed in: the login page; a wrong token is refused.
    let resp = http().get(format!("{admin}/console")).send().await.unwrap();
    assert_eq!(
        (resp.status(), resp.headers()["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/console/login")
    );
    let resp = http()
        .post(format!("{admin}/console/login"))
        .body(format!("token={ADMIN_TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    let forged = "00000000000000000000000000000000.99999999999.abcdef";
    let resp = http()
        .get(format!("{admin}/console"))
        .header("cookie", format!("pgwebhooks_session={forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "a forged cookie is no session");

    let (cookie, csrf) = sign_in(&admin).await;
    let pause = format!("{admin}/console/endpoints/{id}/pause");
    let post = |body: String| http().post(&pause).header("cookie", &cookie).body(body);
    for (what, req) in [
        ("no csrf", post("reason=x".into())),
        ("wrong csrf", post("reason=x&csrf=0123".into())),
        (
            "cross-site",
            post(format!("csrf={csrf}")).header("origin", "http://evil.example"),
        ),
        (
            "fetch metadata",
            post(format!("csrf={csrf}")).header("sec-fetch-site", "cross-site"),
        ),
        ("no session", http().post(&pause).body(format!("csrf={csrf}"))),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "{what}");
        let enabled: bool = c
            .query_one("SELECT enabled FROM webhooks.endpoints WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert!(enabled, "{what}: nothing changed");
    }
    let resp = post(format!("csrf={csrf}&reason=checking+the+CRM"))
        .header("origin", admin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let reason: Option<String> = c
        .query_one(
            "SELECT disabled_reason FROM webhooks.endpoints WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason.as_deref(), Some("checking the CRM"));
    let actor: String = c
        .query_one(
            "SELECT actor FROM webhooks.admin_actions WHERE action = 'endpoint.pause'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(actor.starts_with("console session "), "{actor}");

    // Every page renders; none shows a secret or the URL's path.
    c.execute(
        "SELECT webhooks.emit('x.y', '{}', source_table => 'app.things', row_key => '7')",
        &[],
    )
    .await
    .unwrap();
    let delivery: i64 = wait::until("a delivery row", T, || async {
        c.query_opt("SELECT id FROM webhooks.deliveries LIMIT 1", &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    let eid: uuid::Uuid = c
        .query_one(
            "SELECT event_id FROM webhooks.deliveries WHERE id = $1",
            &[&delivery],
        )
        .await
        .unwrap()
        .get(0);
    for path in [
        "/console".to_owned(),
        "/console/endpoints".into(),
        format!("/console/endpoints/{id}"),
        "/console/deliveries".into(),
        format!("/console/deliveries?endpoint_id={id}&status=pending"),
        format!("/console/deliveries/{delivery}"),
        "/console/dead".into(),
        "/console/inbound".into(),
        "/console/actions".into(),
        "/console/assets/console.css".into(),
    ] {
        let resp = http()
            .get(format!("{admin}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert!(resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        let html = resp.text().await.unwrap();
        assert!(
            !html.contains(SECRET) && !html.contains("hook-path-secret") && !html.contains(ADMIN_TOKEN),
            "{path}"
        );
    }
    for (q, to) in [
        (delivery.to_string(), format!("/console/deliveries/{delivery}")),
        (eid.to_string(), format!("/console/deliveries?event_id={eid}")),
        ("things+7".into(), "/console/deliveries?source=things%207".into()),
    ] {
        let resp = http()
            .get(format!("{admin}/console/search?q={q}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["location"].to_str().unwrap(), to, "{q}");
    }
    let found = http()
        .get(format!("{admin}/console/deliveries?source=things%207"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        found.contains(&format!("/console/deliveries/{delivery}\"")),
        "the source row's delivery is listed"
    );
    for path in [
        "/console/deliveries/abc",
        "/console/deliveries?cursor=zz",
        "/console/deliveries?since=%00",
    ] {
        let resp = http()
            .get(format!("{admin}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
    }
    // Sign out ends the cookie.
    let resp = http()
        .post(format!("{admin}/console/logout"))
        .header("cookie", &cookie)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    s.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(have_schemathesis),
    ignore = "needs schemathesis (pip install schemathesis, then touch build.rs); .ci/run installs it"
)]
async fn schemathesis_finds_no_server_error_or_schema_violation_in_the_admin_api() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Something to list, retry and delete.
    let id = sidecar::endpoint(&c, "http://127.0.0.1:9/x", &["*"], "name = 'seed'").await;
    c.execute(
        "SELECT webhooks.emit('x.y', '{}', source_table => 'app.t', row_key => '1')",
        &[],
    )
    .await
    .unwrap();
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    wait::until("a delivery", T, || async {
        (count(
            &c,
            &format!("SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = {id}"),
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
    let out = tokio::process::Command::new("schemathesis")
        .args(["run", &format!("{}/api/v1/openapi.json", s.admin), "--checks"])
        .arg("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth")
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--max-examples", "15", "--seed", "7", "--request-timeout", "10", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    s.stop().await;
    assert!(report.contains("Tested: 19"), "every operation ran:\n{report}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A table whose capture is degraded (issue #23) is shown by
/// `pgwebhooks status`, `/api/v1/status` and the console's overview, with
/// its last error; and the overview escapes it.
#[tokio::test]
async fn degraded_capture_is_shown_everywhere_an_operator_looks() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let app = format!("{}_app", db.name());
    c.batch_execute(&format!(
        "CREATE ROLE {app} LOGIN IN ROLE webhooks_app; CREATE SCHEMA shop AUTHORIZATION {app};"
    ))
    .await
    .unwrap();
    db.client_as(&app)
        .await
        .batch_execute(
            "CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric);
             CREATE FUNCTION shop.order_payload(o shop.orders) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION '<b>bad</b> order %', o.id; END $$;
             SELECT webhooks.watch('shop.orders', 'order', '{\"payload\": \"shop.order_payload\"}');
             INSERT INTO shop.orders VALUES (1, 2);",
        )
        .await
        .unwrap();
    let (ok, out, err) = db.cli(&["status"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("capture degraded: shop.orders (1 event(s)") && out.contains("<b>bad</b> order 1"),
        "{out}"
    );
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    let status: serde_json::Value = http()
        .get(format!("{}/api/v1/status", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &status["capture_degraded"][0];
    assert_eq!(d["table"], "shop.orders");
    assert_eq!(d["failures"], 1);
    assert!(d["last_error"].as_str().unwrap().contains("order 1"), "{status}");
    let (cookie, _) = sign_in(&s.admin).await;
    let html = http()
        .get(format!("{}/console", s.admin))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Capture degraded"), "{html}");
    assert!(
        html.contains("&lt;b&gt;bad&lt;&#x2f;b&gt; order 1")
            || html.contains("&lt;b&gt;bad&lt;/b&gt; order 1"),
        "{html}"
    );
    s.stop().await;
}
