//! The delivery statements: one typed function per call into
//! `sql/20_fanout.sql`, `sql/30_delivery.sql` and `sql/35_breaker.sql`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use tokio::time::Instant;

use super::DbError;
use crate::job::{bounded, send_by, Event, Outcome};

/// A claimed fan-out batch.
#[derive(Debug)]
pub struct Batch {
    pub id: i64,
    pub config_version: i64,
    /// Events, with the endpoints that already have a delivery (rescues).
    pub events: Vec<(Arc<Event>, Vec<i64>)>,
    /// Its jobs' fence (`job::send_by`): the lease counted on the monotonic
    /// clock from when the claiming statement was sent.
    pub send_by: Instant,
}

/// The columns of a claimed event, as every claiming function returns them
/// (`batch_claim`, `batch_rescue`, `delivery_claim`, `delivery_claim_probe`).
macro_rules! event_columns {
    () => {
        "event_id, event_type, tenant_id, origin, occurred_at, payload, previous"
    };
}

/// An event from a row with [`event_columns!`], read by name.
fn event_from(row: &tokio_postgres::Row) -> Arc<Event> {
    Arc::new(Event::new(
        row.get("event_id"),
        row.get("event_type"),
        row.get("tenant_id"),
        row.get("origin"),
        row.get("occurred_at"),
        row.get("payload"),
        row.get("previous"),
    ))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `webhooks.batch_claim`: the next range of committed events, leased.
pub async fn batch_claim(
    c: &impl GenericClient,
    replica: &str,
    max_events: i32,
    lease: Duration,
) -> Result<Batch, DbError> {
    let st = c
        .prepare_cached(concat!(
            "SELECT batch_id, config_version, ",
            event_columns!(),
            " FROM webhooks.batch_claim(replica => $1, max_events => $2, lease => make_interval(secs => $3))"
        ))
        .await?;
    let fence = send_by(Instant::now(), lease);
    let rows = c.query(&st, &[&replica, &max_events, &secs(lease)]).await?;
    Ok(batch_from(&rows, false, fence))
}

/// Which of these (event, filter) pairs does the filter reject? Returns
/// their positions in `pairs`. An event no longer in the outbox is not
/// rejected (its job finds nothing to send anyway).
pub async fn filter_rejects(c: &impl GenericClient, pairs: &[(Uuid, &str)]) -> Result<Vec<usize>, DbError> {
    let st = c
        .prepare_cached(
            // Each distinct filter is parsed once, not once per event.
            "SELECT p.i::bigint FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS p(event_id, filter, i)
               JOIN (SELECT d.t AS filter, d.t::jsonpath AS path
                       FROM (SELECT DISTINCT t FROM unnest($2::text[]) t) d) f
                 ON f.filter = p.filter
               JOIN webhooks.events e ON e.event_id = p.event_id
              WHERE NOT webhooks.filter_accepts(f.path, e)",
        )
        .await?;
    let ids: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
    let filters: Vec<&str> = pairs.iter().map(|p| p.1).collect();
    let rows = c.query(&st, &[&ids, &filters]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0) as usize - 1).collect())
}

/// `webhooks.batch_rescue`: take over one batch whose lease expired.
pub async fn batch_rescue(c: &impl GenericClient, replica: &str, lease: Duration) -> Result<Batch, DbError> {
    let st = c
        .prepare_cached(concat!(
            "SELECT batch_id, config_version, done_endpoints, ",
            event_columns!(),
            " FROM webhooks.batch_rescue(replica => $1, lease => make_interval(secs => $2))"
        ))
        .await?;
    let fence = send_by(Instant::now(), lease);
    let rows = c.query(&st, &[&replica, &secs(lease)]).await?;
    Ok(batch_from(&rows, true, fence))
}

fn batch_from(rows: &[tokio_postgres::Row], with_done: bool, send_by: Instant) -> Batch {
    let Some(first) = rows.first() else {
        return Batch {
            id: 0,
            config_version: 0,
            events: Vec::new(),
            send_by,
        };
    };
    Batch {
        id: first.get("batch_id"),
        config_version: first.get("config_version"),
        send_by,
        events: rows
            .iter()
            .map(|r| {
                let done = if with_done {
                    r.get("done_endpoints")
                } else {
                    Vec::new()
                };
                (event_from(r), done)
            })
            .collect(),
    }
}

