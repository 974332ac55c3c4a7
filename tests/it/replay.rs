#![allow(clippy::unwrap_used)]
//! Replay and expiry (issue 13, points 4 and 5), over real sockets: `lastEventId=earliest`
//! (query) and `Last-Event-ID: earliest` (header) replay everything kept with no gap event;
//! `since=` (Unix ms or RFC 3339) replays exactly what was published from then on, and a
//! Last-Event-ID wins over it; a bad `since` is `400` with a one-line reason; with
//! `--history-ttl`, expired events are neither replayed nor kept, and a resume across them
//! gets the gap event. In cluster mode (a real `redis-server`), `earliest` and `since` on a
//! node started after the events are served from the stream.
//!
//! The embedded-bus servers run one event loop and a witness subscriber reads every publish
//! before anyone resumes, so what the loop keeps is settled and each answer is exact. Times
//! are never raced: `since` splits two groups of publishes at an instant measured between
//! them (the wall clock is polled until it has moved past the first group), and expiry is
//! waited for by polling the wall clock past the time to live.

use crate::common::*;
use herald::{BusKind, Event, Server};
use testkit::redis::RedisServer;

/// `ms` as an RFC 3339 time in UTC with milliseconds (`2024-05-01T12:00:00.123Z`), by
/// another crate than the parser it is fed to.
fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// A one-loop server keeping `history` events per topic, changed by `tweak`.
fn server(history: usize, tweak: impl FnOnce(&mut herald::Config)) -> Server {
    start(|config| {
        config.threads = 1;
        config.history_events = history;
        tweak(config);
    })
}

/// Publishes each `(topic, data)` once a witness of all their topics has read the one
/// before, so the loop holds it; returns the ids.
fn publish_settled(
    server: &Server,
    witness: &mut Subscriber,
    publishes: &[(&str, &str)],
) -> Vec<String> {
    publishes
        .iter()
        .map(|(topic, data)| {
            let id = publish(&server.handle(), &Event::new(*topic, *data)).to_string();
            let seen = witness.next_event(&format!("the witness's copy of {data}"));
            assert_eq!(
                (seen.data.as_str(), seen.last_event_id.as_str()),
                (*data, id.as_str())
            );
            id
        })
        .collect()
}

/// `GET /events` for `topics` with extra query pairs.
fn target(topics: &[&str], extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
    pairs.extend_from_slice(extra);
    format!("/events?{}", form(&pairs))
}

/// `(event type, data, id)` of each event.
fn summary(events: &[SseEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.event_type.clone(),
                e.data.clone(),
                e.last_event_id.clone(),
            )
        })
        .collect()
}

/// Messages `(data, id)` as [`summary`] shows them.
fn messages(pairs: &[(&str, &str)]) -> Vec<(String, String, String)> {
    pairs
        .iter()
        .map(|(data, id)| ("message".to_owned(), (*data).to_owned(), (*id).to_owned()))
        .collect()
}

/// Publishes a live `end` to `topic` and returns what each subscriber received before it.
fn before_live_end(
    server: &Server,
    topic: &str,
    subscribers: &mut [&mut Subscriber],
) -> Vec<Vec<(String, String, String)>> {
    publish(&server.handle(), &Event::new(topic, "end"));
    subscribers
        .iter_mut()
        .map(|subscriber| summary(&subscriber.events_before("end")))
        .collect()
}

#[test]
fn earliest_replays_everything_kept_without_a_gap() {
    let server = server(3, |_| {});
    let addr = server.local_addr();
    let mut witness = subscribe(addr, &["r", "x"]);
    let publishes = [
        ("r", "e1"),
        ("r", "e2"),
        ("x", "x1"),
        ("r", "e3"),
        ("r", "e4"),
        ("r", "e5"),
    ];
    let ids = publish_settled(&server, &mut witness, &publishes);
    // r keeps e3..e5 (e1 and e2 were evicted: a resume from before them gets a gap, earliest
    // does not).
    let mut by_query = Subscriber::open(addr, &target(&["r"], &[("lastEventId", "earliest")]), &[]);
    let mut by_header =
        Subscriber::open(addr, &target(&["r"], &[]), &[("Last-Event-ID", "earliest")]);
    let mut two_topics = Subscriber::open(
        addr,
        &target(&["r", "x"], &[("lastEventId", "earliest")]),
        &[],
    );
    let got = before_live_end(
        &server,
        "r",
        &mut [&mut by_query, &mut by_header, &mut two_topics],
    );
    let kept = messages(&[("e3", &ids[3]), ("e4", &ids[4]), ("e5", &ids[5])]);
    assert_eq!(got[0], kept, "earliest by query");
    assert_eq!(got[1], kept, "earliest by header");
    let both = messages(&[
        ("x1", &ids[2]),
        ("e3", &ids[3]),
        ("e4", &ids[4]),
        ("e5", &ids[5]),
    ]);
    assert_eq!(got[2], both, "earliest over two topics, in id order");
    // Exactly the frames: no gap event, no stray `id:` line.
    let mut expected = String::new();
    for (_, data, id) in &kept {
        expected.push_str(&format!("id: {id}\ndata: {data}\n\n"));
    }
    let raw = String::from_utf8_lossy(by_query.raw_after_retry_frame()).into_owned();
    assert!(raw.starts_with(&expected), "{raw:?}");
}

