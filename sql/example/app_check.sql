-- Exercise every event of the example app (sql/example/app.sql) once, plus
-- writes that must emit nothing, then list what landed in the outbox.
--
--   psql -v ON_ERROR_STOP=1 -d <db with migrations, sql/, sql/example/app.sql> -f sql/example/app_check.sql
--
-- Only events written by this script are listed (seq past the start mark).
-- Expected, in order:
--   appointment.created, appointment.confirmed, appointment.payment.confirmed,
--   appointment.rescheduled, appointment.rescheduled, appointment.completed,
--   appointment.cancelled (origin inbound/appointments),
--   payment.success, enrollment.created, payment.success,
--   cohort.enrollment.created, enrollment.created, message.sent,
--   cohort.message.created, ticket.created, ticket.status_changed,
--   ticket.reply_added, error.occurred, error.occurred
\set ON_ERROR_STOP 1
\pset pager off

SELECT coalesce(max(seq), 0) AS start_seq FROM webhooks.events \gset

-- Reference data (no events).
INSERT INTO app.users (email, name, phone) VALUES ('ada@example.com', 'Ada Student', '+15550100')
RETURNING id AS student_id \gset
INSERT INTO app.users (email, name, role) VALUES ('grace@example.com', 'Grace Instructor', 'instructor')
RETURNING id AS instructor_id \gset
INSERT INTO app.users (email, name, role) VALUES ('admin@example.com', 'Alan Admin', 'admin')
RETURNING id AS admin_id \gset
INSERT INTO app.courses (title, access_days, price, instructor_id) VALUES ('Rust 101', 365, 100.00, :instructor_id)
RETURNING id AS course_id \gset
INSERT INTO app.cohorts (title, access_days, instructor_id) VALUES ('Spring Cohort', 90, :instructor_id)
RETURNING id AS cohort_id \gset
INSERT INTO app.content_items (course_id, title) VALUES (:course_id, 'Ownership')
RETURNING id AS item_id \gset
INSERT INTO app.threads (student_id, course_id, content_item_id, subject)
VALUES (:student_id, :course_id, :item_id, 'Borrowing question')
RETURNING id AS thread_id \gset

-- appointment.created
INSERT INTO app.appointments (user_id, course_id, content_item_id, scheduled_at, duration_minutes, amount)
VALUES (:student_id, :course_id, :item_id, '2030-01-01T10:00:00Z', 45, 50.00)
RETURNING id AS appt_id \gset
-- appointment.confirmed (previous: {"status": "pending"})
UPDATE app.appointments SET status = 'confirmed' WHERE id = :appt_id;
-- no event: nothing relevant changes (same status, other column)
UPDATE app.appointments SET status = 'confirmed', amount = 50.00 WHERE id = :appt_id;
-- appointment.payment.confirmed
UPDATE app.appointments SET payment_status = 'paid', payment_intent_id = 'pi_appt_1', paid_at = now()
 WHERE id = :appt_id;
-- appointment.rescheduled (time moved; oldScheduledAt / newScheduledAt)
UPDATE app.appointments SET scheduled_at = '2030-01-02T14:00:00Z', reschedule_reason = 'Conflict'
 WHERE id = :appt_id;
-- appointment.rescheduled, once, although both time and status change
UPDATE app.appointments SET scheduled_at = '2030-01-03T09:00:00Z', status = 'rescheduled' WHERE id = :appt_id;
-- appointment.completed
UPDATE app.appointments SET status = 'completed' WHERE id = :appt_id;
-- appointment.cancelled, written as a callback would (origin inbound/appointments)
INSERT INTO app.appointments (user_id, course_id, scheduled_at) VALUES (:student_id, :course_id, '2030-02-01T10:00:00Z')
RETURNING id AS appt2_id \gset
-- (that insert emitted appointment.created too; skip it in the listing)
SELECT max(seq) AS skip_seq FROM webhooks.events \gset
-- (through webhooks.inbound_apply, the sidecar's path, which vouches for the origin)
SELECT http_status FROM webhooks.inbound_apply('appointments', 'check-cancel',
    jsonb_build_object('eventType', 'appointment.cancelled', 'appointmentId', :appt2_id,
                       'status', 'cancelled', 'reason', 'Student unavailable')) \g /dev/null
-- no event: rolled back
BEGIN;
UPDATE app.appointments SET status = 'confirmed' WHERE id = :appt2_id;
ROLLBACK;

-- payment.success + enrollment.created (course, with coupon)
INSERT INTO app.enrollments (user_id, course_id, payment_intent_id, amount, discount_amount, coupon_code, expires_at)
VALUES (:student_id, :course_id, 'pi_course_1', 90.00, 10.00, 'DISCOUNT10', app.enrollment_expiry(:course_id, NULL));
-- payment.success + cohort.enrollment.created
INSERT INTO app.enrollments (user_id, cohort_id, payment_intent_id, amount, expires_at)
VALUES (:student_id, :cohort_id, 'pi_cohort_1', 200.00, app.enrollment_expiry(NULL, :cohort_id));
-- enrollment.created only (free enrollment, no payment)
INSERT INTO app.enrollments (user_id, course_id) VALUES (:admin_id, :course_id);

-- message.sent (student)
INSERT INTO app.messages (thread_id, author_id, content, is_from_student)
VALUES (:thread_id, :student_id, 'Why does the borrow checker complain?', true);
-- no event: the instructor's answer
INSERT INTO app.messages (thread_id, author_id, content, is_from_student)
VALUES (:thread_id, :instructor_id, 'Because of two mutable borrows.', false);

-- cohort.message.created
INSERT INTO app.cohort_messages (cohort_id, author_id, content, attachments)
VALUES (:cohort_id, :student_id, 'Hello cohort!', '[{"name": "intro.pdf"}]');

-- ticket.created (ticket_number defaults to TKT-nnnnnn)
INSERT INTO app.support_tickets (user_id, subject, description, category, priority)
VALUES (:student_id, 'Cannot access course', 'The player shows a blank page.', 'technical', 'high')
RETURNING id AS ticket_id \gset
-- ticket.status_changed
UPDATE app.support_tickets SET status = 'in_progress', status_changed_by = :admin_id, status_reason = 'Investigating'
 WHERE id = :ticket_id;
-- no event: other columns only
UPDATE app.support_tickets SET priority = 'urgent' WHERE id = :ticket_id;
-- ticket.reply_added
INSERT INTO app.ticket_replies (ticket_id, author_id, author_role, message)
VALUES (:ticket_id, :admin_id, 'admin', 'We are looking into it.');

-- error.occurred (HIGH and CRITICAL); the LOW and MEDIUM ones emit nothing
INSERT INTO app.error_logs (error_type, error_message, severity, url, user_id, stack_trace, user_agent) VALUES
    ('SERVER', 'Payment webhook failed', 'HIGH', 'https://example.com/api/pay', :student_id, 'at pay()', 'node'),
    ('CLIENT', 'Button misaligned', 'LOW', 'https://example.com/', NULL, NULL, 'Firefox'),
    ('SERVER', 'Slow query', 'MEDIUM', NULL, NULL, NULL, NULL),
    ('SERVER', 'Database down', 'CRITICAL', NULL, NULL, NULL, NULL);

SELECT seq, event_type, origin, source_table, row_key, payload, previous
  FROM webhooks.events
 WHERE seq > :start_seq AND seq <> :skip_seq
 ORDER BY seq;
