//! Below the JSON: body sizes with and without a length, oversized heads,
//! paths that name no route, and slow clients (slow-loris) — over raw TCP,
//! since a client library would not send these.

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use super::{authed, read_answer, request, request_owned, Answer, Corpus, PROMPT};
use crate::support::sidecar::INBOUND_SECRET;

const CLOSED: Option<u16> = None;

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_or_without_a_length() {
    let k = Corpus::start().await;
    let max = k.config.max_body;
    let path = "/api/webhooks/make/cohort-messages";
    // Declared too large: refused on the head alone, before any body is sent.
    for declared in [max + 1, 10_000_000_000] {
        let got = k
            .refused(
                &format!("content-length {declared}"),
                &[Some(413)],
                k.raw(&request_owned(path, &authed(declared), b"")),
            )
            .await;
        assert_eq!(got.error(), "body too large");
    }
    let mut head = authed(10_000_000);
    head.push("expect: 100-continue".into());
    k.refused(
        "expect 100-continue, too large",
        &[Some(413)],
        k.raw(&request_owned(path, &head, b"")),
    )
    .await;
    // Chunked, no length: cut off once past the limit.
    let chunk = format!("400\r\n{}\r\n", " ".repeat(0x400));
    let mut body = chunk.repeat(max / 0x400 + 2).into_bytes();
    body.extend_from_slice(b"0\r\n\r\n");
    let head = [
        format!("x-make-apikey: {INBOUND_SECRET}"),
        "transfer-encoding: chunked".into(),
    ];
    k.refused(
        "chunked past the limit",
        &[Some(413)],
        k.raw(&request_owned(path, &head, &body)),
    )
    .await;
    // An honest length one byte over, body and all.
    let padded = |len: usize| {
        let base = json!({"messageId": 4, "messagePreview": ""}).to_string();
        json!({"messageId": 4, "messagePreview": "x".repeat(len - base.len())}).to_string()
    };
    let over = padded(max + 1);
    k.refused(
        "one byte over",
        &[Some(413)],
        k.raw(&request_owned(path, &authed(over.len()), over.as_bytes())),
    )
    .await;
    // Exactly at the limit is fine.
    let got = k.send(k.post("cohort-messages").body(padded(max))).await;
    assert_eq!(got.status, Some(200), "{}", got.body);
    // Framing errors: 400, nothing applied.
    let bad_chunk = request_owned(path, &head, b"zz\r\n{}\r\n0\r\n\r\n");
    k.refused("bad chunk size", &[Some(400)], k.raw(&bad_chunk)).await;
    let mut head = authed(0);
    head[2] = "content-length: twelve".into();
    k.refused(
        "content-length not a number",
        &[Some(400)],
        k.raw(&request_owned(path, &head, b"{}")),
    )
    .await;
    // Fewer bytes than declared, then the client hangs up: nothing applied.
    let valid = br#"{"messageId": 5}"#;
    let got = {
        let before = k.snapshot().await;
        let mut s = TcpStream::connect(&k.addr).await.unwrap();
        s.write_all(&request_owned(path, &authed(valid.len() + 10), valid))
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let got = read_answer(&mut s, Duration::from_secs(20)).await;
        assert_eq!(k.snapshot().await, before, "short body: nothing applied");
        got
    };
    assert!(matches!(got.status, Some(400) | CLOSED), "{got:?}");
    k.canary().await;
    k.stop().await;
}

#[tokio::test]
async fn oversized_heads_are_431_and_the_server_stays_up() {
    let k = Corpus::start().await;
    let path = "/api/webhooks/make/cohort-messages";
    let body = br#"{"messageId": 3}"#;
    let big = "a".repeat(100 * 1024);
    let with = |line: String| {
        let mut head = authed(body.len());
        head.push(line);
        request_owned(path, &head, body)
    };
    for (what, raw) in [
        ("a 100 KB header", with(format!("x-padding: {big}"))),
        ("a 100 KB secret", with(format!("x-webhook-secret: {big}"))),
        ("a 100 KB webhook-id", with(format!("webhook-id: {big}"))),
        (
            "a 100 KB query",
            request_owned(&format!("{path}?secret={big}"), &authed(body.len()), body),
        ),
        (
            "a 100 KB path",
            request_owned(&format!("{path}/{big}"), &authed(body.len()), body),
        ),
        ("200 headers", {
            let mut head = authed(body.len());
            head.extend((0..200).map(|i| format!("x-h{i}: {i}")));
            request_owned(path, &head, body)
        }),
    ] {
        k.refused(what, &[Some(431), Some(414), CLOSED], k.raw(&raw))
            .await;
    }
    // A large head under the limit is served.
    let got = k
        .raw(&with(format!("x-padding: {}", "a".repeat(32 * 1024))))
        .await;
    assert_eq!(got.status, Some(200), "{}", got.body);
    k.stop().await;
}

