#![allow(clippy::unwrap_used)]
//! Batch publish (issue 13): one `POST /publish` carrying many events as NDJSON or a JSON
//! array, over real sockets.
//!
//! - Both formats reach subscribers in body order, answered with `{"ids":[...]}` in the same
//!   order; the ids are consecutive; a single JSON object keeps its `{"id":...}` answer.
//! - One bad event refuses the whole batch with a reason naming its line or index, and no
//!   subscriber receives any event of it (a subscriber sees the next good publish first).
//! - Limits: more than `max_batch_events` events is `413`, a body over `max_publish_bytes`
//!   is `413`; an empty batch and query fields are `400`.
//! - Two clients publishing batches at once: each batch arrives contiguous, on the embedded
//!   bus and on the Redis bus across two nodes sharing a real `redis-server`.
//! - `Handle::publish_batch`: ids in order, all or nothing, the same limit; on the Redis bus
//!   a batch with more data than the writer's queue holds is refused whole with `Busy`.

use std::net::SocketAddr;
use std::thread;

use crate::common::*;
use herald::{BusKind, Event, PublishError, Server};
use testkit::redis::RedisServer;

const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json";

/// The ids of a batch answer, which must be `application/json` `{"ids":[...]}`.
fn batch_ids(response: &Response, case: &str) -> Vec<String> {
    assert_eq!(response.status, 200, "{case}: {}", response.summary());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{case}"
    );
    let value: serde_json::Value = serde_json::from_str(response.body_text()).unwrap();
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 1, "{case}: {value}");
    object["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: no ids array in {value}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

/// Publishes a batch, retrying while the server answers `503` (inboxes or queue full).
fn publish_batch(addr: SocketAddr, content_type: &str, body: &str, case: &str) -> Vec<String> {
    loop {
        let response = post(addr, "/publish", Some(content_type), body.as_bytes());
        if response.status != 503 {
            return batch_ids(&response, case);
        }
    }
}

/// A refusal's one-line reason.
fn refusal(addr: SocketAddr, content_type: &str, body: &str, status: u16, case: &str) -> String {
    let response = post(addr, "/publish", Some(content_type), body.as_bytes());
    assert_error(&response, status, case);
    response.body_text().trim_end().to_owned()
}

fn seen(event: &SseEvent) -> (String, String, String) {
    (
        event.event_type.clone(),
        event.data.clone(),
        event.last_event_id.clone(),
    )
}

#[test]
fn ndjson_and_array_batches_reach_subscribers_in_order_with_their_ids() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut both = subscribe(addr, &["a", "b"]);
    let mut only_b = subscribe(addr, &["b"]);

    let body = "{\"topic\":\"a\",\"data\":\"one\"}\r\n\n   \n\
                {\"topic\":[\"a\",\"b\"],\"event\":\"note\",\"data\":{\"k\":[1,2]}}\n\
                {\"topic\":\"b\",\"data\":\"three\",\"retry\":2500}\n";
    let ids = publish_batch(addr, NDJSON, body, "NDJSON batch");
    assert_eq!(ids.len(), 3);
    let (epoch, first) = split_id(&ids[0]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(split_id(id), (epoch, first + i as u64), "consecutive ids");
    }
    let expected = [
        ("message", "one", &ids[0]),
        ("note", r#"{"k":[1,2]}"#, &ids[1]),
        ("message", "three", &ids[2]),
    ]
    .map(|(kind, data, id)| (kind.to_owned(), data.to_owned(), id.clone()));
    let got: Vec<_> = both.events(3).iter().map(seen).collect();
    assert_eq!(got, expected);
    let got: Vec<_> = only_b.events(2).iter().map(seen).collect();
    assert_eq!(got, expected[1..]);
    assert_eq!(only_b.retry_ms(), Some(2500));

    let array = r#" [{"topic":"b","data":"four"}, {"topic":"a","event":"e","data":5}] "#;
    let ids = publish_batch(addr, JSON, array, "JSON array batch");
    assert_eq!(ids.len(), 2);
    assert_eq!(split_id(&ids[1]).1, split_id(&ids[0]).1 + 1);
    let got: Vec<_> = both.events(2).iter().map(seen).collect();
    assert_eq!(
        got,
        [
            ("message".into(), "four".into(), ids[0].clone()),
            ("e".into(), "5".into(), ids[1].clone()),
        ]
    );

    // A one-element array is a batch; a single object keeps its single-event answer.
    let ids = publish_batch(
        addr,
        JSON,
        r#"[{"topic":"a","data":"x"}]"#,
        "one-element array",
    );
    assert_eq!(ids.len(), 1);
    let single = post(
        addr,
        "/publish",
        Some(JSON),
        br#"{"topic":"a","data":"single"}"#,
    );
    assert_eq!(single.status, 200, "{}", single.summary());
    let id = id_from_json_answer(single.body_text());
    assert_eq!(split_id(&id).1, split_id(&ids[0]).1 + 1);
}

#[test]
fn one_bad_event_refuses_the_whole_batch() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscriber = subscribe(addr, &["t"]);
    let good = r#"{"topic":"t","data":"must not arrive"}"#;
    let cases: [(&str, String, u16, &str); 8] = [
        (
            NDJSON,
            format!("{good}\n{good}\n{{\"topic\":\"t\"}}\n{good}\n"),
            400,
            "line 3: missing data",
        ),
        (
            NDJSON,
            format!("{good}\n\n{{\"topic\":\"t t\",\"data\":1}}\n"),
            400,
            "line 3: invalid topic name (1..=max_topic_bytes of A-Z a-z 0-9 _ - . : / @ ~)",
        ),
        (
            NDJSON,
            format!("{good}\n{{\"topic\":\"t\",\"event\":\"gap\",\"data\":1}}"),
            400,
            "line 2: event name is reserved for gap notices (gap_event)",
        ),
        (
            NDJSON,
            format!("{good}\n{{\"topic\":\"t\",\"data\":1"),
            400,
            "line 2: body is not valid JSON",
        ),
        (
            JSON,
            format!("[{good},{{\"topic\":\"t\",\"event\":1,\"data\":1}}]"),
            400,
            "index 1: JSON event must be a string",
        ),
        (
            JSON,
            // Each escaped line break becomes a `data:` line: 400 KB of body (under
            // max_publish_bytes), 1.4 MB of frame (over max_lag_bytes).
            format!(
                "[{good},{good},{{\"topic\":\"t\",\"data\":\"{}\"}}]",
                "\\n".repeat(200_000)
            ),
            413,
            "index 2: encoded event exceeds max_lag_bytes",
        ),
        (JSON, format!("[{good},"), 400, "body is not valid JSON"),
        (
            NDJSON,
            good.to_owned(),
            400,
            "a batch takes topic, event and retry from each event, not the query",
        ),
    ];
    for (i, (content_type, body, status, reason)) in cases.iter().enumerate() {
        let target = if i == cases.len() - 1 {
            "/publish?topic=t"
        } else {
            "/publish"
        };
        let response = post(addr, target, Some(content_type), body.as_bytes());
        assert_error(&response, *status, reason);
        assert_eq!(response.body_text().trim_end(), *reason);
    }
    let after = publish_form(addr, &[("topic", "t"), ("data", "after")]);
    assert_eq!(
        subscriber.events_before("after"),
        vec![],
        "nothing refused arrived"
    );
    assert_eq!(subscriber.last_event_id(), after);
}

