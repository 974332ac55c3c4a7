#![allow(clippy::unwrap_used)]
//! The per-loop timers (issue 4 part 1): the request-head deadline answers a dribbling
//! client `408` and closes; quiet streams get `:` heartbeat comments every `heartbeat_ms`
//! and busy ones none; an idle keep-alive connection is closed after `idle_timeout_ms`
//! while streams are not; `max_stream_lifetime_ms` ends a stream with a `retry:` hint.
//!
//! Every wait reads until a delimiter or end of stream within [`DEADLINE`]. The only pauses
//! are the client's own pacing (one head byte per 500 ms, one publish per 100 ms), never a
//! wait for the server; nothing here asserts how long anything took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use herald::Event;

/// Pause between the bytes of a dribbled head: the slow client's behaviour.
const DRIBBLE_PAUSE: Duration = Duration::from_millis(500);

#[test]
fn a_head_dribbled_one_byte_per_500_ms_is_answered_408_and_closed_at_the_head_deadline() {
    let server = start(|config| config.head_timeout_ms = 2_000);
    let addr = server.local_addr();
    let mut conn = Conn::connect(addr);
    let head = build_request("GET", "/healthz", &[("X-Padding", "slow-loris")], b"");
    let head_len = head.len();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = dribble(conn.try_clone_stream(), head, DRIBBLE_PAUSE, stop.clone());
    let response = conn.read_response("the 408 answer to a dribbled head");
    stop.store(true, Ordering::Release);
    assert_error(&response, 408, "a head dribbled one byte per 500 ms");
    conn.expect_closed("the 408 answer");
    let sent = writer.join().unwrap();
    assert!(
        sent < head_len,
        "the whole {head_len}-byte head went out before the server answered; the deadline never fired"
    );
    assert_healthy(addr, "a dribbled head");
    let metrics = scrape(addr);
    assert_eq!(
        metrics.value("herald_http_refusals_total{status=\"408\"}"),
        1.0
    );
}

/// A connection that never sends a byte (a browser's preconnect, a port scan) must not hold
/// its slot forever: it is closed at the head deadline. Whether it first gets a `408` is
/// not pinned down (the server closes it silently); if anything is sent, it is a `408`.
#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_head_deadline() {
    let server = start(|config| config.head_timeout_ms = 300);
    let addr = server.local_addr();
    let mut conn = Conn::connect(addr);
    let received = conn.read_to_close("the server to close a connection that sends nothing");
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408 "),
        "a connection that sent nothing got {:?}",
        String::from_utf8_lossy(&received)
    );
    wait_until("the silent connection to be released", || {
        server.handle().stats().connections == 0
    });
}

#[test]
fn a_body_that_stops_arriving_is_answered_408_and_closed() {
    let server = start(|config| config.head_timeout_ms = 300);
    let mut conn = Conn::connect(server.local_addr());
    let mut request = post_request("/publish?topic=t", Some("text/plain"), b"0123456789", &[]);
    request.truncate(request.len() - 5);
    conn.send(request);
    let response = conn.read_response("the 408 answer to a publish whose body stalls");
    assert_error(&response, 408, "a publish body that stops half-way");
    conn.expect_closed("the 408 answer");
    assert_eq!(server.handle().stats().events_published, 0);
}

#[test]
fn quiet_streams_get_comment_heartbeats_that_dispatch_no_events() {
    let server = start(|config| config.heartbeat_ms = 200);
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["quiet"]);
    subscriber.wait_for_comments(3, "three heartbeat comments on a quiet stream");
    assert!(
        subscriber.pending_events().is_empty(),
        "heartbeats dispatched events: {:?}",
        subscriber.pending_events()
    );
    let body = subscriber.raw_after_retry_frame().to_vec();
    assert!(
        !body.is_empty() && body.chunks(2).all(|c| c == b":\n"),
        "a quiet stream must carry only `:` comment lines, got {:?}",
        String::from_utf8_lossy(&body)
    );
    // The stream is alive and in sync: the next thing dispatched is the next event.
    let id = publish(
        &server.handle(),
        &Event::new("quiet", "after the heartbeats"),
    );
    let event = subscriber.next_event("the event after the heartbeats");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("after the heartbeats", id.as_str())
    );
    // A loop stores its counters once per turn, at the turn's end: a scrape served by the
    // other loop may come before the turn that wrote the last heartbeat has ended.
    let received = subscriber.comments().len() as f64;
    wait_until(
        "herald_heartbeats_total counts every heartbeat received",
        || scrape(addr).value("herald_heartbeats_total") >= received,
    );
}

