//! Secrets and signatures: missing, off by one character in every place and
//! carrier, replayed late or early or onto another body. All 401, nothing
//! recorded.

use std::time::SystemTime;

use pgwebhooks::sign::SigningKey;
use serde_json::json;

use super::{request_owned, Corpus};
use crate::support::sidecar::INBOUND_SECRET;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The secret with one character changed, added or removed.
fn near_misses(secret: &str) -> Vec<(&'static str, String)> {
    let flip = |i: usize| {
        let mut b = secret.as_bytes().to_vec();
        b[i] = if b[i] == b'x' { b'y' } else { b'x' };
        String::from_utf8(b).unwrap()
    };
    let n = secret.len();
    vec![
        ("first character", flip(0)),
        ("middle character", flip(n / 2)),
        ("last character", flip(n - 1)),
        ("one longer", format!("{secret}x")),
        ("one shorter", secret[..n - 1].to_owned()),
        ("one shorter at the front", secret[1..].to_owned()),
        ("upper case", secret.to_uppercase()),
        ("empty", String::new()),
    ]
}

#[tokio::test]
async fn missing_or_nearly_right_secrets_are_401_in_every_carrier() {
    let k = Corpus::start().await;
    let body = json!({"messageId": 1});
    let got = k
        .refused(
            "no credential",
            &[Some(401)],
            k.send(k.post_bare("cohort-messages").json(&body)),
        )
        .await;
    assert_eq!(got.error(), "Unauthorized: Missing secret parameter");
    for (what, wrong) in near_misses(INBOUND_SECRET) {
        for carrier in ["x-webhook-secret", "x-make-apikey", "authorization", "query"] {
            let req = match carrier {
                "authorization" => k.post_bare("cohort-messages").bearer_auth(&wrong),
                "query" => k.post_url(&format!("{}?secret={wrong}", k.url("cohort-messages"))),
                header => k.post_bare("cohort-messages").header(header, &wrong),
            };
            let got = k
                .refused(
                    &format!("{what} in {carrier}"),
                    &[Some(401)],
                    k.send(req.json(&body)),
                )
                .await;
            assert!(got.error().starts_with("Unauthorized"), "{}", got.body);
        }
    }
    // Not UTF-8 in the secret header: no secret at all, over a raw connection.
    let body = br#"{"messageId": 1}"#;
    let mut head = vec![format!("content-length: {}", body.len())];
    head.push("x-webhook-secret: PLACEHOLDER".into());
    let raw = request_owned("/api/webhooks/make/cohort-messages", &head, body);
    let at = raw.windows(11).position(|w| w == b"PLACEHOLDER").unwrap();
    let raw = [
        &raw[..at],
        INBOUND_SECRET.as_bytes(),
        &[0xff][..],
        &raw[at + 11..],
    ]
    .concat();
    k.refused("a secret that is not UTF-8", &[Some(401)], k.raw(&raw))
        .await;
    // The right secret still works, after all that.
    let got = k
        .send(k.post("cohort-messages").json(&json!({"messageId": 1})))
        .await;
    assert_eq!(got.status, Some(200), "{}", got.body);
    k.stop().await;
}

#[tokio::test]
async fn standard_webhooks_signatures_replayed_late_early_or_onto_another_body_are_401() {
    let k = Corpus::start().await;
    let key = SigningKey::parse(INBOUND_SECRET).unwrap();
    let body = serde_json::to_vec(&json!({"messageId": 2})).unwrap();
    let signed = |id: &str, ts: i64, sig: String, body: &[u8]| {
        k.post_bare("cohort-messages")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_vec())
    };
    let tolerance = k.config.tolerance.as_secs() as i64;
    let t = now();
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "older than the tolerance",
            signed(
                "msg_a",
                t - tolerance - 60,
                key.sign("msg_a", t - tolerance - 60, &body),
                &body,
            ),
        ),
        (
            "a day old",
            signed("msg_b", t - 86_400, key.sign("msg_b", t - 86_400, &body), &body),
        ),
        (
            "from the future",
            signed(
                "msg_c",
                t + tolerance + 60,
                key.sign("msg_c", t + tolerance + 60, &body),
                &body,
            ),
        ),
        (
            "timestamp i64::MIN",
            signed("msg_d", i64::MIN, key.sign("msg_d", i64::MIN, &body), &body),
        ),
        (
            "timestamp i64::MAX",
            signed("msg_e", i64::MAX, key.sign("msg_e", i64::MAX, &body), &body),
        ),
        (
            "timestamp 0",
            signed("msg_f", 0, key.sign("msg_f", 0, &body), &body),
        ),
        (
            "another body",
            signed("msg_g", t, key.sign("msg_g", t, &body), br#"{"messageId": 3}"#),
        ),
        (
            "another id",
            signed("msg_h", t, key.sign("msg_other", t, &body), &body),
        ),
        (
            "signed for another timestamp",
            signed("msg_i", t, key.sign("msg_i", t - 1, &body), &body),
        ),
        ("garbage signature", signed("msg_j", t, "v1,AAAA".into(), &body)),
        (
            "unknown version",
            signed(
                "msg_k",
                t,
                key.sign("msg_k", t, &body).replacen("v1,", "v2,", 1),
                &body,
            ),
        ),
        ("empty signature", signed("msg_l", t, String::new(), &body)),
    ];
    for (what, req) in cases {
        k.refused(what, &[Some(401)], k.send(req)).await;
    }
    // Timestamps that are not numbers.
    for ts in ["", "soon", "1e9", "99999999999999999999", "-"] {
        let req = k
            .post_bare("cohort-messages")
            .header("webhook-id", "msg_m")
            .header("webhook-timestamp", ts)
            .header("webhook-signature", key.sign("msg_m", t, &body))
            .body(body.clone());
        k.refused(&format!("timestamp {ts:?}"), &[Some(401)], k.send(req))
            .await;
    }
    // Signed with a secret one character off.
    for (what, wrong) in near_misses(INBOUND_SECRET) {
        let Ok(wrong_key) = SigningKey::parse(&wrong) else {
            continue; // too short to sign with
        };
        let req = signed("msg_n", t, wrong_key.sign("msg_n", t, &body), &body);
        k.refused(
            &format!("signed with the secret's {what}"),
            &[Some(401)],
            k.send(req),
        )
        .await;
    }
    // The genuine article, then the same message replayed in time: applied once.
    let first = k
        .send(signed("msg_ok", t, key.sign("msg_ok", t, &body), &body))
        .await;
    assert_eq!(first.status, Some(200), "{}", first.body);
    let again = k
        .send(signed("msg_ok", t, key.sign("msg_ok", t, &body), &body))
        .await;
    assert_eq!(
        (again.status, &again.body["duplicate"]),
        (Some(200), &json!(true))
    );
    let rows: i64 =
        k.c.query_one("SELECT count(*) FROM app.cohort_message_callbacks", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(rows, 1);
    k.stop().await;
}
