#![allow(clippy::unwrap_used)]
//! Library replay (issue 13, point 4 in Rust): `Handle::replay` returns what the history
//! keeps, as an HTTP subscription with `lastEventId=earliest`, `since` or a Last-Event-ID
//! replays it, over real sockets on the embedded bus.
//!
//! - Events published through the handle and over HTTP (names, `retry`, multi-line data
//!   with LF, CR and CRLF breaks) come back with their ids, names and data, each once, in
//!   id order, and equal to what an HTTP `lastEventId=earliest` stream is sent; a replay
//!   right after a publish includes it (the loop answers once it has taken it).
//! - `After` an id returns what follows it; after an evicted id or one that is not this
//!   bus's, `gap` is set and what is kept is returned. `Since` splits two groups of
//!   publishes at an instant measured between them (the wall clock is polled past it).
//! - With `--history-ttl`, expired events are not returned (the wall clock is polled past
//!   the time to live; nothing is timed).
//! - Wildcards read what the topics under them keep; an unknown topic is empty; bad input
//!   is refused with the documented errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use herald::{Event, PublishError, Replay, ReplayFrom, Server};

/// `(event name, data, id, retry)` of each replayed event.
fn rows(replay: &Replay) -> Vec<(Option<String>, String, String, Option<u32>)> {
    replay
        .events
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.data.clone(),
                e.id.to_string(),
                e.retry_ms,
            )
        })
        .collect()
}

/// `(event type, data, id)` as an EventSource reports each replayed event.
fn as_sse(replay: &Replay) -> Vec<(String, String, String)> {
    replay
        .events
        .iter()
        .map(|e| {
            (
                e.event.clone().unwrap_or_else(|| "message".into()),
                e.data.clone(),
                e.id.to_string(),
            )
        })
        .collect()
}

/// The ids of the replayed events.
fn ids(replay: &Replay) -> Vec<String> {
    replay.events.iter().map(|e| e.id.to_string()).collect()
}

fn replay(server: &Server, topics: &[&str], from: ReplayFrom) -> Replay {
    server
        .handle()
        .replay(topics, from)
        .unwrap_or_else(|error| panic!("replay {topics:?}: {error}"))
}

#[test]
fn earliest_returns_what_was_published_as_http_replays_it() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let handle = server.handle();
    let a = publish(
        &handle,
        &Event::new("r", "one\ntwo\n")
            .named("tick")
            .with_retry_ms(1500),
    );
    let b = publish_form(
        addr,
        &[("topic", "r"), ("event", "http"), ("data", "x\r\ny\rz")],
    );
    publish(&handle, &Event::new("other", "not r"));
    let c = publish(&handle, &Event::new("r", "").and_topic("s"));
    let got = replay(&server, &["r"], ReplayFrom::Earliest);
    assert!(!got.gap, "earliest asks for what is kept: no gap");
    assert_eq!(
        rows(&got),
        [
            (
                Some("tick".into()),
                "one\ntwo\n".into(),
                a.to_string(),
                Some(1500)
            ),
            (Some("http".into()), "x\ny\nz".into(), b.clone(), None),
            (None, String::new(), c.to_string(), None),
        ]
    );
    // An event on two of the topics asked for comes once.
    let both = replay(&server, &["s", "r", "r"], ReplayFrom::Earliest);
    assert_eq!(ids(&both), [a.to_string(), b, c.to_string()]);
    // The same as an HTTP replay of everything kept.
    let mut http = Subscriber::open(addr, "/events?topic=r&lastEventId=earliest", &[]);
    publish(&handle, &Event::new("r", "end"));
    let sent: Vec<(String, String, String)> = http
        .events_before("end")
        .into_iter()
        .map(|e| (e.event_type, e.data, e.last_event_id))
        .collect();
    assert_eq!(sent, as_sse(&got));
    // Nothing published to a topic: nothing kept, and no gap.
    let none = replay(&server, &["nobody"], ReplayFrom::Earliest);
    assert_eq!((none.events.len(), none.gap), (0, false));
}

