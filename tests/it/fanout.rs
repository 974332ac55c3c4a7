#![allow(clippy::unwrap_used)]
//! Fan-out at scale: 1,000 subscribers on a two-loop server each receive 200 events exactly
//! once and in order. Sockets are read by a few threads; the machine has two cores and a
//! 20,000 open-file limit (this test holds about 2,000 descriptors: both ends of each
//! connection live in this process).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use herald::Event;

const SUBSCRIBERS: usize = 1_000;
const EVENTS: usize = 200;
const READER_THREADS: usize = 4;

#[test]
fn thousand_subscribers_get_two_hundred_events_exactly_once_in_order() {
    let server = start(|config| config.threads = 2);
    let addr = server.local_addr();
    let handle = server.handle();

    // Every fourth subscriber also names a second topic that some events are published to as
    // well: those must still arrive once.
    let subscribers: Vec<Subscriber> = (0..SUBSCRIBERS)
        .map(|i| {
            if i % 4 == 0 {
                subscribe(addr, &["fan", "also"])
            } else {
                subscribe(addr, &["fan"])
            }
        })
        .collect();
    wait_until("stats().subscribers to reach 1000", || {
        handle.stats().subscribers == SUBSCRIBERS as u64
    });

    let mut expected = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let data = format!("event {i} of {EVENTS}");
        let event = if i % 3 == 0 {
            Event::new("fan", data.clone()).and_topic("also")
        } else {
            Event::new("fan", data.clone())
        };
        expected.push((publish(&handle, &event).to_string(), data));
    }
    publish(&handle, &Event::new("also", "not for fan-only subscribers"));
    let end = publish(&handle, &Event::new("fan", "end")).to_string();

    let checked = AtomicUsize::new(0);
    let mut chunks: Vec<Vec<(usize, Subscriber)>> =
        (0..READER_THREADS).map(|_| Vec::new()).collect();
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        chunks[i % READER_THREADS].push((i, subscriber));
    }
    std::thread::scope(|scope| {
        for chunk in chunks {
            let expected = &expected;
            let checked = &checked;
            let end = &end;
            scope.spawn(move || {
                for (i, mut subscriber) in chunk {
                    let mut got: Vec<(String, String)> = subscriber
                        .events_before("end")
                        .into_iter()
                        .map(|e| (e.last_event_id, e.data))
                        .collect();
                    assert_eq!(subscriber.last_event_id(), end.as_str(), "subscriber {i}");
                    if i % 4 == 0 {
                        let extra = got.pop();
                        assert_eq!(
                            extra.map(|(_, data)| data).as_deref(),
                            Some("not for fan-only subscribers"),
                            "subscriber {i} of fan+also misses the also-only event"
                        );
                    }
                    assert_eq!(got.len(), EVENTS, "subscriber {i}: number of events");
                    if got != *expected {
                        let first_bad = got.iter().zip(expected.iter()).position(|(g, e)| g != e);
                        panic!(
                            "subscriber {i}: events differ from the published sequence, first at index {first_bad:?}: got {:?}, expected {:?}",
                            first_bad.map(|k| &got[k]),
                            first_bad.map(|k| &expected[k])
                        );
                    }
                    checked.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(checked.load(Ordering::Relaxed), SUBSCRIBERS);
    assert_eq!(handle.stats().events_published, EVENTS as u64 + 2);
    let deliveries = (SUBSCRIBERS * (EVENTS + 1) + SUBSCRIBERS / 4) as u64;
    wait_until("stats().deliveries to count every delivery", || {
        handle.stats().deliveries == deliveries
    });
}

#[test]
fn subscribers_on_both_loops_get_http_published_events() {
    // Many connections spread over both loops (they share one listener); publishes arrive over
    // HTTP on whichever loop accepts them.
    let server = start(|config| config.threads = 2);
    let addr = server.local_addr();
    let mut subscribers: Vec<Subscriber> =
        (0..64).map(|_| subscribe(addr, &["http-fan"])).collect();
    let ids: Vec<String> = (0..20)
        .map(|i| publish_form(addr, &[("topic", "http-fan"), ("data", &i.to_string())]))
        .collect();
    for (n, subscriber) in subscribers.iter_mut().enumerate() {
        let got: Vec<(String, String)> = subscriber
            .events(20)
            .into_iter()
            .map(|e| (e.last_event_id, e.data))
            .collect();
        let expected: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i.to_string()))
            .collect();
        assert_eq!(got, expected, "subscriber {n}");
    }
}

/// A loop that reads a publish writes the other loop's few streams itself while that one
/// sleeps (`event_loop/thread.rs`): every stream on either loop still gets its topics'
/// events exactly once and in order, including a stream of two topics, and the metric
/// shows the help happened.
#[test]
fn a_loop_writes_a_sleeping_loops_share_of_what_it_published() {
    const TOPICS: usize = 6;
    const ROUNDS: usize = 40;
    let server = start(|config| config.threads = 2);
    let addr = server.local_addr();
    let handle = server.handle();
    let names: Vec<String> = (0..TOPICS).map(|t| format!("help-{t}")).collect();
    // Four streams per topic, spread over both loops by the shared listener, and two that
    // name the first two topics.
    let mut subscribers: Vec<(Vec<usize>, Subscriber)> = (0..TOPICS * 4)
        .map(|i| {
            (
                vec![i % TOPICS],
                subscribe(addr, &[names[i % TOPICS].as_str()]),
            )
        })
        .chain((0..2).map(|_| (vec![0, 1], subscribe(addr, &[&names[0], &names[1]]))))
        .collect();
    wait_until("the subscribers", || {
        handle.stats().subscribers == subscribers.len() as u64
    });
    let mut published: Vec<(usize, String, String)> = Vec::new();
    let mut publisher = Conn::connect(addr);
    for round in 0..ROUNDS {
        for (topic, name) in names.iter().enumerate() {
            let data = format!("{round}/{topic}");
            publisher.send(format!(
                "POST /publish?topic={name} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{data}",
                data.len()
            ));
            let response = publisher.read_response("a publish answer");
            assert_eq!(response.status, 200, "{}", response.summary());
            published.push((topic, id_from_text_answer(response.body_text()), data));
        }
        // Long enough for the loop without the publisher to go back to sleep.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for (n, (topics, subscriber)) in subscribers.iter_mut().enumerate() {
        let expected: Vec<(String, String)> = published
            .iter()
            .filter(|(topic, _, _)| topics.contains(topic))
            .map(|(_, id, data)| (id.clone(), data.clone()))
            .collect();
        let got: Vec<(String, String)> = subscriber
            .events(expected.len())
            .into_iter()
            .map(|e| (e.last_event_id, e.data))
            .collect();
        assert_eq!(got, expected, "subscriber {n} of {topics:?}");
    }
    let helps = scrape(addr).value("herald_loop_helps_total");
    assert!(
        helps > 0.0,
        "no loop wrote for a sleeping one in {} publishes",
        published.len()
    );
}

#[test]
fn burst_longer_than_the_history_reaches_a_subscriber_within_its_lag_budget() {
    // Fifty small events (a few KB, far below max_lag_bytes) published in a burst to a topic
    // whose history holds five. A subscriber that is reading is not slow: it must get all of
    // them, in order, without being disconnected.
    let server = start(|config| config.history_events = 5);
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["burst"]);
    let expected: Vec<(String, String)> = (0..50)
        .map(|i| {
            let data = format!("burst {i}");
            (
                publish(&handle, &Event::new("burst", data.clone())).to_string(),
                data,
            )
        })
        .collect();
    publish(&handle, &Event::new("burst", "end"));
    let got: Vec<(String, String)> = subscriber
        .events_before("end")
        .into_iter()
        .map(|e| (e.last_event_id, e.data))
        .collect();
    assert_eq!(got, expected);
}