#[test]
fn batch_limits_are_events_and_bytes() {
    let server = start(|config| {
        config.max_batch_events = 3;
        config.max_publish_bytes = 400;
    });
    let addr = server.local_addr();
    let line = r#"{"topic":"l","data":"x"}"#;
    let lines = |n: usize| format!("{line}\n").repeat(n);
    let array = |n: usize| format!("[{}]", vec![line; n].join(","));
    assert_eq!(publish_batch(addr, NDJSON, &lines(3), "3 lines").len(), 3);
    assert_eq!(publish_batch(addr, JSON, &array(3), "3 elements").len(), 3);
    for (content_type, body) in [(NDJSON, lines(4)), (JSON, array(4))] {
        assert_eq!(
            refusal(addr, content_type, &body, 413, "4 events"),
            "batch exceeds max_batch_events"
        );
    }
    let big = format!(
        "{line}\n{{\"topic\":\"l\",\"data\":\"{}\"}}",
        "y".repeat(400)
    );
    assert_eq!(
        refusal(addr, NDJSON, &big, 413, "over max_publish_bytes"),
        "request body exceeds max_publish_bytes"
    );
    for (content_type, body) in [(NDJSON, "\n\n"), (JSON, "[]")] {
        assert_eq!(
            refusal(addr, content_type, body, 400, "empty batch"),
            "batch holds no event"
        );
    }
}

