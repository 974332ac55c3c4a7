#![allow(clippy::unwrap_used)]
//! Wildcard subscriptions (issue 13, point 2), over real sockets: `topic=prices/*` gets every
//! event of every topic whose name starts with `prices/`, byte for byte as a JWT claim
//! `prices/*` reads, topics created after it subscribed included, in id order and once even
//! when an exact topic of the same subscription (or two topics of one event) match too;
//! other topics are not sent. The limits (`--max-patterns-per-subscription`,
//! `--min-pattern-prefix`) refuse with precise `400`s, a JWT `subscribe` claim must cover
//! the pattern itself, presence counts exact topics only, and a wildcard resume reads what
//! the loop's history holds under the prefix, then tells the gap. On the Redis bus (a real
//! `redis-server`) the live stream, a resume from the stream on a node started after the
//! events, and one from before the stream (the gap).
//!
//! Servers run two event loops unless a test needs one loop's history settled; the live
//! tests open several subscribers so both loops serve some. A sentinel event ends each read.

use crate::common::*;
use herald::{BusKind, Event, Server};
use testkit::redis::RedisServer;

/// `(data, id)` of each event before the sentinel `end`, with the event type when it is
/// not `message`.
fn seen(subscriber: &mut Subscriber) -> Vec<(String, String)> {
    subscriber
        .events_before("end")
        .into_iter()
        .map(|e| {
            let data = match e.event_type.as_str() {
                "message" => e.data,
                other => format!("{other}:{}", e.data),
            };
            (data, e.last_event_id)
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(d, i)| ((*d).to_owned(), (*i).to_owned()))
        .collect()
}

/// The gap event as [`seen`] shows it for a resume from `id`.
fn gap(id: &str) -> (String, String) {
    (format!("gap:{{\"lastEventId\":\"{id}\"}}"), String::new())
}

#[test]
fn a_wildcard_gets_existing_and_later_topics_once_in_id_order_and_nothing_else() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    // `prices/us` exists (it has history) before anyone subscribes.
    let early = publish(&handle, &Event::new("prices/us", "early")).to_string();
    let mut subscribers: Vec<Subscriber> = (0..3)
        .flat_map(|_| {
            [
                subscribe(addr, &["prices/*"]),
                subscribe(addr, &["prices/*", "prices/eu", "news"]),
            ]
        })
        .collect();
    let publishes = [
        Event::new("prices/us", "us1"),
        Event::new("prices/eu", "eu1"),
        Event::new("news", "n1"),
        Event::new("pricesX", "not-under-the-slash"),
        Event::new("other/prices/eu", "not-a-prefix"),
        // A topic created after the subscriptions.
        Event::new("prices/new/deep", "new1"),
        // One event, two matching topics (and an exact one for the second subscriber).
        Event::new("prices/eu", "both").and_topic("prices/us"),
        Event::new("prices/", "bare-prefix"),
    ];
    let ids: Vec<String> = publishes
        .iter()
        .map(|e| publish(&handle, e).to_string())
        .collect();
    publish(&handle, &Event::new("prices/end", "end"));
    let wildcard = pairs(&[
        ("us1", &ids[0]),
        ("eu1", &ids[1]),
        ("new1", &ids[5]),
        ("both", &ids[6]),
        ("bare-prefix", &ids[7]),
    ]);
    let mixed = pairs(&[
        ("us1", &ids[0]),
        ("eu1", &ids[1]),
        ("n1", &ids[2]),
        ("new1", &ids[5]),
        ("both", &ids[6]),
        ("bare-prefix", &ids[7]),
    ]);
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let expected = if i % 2 == 0 { &wildcard } else { &mixed };
        assert_eq!(&seen(subscriber), expected, "subscriber {i}");
        // History from before it subscribed is not sent without a Last-Event-ID.
        let early_frame = format!("id: {early}\ndata: early");
        let raw = String::from_utf8_lossy(&subscriber.raw);
        assert!(!raw.contains(&early_frame), "subscriber {i}: {raw:?}");
    }
    // Six streams on two loops (which race to accept, so as a rule both serve some).
    let stats = handle.stats();
    assert_eq!(stats.subscribers, 6, "{stats:?}");
}

