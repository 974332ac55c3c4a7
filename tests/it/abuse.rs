#![allow(clippy::unwrap_used)]
//! Hostile clients (issue 4 part 8). Each case is answered as the README specifies while one
//! well-behaved subscriber on the same server receives every event published before, during
//! and after the abuse, exactly and in order ([`Calm`]): heads dribbled one byte per 500 ms
//! are cut off at the head deadline (`408`); 10,000 headers and an oversized head are `431`;
//! `Content-Length` with `Transfer-Encoding` is `400`; 1,000 subscribers dropping at once
//! (half with a reset) leave the server serving with the right subscriber count; a publish
//! body over the limit is `413`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::*;
use herald::{Config, Event, Handle, Server};

const CALM_TOPIC: &str = "calm";

/// A server with one well-behaved subscriber reading on its own thread, and the list of
/// every event published to it. [`Calm::finish`] asserts the subscriber got exactly that.
struct Calm {
    server: Server,
    handle: Handle,
    reader: JoinHandle<Vec<SseEvent>>,
    published: Vec<(String, String)>,
}

impl Calm {
    fn start(tweak: impl FnOnce(&mut Config)) -> Calm {
        let server = start(tweak);
        let handle = server.handle();
        let mut subscriber = subscribe(server.local_addr(), &[CALM_TOPIC]);
        let reader = std::thread::spawn(move || subscriber.events_before("done"));
        let mut calm = Calm {
            server,
            handle,
            reader,
            published: Vec::new(),
        };
        calm.publish("before the abuse");
        calm
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Publishes the next numbered event to the calm topic.
    fn publish(&mut self, label: &str) {
        let data = format!("{} {label}", self.published.len());
        let id = publish(&self.handle, &Event::new(CALM_TOPIC, data.clone()));
        self.published.push((data, id.as_str().to_owned()));
    }

    /// Publishes a last event, then checks the calm subscriber received exactly what was
    /// published, in order, and that the server still answers.
    fn finish(mut self) -> Server {
        self.publish("after the abuse");
        publish(&self.handle, &Event::new(CALM_TOPIC, "done"));
        let received: Vec<(String, String)> = self
            .reader
            .join()
            .unwrap_or_else(|_| panic!("the well-behaved subscriber failed (see above)"))
            .into_iter()
            .map(|e| (e.data, e.last_event_id))
            .collect();
        assert_eq!(
            received, self.published,
            "the well-behaved subscriber must receive every event published during the abuse"
        );
        assert_healthy(self.server.local_addr(), "the abuse");
        self.server
    }
}

/// Sends `request` on a new connection (tolerating the server cutting it short), expects
/// `status` and the connection closed.
fn assert_refused_and_closed(addr: SocketAddr, request: &[u8], status: u16, case: &str) {
    let mut conn = Conn::connect(addr);
    conn.send_may_be_cut(request);
    let response = conn.read_response(&format!("the answer to {case}"));
    assert_error(&response, status, case);
    conn.expect_closed(&format!("the {status} answer to {case}"));
}

fn refusals(addr: SocketAddr, status: u16) -> f64 {
    scrape(addr).value(&format!(
        "herald_http_refusals_total{{status=\"{status}\"}}"
    ))
}

#[test]
fn slow_loris_heads_are_cut_off_at_the_head_deadline_with_408() {
    const LORISES: usize = 20;
    let mut calm = Calm::start(|config| config.head_timeout_ms = 2_000);
    let addr = calm.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let head = build_request("GET", "/healthz", &[("X-Slow", "loris")], b"");
    let mut conns = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..LORISES {
        let conn = Conn::connect(addr);
        writers.push(dribble(
            conn.try_clone_stream(),
            head.clone(),
            Duration::from_millis(500),
            stop.clone(),
        ));
        conns.push(conn);
    }
    let answers = std::thread::spawn(move || {
        for (i, mut conn) in conns.into_iter().enumerate() {
            let response = conn.read_response(&format!("the 408 answer to slow loris {i}"));
            assert_error(&response, 408, &format!("slow loris {i}"));
            conn.expect_closed(&format!("the 408 answer to slow loris {i}"));
        }
    });
    // Events keep flowing while the heads trickle in: one every 100 ms (the publisher's
    // own pace) until every slow loris has its answer.
    while !answers.is_finished() {
        calm.publish("during the slow lorises");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    answers
        .join()
        .unwrap_or_else(|_| panic!("a slow loris was not answered 408 (see above)"));
    for writer in writers {
        let sent = writer.join().unwrap();
        assert!(
            sent < head.len(),
            "a slow loris sent its whole head unanswered"
        );
    }
    assert_eq!(refusals(addr, 408), LORISES as f64);
    calm.finish();
}

#[test]
fn ten_thousand_headers_are_431_and_closed() {
    let mut calm = Calm::start(|_| {});
    let addr = calm.addr();
    let names: Vec<String> = (0..10_000).map(|i| format!("X-Header-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let request = build_request("GET", "/healthz", &headers, b"");
    // Small headers that fit max_head_bytes: refused for their number alone.
    let within_size: Vec<(&str, &str)> = (0..200).map(|_| ("A", "1")).collect();
    let small = build_request("GET", "/healthz", &within_size, b"");
    assert!(small.len() < herald::config::HEAD_BYTES_DEFAULT);
    for round in 0..3 {
        assert_refused_and_closed(addr, &request, 431, "10,000 headers");
        calm.publish(&format!("after 10,000 headers, round {round}"));
        assert_refused_and_closed(addr, &small, 431, "200 tiny headers");
        calm.publish(&format!("after 200 tiny headers, round {round}"));
    }
    assert_eq!(refusals(addr, 431), 6.0);
    calm.finish();
}

#[test]
fn an_oversized_head_is_431_and_closed() {
    let mut calm = Calm::start(|_| {});
    let addr = calm.addr();
    let huge = "h".repeat(1024 * 1024);
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "a 1 MiB header",
            build_request("GET", "/healthz", &[("X-Huge", &huge)], b""),
        ),
        ("a 1 MiB request target", {
            build_request("GET", &format!("/events?topic={huge}"), &[], b"")
        }),
        (
            "a head that never ends",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: {huge}").into_bytes(),
        ),
    ];
    for (case, request) in &cases {
        assert_refused_and_closed(addr, request, 431, case);
        calm.publish(&format!("after {case}"));
    }
    assert_eq!(refusals(addr, 431), cases.len() as f64);
    calm.finish();
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_closed() {
    let mut calm = Calm::start(|_| {});
    let addr = calm.addr();
    // A smuggling attempt: whichever framing a server believed, the rest would be a request.
    let smuggled = b"0\r\n\r\nPOST /publish?topic=calm HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nsmuggled";
    let length = smuggled.len().to_string();
    for (te_first, label) in [
        (false, "Content-Length first"),
        (true, "Transfer-Encoding first"),
    ] {
        let mut headers = vec![("Content-Length", length.as_str())];
        let te = ("Transfer-Encoding", "chunked");
        if te_first {
            headers.insert(0, te);
        } else {
            headers.push(te);
        }
        headers.push(("Content-Type", "text/plain"));
        let request = build_request("POST", "/publish?topic=calm", &headers, smuggled);
        assert_refused_and_closed(addr, &request, 400, label);
        calm.publish(&format!("after a smuggling attempt, {label}"));
    }
    assert_eq!(refusals(addr, 400), 2.0);
    let server = calm.finish();
    // `finish` showed nothing else reached the subscriber; nothing else was published either.
    assert_eq!(server.handle().stats().events_published, 2 + 2 + 1);
}

#[test]
fn a_thousand_subscribers_dropping_at_once_leave_the_server_serving() {
    const CROWD: usize = 1_000;
    let mut calm = Calm::start(|_| {});
    let addr = calm.addr();
    // The crowd shares the calm topic, so the loops are writing to them when they go.
    let crowd: Vec<Subscriber> = (0..CROWD)
        .map(|_| subscribe(addr, &[CALM_TOPIC, "crowd"]))
        .collect();
    wait_until("the crowd to be registered", || {
        calm.handle.stats().subscribers == (CROWD + 1) as u64
    });
    calm.publish("to the crowd");
    publish(&calm.handle, &Event::new("crowd", "x".repeat(16 * 1024)));
    // Half leave with a reset, half with a FIN, all at once.
    let mut resets = Vec::new();
    let mut closes = Vec::new();
    for (i, subscriber) in crowd.into_iter().enumerate() {
        let conn = subscriber.into_conn();
        if i % 2 == 0 {
            resets.push(conn);
        } else {
            closes.push(conn);
        }
    }
    let resetter = std::thread::spawn(move || resets.into_iter().for_each(Conn::reset));
    drop(closes);
    calm.publish("while the crowd leaves");
    resetter.join().unwrap();
    calm.publish("after the crowd left");
    wait_until("the crowd to be gone", || {
        calm.handle.stats().subscribers == 1
    });
    let page = scrape(addr);
    assert_eq!(page.value("herald_subscribers"), 1.0);
    // A new crowd is welcome.
    let mut again: Vec<Subscriber> = (0..10).map(|_| subscribe(addr, &["crowd"])).collect();
    publish(&calm.handle, &Event::new("crowd", "welcome back"));
    for subscriber in &mut again {
        assert_eq!(subscriber.next_event("the welcome").data, "welcome back");
    }
    calm.finish();
}

#[test]
fn a_publish_body_over_the_limit_is_413_and_closed() {
    const MAX: usize = 4 * 1024;
    let mut calm = Calm::start(|config| config.max_publish_bytes = MAX);
    let addr = calm.addr();
    let big = vec![b'x'; 1024 * 1024];
    assert_refused_and_closed(
        addr,
        &post_request("/publish?topic=calm", Some("text/plain"), &big, &[]),
        413,
        "a 1 MiB publish body",
    );
    calm.publish("after a 1 MiB body");
    // A Content-Length far over the limit is refused before any body arrives.
    let mut claim = build_request(
        "POST",
        "/publish?topic=calm",
        &[
            ("Content-Length", "1073741824"),
            ("Content-Type", "text/plain"),
        ],
        b"",
    );
    claim.extend_from_slice(b"just the start");
    assert_refused_and_closed(addr, &claim, 413, "a Content-Length of 1 GiB");
    calm.publish("after a 1 GiB claim");
    let json = format!("{{\"topic\":\"calm\",\"data\":\"{}\"}}", "y".repeat(MAX));
    assert_refused_and_closed(
        addr,
        &post_request("/publish", Some("application/json"), json.as_bytes(), &[]),
        413,
        "a JSON publish over the limit",
    );
    calm.publish("after a JSON body over the limit");
    assert_eq!(refusals(addr, 413), 3.0);
    let server = calm.finish();
    assert_eq!(server.handle().stats().events_published, 1 + 3 + 2);
}
