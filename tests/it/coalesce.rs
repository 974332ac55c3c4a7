#![allow(clippy::unwrap_used)]
//! `--coalesce-ms`: a loop holds a stream's writes for the window after its topic moves, so
//! the events published meanwhile go out in one write, each still its own SSE event, in
//! order, exactly once; and without the window (the default) every event goes out at once.

use std::time::{Duration, Instant};

use crate::common::*;
use herald::{Event, EventId};

/// The window of these tests: long enough that five publishes through the library fit in
/// it on a loaded machine (the test checks they did before asserting the single write).
const WINDOW: Duration = Duration::from_millis(1_000);

fn frames(published: &[(EventId, String)]) -> Vec<u8> {
    published
        .iter()
        .flat_map(|(id, data)| format!("id: {id}\ndata: {data}\n\n").into_bytes())
        .collect()
}

#[test]
fn events_of_one_window_go_out_in_one_write_intact_and_in_order() {
    let server = start(|config| config.coalesce_ms = WINDOW.as_millis() as u64);
    let addr = server.local_addr();
    let handle = server.handle();
    // Subscribers on both loops, one also on a second topic that every other event names.
    let subscribers: Vec<Subscriber> = (0..8)
        .map(|i| match i % 2 {
            0 => subscribe(addr, &["held"]),
            _ => subscribe(addr, &["held", "other"]),
        })
        .collect();
    wait_until("8 subscribers", || handle.stats().subscribers == 8);

    let started = Instant::now();
    let published: Vec<(EventId, String)> = (0..5)
        .map(|i| {
            let data = format!("event {i}");
            let event = match i % 2 {
                0 => Event::new("held", data.clone()).and_topic("other"),
                _ => Event::new("held", data.clone()),
            };
            // Apart enough that a loop without the hold writes each on its own.
            std::thread::sleep(Duration::from_millis(20));
            (publish(&handle, &event), data)
        })
        .collect();
    let within_window = started.elapsed() < WINDOW / 2;
    let expected = frames(&published);

    for subscriber in subscribers {
        let mut conn = subscriber.into_conn();
        let first = conn.read_some("the held events").unwrap();
        if within_window {
            // All five were published before the first stream's hold ended: one write.
            assert_eq!(
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(&expected),
                "the first write carries the window's events, each its own SSE event"
            );
        } else {
            let mut received = first;
            while received.len() < expected.len() {
                received.extend(conn.read_some("the rest of the events").unwrap());
            }
            assert_eq!(
                String::from_utf8_lossy(&received),
                String::from_utf8_lossy(&expected)
            );
        }
    }
}

/// The hold is per write, not a batching of the stream: an event published after a write
/// went out starts a new window and arrives on its own, after the earlier ones.
#[test]
fn an_event_after_the_window_arrives_in_a_later_write() {
    let server = start(|config| {
        config.threads = 1;
        config.coalesce_ms = 50;
    });
    let addr = server.local_addr();
    let handle = server.handle();
    let mut subscriber = subscribe(addr, &["late"]);
    wait_until("the subscriber", || handle.stats().subscribers == 1);
    let first = publish(&handle, &Event::new("late", "first"));
    let event = subscriber.next_event("the first event");
    assert_eq!(
        (event.last_event_id.as_str(), event.data.as_str()),
        (first.to_string().as_str(), "first")
    );
    let second = publish(&handle, &Event::new("late", "second"));
    let event = subscriber.next_event("the second event");
    assert_eq!(
        (event.last_event_id.as_str(), event.data.as_str()),
        (second.to_string().as_str(), "second")
    );
}