/// Columns shared by first attempts and retries' outcomes.
#[derive(Default)]
struct Columns {
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    next_at: Vec<Option<SystemTime>>,
    codes: Vec<Option<i32>>,
    errors: Vec<Option<String>>,
    started: Vec<Option<SystemTime>>,
    durations: Vec<Option<f64>>,
    excerpts: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, o: &Outcome) {
        self.statuses.push(o.status.as_str());
        self.attempts.push(o.attempts);
        self.next_at.push(o.next_attempt_at);
        self.codes.push(o.code);
        self.errors
            .push(o.error.as_ref().map(|e| sanitize(&e.to_string()).into_owned()));
        self.started.push(o.attempt.as_ref().map(|a| a.started_at));
        self.durations.push(o.attempt.as_ref().map(|a| a.duration_ms));
        self.excerpts.push(
            o.attempt
                .as_ref()
                .and_then(|a| a.excerpt.as_deref())
                .map(|e| sanitize(e).into_owned()),
        );
    }

    /// Its parameters, in the order of the functions' arguments after the
    /// leading ones.
    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.statuses,
            &self.attempts,
            &self.next_at,
            &self.codes,
            &self.errors,
            &self.started,
            &self.durations,
            &self.excerpts,
        ]
    }
}

/// `webhooks.<function>(replica => $1, <arg> => $<first>, …)`: the
/// arguments named, numbered on from `first`.
fn call(function: &str, args: &[&str], first: usize) -> String {
    let named: Vec<String> = args
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{a} => ${}", first + i))
        .collect();
    format!("webhooks.{function}(replica => $1, {})", named.join(", "))
}

/// What one [`outcomes_record`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Deliveries inserted (`webhooks.delivery_insert`: first attempts of
    /// batch jobs, and their routings to the retry path).
    pub inserted: i32,
    /// Claimed retries updated (`webhooks.delivery_record`: only where the
    /// lease is still ours).
    pub updated: i32,
    /// Fan-out batches completed (`webhooks.batch_complete`: only the
    /// lease holder's).
    pub batches_completed: i32,
}

/// Records outcomes and completes batches in **one statement**, so in one
/// implicit transaction that the server ends by itself: a replica frozen
/// or cut off after sending it cannot leave a transaction open (holding
/// an xid, which is fan-out's horizon for every replica, and row locks a
/// rescuer would wait on). Parts with nothing to do are left out of the
/// statement; each combination is prepared once per connection.
pub async fn outcomes_record(
    c: &impl GenericClient,
    replica: &str,
    first: &[&Outcome],
    retries: &[(i64, &Outcome)],
    done: &[i64],
) -> Result<Recorded, DbError> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&replica];
    let mut parts = Vec::with_capacity(3);
    let (mut events, mut endpoints, mut ordered): (Vec<Uuid>, Vec<i64>, Vec<bool>) = Default::default();
    let mut first_cols = Columns::default();
    for o in first {
        events.push(o.event_id);
        endpoints.push(o.endpoint_id);
        ordered.push(o.ordered);
        first_cols.push(o);
    }
    let mut ids = Vec::with_capacity(retries.len());
    let mut retry_cols = Columns::default();
    for (id, o) in retries {
        ids.push(*id);
        retry_cols.push(o);
    }
    if !first.is_empty() {
        parts.push(call(
            "delivery_insert",
            &[
                "event_ids",
                "endpoint_ids",
                "statuses",
                "attempt_counts",
                "next_attempt_ats",
                "status_codes",
                "errors",
                "started_ats",
                "durations_ms",
                "excerpts",
                "ordered",
            ],
            params.len() + 1,
        ));
        params.push(&events);
        params.push(&endpoints);
        params.extend(first_cols.params());
        params.push(&ordered);
    } else {
        parts.push("0".to_owned());
    }
    if !retries.is_empty() {
        parts.push(call(
            "delivery_record",
            &[
                "ids",
                "statuses",
                "attempt_counts",
                "next_attempt_ats",
                "status_codes",
                "errors",
                "started_ats",
                "durations_ms",
                "excerpts",
            ],
            params.len() + 1,
        ));
        params.push(&ids);
        params.extend(retry_cols.params());
    } else {
        parts.push("0".to_owned());
    }
    if !done.is_empty() {
        parts.push(call("batch_complete", &["ids"], params.len() + 1));
        params.push(&done);
    } else {
        parts.push("0".to_owned());
    }
    let st = c.prepare_cached(&format!("SELECT {}", parts.join(", "))).await?;
    let row = c.query_one(&st, &params).await?;
    Ok(Recorded {
        inserted: row.get(0),
        updated: row.get(1),
        batches_completed: row.get(2),
    })
}