/// Room for every event of [`batches_stay_contiguous`] in a topic's history and a
/// subscriber's lag budget: its subscribers read only once the publishers are done.
fn roomy(config: &mut herald::Config) {
    config.history_events = 10_000;
    config.history_bytes = 8 * 1024 * 1024;
    config.max_lag_bytes = 8 * 1024 * 1024;
}

/// Two clients publish batches to one topic at once (plus single publishes from a third):
/// at a subscriber each batch's events are contiguous and in order, with the answered ids.
/// `shape` is (batches per client, events per batch, padding bytes per event).
fn batches_stay_contiguous(
    publish_addrs: [SocketAddr; 2],
    subscriber_addrs: &[SocketAddr],
    shape: (usize, usize, usize),
) {
    let (batches, events_per_batch, pad_bytes) = shape;
    let pad = ".".repeat(pad_bytes);
    let mut subscribers: Vec<Subscriber> = subscriber_addrs
        .iter()
        .map(|&addr| subscribe(addr, &["c"]))
        .collect();
    let writers: Vec<_> = publish_addrs
        .into_iter()
        .enumerate()
        .map(|(client, addr)| {
            let pad = pad.clone();
            thread::spawn(move || {
                let mut answered = Vec::new();
                for batch in 0..batches {
                    let body: String = (0..events_per_batch)
                        .map(|i| {
                            format!("{{\"topic\":\"c\",\"data\":\"{client}/{batch}/{i}/{pad}\"}}\n")
                        })
                        .collect();
                    let ids = publish_batch(addr, NDJSON, &body, "concurrent batch");
                    assert_eq!(ids.len(), events_per_batch);
                    answered.extend(ids);
                }
                answered
            })
        })
        .collect();
    let single_addr = publish_addrs[0];
    let singles = thread::spawn(move || {
        for n in 0..batches * 2 {
            publish_form(
                single_addr,
                &[("topic", "c"), ("data", &format!("single/{n}"))],
            );
        }
    });
    let mut answered: Vec<String> = Vec::new();
    for writer in writers {
        answered.extend(writer.join().unwrap());
    }
    singles.join().unwrap();
    publish_form(publish_addrs[0], &[("topic", "c"), ("data", "end")]);
    let mut orders = Vec::new();
    for subscriber in &mut subscribers {
        let events = subscriber.events_before("end");
        let batched: Vec<&SseEvent> = events
            .iter()
            .filter(|event| !event.data.starts_with("single/"))
            .collect();
        assert_eq!(batched.len(), 2 * batches * events_per_batch);
        let mut at = 0;
        while at < events.len() {
            let data = &events[at].data;
            if data.starts_with("single/") {
                at += 1;
                continue;
            }
            let mut parts = data.split('/');
            let (client, batch, first) = (parts.next(), parts.next(), parts.next());
            let (client, batch) = (client.unwrap(), batch.unwrap());
            assert_eq!(first, Some("0"), "a batch starts with its first event");
            for i in 0..events_per_batch {
                assert_eq!(
                    events.get(at + i).map(|event| event.data.as_str()),
                    Some(format!("{client}/{batch}/{i}/{pad}").as_str()),
                    "batch {client}/{batch} is interrupted at event {i}"
                );
            }
            at += events_per_batch;
        }
        let mut ids: Vec<String> = batched.iter().map(|e| e.last_event_id.clone()).collect();
        let mut expected = answered.clone();
        ids.sort();
        expected.sort();
        assert_eq!(ids, expected, "the subscriber saw the answered ids");
        orders.push(
            events
                .iter()
                .map(|event| (event.data.clone(), event.last_event_id.clone()))
                .collect::<Vec<_>>(),
        );
    }
    for order in &orders[1..] {
        assert_eq!(order, &orders[0], "every subscriber saw the same order");
    }
}

#[test]
fn concurrent_batches_arrive_contiguous() {
    let server = start(roomy);
    let addr = server.local_addr();
    batches_stay_contiguous([addr, addr], &[addr, addr], (20, 50, 300));
}

