//! The least-privilege roles the README and docs/capture.md give: the
//! sidecar runs as a login role that is only a member of webhooks_sidecar,
//! and an app role that is only a member of webhooks_app watches its own
//! table.

use std::time::Duration;

use crate::support::sidecar::{self, endpoint, INBOUND_SECRET};
use crate::support::{wait, Receiver, TestDb};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_sidecar_and_the_app_need_only_their_group_roles() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (sc, app) = (format!("{}_sc", db.name()), format!("{}_app", db.name()));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {sc} LOGIN IN ROLE webhooks_sidecar;
             CREATE ROLE {app} LOGIN IN ROLE webhooks_app;
             CREATE SCHEMA shop AUTHORIZATION {app};"
        ))
        .await
        .unwrap();
    let a = db.client_as(&app).await;
    a.batch_execute(
        "CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric);
         SELECT webhooks.watch('shop.orders', 'order');
         INSERT INTO shop.orders (total) VALUES (1), (2);
         SELECT webhooks.emit('order.note', '{\"n\": 1}');",
    )
    .await
    .unwrap();

    let mut rx = Receiver::ok().await;
    let ep = endpoint(&admin, &rx.url, &["order.*"], "").await;
    let mut config = sidecar::config_with_inbound(&db);
    config.database.pg.user(&sc);
    let running = sidecar::start(config).await;
    let got = rx.take(3, T).await;
    assert_eq!(got.len(), 3);
    wait::until("all three recorded delivered", T, || async {
        (sidecar::statuses(&admin, ep).await == [("delivered".to_owned(), 3)]).then_some(())
    })
    .await;

    let sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
            &[&sc],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sessions > 0, "the sidecar is logged in as {sc}");

    // A callback applied by the example's handler, through the sidecar's role.
    let answer = reqwest::Client::new()
        .post(format!("{}/api/webhooks/make/errors", running.base))
        .header("x-webhook-secret", INBOUND_SECRET)
        .body(r#"{"errorMessage": "from a least-privilege sidecar", "severity": "LOW"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let logged: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.error_logs WHERE error_message = 'from a least-privilege sidecar'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
    running.stop().await;

    // Neither role can reach beyond its part.
    let s = db.client_as(&sc).await;
    for sql in [
        "SELECT * FROM shop.orders",
        "SELECT webhooks.watch('shop.orders', 'order')",
        "CREATE TABLE webhooks.mine (id int)",
    ] {
        let err = s.batch_execute(sql).await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "42501", "{sql}");
    }
    for sql in [
        "SELECT * FROM webhooks.endpoint_secrets",
        "SELECT * FROM webhooks.endpoints",
        "SELECT * FROM webhooks.events",
    ] {
        let err = a.batch_execute(sql).await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "42501", "{sql}");
    }
    for role in [&sc, &app] {
        let sup: bool = admin
            .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[role])
            .await
            .unwrap()
            .get(0);
        assert!(!sup);
    }
}