#[test]
fn after_an_id_returns_what_follows_or_the_gap() {
    let server = start(|config| config.history_events = 3);
    let handle = server.handle();
    let published: Vec<String> = (1..=5)
        .map(|n| publish(&handle, &Event::new("t", format!("e{n}"))).to_string())
        .collect();
    // The history keeps e3..e5.
    let after_e3 = replay(&server, &["t"], ReplayFrom::After(published[2].clone()));
    assert_eq!(
        (ids(&after_e3), after_e3.gap),
        (published[3..].to_vec(), false)
    );
    let after_e2 = replay(&server, &["t"], ReplayFrom::After(published[1].clone()));
    assert_eq!(
        (ids(&after_e2), after_e2.gap),
        (published[2..].to_vec(), false),
        "e2 was evicted, but nothing after it was"
    );
    let after_e1 = replay(&server, &["t"], ReplayFrom::After(published[0].clone()));
    assert_eq!(
        (ids(&after_e1), after_e1.gap),
        (published[2..].to_vec(), true),
        "e2 is gone: a gap, then what is kept"
    );
    let newest = replay(&server, &["t"], ReplayFrom::After(published[4].clone()));
    assert_eq!((newest.events.len(), newest.gap), (0, false));
    for unknown in ["not-an-id", "1-99999", ""] {
        let got = replay(&server, &["t"], ReplayFrom::After(unknown.into()));
        assert_eq!(
            (ids(&got), got.gap),
            (published[2..].to_vec(), true),
            "unknown id {unknown:?}"
        );
    }
    let earliest = replay(&server, &["t"], ReplayFrom::After("earliest".into()));
    assert_eq!(
        (ids(&earliest), earliest.gap),
        (published[2..].to_vec(), false)
    );
}

#[test]
fn since_returns_what_was_published_from_then_on() {
    let server = start(|_| {});
    let handle = server.handle();
    publish(&handle, &Event::new("t", "before 1"));
    publish(&handle, &Event::new("t", "before 2"));
    // Both were published at or before `split`; everything after waits until the clock is
    // past it.
    let split = unix_ms();
    wait_past(split);
    let after: Vec<String> = ["after 1", "after 2"]
        .iter()
        .map(|data| publish(&handle, &Event::new("t", *data)).to_string())
        .collect();
    let since = UNIX_EPOCH + Duration::from_millis(split + 1);
    let got = replay(&server, &["t"], ReplayFrom::Since(since));
    assert_eq!((ids(&got), got.gap), (after, false));
    let all = replay(&server, &["t"], ReplayFrom::Since(UNIX_EPOCH));
    assert_eq!(all.events.len(), 4);
    let future = replay(
        &server,
        &["t"],
        ReplayFrom::Since(SystemTime::now() + Duration::from_secs(3600)),
    );
    assert_eq!((future.events.len(), future.gap), (0, false));
}

#[test]
fn the_time_to_live_is_respected() {
    const TTL_MS: u64 = 400;
    let server = start(|config| config.history_ttl = TTL_MS);
    let handle = server.handle();
    let before = unix_ms();
    let id = publish(&handle, &Event::new("t", "short-lived")).to_string();
    let fresh = replay(&server, &["t"], ReplayFrom::Earliest);
    // Only while the event cannot have expired yet is it required (nothing is timed).
    if unix_ms() < before + TTL_MS {
        assert_eq!(ids(&fresh), std::slice::from_ref(&id));
    }
    wait_past(unix_ms() + TTL_MS);
    let expired = replay(&server, &["t"], ReplayFrom::Earliest);
    assert_eq!((expired.events.len(), expired.gap), (0, false));
    let since = replay(&server, &["t"], ReplayFrom::Since(UNIX_EPOCH));
    assert_eq!(since.events.len(), 0);
    let after = replay(&server, &["t"], ReplayFrom::After("0-0".into()));
    assert_eq!(after.events.len(), 0);
    // Resuming across the expired event is a gap.
    let start_id = {
        let (epoch, _) = split_id(&id);
        format!("{epoch}-0")
    };
    let across = replay(&server, &["t"], ReplayFrom::After(start_id));
    assert_eq!((across.events.len(), across.gap), (0, true));
}

#[test]
fn wildcards_read_the_topics_under_them() {
    let server = start(|_| {});
    let handle = server.handle();
    let a = publish(&handle, &Event::new("room/a", "a")).to_string();
    publish(&handle, &Event::new("hall", "h"));
    let b = publish(&handle, &Event::new("room/b", "b").and_topic("room/a")).to_string();
    let got = replay(&server, &["room/*"], ReplayFrom::Earliest);
    assert_eq!((ids(&got), got.gap), (vec![a.clone(), b.clone()], false));
    let with_topic = replay(&server, &["room/*", "room/a"], ReplayFrom::After(a));
    assert_eq!(ids(&with_topic), [b]);
    let empty = replay(&server, &["nothing/*"], ReplayFrom::Earliest);
    assert_eq!(empty.events.len(), 0);
}

