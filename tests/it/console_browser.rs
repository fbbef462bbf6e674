//! The console in a real headless Chromium (`tests/console_browser.py`,
//! selenium over chromedriver): this test builds the world the browser
//! looks at — an endpoint whose receiver answered 500 until its delivery
//! died, then came back — and checks what the clicks did to the database.
//! Screenshots of every page land in `target/console-screenshots/`.

use std::time::Duration;

use crate::support::sidecar::{self, ADMIN_TOKEN};
use crate::support::{wait, Receiver, Reply, TestDb};

#[tokio::test]
#[cfg_attr(
    not(all(have_selenium, have_chromedriver)),
    ignore = "needs chromium, chromedriver and selenium (apt-get install chromium chromium-driver; pip install selenium; then touch build.rs); .ci/run installs them"
)]
async fn the_console_in_a_real_browser() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = up.clone();
    let make = Receiver::start(move |_| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::ok().body(r#"{"accepted": true}"#)
        } else {
            Reply::status(500).body("Make says no: scenario is off")
        }
    })
    .await;
    let id = sidecar::endpoint(&c, &make.url, &["appointment.*"], "name = 'make-appointments'").await;
    let crm = Receiver::ok().await;
    sidecar::endpoint(&c, &crm.url, &["ticket.*"], "name = 'crm'").await;
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    c.execute(
        "SELECT webhooks.emit('appointment.created', '{\"appointment\": {\"id\": 42, \"status\": \"pending\"}}',
                              source_table => 'app.appointments', row_key => '42')",
        &[],
    )
    .await
    .unwrap();
    let delivery: i64 = wait::until("the delivery to die", Duration::from_secs(20), || async {
        c.query_opt("SELECT id FROM webhooks.deliveries WHERE status = 'dead'", &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    // A watched table whose payload function raises: capture degraded.
    c.batch_execute(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.orders (id bigint PRIMARY KEY);
         CREATE FUNCTION shop.order_payload(o shop.orders) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'order % cannot be shaped', o.id; END $$;
         SELECT webhooks.watch('shop.orders', 'order', '{\"payload\": \"shop.order_payload\"}');
         INSERT INTO shop.orders VALUES (7);",
    )
    .await
    .unwrap();
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots");
    let out = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console_browser.py"))
        .args([
            &s.admin,
            ADMIN_TOKEN,
            shots,
            &id.to_string(),
            &delivery.to_string(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser scenarios failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all browser scenarios passed"), "{stdout}");
    // What the clicks did, as the database tells it.
    let status: String = c
        .query_one(
            "SELECT status FROM webhooks.deliveries WHERE id = $1",
            &[&delivery],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "delivered");
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM webhooks.admin_actions WHERE actor LIKE 'console session %' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        [
            "console.sign_in",
            "delivery.retry",
            "endpoint.pause",
            "endpoint.resume"
        ],
        "and no action from the cross-site POST"
    );
    for page in [
        "login",
        "overview",
        "dead-letters",
        "delivery-dead",
        "delivery-delivered",
        "endpoints",
        "endpoint",
    ] {
        assert!(
            std::path::Path::new(&format!("{shots}/{page}.png")).exists(),
            "{page}.png"
        );
    }
    s.stop().await;
}
