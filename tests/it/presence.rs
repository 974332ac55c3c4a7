//! Presence counts (issue 13, point 1): `GET /topics?topic=..` answers each topic's
//! subscriber count and newest id as JSON, and `Handle::topics` the same in Rust.
//!
//! - Embedded bus, real sockets: streams on several topics, on both loops (opened until
//!   `/metrics` shows the topic on both), are counted as they open, and uncounted as they
//!   close; the newest id is the last one
//!   published (`null` for a topic never published).
//! - Protection: with `--publish-listen` the route is only on that listener; with a
//!   publish token or key it needs the publisher's `Authorization` (a JWT's `publish`
//!   claim must cover the topics); more topics than `max_topics_per_subscription`, a bad
//!   name or none at all is `400`.
//! - Cluster, with a real redis-server: two `herald` processes and one library server share
//!   counts through Redis; a node killed with SIGKILL stops being counted once its hash
//!   expires (polled until a deadline: the test waits for the state, it times nothing).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use herald::{BusKind, Event, PublishError, TopicPresence};
use serde_json::Value;
use testkit::redis::RedisServer;

const PUBLISH_TOKEN: &str = "static-publisher-token";
const PUBLISH_KEY: &str = "herald-test-publish-secret-0123456789";
/// `{"publish": ["news", "alerts/*"], "exp": 4102444800}` signed with [`PUBLISH_KEY`]
/// (made as in `auth.rs`).
const PUB_NEWS_ALERTS: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJwdWJsaXNoIjpbIm5ld3MiLCJhbGVydHMvKiJdLCJleHAiOjQxMDI0NDQ4MDB9.IVlh1VlVuAaznzdB5RDpR_uqTFGDz7wHUZde5eSVlGk";

/// How long a cluster test waits for a count to settle: a dead node's hash lives 5 s and
/// the others read every second, so this leaves room on a busy machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);

/// `/topics?topic=..&topic=..`.
fn topics_target(topics: &[&str]) -> String {
    let pairs: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
    format!("/topics?{}", form(&pairs))
}

/// `GET /topics` with extra headers.
fn get_topics(addr: SocketAddr, topics: &[&str], headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    exchange(
        addr,
        build_request("GET", &topics_target(topics), &all, b""),
    )
}

/// The answer's `topics` object as (name, subscribers, last id), checking its shape.
fn parse(response: &Response) -> Vec<(String, u64, Option<String>)> {
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    let topics = body["topics"].as_object().expect("a `topics` object");
    topics
        .iter()
        .map(|(name, entry)| {
            let subscribers = entry["subscribers"].as_u64().expect("a count");
            let last_id = match &entry["last_id"] {
                Value::Null => None,
                Value::String(id) => Some(id.clone()),
                other => panic!("last_id is {other}"),
            };
            (name.clone(), subscribers, last_id)
        })
        .collect()
}

/// The subscriber counts `GET /topics` reports for `topics`, in that order.
fn counts(addr: SocketAddr, topics: &[&str]) -> Vec<u64> {
    let answer = parse(&get_topics(addr, topics, &[]));
    topics
        .iter()
        .map(|topic| {
            answer
                .iter()
                .find(|(name, ..)| name == topic)
                .unwrap_or_else(|| panic!("{topic} missing from {answer:?}"))
                .1
        })
        .collect()
}

