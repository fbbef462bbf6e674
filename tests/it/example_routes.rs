//! The example app's seven Make.com routes over HTTP, with the payloads of
//! the learning platform's review: each applied by its procedure, once.

use serde_json::{json, Value};

use crate::support::sidecar::{self, INBOUND_SECRET};
use crate::support::{one, TestDb};

const SEED: &str = "
INSERT INTO app.users (email, name) VALUES ('ada@example.com', 'Ada Student');
INSERT INTO app.users (email, name, role) VALUES ('grace@example.com', 'Grace Instructor', 'instructor');
INSERT INTO app.courses (title, access_days, instructor_id) VALUES ('Rust 101', 365, 2);
INSERT INTO app.cohorts (title, access_days, instructor_id) VALUES ('Spring Cohort', 90, 2);
INSERT INTO app.coupons (code, discount_percent) VALUES ('DISCOUNT10', 10);
INSERT INTO app.threads (student_id, course_id, subject) VALUES (1, 1, 'Borrowing');
INSERT INTO app.appointments (user_id, course_id, scheduled_at) VALUES (1, 1, '2030-01-01T10:00:00Z');
";

async fn call(base: &str, route: &str, payload: Value) -> (u16, Value) {
    pgwebhooks::deliver::http::install_crypto_provider();
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/webhooks/make/{route}"))
        .header("x-make-apikey", INBOUND_SECRET)
        .json(&payload)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn every_route_applies_its_reference_payload_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(SEED).await.unwrap();
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let b = &s.base;

    let payment = json!({"eventType": "payment.success", "paymentIntentId": "pi_xxx", "userId": 1, "courseId": 1,
        "type": "course", "amount": 90.00, "couponCode": "DISCOUNT10", "discountAmount": 10.00});
    let (st, body) = call(b, "payments", payment.clone()).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["success"], true);
    let (st, again) = call(b, "payments", payment).await;
    assert_eq!((st, &again["enrollmentId"]), (200, &body["enrollmentId"]));
    assert_eq!(
        one::<i64>(
            &c,
            "SELECT count(*) FROM app.enrollments WHERE payment_intent_id = 'pi_xxx'"
        )
        .await,
        1
    );
    assert_eq!(one::<i64>(&c, "SELECT count(*) FROM app.coupon_usages").await, 1);
    assert!(
        one::<bool>(
            &c,
            "SELECT expires_at > now() + interval '364 days' FROM app.enrollments"
        )
        .await
    );

    let (st, body) = call(
        b,
        "messages",
        json!({"eventType": "message.received", "threadId": 1, "userId": 2,
        "content": "Instructor response text", "isFromStudent": false}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        one::<i64>(&c, "SELECT count(*) FROM app.messages WHERE NOT is_from_student").await,
        1
    );

    for (event, status) in [
        ("appointment.confirmed", "confirmed"),
        ("appointment.cancelled", "cancelled"),
    ] {
        let (st, body) = call(
            b,
            "appointments",
            json!({"eventType": event, "appointmentId": 1, "status": status}),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(
            one::<String>(&c, "SELECT status FROM app.appointments WHERE id = 1").await,
            status
        );
    }
    let (st, body) = call(
        b,
        "appointments",
        json!({"eventType": "appointment.rescheduled", "appointmentId": 1,
        "status": "rescheduled", "newScheduledAt": "2030-01-05T09:00:00Z"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        one::<bool>(
            &c,
            "SELECT scheduled_at = '2030-01-05T09:00:00Z' FROM app.appointments WHERE id = 1"
        )
        .await
    );
    let (st, body) = call(
        b,
        "appointments",
        json!({"eventType": "appointment.confirmed", "appointmentId": 999, "status": "confirmed"}),
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (422, Some("unknown appointment 999"))
    );

    let (st, _) = call(b, "errors", json!({"errorType": "SERVER", "errorMessage": "Error description",
        "stackTrace": "Stack trace...", "userId": 1, "url": "https://example.com", "userAgent": "Browser info",
        "severity": "CRITICAL"})).await;
    assert_eq!(st, 200);
    assert_eq!(
        one::<i64>(
            &c,
            "SELECT count(*) FROM app.error_logs WHERE severity = 'CRITICAL'"
        )
        .await,
        1
    );

    let (st, created) = call(b, "support-tickets", json!({"eventType": "ticket.created", "userId": 1,
        "subject": "Cannot access course", "description": "Blank page", "category": "technical", "priority": "high"})).await;
    assert_eq!(st, 200, "{created}");
    let ticket = created["ticketId"].clone();
    let (st, body) = call(
        b,
        "support-tickets",
        json!({"eventType": "ticket.updated", "ticketId": ticket, "status": "in_progress"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call(
        b,
        "support-tickets",
        json!({"eventType": "ticket.replied", "ticketId": ticket,
        "message": "We are on it", "authorId": 2, "authorRole": "support"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        one::<String>(&c, "SELECT status FROM app.support_tickets").await,
        "in_progress"
    );
    assert_eq!(one::<i64>(&c, "SELECT count(*) FROM app.ticket_replies").await, 1);

    let enrollment = json!({"eventType": "cohort.enrollment.created", "enrollmentId": 1, "userId": 1,
        "userEmail": "user@example.com", "cohortId": 1, "cohortTitle": "Cohort Name", "paymentIntentId": "pi_xxx"});
    assert_eq!(call(b, "cohort-enrollments", enrollment.clone()).await.0, 200);
    assert_eq!(call(b, "cohort-enrollments", enrollment).await.0, 200);
    assert_eq!(
        one::<i64>(&c, "SELECT count(*) FROM app.cohort_enrollment_callbacks").await,
        1
    );
    let (st, _) = call(b, "cohort-messages", json!({"eventType": "cohort.message.created", "cohortId": 1, "messageId": 7,
        "authorId": 1, "authorEmail": "user@example.com", "cohortTitle": "Cohort Name", "messagePreview": "Hello"})).await;
    assert_eq!(st, 200);
    assert_eq!(
        one::<i64>(&c, "SELECT count(*) FROM app.cohort_message_callbacks").await,
        1
    );

    // Writes made by callbacks carry their route as origin.
    let origins: Vec<String> = c
        .query(
            "SELECT DISTINCT origin FROM webhooks.events WHERE origin IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        origins.contains(&"inbound/payments".to_owned())
            && origins.contains(&"inbound/appointments".to_owned()),
        "{origins:?}"
    );
    s.stop().await;
}
