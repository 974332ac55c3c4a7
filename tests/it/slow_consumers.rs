#![allow(clippy::unwrap_used)]
//! Slow consumers against the real binary (issue 4 part 3): 100 subscribers that never read
//! and one that reads everything, while 50 MiB is published over keep-alive HTTP. The
//! reader receives every event in order; each non-reader is closed once it is more than
//! `--max-lag-bytes` behind (`herald_slow_consumer_closes_total`); and the server's peak
//! resident memory (`VmHWM` in /proc/PID/status) grows, from its `VmRSS` once everybody is
//! connected, by no more than the history budget (`--history-total-bytes` per event loop,
//! each loop keeps its own history) plus [`ALLOCATOR_MARGIN`].
//!
//! The publisher stays at most [`READER_WINDOW`] events ahead of the reader (it waits for the
//! reader's progress, never sleeps): the reader is the well-behaved client whose lag must
//! stay under the limit; the others are the slow ones.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::common::*;

const MIB: u64 = 1024 * 1024;

const THREADS: u64 = 2;
const HISTORY_BYTES: u64 = 4 * MIB;
const HISTORY_TOTAL_BYTES: u64 = 8 * MIB;
const MAX_LAG_BYTES: u64 = MIB;
const MAX_PUBLISH_BYTES: u64 = 64 * 1024;

/// 800 events of 64 KiB: 50 MiB.
const EVENTS: usize = 800;
const EVENT_BYTES: usize = MAX_PUBLISH_BYTES as usize;
const SLOW_SUBSCRIBERS: usize = 100;

/// Events the publisher may be ahead of the reader: 512 KiB, half of `--max-lag-bytes`.
const READER_WINDOW: usize = (MAX_LAG_BYTES as usize / 2) / EVENT_BYTES;

/// Resident memory the bound allows beyond the history budget: allocator slack (arenas per
/// thread, freed pages not yet returned), head buffers, the inbox in flight and one
/// connection's write state per subscriber. The kernel's socket buffers are not resident
/// memory of the process, so the margin does not depend on them. Kept well under the 50 MiB
/// published, so a server that held on to what the slow subscribers did not read fails.
const ALLOCATOR_MARGIN: u64 = 16 * MIB;

fn event_data(index: usize) -> String {
    let mut data = format!("event {index:06} ");
    data.extend(std::iter::repeat_n('x', EVENT_BYTES - data.len()));
    data
}

/// Publishes `data` to `topic` on a keep-alive connection, retrying `503` (busy) answers;
/// returns the id. Reconnects when the server closes the connection after an answer.
fn publish_keep_alive(
    addr: std::net::SocketAddr,
    conn: &mut Conn,
    topic: &str,
    data: &str,
) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        conn.send(post_request(
            &format!("/publish?topic={topic}"),
            Some("text/plain"),
            data.as_bytes(),
            &[],
        ));
        let response = conn.read_response("a publish answer");
        if response.header("connection") == Some("close") {
            *conn = Conn::connect(addr);
        }
        match response.status {
            200 => return id_from_text_answer(response.body_text()),
            503 if Instant::now() < deadline => std::thread::yield_now(),
            _ => panic!("publish failed: {}", response.summary()),
        }
    }
}

/// Reads `EVENTS` events on its own thread, reporting each one's index as it arrives; hands
/// back the events and the still open stream.
fn spawn_reader(
    mut reader: Subscriber,
    progress: mpsc::Sender<usize>,
) -> JoinHandle<(Vec<SseEvent>, Subscriber)> {
    std::thread::spawn(move || {
        let mut events = Vec::with_capacity(EVENTS);
        for index in 0..EVENTS {
            events.push(reader.next_event(&format!("event {index} on the reading subscriber")));
            let _ = progress.send(index);
        }
        (events, reader)
    })
}