/// A claimed retry.
#[derive(Debug)]
pub struct ClaimedRetry {
    pub delivery_id: i64,
    pub endpoint_id: i64,
    pub attempt: i32,
    pub used: i32,
    /// `None` when the event is no longer in the outbox.
    pub event: Option<Arc<Event>>,
    /// The job's fence (`job::send_by`), as for [`Batch::send_by`].
    pub send_by: Instant,
}

/// `webhooks.delivery_claim`: due retries, at most `rooms[i]` for endpoint
/// `endpoint_ids[i]`.
pub async fn delivery_claim(
    c: &impl GenericClient,
    replica: &str,
    endpoint_ids: &[i64],
    rooms: &[i32],
    lease: Duration,
) -> Result<Vec<ClaimedRetry>, DbError> {
    let st = c
        .prepare_cached(concat!(
            "SELECT delivery_id, endpoint_id, attempt, budget_used, ",
            event_columns!(),
            " FROM webhooks.delivery_claim(replica => $1, endpoint_ids => $2, rooms => $3,
                                               lease => make_interval(secs => $4))"
        ))
        .await?;
    let fence = send_by(Instant::now(), lease);
    let rows = c
        .query(&st, &[&replica, &endpoint_ids, &rooms, &secs(lease)])
        .await?;
    Ok(claimed_from(&rows, fence))
}

/// `webhooks.delivery_claim_probe`: one pending delivery of a paused endpoint.
pub async fn delivery_claim_probe(
    c: &impl GenericClient,
    replica: &str,
    endpoint_id: i64,
    lease: Duration,
) -> Result<Vec<ClaimedRetry>, DbError> {
    let fence = send_by(Instant::now(), lease);
    let rows = c
        .query(
            concat!(
                "SELECT delivery_id, endpoint_id, attempt, budget_used, ",
                event_columns!(),
                " FROM webhooks.delivery_claim_probe(replica => $1, endpoint_id => $2, lease => make_interval(secs => $3))"
            ),
            &[&replica, &endpoint_id, &secs(lease)],
        )
        .await?;
    Ok(claimed_from(&rows, fence))
}