#[test]
fn since_replays_exactly_what_was_published_from_then_on() {
    let server = server(100, |_| {});
    let addr = server.local_addr();
    let mut witness = subscribe(addr, &["s"]);
    let first = publish_settled(&server, &mut witness, &[("s", "a1"), ("s", "a2")]);
    // Every `a` was published at or before this instant; every `b` after it.
    let published_a = unix_ms();
    wait_past(published_a);
    let since = unix_ms();
    let second = publish_settled(&server, &mut witness, &[("s", "b1"), ("s", "b2")]);
    let since_ms = since.to_string();
    let since_text = rfc3339(since);
    let mut by_ms = Subscriber::open(addr, &target(&["s"], &[("since", &since_ms)]), &[]);
    let mut by_text = Subscriber::open(addr, &target(&["s"], &[("since", &since_text)]), &[]);
    let mut from_zero = Subscriber::open(addr, &target(&["s"], &[("since", "0")]), &[]);
    let future = (since + 3_600_000).to_string();
    let mut from_future = Subscriber::open(addr, &target(&["s"], &[("since", &future)]), &[]);
    // A Last-Event-ID wins over since: an EventSource reconnecting with the same URL goes on
    // from where it was.
    let mut id_wins = Subscriber::open(
        addr,
        &target(&["s"], &[("since", &since_ms)]),
        &[("Last-Event-ID", &first[0])],
    );
    let mut query_id_wins = Subscriber::open(
        addr,
        &target(&["s"], &[("since", &since_ms), ("lastEventId", &first[1])]),
        &[],
    );
    let got = before_live_end(
        &server,
        "s",
        &mut [
            &mut by_ms,
            &mut by_text,
            &mut from_zero,
            &mut from_future,
            &mut id_wins,
            &mut query_id_wins,
        ],
    );
    let b = messages(&[("b1", &second[0]), ("b2", &second[1])]);
    assert_eq!(got[0], b, "since={since_ms}");
    assert_eq!(got[1], b, "since={since_text}");
    let all = messages(&[
        ("a1", &first[0]),
        ("a2", &first[1]),
        ("b1", &second[0]),
        ("b2", &second[1]),
    ]);
    assert_eq!(got[2], all, "since=0");
    assert_eq!(got[3], [], "since in the future: live events only");
    assert_eq!(got[4], all[1..], "Last-Event-ID wins over since");
    assert_eq!(got[5], all[2..], "lastEventId wins over since");
}

#[test]
fn a_bad_since_is_400_with_a_one_line_reason() {
    let server = server(10, |_| {});
    for bad in [
        "yesterday",
        "-5",
        "1.5",
        "2024-05-01",
        "2024-02-30T00:00:00Z",
        "2024-05-01T12:00:00+0200",
        "99999999999999999999",
    ] {
        let response = get(server.local_addr(), &target(&["t"], &[("since", bad)]));
        assert_error(&response, 400, bad);
        assert!(
            response.body_text().contains("since"),
            "{bad}: {}",
            response.body_text()
        );
    }
    let twice = get(server.local_addr(), "/events?topic=t&since=1&since=2");
    assert_error(&twice, 400, "since twice");
}

#[test]
fn expired_events_are_not_replayed_and_a_resume_across_them_gets_the_gap() {
    let server = server(100, |config| config.history_ttl = 1_000);
    let addr = server.local_addr();
    let mut witness = subscribe(addr, &["t"]);
    let ids = publish_settled(&server, &mut witness, &[("t", "old1"), ("t", "old2")]);
    wait_past(unix_ms() + 1_000);
    // Nothing was published since: the rings drop the expired events when these read them.
    let mut earliest = Subscriber::open(addr, &target(&["t"], &[("lastEventId", "earliest")]), &[]);
    let mut since_zero = Subscriber::open(addr, &target(&["t"], &[("since", "0")]), &[]);
    let mut resume = Subscriber::open(addr, &target(&["t"], &[]), &[("Last-Event-ID", &ids[0])]);
    let got = before_live_end(
        &server,
        "t",
        &mut [&mut earliest, &mut since_zero, &mut resume],
    );
    assert_eq!(
        got[0],
        [],
        "earliest: the expired events are gone, and no gap"
    );
    assert_eq!(got[1], [], "since=0: the expired events are gone");
    let gap = (
        "gap".to_owned(),
        format!("{{\"lastEventId\":\"{}\"}}", ids[0]),
        String::new(),
    );
    assert_eq!(
        got[2],
        [gap],
        "a resume across expired events gets the gap event"
    );
}

/// Joins the cluster on `redis`'s stream `stream` as an in-process server.
fn join(redis: &RedisServer, stream: &str) -> Server {
    let (url, stream) = (redis.url(), stream.to_owned());
    start(move |config| {
        config.bus = BusKind::Redis;
        config.redis_url = url;
        config.redis_stream = stream;
    })
}

/// `ms` of a stream id `ms-n`.
fn id_ms(id: &str) -> u64 {
    split_id(id).0
}