#[tokio::test]
async fn paths_that_name_no_route_are_404_in_json() {
    let k = Corpus::start().await;
    let body = br#"{"messageId": 8}"#;
    let long = format!("/inbound/{}", "r".repeat(10_000));
    for path in [
        "/api/webhooks/make/",
        "/api/webhooks/make",
        "/api/webhooks/make/cohort-messages/extra",
        "/api/webhooks/make/COHORT-MESSAGES",
        "/api/webhooks/make/cohort%2Dmessages%FF",
        "/api/webhooks/make/%2e%2e%2fcohort-messages",
        "/api/webhooks/make/cohort-messages%00",
        "/inbound/",
        long.as_str(),
        "/webhooks/make/cohort-messages",
    ] {
        let got = k
            .refused(
                path,
                &[Some(404)],
                k.raw(&request_owned(path, &authed(body.len()), body)),
            )
            .await;
        assert!(got.body.is_object(), "{path}: a JSON answer");
    }
    // Bytes that are not even a URI: hyper's 400.
    let mut raw = request("/api/webhooks/make/cohort-messagesX", &[], body);
    let at = raw.iter().position(|b| *b == b'X').unwrap();
    raw[at] = 0xff;
    k.refused("raw 0xff in the path", &[Some(400), Some(404)], k.raw(&raw))
        .await;
    k.stop().await;
}

/// A client that sends `now` at once, then `trickle` one byte per `pause`,
/// and then holds the connection open without sending more.
struct Slow {
    read: OwnedReadHalf,
    writer: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Slow {
    async fn start(addr: &str, now: Vec<u8>, trickle: Vec<u8>, pause: Duration) -> Slow {
        let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            if write.write_all(&now).await.is_ok() {
                for b in trickle {
                    tokio::time::sleep(pause).await; // the slow client's pace: input, not a wait
                    if write.write_all(&[b]).await.is_err() {
                        break;
                    }
                }
            }
            std::future::pending::<()>().await; // never finish: the write half stays open
        });
        Slow {
            read,
            writer,
            started,
        }
    }

    /// Still connected, with no answer yet (a `100 Continue` is not one).
    fn waiting(&mut self) -> bool {
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut peeked = [0u8; 64];
        let mut buf = ReadBuf::new(&mut peeked);
        let mut cx = Context::from_waker(Waker::noop());
        match self.read.poll_peek(&mut cx, &mut buf) {
            Poll::Pending => true,
            Poll::Ready(Ok(_)) => buf.filled() == CONTINUE,
            Poll::Ready(Err(_)) => false,
        }
    }

    /// How it ended (no status: closed without an answer), and when.
    async fn end(mut self, deadline: Duration) -> (Answer, Duration) {
        let answer = read_answer(&mut self.read, deadline).await;
        let took = self.started.elapsed();
        self.writer.abort();
        (answer, took)
    }
}

