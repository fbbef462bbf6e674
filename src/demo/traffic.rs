//! The demo's app traffic (plain SQL writes into the example app, as any
//! app would make them) and the Make-style callback.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::db::DbError;

pub(super) struct Expected {
    pub writes: usize,
    /// Ids of the events this round's writes emitted.
    pub events: Vec<String>,
    /// An appointment for the callback to confirm.
    pub appointment: i64,
}

/// One round of a learning platform's day.
pub(super) async fn round(c: &Client, n: u32) -> Result<Expected, DbError> {
    let before: Vec<String> = c
        .query("SELECT event_id::text FROM webhooks.events", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let student: i64 = c
        .query_one(
            "INSERT INTO app.users (email, name, phone) VALUES ($1, $2, '0912345678') RETURNING id",
            &[&format!("student{n}@example.com"), &format!("Student {n}")],
        )
        .await?
        .get(0);
    let teacher: i64 = c
        .query_one(
            "INSERT INTO app.users (email, name, role) VALUES ($1, 'Grace Instructor', 'instructor') RETURNING id",
            &[&format!("teacher{n}@example.com")],
        )
        .await?
        .get(0);
    let course: i64 = c
        .query_one("INSERT INTO app.courses (title, access_days, instructor_id) VALUES ('Rust 101', 365, $1) RETURNING id", &[&teacher])
        .await?
        .get(0);
    let thread: i64 = c
        .query_one("INSERT INTO app.threads (student_id, course_id, subject) VALUES ($1, $2, 'Borrowing') RETURNING id", &[&student, &course])
        .await?
        .get(0);
    let booked = "INSERT INTO app.appointments (user_id, course_id, scheduled_at, duration_minutes)
                  VALUES ($1, $2, now() + interval '2 days', 45) RETURNING id";
    let a1: i64 = c.query_one(booked, &[&student, &course]).await?.get(0);
    let a2: i64 = c.query_one(booked, &[&student, &course]).await?.get(0);
    let mut writes = 6;
    for sql in [
        "UPDATE app.appointments SET status = 'confirmed' WHERE id = $1",
        "UPDATE app.appointments SET scheduled_at = scheduled_at + interval '1 hour', reschedule_reason = 'Conflict' WHERE id = $1",
        "UPDATE app.appointments SET payment_status = 'paid', payment_intent_id = 'pi_demo_' || id, paid_at = now() WHERE id = $1",
    ] {
        c.execute(sql, &[&a1]).await?;
        writes += 1;
    }
    c.execute(
        "INSERT INTO app.enrollments (user_id, course_id, payment_intent_id, amount, expires_at)
         VALUES ($1, $2, $3, 90.00, app.enrollment_expiry($2, NULL))",
        &[&student, &course, &format!("pi_course_{n}")],
    )
    .await?;
    let ticket: i64 = c
        .query_one(
            "INSERT INTO app.support_tickets (user_id, subject, description, category, priority)
             VALUES ($1, 'Cannot access course', 'The player shows a blank page.', 'technical', 'high') RETURNING id",
            &[&student],
        )
        .await?
        .get(0);
    c.execute(
        "UPDATE app.support_tickets SET status = 'in_progress', status_changed_by = $2 WHERE id = $1",
        &[&ticket, &teacher],
    )
    .await?;
    c.execute(
        "INSERT INTO app.ticket_replies (ticket_id, author_id, author_role, message) VALUES ($1, $2, 'admin', 'Looking into it.')",
        &[&ticket, &teacher],
    )
    .await?;
    c.execute(
        "INSERT INTO app.messages (thread_id, author_id, content, is_from_student) VALUES ($1, $2, 'Why does the borrow checker complain?', true)",
        &[&thread, &student],
    )
    .await?;
    c.execute(
        "INSERT INTO app.error_logs (error_type, error_message, severity, url) VALUES ('SERVER', 'Payment provider timed out', 'HIGH', '/api/pay')",
        &[],
    )
    .await?;
    writes += 6;
    let events: Vec<String> = c
        .query(
            "SELECT event_id::text FROM webhooks.events WHERE origin IS NULL AND NOT (event_id::text = ANY ($1))",
            &[&before],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Expected {
        writes,
        events,
        appointment: a2,
    })
}

#[derive(Debug, Clone)]
pub(super) struct Callback {
    pub status: u16,
    pub applied: bool,
    pub not_echoed: bool,
}

impl Callback {
    /// What happened, in under 80 characters.
    pub(super) fn describe(&self) -> String {
        format!(
            "appointment {}; its own event {}",
            if self.applied {
                "confirmed in the database"
            } else {
                "NOT updated"
            },
            if self.not_echoed {
                "not echoed back to Make"
            } else {
                "was echoed back"
            }
        )
    }

    /// [`Callback::describe`] in a few words.
    pub(super) fn short(&self) -> &'static str {
        match (self.applied, self.not_echoed) {
            (true, true) => "applied, not echoed back",
            (true, false) => "applied but echoed back",
            (false, _) => "NOT applied",
        }
    }
}

/// What Make's HTTP module would post after a calendar confirmed the
/// appointment; then checks it was applied and not sent back.
pub(super) async fn callback(
    c: &Client,
    base: &str,
    secret: &str,
    appointment: i64,
) -> Result<Callback, DbError> {
    crate::deliver::http::install_crypto_provider();
    let body = serde_json::json!({"eventType": "appointment.confirmed", "appointmentId": appointment, "status": "confirmed"});
    let status = match reqwest::Client::new()
        .post(format!("{base}/api/webhooks/make/appointments"))
        .header("x-make-apikey", secret)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    let applied = status == 200
        && c.query_one(
            "SELECT status = 'confirmed' FROM app.appointments WHERE id = $1",
            &[&appointment],
        )
        .await?
        .get::<_, bool>(0);
    // Wait until fan-out has passed the callback's own event, then look
    // for a delivery of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let not_echoed = loop {
        let r = c
            .query_one(
                "SELECT bool_and((e.txid, e.seq) <= (SELECT txid, seq FROM webhooks.fanout_cursor))
                        AND NOT EXISTS (SELECT 1 FROM webhooks.fanout_batches),
                        NOT EXISTS (SELECT 1 FROM webhooks.deliveries d JOIN webhooks.events e2 USING (event_id)
                                     WHERE e2.origin = 'inbound/appointments')
                   FROM webhooks.events e WHERE e.origin = 'inbound/appointments'",
                &[],
            )
            .await?;
        let (settled, none): (Option<bool>, bool) = (r.get(0), r.get(1));
        if settled == Some(true) || Instant::now() > deadline {
            break applied && none && settled == Some(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Callback {
        status,
        applied,
        not_echoed,
    })
}
