#![allow(clippy::unwrap_used)]
//! `--coalesce-ms`: after a turn that wrote streams a loop rests for the window, so the
//! events published meanwhile go out in one write per stream, each still its own SSE
//! event, in order, exactly once; an idle loop still writes the first event at once.
//! Writes are counted by `herald_stream_writes_total`.

use std::time::{Duration, Instant};

use crate::common::*;
use herald::Event;

/// The rest of these tests: long enough that four publishes 20 ms apart fit in it on a
/// loaded machine (the test checks they did before asserting on the writes).
const WINDOW: Duration = Duration::from_millis(1_000);
const SUBSCRIBERS: usize = 8;
const EVENTS: usize = 5;

/// Publishes `EVENTS` events 20 ms apart (the first once every stream is idle) and returns
/// how many stream writes carried them, and whether the last four were published within
/// half the window of the first.
fn writes_for_events_20_ms_apart(coalesce_ms: u64) -> (u64, bool) {
    let server = start(|config| config.coalesce_ms = coalesce_ms);
    let addr = server.local_addr();
    let handle = server.handle();
    // Subscribers on both loops, half also on a second topic that every other event names.
    let mut subscribers: Vec<Subscriber> = (0..SUBSCRIBERS)
        .map(|i| match i % 2 {
            0 => subscribe(addr, &["held"]),
            _ => subscribe(addr, &["held", "other"]),
        })
        .collect();
    wait_until("the subscribers", || {
        handle.stats().subscribers == SUBSCRIBERS as u64
    });
    // Opening the streams wrote them, so the loops may be resting: let that rest end.
    std::thread::sleep(Duration::from_millis(coalesce_ms) * 6 / 5);
    let mut metrics = Conn::connect(addr);
    let before = scrape_on(&mut metrics);

    let mut published = Vec::new();
    let mut started = Instant::now();
    for i in 0..EVENTS {
        let data = format!("event {i}");
        let event = match i % 2 {
            0 => Event::new("held", data.clone()).and_topic("other"),
            _ => Event::new("held", data.clone()),
        };
        published.push((publish(&handle, &event).to_string(), data));
        if i == 0 {
            started = Instant::now(); // The rest begins about when the first is written.
        }
        // Apart enough that a loop without the rest writes each on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    let within_rest = started.elapsed() < Duration::from_millis(coalesce_ms) / 2;

    for subscriber in &mut subscribers {
        let received: Vec<(String, String)> = subscriber
            .events(EVENTS)
            .into_iter()
            .map(|event| (event.last_event_id, event.data))
            .collect();
        assert_eq!(received, published, "every event once, in order, unchanged");
    }
    let deliveries = (SUBSCRIBERS * EVENTS) as f64;
    let after = scrape_until(&mut metrics, "the deliveries counted", |page| {
        page.value("herald_deliveries_total") - before.value("herald_deliveries_total")
            >= deliveries
    });
    let writes =
        after.value("herald_stream_writes_total") - before.value("herald_stream_writes_total");
    (writes as u64, within_rest)
}

#[test]
fn events_published_during_the_rest_go_out_in_one_write_per_stream() {
    let (writes, within_rest) = writes_for_events_20_ms_apart(WINDOW.as_millis() as u64);
    if within_rest {
        // Each idle stream wrote the first event at once; the other four arrived while its
        // loop rested and went out together.
        assert_eq!(writes, 2 * SUBSCRIBERS as u64, "writes for {EVENTS} events");
    }
    assert!(writes <= (SUBSCRIBERS * EVENTS) as u64);
}

/// The same publishes without the rest take one write per delivery: what the test above
/// counts is the rest's doing.
#[test]
fn without_the_rest_each_event_is_its_own_write() {
    let (writes, _) = writes_for_events_20_ms_apart(0);
    assert_eq!(writes, (SUBSCRIBERS * EVENTS) as u64);
}

/// A loop that wrote nothing rests not at all: with a long window, an event published to
/// an idle loop arrives at once, and so does the next one after the rest.
#[test]
fn an_idle_loop_writes_at_once_and_a_later_event_after_the_rest() {
    let server = start(|config| {
        config.threads = 1;
        config.coalesce_ms = 50;
    });
    let addr = server.local_addr();
    let handle = server.handle();
    let mut subscriber = subscribe(addr, &["late"]);
    wait_until("the subscriber", || handle.stats().subscribers == 1);
    for data in ["first", "second"] {
        let id = publish(&handle, &Event::new("late", data)).to_string();
        let event = subscriber.next_event("an event");
        assert_eq!(
            (event.last_event_id.as_str(), event.data.as_str()),
            (id.as_str(), data)
        );
    }
}