/// Polls `counts` until it equals `expected`, up to `within`; fails with the last answer.
fn wait_for_counts(what: &str, within: Duration, expected: &[u64], counts: impl Fn() -> Vec<u64>) {
    let deadline = Instant::now() + within;
    loop {
        let got = counts();
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: counts still {got:?}, expected {expected:?}, after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counts_follow_streams_opening_and_closing_across_loops() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    // The two loops race to accept connections: open streams on `spread` until both loops
    // hold one (`herald_topics` sums the loops' topic tables, and nothing was published).
    let mut spread = Vec::new();
    while scrape(addr).value("herald_topics") < 2.0 {
        assert!(
            spread.len() < 200,
            "200 streams and every one on the same loop"
        );
        spread.push(subscribe(addr, &["spread"]));
    }
    let streams = spread.len() as u64;
    assert_eq!(
        counts(addr, &["spread"]),
        [streams],
        "streams on both loops"
    );
    drop(spread.pop());
    wait_for_counts(
        "a stream on one of the loops closed",
        DEADLINE,
        &[streams - 1],
        || counts(addr, &["spread"]),
    );
    drop(spread);
    wait_for_counts("every spread stream closed", DEADLINE, &[0], || {
        counts(addr, &["spread"])
    });
    let id = publish(&handle, &Event::new("a", "first"));
    let mut a_only: Vec<Subscriber> = (0..3).map(|_| subscribe(addr, &["a"])).collect();
    let mut a_and_b: Vec<Subscriber> = (0..3).map(|_| subscribe(addr, &["a", "b"])).collect();
    let _c = subscribe(addr, &["c"]);
    let _c_again = subscribe(addr, &["c", "c"]);
    let answer = parse(&get_topics(addr, &["a", "b", "c", "nobody"], &[]));
    let expect = |name: &str, subscribers: u64, last_id: Option<&str>| {
        (name.to_owned(), subscribers, last_id.map(str::to_owned))
    };
    let mut sorted = answer.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            expect("a", 6, Some(id.as_str())),
            expect("b", 3, None),
            expect("c", 2, None),
            expect("nobody", 0, None),
        ]
    );
    // A publish moves the newest id (every loop's history holds it).
    let newer = publish(&handle, &Event::new("b", "second"));
    a_and_b[0].next_event("the event on b");
    let got = handle.topics(&["b", "a", "nobody"]).unwrap();
    assert_eq!(
        got,
        [
            TopicPresence {
                subscribers: 3,
                last_id: Some(newer.as_str().to_owned())
            },
            TopicPresence {
                subscribers: 6,
                last_id: Some(id.as_str().to_owned())
            },
            TopicPresence::default(),
        ]
    );
    // Closing streams takes them out of the counts, once the server noticed.
    a_only.truncate(1);
    a_and_b.truncate(2);
    wait_for_counts("after closing 3 streams", DEADLINE, &[3, 2, 2], || {
        counts(addr, &["a", "b", "c"])
    });
    drop(a_only);
    drop(a_and_b);
    wait_for_counts(
        "after closing every a and b stream",
        DEADLINE,
        &[0, 0, 2],
        || counts(addr, &["a", "b", "c"]),
    );
    assert_eq!(handle.topics(&[]).unwrap(), []);
}

#[test]
fn bad_requests_are_refused_like_subscriptions() {
    let server = start(|config| config.max_topics_per_subscription = 2);
    let addr = server.local_addr();
    let repeated = parse(&get_topics(addr, &["a", "b", "a"], &[]));
    assert_eq!(
        repeated.len(),
        2,
        "a repeated name is answered once: {repeated:?}"
    );
    for (topics, case) in [
        (
            &["a", "b", "c"][..],
            "more topics than max_topics_per_subscription",
        ),
        (&["a*"][..], "an invalid topic name"),
        (&[][..], "no topic"),
    ] {
        assert_error(&get_topics(addr, topics, &[]), 400, case);
    }
    let response = exchange(
        addr,
        build_request("POST", "/topics?topic=a", &[("Content-Length", "0")], b""),
    );
    assert_eq!(response.status, 405, "{}", response.summary());
    let handle = server.handle();
    assert_eq!(
        handle.topics(&["a", "b", "c"]),
        Err(PublishError::TooManyTopics)
    );
    assert_eq!(handle.topics(&["a b"]), Err(PublishError::InvalidTopic));
}

