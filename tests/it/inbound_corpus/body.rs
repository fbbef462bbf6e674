//! What the body says: malformed and truncated JSON, not an object, wrong
//! types, huge numbers, deep nesting, invalid UTF-8, NUL, long values.

use serde_json::{json, Value};

use super::{Answer, Corpus};

const BAD_JSON: Option<u16> = Some(400);

/// A payment that would be applied: the reference payload of the routes.
fn payment(pi: &str) -> Value {
    json!({"eventType": "payment.success", "paymentIntentId": pi, "userId": 1, "courseId": 1,
           "type": "course", "amount": 90.00, "couponCode": "DISCOUNT10", "discountAmount": 10.00})
}

impl Corpus {
    async fn body(&self, route: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.send(self.post(route).body(body)).await
    }
}

#[tokio::test]
async fn malformed_truncated_and_non_object_json_is_400() {
    let k = Corpus::start().await;
    // Every prefix of a valid payment, cut every few bytes.
    let whole = serde_json::to_string(&payment("pi_truncated")).unwrap();
    for cut in (0..whole.len()).step_by(9) {
        let part = whole[..cut].to_owned();
        let got = k
            .refused(
                &format!("truncated at {cut}"),
                &[BAD_JSON],
                k.body("payments", part),
            )
            .await;
        assert!(got.error().starts_with("malformed JSON"), "{}", got.body);
    }
    for (what, body) in [
        ("unquoted key", r#"{eventType: "payment.success"}"#),
        ("single quotes", r#"{'paymentIntentId': 'pi_1'}"#),
        ("trailing comma", r#"{"paymentIntentId": "pi_1",}"#),
        ("missing colon", r#"{"paymentIntentId" "pi_1"}"#),
        ("NaN", r#"{"paymentIntentId": "pi_1", "amount": NaN}"#),
        ("Infinity", r#"{"paymentIntentId": "pi_1", "amount": Infinity}"#),
        ("leading zero", r#"{"paymentIntentId": "pi_1", "userId": 01}"#),
        ("bare fraction", r#"{"paymentIntentId": "pi_1", "amount": .5}"#),
        ("bad escape", r#"{"paymentIntentId": "pi_\x41"}"#),
        ("lone surrogate", r#"{"paymentIntentId": "pi_\ud800"}"#),
        ("comment", r#"{"paymentIntentId": "pi_1" /* c */}"#),
        (
            "two documents",
            r#"{"paymentIntentId": "pi_1"} {"paymentIntentId": "pi_2"}"#,
        ),
        ("trailing garbage", r#"{"paymentIntentId": "pi_1"}garbage"#),
        ("empty", ""),
        ("whitespace", " \r\n\t "),
        ("byte order mark", "\u{feff}{\"paymentIntentId\": \"pi_1\"}"),
        ("raw control character", "{\"paymentIntentId\": \"pi\u{1}1\"}"),
        ("form encoded", "paymentIntentId=pi_1&userId=1"),
    ] {
        k.refused(what, &[BAD_JSON], k.body("payments", body)).await;
    }
    for (what, body) in [
        ("array", json!([payment("pi_in_array")])),
        ("string", json!("payment.success")),
        ("number", json!(42)),
        ("null", Value::Null),
        ("boolean", json!(true)),
    ] {
        let got = k
            .refused(what, &[BAD_JSON], k.body("payments", body.to_string()))
            .await;
        assert_eq!(got.error(), "the body must be a JSON object", "{what}");
    }
    k.stop().await;
}

#[tokio::test]
async fn wrong_types_are_rejected_by_the_handler_with_its_message() {
    let k = Corpus::start().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("payments", json!({}), "paymentIntentId is required"),
        (
            "payments",
            json!({"paymentIntentId": {"id": 1}}),
            "paymentIntentId must be a string",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_a", "userId": "one", "courseId": 1}),
            "userId must be a positive integer id, got \"one\"",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_b", "userId": 1.5, "courseId": 1}),
            "userId must be a positive integer id, got 1.5",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_c", "userId": true, "courseId": 1}),
            "userId must be a positive integer id, got true",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_d", "userId": [1], "courseId": 1}),
            "userId must be a positive integer id, got [1]",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_e", "userId": 1, "courseId": 1, "amount": "ninety"}),
            "amount must be a number, got \"ninety\"",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_f", "userId": 1, "courseId": 1, "amount": -5}),
            "amount must not be negative",
        ),
        (
            "payments",
            json!({"paymentIntentId": "pi_g", "userId": 1, "courseId": 1, "type": 7}),
            "type must be one of: course, cohort",
        ),
        (
            "payments",
            json!({"eventType": "payment.failed", "paymentIntentId": "pi_h"}),
            "eventType must be one of: payment.success",
        ),
        (
            "messages",
            json!({"threadId": "1", "userId": 2, "content": ["hi"]}),
            "content must be a string",
        ),
        (
            "messages",
            json!({"threadId": {}, "userId": 2, "content": "hi"}),
            "threadId must be a positive integer id, got {}",
        ),
        (
            "messages",
            json!({"threadId": 1, "userId": 2, "content": "hi", "isFromStudent": "maybe"}),
            "isFromStudent must be true or false",
        ),
        (
            "appointments",
            json!({"eventType": "appointment.confirmed", "appointmentId": "1 OR 1=1"}),
            "appointmentId must be a positive integer id, got \"1 OR 1=1\"",
        ),
        (
            "appointments",
            json!({"status": 3, "appointmentId": 1}),
            "status must be one of: confirmed, cancelled, rescheduled",
        ),
        (
            "appointments",
            json!({"eventType": "appointment.rescheduled", "appointmentId": 1, "newScheduledAt": "tomorrow"}),
            "newScheduledAt must be an ISO-8601 timestamp, got \"tomorrow\"",
        ),
        (
            "appointments",
            json!({"eventType": "appointment.rescheduled", "appointmentId": 1,
                                "newScheduledAt": "2030-13-45T99:00:00Z"}),
            "newScheduledAt must be an ISO-8601 timestamp, got \"2030-13-45T99:00:00Z\"",
        ),
        (
            "appointments",
            json!({"eventType": "appointment.rescheduled", "appointmentId": 1, "newScheduledAt": -1}),
            "newScheduledAt must be an ISO-8601 timestamp, got -1",
        ),
        (
            "support-tickets",
            json!({"eventType": ["ticket.created"]}),
            "eventType must be one of: ticket.created, ticket.updated, ticket.replied",
        ),
        (
            "support-tickets",
            json!({"eventType": "ticket.created", "userId": 1, "subject": "s", "priority": "extreme"}),
            "priority must be one of: low, medium, high, urgent, critical",
        ),
        (
            "support-tickets",
            json!({"eventType": "ticket.replied", "ticketNumber": "TKT-000001", "message": "m",
                                   "isInternal": 1}),
            "isInternal must be true or false",
        ),
        (
            "cohort-enrollments",
            json!({"enrollmentId": -1}),
            "enrollmentId must be a positive integer id, got -1",
        ),
        (
            "cohort-messages",
            json!({"messageId": "0"}),
            "messageId must be a positive integer id, got \"0\"",
        ),
    ];
    for (route, payload, message) in cases {
        let what = format!("{route} {payload}");
        k.rejected(&what, message, k.send(k.post(route).json(&payload)))
            .await;
    }
    k.stop().await;
}

#[tokio::test]
async fn huge_numbers_never_reach_a_column_and_are_not_rounded() {
    let k = Corpus::start().await;
    // Out of any float's range: not JSON we take.
    let digits = "9".repeat(5000);
    for n in ["1e400", "-1e400", "1e999999999", digits.as_str()] {
        let body = format!(r#"{{"paymentIntentId": "pi_huge", "userId": 1, "courseId": 1, "amount": {n}}}"#);
        let got = k.refused(n, &[BAD_JSON], k.body("payments", body)).await;
        assert!(got.error().contains("number out of range"), "{}", got.body);
    }
    // Within range but not for a bigint id or a money column: 422, and the
    // message quotes the number as sent (it is not rounded to a float).
    let e300 = format!("1{}", "0".repeat(79)); // quoted up to 80 characters
    for (n, sent) in [
        ("99999999999999999999999999", "99999999999999999999999999"),
        ("9223372036854775808", "9223372036854775808"),
        ("-9223372036854775809", "-9223372036854775809"),
        ("0.1000000000000000000000000001", "0.1000000000000000000000000001"),
        ("1e300", e300.as_str()),
    ] {
        let body = format!(r#"{{"paymentIntentId": "pi_{n}", "userId": {n}, "courseId": 1}}"#);
        let message = format!("userId must be a positive integer id, got {sent}");
        k.rejected(n, &message, k.body("payments", body)).await;
    }
    let body = r#"{"paymentIntentId": "pi_amount", "userId": 1, "courseId": 1, "amount": 1e300}"#;
    k.rejected("amount 1e300", "amount is too large", k.body("payments", body))
        .await;
    let digits = "9".repeat(300);
    let body =
        format!(r#"{{"paymentIntentId": "pi_digits", "userId": 1, "courseId": 1, "amount": {digits}}}"#);
    k.rejected("300 digits", "amount is too large", k.body("payments", body))
        .await;
    // Too many decimals for Postgres' numeric (a float just underflows to
    // 0): 400, not a 500.
    let body = r#"{"paymentIntentId": "pi_tiny", "userId": 1, "courseId": 1, "extra": 1e-20000}"#;
    let got = k.refused("1e-20000", &[BAD_JSON], k.body("payments", body)).await;
    assert!(got.error().contains("Postgres cannot store"), "{}", got.body);
    k.stop().await;
}

#[tokio::test]
async fn deep_nesting_is_refused_without_harm_and_moderate_nesting_is_kept() {
    let k = Corpus::start().await;
    let max = k.config.max_body;
    for (what, body) in [
        ("60k levels of [", "[".repeat(60_000)),
        (
            "60k levels of [ closed",
            format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)),
        ),
        ("12k levels of {\"a\":", "{\"a\":".repeat(12_000)),
        (
            "deep inside an object",
            format!(
                "{{\"messageId\": 9, \"x\": {}1{}}}",
                "[".repeat(20_000),
                "]".repeat(20_000)
            ),
        ),
    ] {
        assert!(body.len() <= max, "{what} fits the size limit");
        let got = k
            .refused(what, &[BAD_JSON], k.body("cohort-messages", body))
            .await;
        assert!(got.error().contains("recursion limit"), "{what}: {}", got.body);
    }
    let got = k
        .refused(
            "100k levels of [",
            &[Some(413)],
            k.body("cohort-messages", "[".repeat(100_000)),
        )
        .await;
    assert_eq!(got.error(), "body too large");
    // 100 levels is fine: stored whole.
    let deep = format!("{}\"bottom\"{}", "[".repeat(100), "]".repeat(100));
    let body = format!(r#"{{"messageId": 9, "nested": {deep}}}"#);
    let got = k.body("cohort-messages", body).await;
    assert_eq!(got.status, Some(200), "{}", got.body);
    let kept: String =
        k.c.query_one(
            "SELECT (payload -> 'nested')::text FROM app.cohort_message_callbacks WHERE message_id = 9",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept.replace(' ', ""), deep.replace(' ', ""), "kept as sent");
    k.stop().await;
}

#[tokio::test]
async fn invalid_utf8_and_nul_are_refused_before_anything_is_recorded() {
    let k = Corpus::start().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("0xff in a string", b"{\"paymentIntentId\": \"pi_\xff\"}".to_vec()),
        ("latin-1 e acute", b"{\"paymentIntentId\": \"caf\xe9\"}".to_vec()),
        (
            "overlong slash",
            b"{\"paymentIntentId\": \"pi_\xc0\xaf\"}".to_vec(),
        ),
        (
            "truncated sequence",
            b"{\"paymentIntentId\": \"pi_\xe2\x82\"}".to_vec(),
        ),
        (
            "encoded surrogate",
            b"{\"paymentIntentId\": \"pi_\xed\xa0\x80\"}".to_vec(),
        ),
        (
            "0xff outside a string",
            b"{\"paymentIntentId\": \"pi_1\"\xff}".to_vec(),
        ),
        (
            "utf-16",
            "{\"a\": 1}".encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
        ("raw NUL byte", b"{\"paymentIntentId\": \"pi\x001\"}".to_vec()),
    ];
    for (what, body) in cases {
        k.refused(what, &[Some(400)], k.body("payments", body)).await;
    }
    // \u0000 is JSON, but jsonb cannot hold it: 400 saying so, never a 500.
    for (what, body) in [
        (
            "escaped NUL in a value",
            r#"{"paymentIntentId": "pi\u0000", "userId": 1, "courseId": 1}"#,
        ),
        (
            "escaped NUL in a key",
            r#"{"paymentIntentId": "pi_nul", "a\u0000b": 1}"#,
        ),
        (
            "escaped NUL in a kept payload",
            r#"{"messageId": 5, "messagePreview": "a\u0000b"}"#,
        ),
    ] {
        let route = if what.contains("kept") {
            "cohort-messages"
        } else {
            "payments"
        };
        let got = k.refused(what, &[Some(400)], k.body(route, body)).await;
        assert!(
            got.error().contains("Postgres cannot store"),
            "{what}: {}",
            got.body
        );
    }
    // Valid UTF-8 beyond ASCII is data like any other.
    let got = k
        .send(
            k.post("cohort-messages")
                .json(&json!({"messageId": 6, "messagePreview": "héllo 🦀 \u{2028}"})),
        )
        .await;
    assert_eq!(got.status, Some(200), "{}", got.body);
    k.stop().await;
}

/// A string no compression shrinks: over a b-tree entry's 2,704 bytes.
fn incompressible(len: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[tokio::test]
async fn values_too_long_for_an_index_are_rejected_not_a_500() {
    let k = Corpus::start().await;
    // An idempotency key made of a long field, and the same value in an
    // indexed column of the app: 422 (the handler's write cannot be stored).
    let long = incompressible(10_000);
    let ticket = json!({"eventType": "ticket.created", "userId": 1, "subject": "s", "ticketNumber": long});
    for (route, payload) in [("payments", payment(&long)), ("support-tickets", ticket)] {
        let mut before = k.snapshot().await;
        let got = k.send(k.post(route).json(&payload)).await;
        assert_eq!(got.status, Some(422), "{route}: {}", got.body);
        assert!(got.error().contains("index row"), "{route}: {}", got.body);
        let mut after = k.snapshot().await;
        before.remove("inbound");
        after.remove("inbound");
        assert_eq!(after, before, "{route}: nothing applied");
        k.canary().await;
    }
    // A long webhook-id is a key like any other: applied once.
    let id = incompressible(5_000);
    for round in 0..2 {
        let got = k
            .send(
                k.post("cohort-messages")
                    .header("webhook-id", &id)
                    .json(&json!({"messageId": 11})),
            )
            .await;
        assert_eq!(got.status, Some(200), "{}", got.body);
        assert_eq!(got.body["duplicate"].as_bool().unwrap_or(false), round == 1);
    }
    k.canary().await;
    k.stop().await;
}

#[tokio::test]
async fn the_same_callback_twice_is_applied_once_and_the_second_is_a_duplicate() {
    let k = Corpus::start().await;
    let send = || k.send(k.post("payments").json(&payment("pi_twice")));
    let first = send().await;
    assert_eq!(first.status, Some(200), "{}", first.body);
    assert_eq!(first.body["success"], true);
    assert!(first.body.get("duplicate").is_none());
    let before = k.snapshot().await;
    let second = send().await;
    assert_eq!(second.status, Some(200), "{}", second.body);
    assert_eq!(second.body["duplicate"], true);
    assert_eq!(second.body["enrollmentId"], first.body["enrollmentId"]);
    assert_eq!(second.body["inboundId"], first.body["inboundId"]);
    let mut after = k.snapshot().await;
    for t in ["inbound", "inbound applied"] {
        after.remove(t); // the record counts the attempt
    }
    let mut before = before;
    for t in ["inbound", "inbound applied"] {
        before.remove(t);
    }
    assert_eq!(after, before, "nothing applied twice");
    let attempts: i32 =
        k.c.query_one(
            "SELECT attempts FROM webhooks.inbound WHERE id = $1",
            &[&first.body["inboundId"].as_i64().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2);
    k.canary().await;
    k.stop().await;
}
