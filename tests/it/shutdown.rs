#![allow(clippy::unwrap_used)]
//! Graceful shutdown of the real binary (issue 4 part 5): on SIGTERM or SIGINT every
//! subscriber gets a `retry: N` hint with `retry_ms <= N <= retry_ms +
//! shutdown_retry_window_ms` and then end of stream; a publish in flight is finished and
//! answered; new connections are refused; the process exits with status 0.
//!
//! Each server is a `herald serve` child found through its listening line and killed by
//! its PID if a test fails before it exits. Waiting for the exit is waiting for its stderr
//! to close, within [`EXIT_DEADLINE`].

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::*;

/// How long a stopping server may take to exit before the test fails: generous, it only
/// bounds a hang (the configured shutdown timeout is 5 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

const RETRY_MS: u64 = 1_000;
const WINDOW_MS: u64 = 2_000;

fn serve(threads: &str) -> HeraldProcess {
    HeraldProcess::spawn(&[
        "--threads",
        threads,
        "--retry-ms",
        &RETRY_MS.to_string(),
        "--shutdown-retry-window-ms",
        &WINDOW_MS.to_string(),
        "--shutdown-timeout-ms",
        "5000",
    ])
}

/// Reads `subscriber` to its end and checks it ended with a hint inside the window and
/// nothing else after what it had already received.
fn assert_told_to_come_back(subscriber: &mut Subscriber, which: &str) -> u64 {
    let events = subscriber.read_to_close(&format!("the shutdown hint and close of {which}"));
    assert!(events.is_empty(), "{which}: unexpected events {events:?}");
    let hint = subscriber.closing_retry_hint();
    assert!(
        (RETRY_MS..=RETRY_MS + WINDOW_MS).contains(&hint),
        "{which}: shutdown hint retry: {hint} is outside [{RETRY_MS}, {}]",
        RETRY_MS + WINDOW_MS
    );
    assert_eq!(subscriber.retry_ms(), Some(hint), "{which}");
    hint
}

/// Asserts nothing on stderr was logged at `error` (expected closes are not errors).
fn assert_no_errors_logged(herald: &HeraldProcess) {
    let errors: Vec<&String> = herald
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("level=error"))
        .collect();
    assert!(errors.is_empty(), "errors logged: {errors:?}");
}

fn assert_connection_refused(addr: SocketAddr, when: &str) {
    match TcpStream::connect_timeout(&addr, DEADLINE) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("{when}: connecting failed with {e}, expected a refusal"),
        Ok(_) => panic!("{when}: a new connection to {addr} was accepted"),
    }
}

#[test]
fn sigterm_tells_every_subscriber_to_come_back_within_the_window_then_exits_0() {
    let mut herald = serve("2");
    let addr = herald.addr;
    let mut subscribers: Vec<Subscriber> = (0..20).map(|_| subscribe(addr, &["news"])).collect();
    let id = publish_form(addr, &[("topic", "news"), ("data", "before")]);
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let event = subscriber.next_event(&format!("the event on subscriber {i}"));
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            ("before", id.as_str())
        );
    }
    herald.signal("TERM");
    let hints: Vec<u64> = subscribers
        .iter_mut()
        .enumerate()
        .map(|(i, s)| assert_told_to_come_back(s, &format!("subscriber {i}")))
        .collect();
    let status = herald.wait_exit(EXIT_DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr: {:?}",
        herald.stderr_lines()
    );
    assert_connection_refused(addr, "after the exit");
    assert_no_errors_logged(&herald);
    // The hints are spread, not one value for everybody (20 draws from 2,001 values).
    let first = hints[0];
    assert!(
        hints.iter().any(|&h| h != first),
        "every subscriber got retry: {first}; the hints must be spread over the window"
    );
}

#[test]
fn sigint_is_a_graceful_shutdown_too() {
    let mut herald = serve("2");
    let mut subscriber = subscribe(herald.addr, &["news"]);
    herald.signal("INT");
    assert_told_to_come_back(&mut subscriber, "the subscriber");
    let status = herald.wait_exit(EXIT_DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT; stderr: {:?}",
        herald.stderr_lines()
    );
}

/// One event loop, so the subscriber's hint shows that the loop holding the publish has
/// begun draining before the rest of the publish body is sent.
#[test]
fn a_publish_in_flight_at_sigterm_is_finished_and_new_connections_are_refused() {
    let mut herald = serve("1");
    let addr = herald.addr;
    let mut subscriber = subscribe(addr, &["news"]);
    let body = form(&[("topic", "news"), ("data", "in flight")]);
    let request = post_request(
        "/publish",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
        &[],
    );
    let (first_half, second_half) = request.split_at(request.len() - body.len() / 2);
    let mut publisher = Conn::connect(addr);
    publisher.send(first_half);
    // `connect` returns once the kernel has the connection in the listen backlog, not once
    // herald accepted it, and a drain closes the listener, resetting whatever is still in
    // the backlog. A request answered on a later connection shows the one loop has accepted
    // the publisher (the backlog is first in, first out), so the publish is in flight at
    // the signal even when herald gets no CPU between `send` and `kill`.
    assert_healthy(addr, "the publisher connected");
    herald.signal("TERM");
    assert_told_to_come_back(&mut subscriber, "the subscriber");
    assert_connection_refused(addr, "while draining");
    publisher.send(second_half);
    let response = publisher.read_response("the answer to the publish in flight");
    assert_eq!(response.status, 200, "{}", response.summary());
    let id = id_from_text_answer(response.body_text());
    split_id(&id);
    publisher.expect_closed("the last answer while draining");
    let status = herald.wait_exit(EXIT_DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr: {:?}",
        herald.stderr_lines()
    );
}

/// Streams that never read (their socket buffers full, the parting hint unwritable) do not
/// hold a graceful shutdown past `--shutdown-timeout-ms`: the drain deadline runs from the
/// signal for every loop, and the server stops waiting for its loops at that deadline plus
/// a short grace whatever they are doing. The wait is a deadline, not a timing check: the
/// exit must come before the timeout plus a wide margin.
#[test]
fn sigterm_exits_within_the_shutdown_timeout_though_streams_never_read() {
    let mut herald = HeraldProcess::spawn(&[
        "--threads",
        "2",
        "--shutdown-timeout-ms",
        "1000",
        "--max-lag-bytes",
        "67108864",
        "--max-publish-bytes",
        "1048576",
    ]);
    let addr = herald.addr;
    // Subscribers that read their opening frame and then nothing more.
    let stalled: Vec<Subscriber> = (0..40).map(|_| subscribe(addr, &["flood"])).collect();
    let data = "x".repeat(512 * 1024);
    for _ in 0..24 {
        publish_form(addr, &[("topic", "flood"), ("data", &data)]);
    }
    herald.signal("TERM");
    let status = herald.wait_exit(Duration::from_millis(1_000) + EXIT_DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr: {:?}",
        herald.stderr_lines()
    );
    drop(stalled);
}