#[test]
fn limits_refuse_with_precise_reasons_and_star_alone_needs_a_zero_minimum() {
    let server = start(|config| {
        config.max_patterns_per_subscription = 2;
        config.min_pattern_prefix = 2;
    });
    let addr = server.local_addr();
    for (topics, reason) in [
        (&["*"][..], "min_pattern_prefix"),
        (&["p*"][..], "min_pattern_prefix"),
        (&["ab*", "cd*", "ef*"][..], "max_patterns_per_subscription"),
        (&["ab*c*"][..], "one `*`"),
        (&["ab**"][..], "one `*`"),
    ] {
        let response = get(addr, &events_target(topics, None));
        assert_eq!(response.status, 400, "{topics:?}: {}", response.summary());
        assert!(
            response.body_text().contains(reason),
            "{topics:?}: {}",
            response.body_text()
        );
    }
    // `GET /topics` counts exact topics: a wildcard is no topic name there.
    let response = get(addr, "/topics?topic=ab%2F*");
    assert_eq!(response.status, 400, "{}", response.summary());
    // Two patterns are fine; a wildcard stream is not counted as a topic's subscriber.
    let mut two = subscribe(addr, &["ab*", "cd/*", "news"]);
    let presence = server.handle().topics(&["news", "ab", "cd/x"]).unwrap();
    let counts: Vec<u64> = presence.iter().map(|p| p.subscribers).collect();
    assert_eq!(counts, [1, 0, 0]);
    publish(&server.handle(), &Event::new("cd/x", "x"));
    publish(&server.handle(), &Event::new("abc", "end"));
    assert_eq!(seen(&mut two).len(), 1);

    let off = start(|config| config.max_patterns_per_subscription = 0);
    let response = get(off.local_addr(), &events_target(&["prices/*"], None));
    assert_eq!(response.status, 400, "{}", response.summary());
    assert!(
        response.body_text().contains("off"),
        "{}",
        response.body_text()
    );

    let everything = start(|config| config.min_pattern_prefix = 0);
    let mut all = subscribe(everything.local_addr(), &["*"]);
    let id = publish(&everything.handle(), &Event::new("anything", "a")).to_string();
    publish(&everything.handle(), &Event::new("else", "end"));
    assert_eq!(seen(&mut all), pairs(&[("a", &id)]));
}

/// `{"subscribe": ["news", "prices/*"], "exp": 4102444800}` signed with the key below
/// (the vector `tests/it/auth.rs` documents).
const SUB_NEWS_PRICES: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibmV3cyIsInByaWNlcy8qIl0sImV4cCI6NDEwMjQ0NDgwMH0.ufWIeJnyGwGqP3pw8-MHkvxs066OedNaTto6v0E-2_o";
/// `{"subscribe": ["*"], "exp": 4102444800}`, same key.
const SUB_EVERYTHING: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsiKiJdLCJleHAiOjQxMDI0NDQ4MDB9.H_4mkSZsJGmQInXTPQUJMJrMdQNHuztFaC3GuYLnj2U";
const SUBSCRIBE_KEY: &str = "herald-test-subscribe-secret-0123456789";

#[test]
fn a_jwt_claim_must_cover_the_pattern_itself() {
    let server = start(|config| {
        config.subscribe_key = Some(SUBSCRIBE_KEY.to_owned());
        config.min_pattern_prefix = 0;
    });
    let addr = server.local_addr();
    let open = |topics: &[&str], token: &str| {
        let target = format!(
            "{}&token={}",
            events_target(topics, None),
            url_encode(token)
        );
        Subscriber::try_open_on(Conn::connect(addr), &target, &[])
    };
    for topics in [
        &["prices/*"][..],
        &["prices/eu/*"],
        &["prices/eu/*", "news"],
    ] {
        assert!(open(topics, SUB_NEWS_PRICES).is_ok(), "{topics:?}");
    }
    // `prices*` reaches `pricesX`, `news*` reaches `newsletter`, `*` everything: the claim
    // names none of those.
    for topics in [&["prices*"][..], &["news*"], &["*"], &["pr*"]] {
        match open(topics, SUB_NEWS_PRICES) {
            Ok(_) => panic!("{topics:?} was allowed"),
            Err(response) => assert_eq!(response.status, 403, "{topics:?}: {}", response.summary()),
        }
    }
    let mut all = open(&["*"], SUB_EVERYTHING).unwrap();
    let id = publish(&server.handle(), &Event::new("x", "x")).to_string();
    publish(&server.handle(), &Event::new("y", "end"));
    assert_eq!(seen(&mut all), pairs(&[("x", &id)]));
}

