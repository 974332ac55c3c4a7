//! The Redis bus through the library API (issue 5): an embedded server that joins a cluster
//! publishes with `Handle::publish`, which returns the stream entry id once Redis stored it,
//! and `PublishError::Unavailable` (in bounded time, not a hang) while Redis is down. A real
//! `redis-server` runs on a free loopback port.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::common::{start, subscribe, wait_until, DEADLINE};
use herald::{BusKind, Event, PublishError};
use testkit::redis::RedisServer;

fn join(redis: &RedisServer, stream: &str) -> herald::Server {
    let url = redis.url();
    let stream = stream.to_owned();
    start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = stream;
    })
}

#[test]
fn handle_publish_returns_the_stream_id_and_every_node_delivers_it() {
    let redis = RedisServer::start("library");
    let one = join(&redis, "library");
    let two = join(&redis, "library");
    let (h1, h2) = (one.handle(), two.handle());
    // Subscribing before the readers are connected would race the first entries; the
    // readers report through /metrics, and through the handle's published count once
    // something flows. Publish a warm-up event until both nodes have read one.
    wait_until("both nodes read the stream", || {
        let _ = h1.publish(&Event::new("warmup", "x"));
        h1.stats().events_published > 0 && h2.stats().events_published > 0
    });
    let mut sub = subscribe(two.local_addr(), &["lib"]);
    let id = h1
        .publish(&Event::new("lib", "from the library").named("note"))
        .unwrap();
    let mut redis_conn = redis.client();
    let stored = redis_conn.xrange("library", id.as_str(), id.as_str());
    assert_eq!(stored.len(), 1, "the id {id} is the stream entry's id");
    assert_eq!(stored[0].field("topic"), Some("lib"));
    assert_eq!(stored[0].field("event"), Some("note"));
    assert_eq!(stored[0].field("data"), Some("from the library"));
    let event = sub.next_event("the event published on the other node");
    assert_eq!(event.last_event_id, id.as_str());
    assert_eq!(event.event_type, "note");
    assert_eq!(event.data, "from the library");
    drop(one);
    drop(two);
}

#[test]
fn handle_publish_fails_with_unavailable_while_redis_is_down_then_recovers() {
    let mut redis = RedisServer::start("library-down");
    let server = join(&redis, "library-down");
    let handle = server.handle();
    wait_until("the first publish succeeds", || {
        handle.publish(&Event::new("t", "up")).is_ok()
    });
    redis.kill();
    let started = Instant::now();
    let result = handle.publish(&Event::new("t", "down"));
    assert_eq!(result, Err(PublishError::Unavailable));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a publish while Redis is down must fail within the bus's timeouts, took {:?}",
        started.elapsed()
    );
    redis.restart();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match handle.publish(&Event::new("t", "back")) {
            Ok(_) => break,
            Err(PublishError::Unavailable) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("publish after Redis came back: {error}"),
        }
    }
    server.shutdown();
}
