//! The example app (schema `app`): every event of its catalogue, emitted
//! exactly once by the write that should emit it, with the payload fields
//! of the learning platform's webhook review.

use serde_json::Value;

use crate::support::TestDb;

const WRITES: &str = "
INSERT INTO app.users (email, name, phone) VALUES ('ada@example.com', 'Ada Student', '+15550100');
INSERT INTO app.users (email, name, role) VALUES ('grace@example.com', 'Grace Instructor', 'instructor');
INSERT INTO app.users (email, name, role) VALUES ('admin@example.com', 'Alan Admin', 'admin');
INSERT INTO app.courses (title, access_days, price, instructor_id) VALUES ('Rust 101', 365, 100.00, 2);
INSERT INTO app.cohorts (title, access_days, instructor_id) VALUES ('Spring Cohort', 90, 2);
INSERT INTO app.content_items (course_id, title) VALUES (1, 'Ownership');
INSERT INTO app.threads (student_id, course_id, content_item_id, subject) VALUES (1, 1, 1, 'Borrowing');

INSERT INTO app.appointments (user_id, course_id, content_item_id, scheduled_at, duration_minutes, amount)
VALUES (1, 1, 1, '2030-01-01T10:00:00Z', 45, 50.00);
UPDATE app.appointments SET status = 'confirmed' WHERE id = 1;
UPDATE app.appointments SET status = 'confirmed', amount = 50.00 WHERE id = 1;
UPDATE app.appointments SET payment_status = 'paid', payment_intent_id = 'pi_appt_1', paid_at = now() WHERE id = 1;
UPDATE app.appointments SET scheduled_at = '2030-01-02T14:00:00Z', reschedule_reason = 'Conflict' WHERE id = 1;
UPDATE app.appointments SET scheduled_at = '2030-01-03T09:00:00Z', status = 'rescheduled' WHERE id = 1;
UPDATE app.appointments SET status = 'completed' WHERE id = 1;

INSERT INTO app.enrollments (user_id, course_id, payment_intent_id, amount, discount_amount, coupon_code, expires_at)
VALUES (1, 1, 'pi_course_1', 90.00, 10.00, 'DISCOUNT10', app.enrollment_expiry(1, NULL));
INSERT INTO app.enrollments (user_id, cohort_id, payment_intent_id, amount, expires_at)
VALUES (1, 1, 'pi_cohort_1', 200.00, app.enrollment_expiry(NULL, 1));
INSERT INTO app.enrollments (user_id, course_id) VALUES (3, 1);

INSERT INTO app.messages (thread_id, author_id, content, is_from_student) VALUES (1, 1, 'Why?', true);
INSERT INTO app.messages (thread_id, author_id, content, is_from_student) VALUES (1, 2, 'Because.', false);
INSERT INTO app.cohort_messages (cohort_id, author_id, content, attachments)
VALUES (1, 1, 'Hello cohort!', '[{\"name\": \"intro.pdf\"}]');

INSERT INTO app.support_tickets (user_id, subject, description, category, priority)
VALUES (1, 'Cannot access course', 'Blank page.', 'technical', 'high');
UPDATE app.support_tickets SET status = 'in_progress', status_changed_by = 3, status_reason = 'Investigating' WHERE id = 1;
UPDATE app.support_tickets SET priority = 'urgent' WHERE id = 1;
INSERT INTO app.ticket_replies (ticket_id, author_id, author_role, message) VALUES (1, 3, 'admin', 'Looking into it.');

INSERT INTO app.error_logs (error_type, error_message, severity, url, user_id, stack_trace, user_agent) VALUES
    ('SERVER', 'Payment webhook failed', 'HIGH', 'https://example.com/api/pay', 1, 'at pay()', 'node'),
    ('CLIENT', 'Button misaligned', 'LOW', 'https://example.com/', NULL, NULL, 'Firefox'),
    ('SERVER', 'Slow query', 'MEDIUM', NULL, NULL, NULL, NULL),
    ('SERVER', 'Database down', 'CRITICAL', NULL, NULL, NULL, NULL);
";