#[test]
fn a_wildcard_resume_reads_what_the_history_holds_under_the_prefix_then_tells_the_gap() {
    // One loop keeping 3 events per topic (and per pattern): what it holds is settled by a
    // witness of the exact topics before anyone resumes.
    let server = start(|config| {
        config.threads = 1;
        config.history_events = 3;
    });
    let addr = server.local_addr();
    let handle = server.handle();
    let mut witness = subscribe(addr, &["prices/a", "prices/b", "news"]);
    let publishes = [
        ("news", "n0"),
        ("prices/a", "a1"),
        ("prices/a", "a2"),
        ("prices/a", "a3"),
        ("prices/a", "a4"),
        ("news", "n1"),
        ("prices/b", "b1"),
    ];
    let ids: Vec<String> = publishes
        .iter()
        .map(|(topic, data)| {
            let id = publish(&handle, &Event::new(*topic, *data)).to_string();
            assert_eq!(witness.next_event(data).data, *data);
            id
        })
        .collect();
    let id = |data: &str| ids[publishes.iter().position(|p| p.1 == data).unwrap()].clone();
    // The pattern, gathered when the first resume asks, holds the newest 3 under the prefix
    // (a3, a4, b1): after a2 nothing is missing.
    let resume = |after: &str| {
        Subscriber::open(
            addr,
            &events_target(&["prices/*"], None),
            &[("Last-Event-ID", after)],
        )
    };
    let mut from_a2 = resume(&id("a2"));
    // From a1, a2 is gone from the pattern's history: the gap, then what it holds.
    let mut from_a1 = resume(&id("a1"));
    // Now the pattern exists; a resume after a3 reads it directly.
    let mut from_a3 = resume(&id("a3"));
    let mut earliest = Subscriber::open(
        addr,
        &format!(
            "{}&lastEventId=earliest",
            events_target(&["prices/*"], None)
        ),
        &[],
    );
    // A topic created after all of them.
    let c1 = publish(&handle, &Event::new("prices/c", "c1")).to_string();
    publish(&handle, &Event::new("prices/end", "end"));
    let kept = [("a3", id("a3")), ("a4", id("a4")), ("b1", id("b1"))];
    let mut expected: Vec<(String, String)> = kept
        .iter()
        .map(|(d, i)| ((*d).to_owned(), i.clone()))
        .collect();
    expected.push(("c1".to_owned(), c1.clone()));
    assert_eq!(seen(&mut from_a2), expected, "after a2");
    assert_eq!(seen(&mut earliest), expected, "earliest");
    let mut with_gap = vec![gap(&id("a1"))];
    with_gap.extend(expected.iter().cloned());
    assert_eq!(seen(&mut from_a1), with_gap, "after a1");
    assert_eq!(seen(&mut from_a3), expected[1..].to_vec(), "after a3");
}

/// Joins `redis`'s stream `stream` as an in-process node with two loops.
fn join(redis: &RedisServer, stream: &str) -> Server {
    let (url, stream) = (redis.url(), stream.to_owned());
    start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = stream;
    })
}

/// Waits until `node`'s reader delivers what it publishes.
fn wait_reading(node: &Server) {
    wait_until("the node reads the stream", || {
        let _ = node.handle().publish(&Event::new("warmup", "w"));
        node.handle().stats().events_published > 0
    });
}

#[test]
fn on_the_redis_bus_wildcards_are_live_and_resume_from_the_stream() {
    let redis = RedisServer::start("wildcard");
    let first = join(&redis, "wildcard");
    wait_reading(&first);
    let mut live: Vec<Subscriber> = (0..4)
        .map(|i| match i % 2 {
            0 => subscribe(first.local_addr(), &["prices/*"]),
            _ => subscribe(first.local_addr(), &["prices/*", "prices/eu"]),
        })
        .collect();
    let handle = first.handle();
    let events = [
        Event::new("prices/eu", "eu1"),
        Event::new("news", "n1"),
        Event::new("prices/new", "new1"),
        Event::new("prices/eu", "both").and_topic("prices/us"),
    ];
    let ids: Vec<String> = events
        .iter()
        .map(|e| publish(&handle, e).to_string())
        .collect();
    publish(&handle, &Event::new("prices/end", "end"));
    let expected = pairs(&[("eu1", &ids[0]), ("new1", &ids[2]), ("both", &ids[3])]);
    for (i, subscriber) in live.iter_mut().enumerate() {
        assert_eq!(seen(subscriber), expected, "live subscriber {i}");
    }
    // A node started now holds none of them: a wildcard resume is served from the stream,
    // filtered by the prefix, then goes live.
    let late = join(&redis, "wildcard");
    wait_reading(&late);
    let mut resumed = Subscriber::open(
        late.local_addr(),
        &events_target(&["prices/*"], None),
        &[("Last-Event-ID", &ids[0])],
    );
    // The stream holds the first sentinel too (it is under the prefix): it ends the part
    // from the stream, and the second one the live part.
    assert_eq!(
        seen(&mut resumed),
        expected[1..].to_vec(),
        "from the stream"
    );
    let later = publish(&late.handle(), &Event::new("prices/later", "later")).to_string();
    publish(&late.handle(), &Event::new("news", "not-under-it"));
    publish(&late.handle(), &Event::new("prices/end", "end"));
    assert_eq!(seen(&mut resumed), pairs(&[("later", &later)]), "live");
    // An id older than the stream: the gap event at once, then what the node holds under
    // the prefix from where it began reading.
    let mut old = Subscriber::open(
        late.local_addr(),
        &events_target(&["prices/*"], None),
        &[("Last-Event-ID", "0-1")],
    );
    let mut expected = vec![gap("0-1")];
    expected.extend(pairs(&[("later", &later)]));
    assert_eq!(seen(&mut old), expected, "older than the stream");
}