/// `webhooks.endpoint_trip`: the breaker pauses an endpoint.
pub async fn endpoint_trip(c: &impl GenericClient, endpoint_id: i64, reason: &str) -> Result<bool, DbError> {
    let r = c
        .query_opt(
            "SELECT webhooks.endpoint_trip($1, $2)",
            &[&endpoint_id, &sanitize(reason)],
        )
        .await?;
    Ok(r.and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
}

/// `webhooks.endpoint_close_breaker`: a probe succeeded.
pub async fn endpoint_close_breaker(c: &impl GenericClient, endpoint_id: i64) -> Result<bool, DbError> {
    Ok(
        c.query_one("SELECT webhooks.endpoint_close_breaker($1)", &[&endpoint_id])
            .await?
            .get(0),
    )
}

/// Endpoints the breaker has paused.
pub async fn breaker_open(c: &impl GenericClient) -> Result<Vec<i64>, DbError> {
    let rows = c
        .query(
            "SELECT id FROM webhooks.endpoints WHERE NOT enabled AND breaker_opened_at IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn claimed_from(rows: &[tokio_postgres::Row], send_by: Instant) -> Vec<ClaimedRetry> {
    rows.iter()
        .map(|r| ClaimedRetry {
            send_by,
            delivery_id: r.get("delivery_id"),
            endpoint_id: r.get("endpoint_id"),
            attempt: r.get("attempt"),
            used: r.get("budget_used"),
            event: r.get::<_, Option<String>>("event_type").map(|_| event_from(r)),
        })
        .collect()
}

/// `webhooks.delivery_next_due`: when the next retry is due, if any.
pub async fn delivery_next_due(c: &impl GenericClient) -> Result<Option<SystemTime>, DbError> {
    let st = c.prepare_cached("SELECT webhooks.delivery_next_due()").await?;
    Ok(c.query_one(&st, &[]).await?.get(0))
}

/// `webhooks.delivery_rescue`: expired leases back to pending.
pub async fn delivery_rescue(c: &impl GenericClient) -> Result<i32, DbError> {
    let st = c.prepare_cached("SELECT webhooks.delivery_rescue()").await?;
    Ok(c.query_one(&st, &[]).await?.get(0))
}

/// `webhooks.listener_set`.
pub async fn idle_flag_set(c: &impl GenericClient, replica: &str, idle: bool) -> Result<(), DbError> {
    let st = c.prepare_cached("SELECT webhooks.listener_set($1, $2)").await?;
    c.execute(&st, &[&replica, &idle]).await?;
    Ok(())
}

/// `webhooks.listener_forget`.
pub async fn idle_flag_forget(c: &impl GenericClient, replica: &str) -> Result<(), DbError> {
    c.execute("SELECT webhooks.listener_forget($1)", &[&replica])
        .await?;
    Ok(())
}

/// `webhooks.listener_rescue`.
pub async fn idle_flag_rescue(c: &impl GenericClient) -> Result<i32, DbError> {
    let st = c.prepare_cached("SELECT webhooks.listener_rescue()").await?;
    Ok(c.query_one(&st, &[]).await?.get(0))
}

/// `webhooks.fanout_probe`: is there work, and may an idle replica sleep
/// (has every writer that saw it busy ended)? Not the breaker's probes.
#[derive(Debug, Clone, Copy)]
pub struct IdleCheck {
    pub has_work: bool,
    pub horizon: i64,
    pub xmax: i64,
}

pub async fn idle_check(c: &impl GenericClient) -> Result<IdleCheck, DbError> {
    let st = c
        .prepare_cached("SELECT has_work, horizon, xmax FROM webhooks.fanout_probe()")
        .await?;
    let r = c.query_one(&st, &[]).await?;
    Ok(IdleCheck {
        has_work: r.get(0),
        horizon: r.get(1),
        xmax: r.get(2),
    })
}

/// `webhooks.endpoint_pace`: sends granted now, and how long to wait when
/// short.
pub async fn endpoint_pace(
    c: &impl GenericClient,
    endpoint_id: i64,
    wanted: i32,
    rate: u32,
    per: Duration,
) -> Result<(i32, Option<Duration>), DbError> {
    let st = c
        .prepare_cached(
            "SELECT granted, wait_ms FROM webhooks.endpoint_pace($1, $2, $3, make_interval(secs => $4))",
        )
        .await?;
    let r = c
        .query_one(&st, &[&endpoint_id, &wanted, &(rate as i32), &secs(per)])
        .await?;
    let wait: Option<f64> = r.get(1);
    Ok((
        r.get(0),
        wait.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
    ))
}

/// `webhooks.endpoint_pause`.
pub async fn endpoint_pause(c: &impl GenericClient, endpoint_id: i64, reason: &str) -> Result<bool, DbError> {
    let r = c
        .query_opt(
            "SELECT webhooks.endpoint_pause($1, $2)",
            &[&endpoint_id, &sanitize(reason)],
        )
        .await?;
    Ok(r.and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
}

/// Text as Postgres accepts it and as much of it as we keep: NUL (never
/// valid in `text`) becomes U+FFFD, as invalid UTF-8 already has
/// (`String::from_utf8_lossy`), and the whole is cut to
/// [`crate::job::TEXT_BOUND`]. Every text that may hold a receiver's words
/// goes through it on its way into a table.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(bounded(&s.replace('\0', "\u{FFFD}")).into_owned())
    } else {
        bounded(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_replaces_nul_and_cuts_to_the_bound() {
        assert_eq!(sanitize("ok\0\0!"), "ok\u{FFFD}\u{FFFD}!");
        assert!(matches!(sanitize("plain ✓"), Cow::Borrowed("plain ✓")));
        let long = "é".repeat(1000);
        let cut = sanitize(&long);
        assert!(
            cut.len() <= crate::job::TEXT_BOUND && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        let nuls = "\0".repeat(1000);
        assert!(sanitize(&nuls).len() <= crate::job::TEXT_BOUND);
    }
}