#[test]
fn protected_like_metrics_and_publish() {
    // A publish listener: the route is there, not on the subscribers' listener.
    let split = start(|config| config.publish_listen = Some("127.0.0.1:0".parse().unwrap()));
    let _sub = subscribe(split.local_addr(), &["t"]);
    assert_error(
        &get_topics(split.local_addr(), &["t"], &[]),
        404,
        "/topics on the main listener when a publish listener is set",
    );
    assert_eq!(counts(split.publish_addr().unwrap(), &["t"]), [1]);

    // A static publish token: required, as for a publish.
    let token = start(|config| config.publish_token = Some(PUBLISH_TOKEN.to_owned()));
    let addr = token.local_addr();
    assert_error(&get_topics(addr, &["t"], &[]), 401, "no token");
    let wrong = get_topics(addr, &["t"], &[("Authorization", "Bearer nope")]);
    assert_error(&wrong, 401, "a wrong token");
    let right = format!("Bearer {PUBLISH_TOKEN}");
    let response = get_topics(addr, &["t"], &[("Authorization", &right)]);
    assert_eq!(parse(&response), [("t".to_owned(), 0, None)]);
    // The shape README documents, byte for byte.
    assert_eq!(
        response.body_text(),
        "{\"topics\":{\"t\":{\"last_id\":null,\"subscribers\":0}}}\n"
    );

    // A publish key: the JWT's publish claim must cover every topic asked about.
    let key = start(|config| config.publish_key = Some(PUBLISH_KEY.to_owned()));
    let addr = key.local_addr();
    let jwt = format!("Bearer {PUB_NEWS_ALERTS}");
    let covered = get_topics(addr, &["news", "alerts/x"], &[("Authorization", &jwt)]);
    assert_eq!(parse(&covered).len(), 2);
    let not_covered = get_topics(addr, &["news", "other"], &[("Authorization", &jwt)]);
    assert_error(&not_covered, 403, "a topic outside the publish claim");
    assert_error(&get_topics(addr, &["news"], &[]), 401, "no JWT");
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

fn node(redis: &RedisServer, stream: &str) -> HeraldProcess {
    HeraldProcess::spawn(&[
        "--bus",
        "redis",
        "--redis-url",
        &redis.url(),
        "--redis-stream",
        stream,
        "--threads",
        "2",
    ])
}

#[test]
fn cluster_counts_are_summed_and_a_killed_node_stops_counting() {
    let stream = "presence";
    let redis = RedisServer::start(stream);
    let mut one = node(&redis, stream);
    let two = node(&redis, stream);
    let url = redis.url();
    let library = start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = stream.to_owned();
    });
    let handle = library.handle();
    let _on_one: Vec<Subscriber> = (0..3).map(|_| subscribe(one.addr, &["room"])).collect();
    let _on_two = [subscribe(two.addr, &["room", "hall"])];
    let _on_library = [subscribe(library.local_addr(), &["hall"])];
    let everywhere = [4, 2];
    for addr in [one.addr, two.addr, library.local_addr()] {
        wait_for_counts(
            "counts summed over the nodes",
            CLUSTER_DEADLINE,
            &everywhere,
            || counts(addr, &["room", "hall"]),
        );
    }
    wait_for_counts("through the handle", CLUSTER_DEADLINE, &everywhere, || {
        let got = handle.topics(&["room", "hall"]).unwrap();
        got.iter().map(|t| t.subscribers).collect()
    });
    // The newest id is the stream's, the same on every node.
    let id = publish_form(two.addr, &[("topic", "hall"), ("data", "x")]);
    wait_for_counts(
        "the newest id reached the library node",
        DEADLINE,
        &[1],
        || {
            let got = handle.topics(&["hall"]).unwrap();
            vec![u64::from(got[0].last_id.as_deref() == Some(id.as_str()))]
        },
    );

    one.signal("KILL");
    one.wait_exit(DEADLINE);
    for addr in [two.addr, library.local_addr()] {
        wait_for_counts(
            "node one's counts expired",
            CLUSTER_DEADLINE,
            &[1, 2],
            || counts(addr, &["room", "hall"]),
        );
    }
    drop(library);
}