#[test]
fn a_stream_receiving_events_more_often_than_heartbeat_ms_gets_no_heartbeat() {
    let server = start(|config| config.heartbeat_ms = 1_000);
    let addr = server.local_addr();
    let handle = server.handle();
    let mut busy = subscribe(addr, &["busy"]);
    let mut quiet = subscribe(addr, &["quiet"]);
    // The publisher's pace (one event per 100 ms, for 3 s) is the client behaviour under
    // test: ten events per heartbeat interval.
    const EVENTS: usize = 30;
    for i in 0..EVENTS {
        publish(&handle, &Event::new("busy", format!("tick {i}")));
        std::thread::sleep(Duration::from_millis(100));
    }
    publish(&handle, &Event::new("busy", "end"));
    let events = busy.events_before("end");
    let expected: Vec<String> = (0..EVENTS).map(|i| format!("tick {i}")).collect();
    let got: Vec<String> = events.into_iter().map(|e| e.data).collect();
    assert_eq!(got, expected);
    assert!(
        busy.comments().is_empty(),
        "a stream with an event every 100 ms got heartbeats (heartbeat_ms 1000): {:?}",
        String::from_utf8_lossy(busy.raw_after_retry_frame())
    );
    // Meanwhile the quiet stream on the same server did get them.
    quiet.wait_for_comments(1, "a heartbeat on the quiet stream");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_timeout_ms_but_streams_are_not() {
    let server = start(|config| {
        config.idle_timeout_ms = 300;
        config.heartbeat_ms = 400;
        config.head_timeout_ms = 60_000;
    });
    let addr = server.local_addr();
    let mut stream = subscribe(addr, &["news"]);
    let mut conn = Conn::connect(addr);
    for round in 0..2 {
        conn.send(build_request("GET", "/healthz", &[], b""));
        let response = conn.read_response(&format!("keep-alive /healthz answer {round}"));
        assert_eq!((response.status, response.body_text()), (200, "ok\n"));
        assert_eq!(
            response.header("connection"),
            None,
            "{}",
            response.summary()
        );
    }
    conn.expect_closed("an idle keep-alive period longer than idle_timeout_ms");
    // The stream outlived several idle timeouts (two heartbeats are 800 ms) and still works.
    stream.wait_for_comments(2, "two heartbeats on the stream");
    let id = publish(&server.handle(), &Event::new("news", "still here"));
    let event = stream.next_event("an event after the idle timeouts");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("still here", id.as_str())
    );
}

#[test]
fn a_stream_past_max_stream_lifetime_ms_ends_with_a_retry_hint_and_eof() {
    const RETRY_MS: u32 = 1_500;
    let server = start(|config| {
        config.max_stream_lifetime_ms = 2_000;
        config.retry_ms = RETRY_MS;
    });
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["news"]);
    assert_eq!(subscriber.retry_ms(), Some(u64::from(RETRY_MS)));
    let id = publish(&server.handle(), &Event::new("news", "before the end"));
    let event = subscriber.next_event("an event before the stream's end");
    assert_eq!(event.last_event_id, id.as_str());
    let rest = subscriber.read_to_close("the end of the stream's lifetime");
    assert!(rest.is_empty(), "unexpected events: {rest:?}");
    let hint = subscriber.closing_retry_hint();
    assert!(
        hint >= u64::from(RETRY_MS),
        "the closing hint retry: {hint} is below retry_ms {RETRY_MS}"
    );
    assert_eq!(subscriber.retry_ms(), Some(hint));
    assert_eq!(subscriber.last_event_id(), id.as_str());
    // A new stream is accepted as usual.
    let mut again = subscribe(addr, &["news"]);
    let id = publish(&server.handle(), &Event::new("news", "after"));
    assert_eq!(
        again.next_event("an event on a new stream").last_event_id,
        id.as_str()
    );
}

#[test]
fn timer_settings_below_100_ms_are_refused_at_start() {
    type Setter = fn(&mut herald::Config, u64);
    let cases: [(&str, Setter); 3] = [
        ("head_timeout_ms", |c, ms| c.head_timeout_ms = ms),
        ("heartbeat_ms", |c, ms| c.heartbeat_ms = ms),
        ("idle_timeout_ms", |c, ms| c.idle_timeout_ms = ms),
    ];
    for (setting, set) in cases {
        let mut config = test_config();
        set(&mut config, 99);
        match herald::Server::start(config) {
            Ok(_) => panic!("{setting} = 99 was accepted; the minimum is 100 ms"),
            Err(error) => assert!(
                error.to_string().contains(setting),
                "the error for {setting} = 99 must name it, got {error}"
            ),
        }
        let server = start(|config| set(config, 100));
        assert_healthy(server.local_addr(), &format!("{setting} = 100"));
    }
}

/// A subscriber that stops taking bytes while its kernel still answers (on loopback nothing
/// can make a peer vanish without FIN or RST): its receive window closes, herald's bytes sit
/// unsent in its send buffer (far below `max_lag_bytes`, so no write ever blocks and the
/// slow-consumer rule never applies), and only `TCP_USER_TIMEOUT` can end it: the kernel
/// keeps probing the zero window and the peer keeps answering. Issue 10 item 15.
#[test]
fn issue_10_a_stream_whose_peer_stops_taking_bytes_is_closed_by_the_tcp_user_timeout() {
    let server = start(|config| {
        config.heartbeat_ms = 200;
        config.max_lag_bytes = 16 * 1024 * 1024;
    });
    let addr = server.local_addr();
    let handle = server.handle();
    let conn = Conn::connect_with(addr, None, Some(1024));
    // Held, never read again, until the end of the test.
    let _subscriber = Subscriber::open_on(conn, &events_target(&["frozen"], None), &[]);
    wait_until("the stream to be counted", || {
        handle.stats().subscribers == 1
    });
    // A few KiB: more than the client's receive buffer, far less than herald's send buffer.
    let data = "x".repeat(1024);
    for _ in 0..16 {
        publish(&handle, &Event::new("frozen", data.clone()));
    }
    let mut metrics = Conn::connect(addr);
    let page = scrape_until(&mut metrics, "the frozen stream to be closed", |page| {
        page.value("herald_subscribers") == 0.0
    });
    assert_eq!(
        page.value("herald_slow_consumer_closes_total"),
        0.0,
        "the stream must end by the TCP user timeout, not as a slow consumer"
    );
}