#[test]
fn bad_input_is_refused() {
    let server = start(|config| {
        config.max_topics_per_subscription = 2;
        config.max_patterns_per_subscription = 1;
    });
    let handle = server.handle();
    let from = || ReplayFrom::Earliest;
    assert_eq!(
        handle.replay(&["a", "b", "c"], from()),
        Err(PublishError::TooManyTopics)
    );
    assert!(
        handle.replay(&["a", "b", "a"], from()).is_ok(),
        "a name given twice counts once"
    );
    assert_eq!(handle.replay(&[], from()), Err(PublishError::NoTopic));
    for bad in ["a b", "", "é", "a*b", "**", "a,b"] {
        assert_eq!(
            handle.replay(&[bad], from()),
            Err(PublishError::InvalidTopic),
            "{bad:?}"
        );
    }
    assert_eq!(
        handle.replay(&["a*", "b*"], from()),
        Err(PublishError::InvalidTopic),
        "more wildcards than max_patterns_per_subscription"
    );
    let no_patterns = start(|config| config.max_patterns_per_subscription = 0);
    assert_eq!(
        no_patterns.handle().replay(&["a*"], from()),
        Err(PublishError::InvalidTopic)
    );
}

/// A loop takes a few events from its inbox per pass (here two: half a ring of four); a
/// replay asked right after a larger batch still sees all of it, since the loop answers
/// only once it has taken every event published before the question.
#[test]
fn a_replay_sees_every_event_published_before_it() {
    let server = start(|config| config.history_events = 4);
    let topics: Vec<String> = (0..12).map(|n| format!("t{n}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let events: Vec<Event> = names.iter().map(|t| Event::new(*t, *t)).collect();
    let published: Vec<String> = server
        .handle()
        .publish_batch(&events)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let got = replay(&server, &names, ReplayFrom::Earliest);
    assert_eq!(ids(&got), published);
}

/// With the Redis bus (a real `redis-server`): a replay right after `Handle::publish` sees
/// the event, though the loops get it only when the stream's reader reads it back (the
/// reader is usually first; when it is not, the loop waits for it: this test cannot force
/// that order, `a_replay_sees_every_event_published_before_it` covers the waiting); a node
/// started after the events holds none of them and says so with `gap` (an HTTP stream
/// there would fetch them from the stream; a replay answers from memory only).
#[test]
fn on_the_redis_bus_a_replay_sees_own_publishes_and_tells_what_memory_lacks() {
    let redis = testkit::redis::RedisServer::start("library-replay");
    let join = || {
        let url = redis.url();
        start(move |config| {
            config.bus = herald::BusKind::Redis;
            config.redis_url = url;
            config.redis_stream = "library-replay".into();
        })
    };
    let one = join();
    let handle = one.handle();
    // Events stored before the reader first reads the stream's end never reach the loops,
    // and would make `earliest` incomplete in memory (a gap): publish only once the node is
    // ready, which it is after its reader has read the (empty) stream's end.
    let addr = one.local_addr();
    wait_until(
        "the node is ready (its reader read the stream's end)",
        || get(addr, "/readyz").status == 200,
    );
    let published: Vec<String> = ["a\nb", "c"]
        .iter()
        .map(|data| publish(&handle, &Event::new("t", *data).named("n")).to_string())
        .collect();
    let got = replay(&one, &["t"], ReplayFrom::Earliest);
    assert_eq!(
        rows(&got),
        [
            (Some("n".into()), "a\nb".into(), published[0].clone(), None),
            (Some("n".into()), "c".into(), published[1].clone(), None),
        ]
    );
    assert!(!got.gap, "the node read the stream from its start: {got:?}");
    let after = replay(&one, &["t"], ReplayFrom::After(published[0].clone()));
    assert_eq!(
        (ids(&after), after.gap),
        (vec![published[1].clone()], false)
    );
    let two = join();
    wait_until("the second node reads the stream", || {
        let _ = handle.publish(&Event::new("warmup", "y"));
        two.handle().stats().events_published > 0
    });
    let late = replay(&two, &["t"], ReplayFrom::Earliest);
    assert_eq!((late.events.len(), late.gap), (0, true));
}