/// Starts a node of a cluster on `redis`'s stream `stream` and waits until it reads it.
fn redis_node(redis: &RedisServer, stream: &str) -> Server {
    let url = redis.url();
    let stream = stream.to_owned();
    let server = start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = stream;
        roomy(config);
    });
    let handle = server.handle();
    wait_until("the node reads the stream", || {
        let _ = handle.publish(&Event::new("warmup", "x"));
        handle.stats().events_published > 0
    });
    server
}

#[test]
fn concurrent_batches_arrive_contiguous_across_two_redis_nodes() {
    let redis = RedisServer::start("publish-batch");
    let a = redis_node(&redis, "batches");
    let b = redis_node(&redis, "batches");
    let (a, b) = (a.local_addr(), b.local_addr());
    // Each batch (about 200 KB) spans many reads of Redis's query buffer (16 KB at a time),
    // so without `MULTI` Redis would serve the other node's pipeline between its parts.
    batches_stay_contiguous([a, b], &[a, b], (10, 100, 2_000));
}

#[test]
fn the_library_publishes_a_batch_all_or_nothing() {
    let server = start(|config| config.max_batch_events = 3);
    library_batches(&server);
}

#[test]
fn the_library_publishes_a_batch_on_the_redis_bus() {
    let redis = RedisServer::start("publish-batch-library");
    let server = start({
        let url = redis.url();
        move |config| {
            config.bus = BusKind::Redis;
            config.redis_url = url;
            config.redis_stream = "library".into();
            config.max_batch_events = 3;
        }
    });
    let handle = server.handle();
    wait_until("the node reads the stream", || {
        let _ = handle.publish(&Event::new("warmup", "x"));
        handle.stats().events_published > 0
    });
    library_batches(&server);
}

/// `Handle::publish_batch` against a server whose `max_batch_events` is 3.
fn library_batches(server: &Server) {
    let handle = server.handle();
    let mut subscriber = subscribe(server.local_addr(), &["lib", "other"]);
    let events = [
        Event::new("lib", "one"),
        Event::new("other", "two").named("note"),
        Event::new("lib", "three"),
    ];
    let ids = handle.publish_batch(&events).unwrap();
    assert_eq!(ids.len(), 3);
    let got: Vec<_> = subscriber.events(3).iter().map(seen).collect();
    assert_eq!(
        got,
        [
            ("message".into(), "one".into(), ids[0].to_string()),
            ("note".into(), "two".into(), ids[1].to_string()),
            ("message".into(), "three".into(), ids[2].to_string()),
        ]
    );
    let invalid = [
        Event::new("lib", "must not arrive"),
        Event::new("no topic?", "x"),
    ];
    assert_eq!(
        handle.publish_batch(&invalid),
        Err(PublishError::InvalidTopic)
    );
    let four = vec![Event::new("lib", "must not arrive"); 4];
    assert_eq!(
        handle.publish_batch(&four),
        Err(PublishError::BatchTooLarge)
    );
    assert_eq!(handle.publish_batch(&[]), Ok(Vec::new()));
    let after = publish(&handle, &Event::new("lib", "after"));
    assert_eq!(subscriber.events_before("after"), vec![]);
    assert_eq!(subscriber.last_event_id(), after.as_str());
}

/// A batch with more data than the Redis writer's queue holds (64 MiB) is refused with
/// `Busy` at once, and none of it reaches the stream.
#[test]
fn a_redis_batch_larger_than_the_write_queue_is_refused_whole() {
    let redis = RedisServer::start("publish-batch-queue");
    let server = start({
        let url = redis.url();
        move |config| {
            config.bus = BusKind::Redis;
            config.redis_url = url;
            config.redis_stream = "queue".into();
        }
    });
    let handle = server.handle();
    wait_until("the node reads the stream", || {
        let _ = handle.publish(&Event::new("warmup", "x"));
        handle.stats().events_published > 0
    });
    let mut subscriber = subscribe(server.local_addr(), &["q"]);
    let data = "z".repeat(68 * 1024);
    let events = vec![Event::new("q", data.as_str()); 1_000];
    assert_eq!(handle.publish_batch(&events), Err(PublishError::Busy));
    drop(events);
    let after = publish(&handle, &Event::new("q", "after"));
    assert_eq!(subscriber.events_before("after"), vec![]);
    assert_eq!(subscriber.last_event_id(), after.as_str());
}