/// The payload keys the reference document gives for each event.
fn expected_keys(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "appointment.created" => &[
            "appointmentId",
            "userId",
            "studentEmail",
            "studentName",
            "courseId",
            "courseTitle",
            "contentItemId",
            "contentItemTitle",
            "scheduledAt",
            "duration",
            "status",
            "createdAt",
        ],
        "appointment.payment.confirmed" => &[
            "appointmentId",
            "paymentIntentId",
            "userId",
            "amount",
            "confirmedAt",
        ],
        "appointment.cancelled" => &["appointmentId", "userId", "reason", "timestamp"],
        "appointment.rescheduled" => &[
            "appointmentId",
            "userId",
            "reason",
            "oldScheduledAt",
            "newScheduledAt",
            "timestamp",
        ],
        "appointment.confirmed" | "appointment.completed" => {
            &["appointmentId", "userId", "status", "timestamp"]
        }
        "payment.success" => &[
            "paymentIntentId",
            "userId",
            "courseId",
            "enrollmentId",
            "amount",
            "originalAmount",
            "discountAmount",
            "couponCode",
        ],
        "enrollment.created" => &["enrollmentId", "userId", "courseId", "courseTitle", "createdAt"],
        "cohort.enrollment.created" => &[
            "enrollmentId",
            "userId",
            "userEmail",
            "userName",
            "cohortId",
            "cohortTitle",
            "paymentIntentId",
            "expiresAt",
            "createdAt",
        ],
        "message.sent" => &[
            "messageId",
            "threadId",
            "studentId",
            "studentEmail",
            "studentName",
            "instructorId",
            "instructorEmail",
            "content",
            "contentItemId",
            "contentItemTitle",
            "courseId",
            "courseTitle",
            "timestamp",
        ],
        "cohort.message.created" => &[
            "messageId",
            "cohortId",
            "cohortTitle",
            "authorId",
            "authorEmail",
            "authorName",
            "content",
            "hasAttachments",
            "timestamp",
        ],
        "ticket.created" => &[
            "ticketId",
            "ticketNumber",
            "userId",
            "userEmail",
            "subject",
            "description",
            "category",
            "priority",
            "status",
            "createdAt",
        ],
        "ticket.status_changed" => &[
            "ticketId",
            "ticketNumber",
            "userId",
            "oldStatus",
            "newStatus",
            "changedBy",
            "reason",
            "timestamp",
        ],
        "ticket.reply_added" => &[
            "ticketId",
            "replyId",
            "authorId",
            "authorRole",
            "message",
            "isInternal",
            "timestamp",
        ],
        "error.occurred" => &[
            "errorId",
            "errorType",
            "errorMessage",
            "severity",
            "url",
            "userId",
            "stackTrace",
            "userAgent",
            "createdAt",
        ],
        other => panic!("unexpected event type {other}"),
    }
}

#[tokio::test]
async fn every_catalogue_event_once_with_its_fields() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    let endpoints: i64 = c
        .query_one("SELECT count(*) FROM webhooks.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(endpoints, 0, "app writes must not need an endpoint");
    c.batch_execute(WRITES).await.unwrap();

    // A callback's write carries its origin; a rolled-back write emits nothing.
    c.batch_execute("INSERT INTO app.appointments (user_id, course_id, scheduled_at) VALUES (1, 1, '2030-02-01T10:00:00Z')")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    // Through the sidecar's own path (webhooks.inbound_apply), which records
    // the callback and so vouches for the origin.
    let (status,): (i32,) = {
        let row = tx
            .query_one(
                "SELECT http_status FROM webhooks.inbound_apply('appointments', 'cancel-2',
                    '{\"eventType\": \"appointment.cancelled\", \"appointmentId\": 2,
                      \"status\": \"cancelled\", \"reason\": \"Student unavailable\"}')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0),)
    };
    assert_eq!(status, 200);
    tx.commit().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("UPDATE app.appointments SET status = 'confirmed' WHERE id = 2")
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let rows = c
        .query(
            "SELECT event_type, payload, origin FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap();
    let events: Vec<(String, Value, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        types,
        [
            "appointment.created",
            "appointment.confirmed",
            "appointment.payment.confirmed",
            "appointment.rescheduled",
            "appointment.rescheduled",
            "appointment.completed",
            "payment.success",
            "enrollment.created",
            "payment.success",
            "cohort.enrollment.created",
            "enrollment.created",
            "message.sent",
            "cohort.message.created",
            "ticket.created",
            "ticket.status_changed",
            "ticket.reply_added",
            "error.occurred",
            "error.occurred",
            "appointment.created",
            "appointment.cancelled",
        ]
    );
    for (event_type, payload, _) in &events {
        for key in expected_keys(event_type) {
            assert!(payload.get(key).is_some(), "{event_type} lacks {key}: {payload}");
        }
    }
    let first = |t: &str| &events.iter().find(|e| e.0 == t).unwrap().1;
    assert_eq!(first("appointment.created")["studentEmail"], "ada@example.com");
    assert_eq!(first("appointment.created")["courseTitle"], "Rust 101");
    assert_eq!(
        first("appointment.rescheduled")["oldScheduledAt"],
        "2030-01-01T10:00:00.000Z"
    );
    assert_eq!(
        first("appointment.rescheduled")["newScheduledAt"],
        "2030-01-02T14:00:00.000Z"
    );
    assert_eq!(first("payment.success")["couponCode"], "DISCOUNT10");
    assert_eq!(first("cohort.enrollment.created")["cohortTitle"], "Spring Cohort");
    assert_eq!(first("message.sent")["instructorEmail"], "grace@example.com");
    assert_eq!(first("ticket.status_changed")["oldStatus"], "open");
    assert_eq!(first("ticket.status_changed")["newStatus"], "in_progress");
    let severities: Vec<&Value> = events
        .iter()
        .filter(|e| e.0 == "error.occurred")
        .map(|e| &e.1["severity"])
        .collect();
    assert_eq!(severities, ["HIGH", "CRITICAL"]);
    let cancelled = events.last().unwrap();
    assert_eq!(cancelled.1["reason"], "Student unavailable");
    assert_eq!(cancelled.2.as_deref(), Some("inbound/appointments"));
    assert!(events[..events.len() - 1].iter().all(|e| e.2.is_none()));
}