#[test]
fn cluster_earliest_and_since_on_a_node_started_after_the_events_come_from_the_stream() {
    let redis = RedisServer::start("replay");
    let first = join(&redis, "replay");
    let mut witness = subscribe(first.local_addr(), &["r"]);
    wait_until("the first node reads the stream", || {
        let _ = first.handle().publish(&Event::new("warmup", "x"));
        first.handle().stats().events_published > 0
    });
    let data = ["e1", "e2", "e3", "e4", "e5", "e6"];
    let ids: Vec<String> = data
        .iter()
        .map(|d| {
            let id = publish(&first.handle(), &Event::new("r", *d)).to_string();
            assert_eq!(witness.next_event(d).data, *d);
            id
        })
        .collect();
    // A node that starts now has none of them in its rings: its reader begins at the
    // stream's end.
    let late = join(&redis, "replay");
    wait_until("the late node reads the stream", || {
        let _ = late.handle().publish(&Event::new("warmup", "y"));
        late.handle().stats().events_published > 0
    });
    let addr = late.local_addr();
    let since = id_ms(&ids[3]);
    let mut earliest = Subscriber::open(addr, &target(&["r"], &[("lastEventId", "earliest")]), &[]);
    let mut by_header =
        Subscriber::open(addr, &target(&["r"], &[]), &[("Last-Event-ID", "earliest")]);
    let mut by_ms = Subscriber::open(addr, &target(&["r"], &[("since", &since.to_string())]), &[]);
    let mut by_text = Subscriber::open(addr, &target(&["r"], &[("since", &rfc3339(since))]), &[]);
    let got = before_live_end(
        &late,
        "r",
        &mut [&mut earliest, &mut by_header, &mut by_ms, &mut by_text],
    );
    let all: Vec<(String, String, String)> = data
        .iter()
        .zip(&ids)
        .map(|(d, id)| ("message".to_owned(), (*d).to_owned(), id.clone()))
        .collect();
    assert!(
        scrape(addr).value("herald_redis_backfills_total") >= 4.0,
        "the late node's rings never held the events: the stream served them"
    );
    assert_eq!(got[0], all, "earliest from the stream, no gap");
    assert_eq!(got[1], all, "earliest by header from the stream");
    // Stream ids are the publish time: since is every entry of that millisecond or later.
    let from_since: Vec<_> = all
        .iter()
        .filter(|(_, _, id)| id_ms(id) >= since)
        .cloned()
        .collect();
    assert!(from_since.ends_with(&all[3..]), "{from_since:?}");
    assert_eq!(got[2], from_since, "since={since} from the stream");
    assert_eq!(
        got[3],
        from_since,
        "since={} from the stream",
        rfc3339(since)
    );
    drop(late);
    drop(first);
}

#[test]
fn cluster_expired_entries_are_not_backfilled_and_a_resume_across_them_gets_the_gap() {
    let redis = RedisServer::start("replay-ttl");
    let join_with_ttl = || {
        let (url, stream) = (redis.url(), "replay-ttl".to_owned());
        start(move |config| {
            config.bus = BusKind::Redis;
            config.redis_url = url;
            config.redis_stream = stream;
            config.history_ttl = 1_000;
        })
    };
    let first = join_with_ttl();
    let mut witness = subscribe(first.local_addr(), &["t"]);
    let mut before_old = String::new();
    wait_until("the first node reads the stream", || {
        if let Ok(id) = first.handle().publish(&Event::new("warmup", "x")) {
            before_old = id.to_string();
        }
        first.handle().stats().events_published > 0
    });
    let old = publish(&first.handle(), &Event::new("t", "old")).to_string();
    assert_eq!(witness.next_event("old").data, "old");
    // Redis's clock named the entry: wait until ours is a time to live past it.
    wait_past(id_ms(&old) + 1_000);
    let late = join_with_ttl();
    wait_until("the late node reads the stream", || {
        let _ = late.handle().publish(&Event::new("warmup", "y"));
        late.handle().stats().events_published > 0
    });
    let addr = late.local_addr();
    let mut earliest = Subscriber::open(addr, &target(&["t"], &[("lastEventId", "earliest")]), &[]);
    let mut since_zero = Subscriber::open(addr, &target(&["t"], &[("since", "0")]), &[]);
    // Without the time to live, this resume would be sent `old` from the stream.
    let mut resume = Subscriber::open(
        addr,
        &target(&["t"], &[]),
        &[("Last-Event-ID", &before_old)],
    );
    let got = before_live_end(
        &late,
        "t",
        &mut [&mut earliest, &mut since_zero, &mut resume],
    );
    assert_eq!(
        got[0],
        [],
        "earliest: the expired entry stays in the stream but is not sent"
    );
    assert_eq!(got[1], [], "since=0: the expired entry is not sent");
    let gap = (
        "gap".to_owned(),
        format!("{{\"lastEventId\":\"{before_old}\"}}"),
        String::new(),
    );
    assert_eq!(
        got[2],
        [gap],
        "a resume across the expired entry gets the gap event"
    );
    drop(late);
    drop(first);
}