#[test]
fn slow_subscribers_are_closed_while_a_reader_gets_everything_and_memory_stays_bounded() {
    let mut herald = HeraldProcess::spawn(&[
        "--threads",
        &THREADS.to_string(),
        "--history-bytes",
        &HISTORY_BYTES.to_string(),
        "--history-total-bytes",
        &HISTORY_TOTAL_BYTES.to_string(),
        "--max-lag-bytes",
        &MAX_LAG_BYTES.to_string(),
        "--max-publish-bytes",
        &MAX_PUBLISH_BYTES.to_string(),
    ]);
    let addr = herald.addr;
    let target = events_target(&["firehose"], None);
    // Subscribers that never read a byte, with a small receive buffer so they fill up fast.
    let slow: Vec<Conn> = (0..SLOW_SUBSCRIBERS)
        .map(|_| {
            let mut conn = Conn::connect_with(addr, None, Some(4 * 1024));
            conn.send(build_request("GET", &target, &[], b""));
            conn
        })
        .collect();
    let reader = Subscriber::open(addr, &target, &[]);
    let mut metrics_conn = Conn::connect(addr);
    scrape_until(
        &mut metrics_conn,
        "every subscriber to be registered",
        |page| page.get("herald_subscribers") == Some((SLOW_SUBSCRIBERS + 1) as f64),
    );
    let baseline_kib = herald.status_kib("VmRSS");

    let (progress_tx, progress) = mpsc::channel();
    let reader = spawn_reader(reader, progress_tx);
    let mut publisher = Conn::connect(addr);
    let mut ids = Vec::with_capacity(EVENTS);
    let mut received = 0;
    for index in 0..EVENTS {
        while index >= received + READER_WINDOW {
            match progress.recv_timeout(DEADLINE) {
                Ok(seen) => received = seen + 1,
                Err(_) => panic!(
                    "the reader stalled at {received} events (published {index}); the server \
                     may have closed it: it must receive every event"
                ),
            }
        }
        ids.push(publish_keep_alive(
            addr,
            &mut publisher,
            "firehose",
            &event_data(index),
        ));
    }
    let (events, _reader) = reader
        .join()
        .unwrap_or_else(|_| panic!("the reading subscriber failed (see its panic above)"));
    let peak_kib = herald.status_kib("VmHWM");
    let rss_kib = herald.status_kib("VmRSS");

    for (index, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(&event.last_event_id, id, "event {index}: id");
        assert!(
            event.data == event_data(index),
            "event {index}: wrong data (starts {:?}, {} bytes)",
            &event.data[..event.data.len().min(20)],
            event.data.len()
        );
    }
    assert_eq!(events.len(), EVENTS);

    let page = scrape_until(
        &mut metrics_conn,
        "the slow subscribers to be closed",
        |page| page.get("herald_subscribers") == Some(1.0),
    );
    let closes = page.value("herald_slow_consumer_closes_total");
    assert!(
        closes >= SLOW_SUBSCRIBERS as f64,
        "herald_slow_consumer_closes_total is {closes}; all {SLOW_SUBSCRIBERS} non-reading subscribers must have been closed as slow"
    );
    assert_eq!(page.value("herald_events_published_total"), EVENTS as f64);

    let budget_kib = (THREADS * HISTORY_TOTAL_BYTES + ALLOCATOR_MARGIN) / 1024;
    let growth_kib = peak_kib.saturating_sub(baseline_kib);
    eprintln!(
        "herald resident memory: {baseline_kib} KiB with everybody connected, peak {peak_kib} KiB, \
         now {rss_kib} KiB; growth {growth_kib} KiB, bound {budget_kib} KiB \
         ({THREADS} loops x {HISTORY_TOTAL_BYTES} B history + {ALLOCATOR_MARGIN} B margin) \
         for {} MiB published",
        (EVENTS * EVENT_BYTES) as u64 / MIB
    );
    assert!(
        growth_kib <= budget_kib,
        "peak resident memory grew by {growth_kib} KiB (from {baseline_kib} to {peak_kib} KiB); \
         the bound is {budget_kib} KiB = {THREADS} event loops x history_total_bytes {HISTORY_TOTAL_BYTES} \
         + margin {ALLOCATOR_MARGIN}"
    );
    // Closing slow subscribers (and their resets) is ordinary: nothing is logged as an error,
    // and the server still stops cleanly.
    herald.signal("TERM");
    let status = herald.wait_exit(DEADLINE);
    let errors: Vec<&String> = herald
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("level=error"))
        .collect();
    assert!(errors.is_empty(), "errors logged: {errors:?}");
    assert_eq!(
        status.code(),
        Some(0),
        "stderr: {:?}",
        herald.stderr_lines()
    );
    drop(slow);
}

/// Events of 1 MiB published at a subscriber that never reads: far more than loopback's
/// socket buffers hold, far less than its lag budget.
const STALL_EVENTS: usize = 24;

/// A subscriber that stops reading is closed as a slow consumer once no byte has moved
/// for two heartbeat intervals, even when no further event arrives to trigger the lag
/// check (its lag budget is set far above what it holds, so only the stall can close it).
#[test]
fn a_stalled_stream_is_closed_without_further_events() {
    let server = start(|config| {
        config.heartbeat_ms = 200;
        config.max_lag_bytes = 256 * 1024 * 1024;
        config.max_publish_bytes = 2 * 1024 * 1024;
        config.history_bytes = 256 * 1024 * 1024;
        config.history_total_bytes = 512 * 1024 * 1024;
    });
    let addr = server.local_addr();
    let stalled = subscribe(addr, &["big"]);
    let data = "x".repeat(1024 * 1024);
    for _ in 0..STALL_EVENTS {
        publish(&server.handle(), &herald::Event::new("big", data.clone()));
    }
    wait_until("the stalled stream is closed as a slow consumer", || {
        scrape(addr).value("herald_slow_consumer_closes_total") == 1.0
    });
    assert_eq!(scrape(addr).value("herald_subscribers"), 0.0);
    drop(stalled);
}