/// The slow clients of the corpus: (what, what they end with, the client).
async fn slow_clients(k: &Corpus, n: u32) -> Vec<(String, Vec<Option<u16>>, Slow)> {
    let path = "/api/webhooks/make/cohort-messages";
    let pace = Duration::from_millis(50);
    let mut out = Vec::new();
    for i in 0..n {
        // Bodies that would be applied if they ever arrived whole.
        let body = json!({"messageId": 700 + i, "messagePreview": "p".repeat(200)}).to_string();
        let full = request_owned(path, &authed(body.len()), body.as_bytes());
        let split = full.len() - body.len() + body.len() / 2;
        let head_only = full[..full.len() - body.len()].to_vec();
        let end = head_only.len() - 2;
        let expecting = [
            &head_only[..end],
            &b"expect: 100-continue\r\n"[..],
            &head_only[end..],
        ]
        .concat();
        let apikey = format!("x-make-apikey: {INBOUND_SECRET}");
        let chunked = request(
            path,
            &[apikey.as_str(), "transfer-encoding: chunked"],
            format!("{:x}\r\n{}\r\n", body.len() / 2, &body[..body.len() / 2]).as_bytes(),
        );
        let head = [Some(408), CLOSED].to_vec();
        let body408 = [Some(408)].to_vec();
        let cases = [
            ("idle", head.clone(), vec![], vec![]),
            ("head stalled", head.clone(), full[..20].to_vec(), vec![]),
            ("head trickled", head, vec![], full.clone()),
            ("body stalled", body408.clone(), full[..split].to_vec(), vec![]),
            (
                "body trickled",
                body408.clone(),
                head_only,
                body.clone().into_bytes(),
            ),
            ("chunked body stalled", body408.clone(), chunked, vec![]),
            ("expect 100-continue, no body", body408, expecting, vec![]),
        ];
        for (what, expect, now, trickle) in cases {
            out.push((
                format!("{what} #{i}"),
                expect,
                Slow::start(&k.addr, now, trickle, pace).await,
            ));
        }
    }
    out
}

#[tokio::test]
async fn slow_clients_are_cut_off_after_the_read_timeout_and_nothing_is_applied() {
    let k = Corpus::start().await;
    let patience = k.config.read_timeout;
    let before = k.snapshot().await;
    let slow = slow_clients(&k, 1).await;
    for (what, expect, client) in slow {
        let (got, took) = client.end(patience + Duration::from_secs(15)).await;
        assert!(
            expect.contains(&got.status),
            "{what}: {:?} {}",
            got.status,
            got.body
        );
        assert!(
            took >= patience / 2,
            "{what}: cut off by the timeout, not at once ({took:?})"
        );
        if got.status == Some(408) {
            assert_eq!(got.error(), "the body did not arrive in time", "{what}");
        }
    }
    assert_eq!(k.snapshot().await, before, "nothing applied, not even partly");
    k.canary().await;
    k.stop().await;
}

#[tokio::test]
async fn while_slow_clients_hold_connections_others_are_served_and_no_database_connection_is_held() {
    // More slow bodies than pooled connections, and time to see them held.
    let k = Corpus::start_with(|c| {
        c.pool_size = 4;
        c.inbound.as_mut().unwrap().read_timeout = Duration::from_secs(6);
    })
    .await;
    let patience = k.config.read_timeout;
    let before = k.snapshot().await;
    let mut slow = slow_clients(&k, 2).await;
    for _ in 0..3 {
        k.canary().await;
    }
    for (what, _, client) in &mut slow {
        assert!(
            client.waiting(),
            "{what}: still held while the others were served"
        );
    }
    for (what, expect, client) in slow {
        let (got, _) = client.end(patience + Duration::from_secs(15)).await;
        assert!(
            expect.contains(&got.status),
            "{what}: {:?} {}",
            got.status,
            got.body
        );
    }
    let mut after = k.snapshot().await;
    let mut before = before;
    for canary_touched in ["app.error_logs", "webhooks.events", "inbound", "inbound applied"] {
        before.remove(canary_touched);
        after.remove(canary_touched);
    }
    assert_eq!(after, before, "nothing applied by a slow client");
    let others: i64 =
        k.c.query_one(
            "SELECT count(*) FROM webhooks.inbound WHERE route <> 'errors'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(others, 0, "no slow callback was recorded");
    k.canary().await;
    k.stop().await;
}

#[tokio::test]
async fn at_the_connection_limit_a_client_waits_for_the_slot_a_slow_one_frees() {
    let k = Corpus::start_with(|c| c.inbound.as_mut().unwrap().max_connections = 3).await;
    let patience = k.config.read_timeout;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(Slow::start(&k.addr, vec![], vec![], Duration::ZERO).await);
    }
    let started = Instant::now();
    k.canary().await;
    let waited = started.elapsed();
    assert!(
        waited >= patience / 2,
        "the fourth connection waited for a slot ({waited:?})"
    );
    for client in idle {
        let (got, took) = client.end(Duration::from_secs(15)).await;
        assert_eq!(got.status, CLOSED, "idle: closed without an answer");
        assert!(took >= patience / 2, "{took:?}");
    }
    let started = Instant::now();
    k.canary().await;
    assert!(started.elapsed() < PROMPT);
    k.stop().await;
}
