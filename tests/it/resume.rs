#![allow(clippy::unwrap_used)]
//! Resume with `Last-Event-ID` (header) and `lastEventId` (query; the header wins): inside
//! the history, at its edge, older than it (gap event, then what is kept), from another
//! epoch or an unparseable id (gap, then everything kept), for one topic and for several.
//!
//! Most scenarios are rows of one table ([`cases`]), each run by [`check`] on a fresh server:
//! publish a history, resume, publish a live `end`, and compare both the parsed events and
//! the exact bytes received with what the row says. History is five events per topic. The
//! servers run one event loop and a witness subscriber reads every published event before a
//! resuming subscriber connects, so the loop's history is settled and the expected answer is
//! exact.

use std::net::SocketAddr;

use crate::common::*;
use herald::{Event, Server};

const HISTORY_EVENTS: usize = 5;

/// A one-loop server with five events of history per topic.
fn history_server(tweak: impl FnOnce(&mut herald::Config)) -> Server {
    start(|config| {
        config.threads = 1;
        config.history_events = HISTORY_EVENTS;
        tweak(config);
    })
}

/// Publishes `data` to `topic` in order, each once a witness subscriber has seen the one
/// before (so the witness never falls behind the small history), and returns the ids.
fn publish_settled(server: &Server, publishes: &[(&str, &str)]) -> Vec<String> {
    let mut topics: Vec<&str> = publishes.iter().map(|(t, _)| *t).collect();
    topics.sort_unstable();
    topics.dedup();
    let mut witness = subscribe(server.local_addr(), &topics);
    let handle = server.handle();
    publishes
        .iter()
        .map(|(topic, data)| {
            let id = publish(&handle, &Event::new(*topic, *data)).to_string();
            let seen = witness.next_event(&format!("the witness's copy of {data}"));
            assert_eq!(
                (seen.data.as_str(), seen.last_event_id.as_str()),
                (*data, id.as_str()),
                "the witness must see every publish once, in order"
            );
            id
        })
        .collect()
}

/// `e1..e8` on `r`.
const DATA: [&str; 8] = ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"];

/// What a case publishes before the resume.
#[derive(Clone, Copy, Debug)]
enum History {
    /// `e1..e8` on `r`: the history keeps `e4..e8`; `e3` is the newest evicted event.
    Eight,
    /// `x1..x3` on `x`, then `y1..y7` on `y`: seqs 1..3 and 4..10; `y1` and `y2` (seqs 4, 5)
    /// are evicted.
    TwoTopics,
    /// `x1..x3`, `y1..y7`, `x4`, `y8`, `x5`: `x` keeps `x1..x5` (nothing evicted); `y` keeps
    /// `y4..y8` (`y3`, seq 6, is its newest evicted).
    Interleaved,
    /// `one`, `two` on `s`: fewer events than the history holds.
    Short,
}

impl History {
    /// (topic, data) in publish order; a data's first letter names its topic.
    fn publishes(self) -> Vec<(&'static str, &'static str)> {
        let data: &[&'static str] = match self {
            History::Eight => return DATA.iter().map(|d| ("r", *d)).collect(),
            History::Short => return vec![("s", "one"), ("s", "two")],
            History::TwoTopics => &["x1", "x2", "x3", "y1", "y2", "y3", "y4", "y5", "y6", "y7"],
            History::Interleaved => &[
                "x1", "x2", "x3", "y1", "y2", "y3", "y4", "y5", "y6", "y7", "x4", "y8", "x5",
            ],
        };
        data.iter().map(|d| (&d[..1], *d)).collect()
    }
}

/// The id a resuming client sends.
#[derive(Clone, Copy, Debug)]
enum Given {
    /// The id of the n-th publish (1-based: `Nth(5)` is `e5`'s).
    Nth(usize),
    /// The n-th publish's sequence with the epoch before the server's.
    OtherEpoch(usize),
    /// These exact bytes.
    Text(&'static str),
}

impl Given {
    fn resolve(self, ids: &[String]) -> String {
        match self {
            Given::Nth(n) => ids[n - 1].clone(),
            Given::OtherEpoch(n) => {
                let (epoch, seq) = split_id(&ids[n - 1]);
                format!("{}-{seq}", epoch - 1)
            }
            Given::Text(text) => text.to_owned(),
        }
    }
}

/// One resume scenario.
#[derive(Debug)]
struct Case {
    name: &'static str,
    history: History,
    /// The topics resumed; the live `end` goes to the first.
    topics: &'static [&'static str],
    /// `Last-Event-ID`.
    header: Option<Given>,
    /// `?lastEventId=`.
    query: Option<Given>,
    /// Whether a gap event for the winning id (the header's, if any) comes first.
    gap: bool,
    /// The publishes replayed (1-based, in this order) before the live `end`.
    replay: &'static [usize],
}

/// One row of [`cases`].
fn case(
    history: History,
    topics: &'static [&'static str],
    header: Option<Given>,
    query: Option<Given>,
    gap: bool,
    replay: &'static [usize],
    name: &'static str,
) -> Case {
    Case {
        name,
        history,
        topics,
        header,
        query,
        gap,
        replay,
    }
}

/// Every scenario, one row each. `Eight` keeps e4..e8 (`KEPT`); see [`History`] for the others.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Given::*;
    use History::*;
    const KEPT: &[usize] = &[4, 5, 6, 7, 8];
    const XY: &[&str] = &["x", "y"];
    let mut cases = vec![
        //   history      topics  header        query         gap    replay
        case(Eight,       &["r"], Some(Nth(5)), None,         false, &[6, 7, 8], "inside the history by header"),
        case(Eight,       &["r"], None,         Some(Nth(5)), false, &[6, 7, 8], "inside the history by query"),
        case(Eight,       &["r"], Some(Nth(6)), None,         false, &[7, 8],    "inside the history, later"),
        case(Eight,       &["r"], Some(Nth(6)), Some(Nth(1)), false, &[7, 8],    "a header inside the history wins over an older query"),
        case(Eight,       &["r"], Some(Nth(1)), Some(Nth(6)), true,  KEPT,       "an older header wins over a query inside the history"),
        case(Eight,       &["r"], Some(Nth(8)), None,         false, &[],        "from the newest event: only live events"),
        case(Eight,       &["r"], Some(Nth(3)), None,         false, KEPT,       "at the edge (e3, the newest evicted): no gap"),
        case(Eight,       &["r"], Some(Nth(1)), None,         true,  KEPT,       "older than the history (e1)"),
        case(Eight,       &["r"], Some(Nth(2)), None,         true,  KEPT,       "older than the history (e2)"),
        case(Eight,       &["r"], None,         Some(Nth(1)), true,  KEPT,       "older than the history by query"),
        case(Eight,       &["r"], Some(Text("1-5")), None,    true,  KEPT,       "from another epoch (1-5)"),
        case(Eight,       &["r"], Some(OtherEpoch(6)), None,  true,  KEPT,       "from the epoch before the server's"),
        // Nothing was evicted, yet another epoch is a gap.
        case(Short,       &["s"], Some(Text("1-1")), None,    true,  &[1, 2],    "another epoch, short history"),
        // After y5 (seq 8) nothing missed was evicted: no gap, the missed events of both
        // topics in id order.
        case(Interleaved, XY,     Some(Nth(8)), None,         false, &[9, 10, 11, 12, 13], "two topics inside the history"),
        // y2 (seq 5) is y's newest evicted event; x evicted nothing.
        case(TwoTopics,   XY,     Some(Nth(5)), None,         false, &[6, 7, 8, 9, 10], "two topics at one topic's edge"),
        // After x3 (seq 3): y evicted y1 and y2 (seqs 4, 5 > 3), so there is a gap, then
        // every kept event of x and y after x3, in id order. x1..x3 are still kept but the
        // client already has them, so they are not sent again.
        case(TwoTopics,   XY,     Some(Nth(3)), None,         true,  &[6, 7, 8, 9, 10], "two topics, older than one topic's history"),
        // Only x: after x1, x2 and x3 follow; y's evictions do not matter.
        case(TwoTopics,   &["x"], Some(Nth(1)), None,         false, &[2, 3],    "a topic that evicted nothing is never a gap"),
    ];
    for given in ["banana", "5", "-", "12-", "-3", "1-2-3", "x-1"] {
        cases.push(case(Eight, &["r"], Some(Text(given)), None, true, KEPT, "an unparseable id"));
    }
    cases
}

/// Runs one case on a fresh server: the parsed events and the exact bytes after the opening
/// `retry:` frame must be the gap (if any), the replay, then the live `end`.
fn check(case: &Case) {
    let server = history_server(|_| {});
    let publishes = case.history.publishes();
    let ids = publish_settled(&server, &publishes);
    let header = case.header.map(|given| given.resolve(&ids));
    let query = case.query.map(|given| given.resolve(&ids));
    let headers: Vec<(&str, &str)> = header
        .iter()
        .map(|id| ("Last-Event-ID", id.as_str()))
        .collect();
    let target = events_target(case.topics, query.as_deref());
    let mut subscriber = Subscriber::open(server.local_addr(), &target, &headers);
    let (got, live) = received_until_live_end(&server, &mut subscriber, case.topics[0]);

    let winner = header
        .as_ref()
        .or(query.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut expected = Vec::new();
    let mut expected_bytes = String::new();
    if case.gap {
        expected.push(gap_event(&winner));
        expected_bytes.push_str(&gap_frame("gap", &winner));
    }
    for &n in case.replay {
        let (id, data) = (&ids[n - 1], publishes[n - 1].1);
        expected.push(("message".to_owned(), data.to_owned(), id.clone()));
        expected_bytes.push_str(&format!("id: {id}\ndata: {data}\n\n"));
    }
    expected_bytes.push_str(&format!("id: {live}\ndata: end\n\n"));
    let context = format!("{} (header {header:?}, query {query:?})", case.name);
    assert_eq!(got, expected, "{context}");
    assert_eq!(
        String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
        expected_bytes,
        "{context}"
    );
}

#[test]
fn every_resume_case_gets_its_gap_and_replay_then_live_events() {
    for case in cases() {
        check(&case);
    }
}

fn resume_with_header(addr: SocketAddr, topics: &[&str], id: &str) -> Subscriber {
    Subscriber::open(addr, &events_target(topics, None), &[("Last-Event-ID", id)])
}

/// Publishes a live `end` event to `topic`; returns `(type, data, id)` of everything received
/// before it, and the live event's id.
fn received_until_live_end(
    server: &Server,
    subscriber: &mut Subscriber,
    topic: &str,
) -> (Vec<(String, String, String)>, String) {
    let live = publish(&server.handle(), &Event::new(topic, "end")).to_string();
    let events = subscriber.events_before("end");
    assert_eq!(
        subscriber.last_event_id(),
        live.as_str(),
        "the live event follows the replay"
    );
    let events = events
        .into_iter()
        .map(|e| (e.event_type, e.data, e.last_event_id))
        .collect();
    (events, live)
}

/// The parsed gap event for a resume with `given`: no id line, so the last event ID string is
/// still empty.
fn gap_event(given: &str) -> (String, String, String) {
    (
        "gap".to_owned(),
        format!("{{\"lastEventId\":\"{given}\"}}"),
        String::new(),
    )
}

fn gap_frame(gap_event: &str, given: &str) -> String {
    format!("event: {gap_event}\ndata: {{\"lastEventId\":\"{given}\"}}\n\n")
}

#[test]
fn gap_event_name_is_configurable() {
    let server = history_server(|config| config.gap_event = "reset-state".to_owned());
    let ids = publish_settled(&server, &History::Eight.publishes());
    let mut subscriber = resume_with_header(server.local_addr(), &["r"], &ids[0]);
    let gap = subscriber.next_event("the gap event");
    assert_eq!(gap.event_type, "reset-state");
    assert_eq!(gap.data, format!("{{\"lastEventId\":\"{}\"}}", ids[0]));
    assert!(
        subscriber
            .raw_after_retry_frame()
            .starts_with(gap_frame("reset-state", &ids[0]).as_bytes()),
        "gap frame bytes: {:?}",
        String::from_utf8_lossy(subscriber.raw_after_retry_frame())
    );
}

#[test]
fn resume_on_a_two_loop_server_inside_history() {
    // With two loops the resuming subscriber may land on either (and the witness tells only
    // about its own loop); a resume inside the history has the same answer on both.
    for _ in 0..4 {
        let server = start(|config| config.history_events = HISTORY_EVENTS);
        let handle = server.handle();
        let mut witness = subscribe(server.local_addr(), &["r"]);
        let ids: Vec<String> = DATA
            .iter()
            .map(|d| publish(&handle, &Event::new("r", *d)).to_string())
            .collect();
        witness.events(8);
        let mut subscriber = resume_with_header(server.local_addr(), &["r"], &ids[4]);
        let expected: Vec<(String, String, String)> = (5..=7)
            .map(|i| ("message".to_owned(), DATA[i].to_owned(), ids[i].clone()))
            .collect();
        assert_eq!(
            received_until_live_end(&server, &mut subscriber, "r").0,
            expected
        );
    }
}

/// A client that reconnects before its first event, as a browser does after a dropped
/// connection, resumes from where its first stream started: the opening frame carries the
/// start's `id:` (an id-only block sets an EventSource's last event id without firing), so
/// an event published while it was away is not lost. Two loops, so the reconnect may land
/// on the other loop. Without that id the client had nothing to send and started again at
/// the newest event, losing the one in between (the churn load test's "unanchored" loss).
#[test]
fn a_client_that_reconnects_before_its_first_event_gets_what_was_published_meanwhile() {
    let server = start(|config| config.threads = 2);
    let addr = server.local_addr();
    let handle = server.handle();
    // Some history first, so the start is not simply "before every event".
    publish(&handle, &Event::new("t", "before"));
    publish(&handle, &Event::new("other", "elsewhere"));
    for round in 0..4 {
        let first = subscribe(addr, &["t"]);
        let start_id = first.last_event_id().to_owned();
        assert!(
            !start_id.is_empty(),
            "round {round}: the opening frame gives no id to resume from: {:?}",
            String::from_utf8_lossy(&first.raw)
        );
        drop(first);
        let missed = format!("published while away {round}");
        let id = publish(&handle, &Event::new("t", missed.as_str())).to_string();
        let mut again = Subscriber::open(
            addr,
            &events_target(&["t"], None),
            &[("Last-Event-ID", &start_id)],
        );
        let event = again.next_event(&format!("round {round}: the event published while away"));
        assert_eq!(
            (event.data.as_str(), event.last_event_id.as_str()),
            (missed.as_str(), id.as_str()),
            "round {round}"
        );
    }
}

/// Found by the simulation: a gap with nothing kept after it left the client's last id
/// where it was, so every reconnect before the topic's next event reported the same gap
/// again (after a restart, every client of a quiet topic would refetch its state on every
/// reconnect). The stream now moves the client's id to where it starts, once the gap is
/// told, so a reconnect from there is not a gap.
#[test]
fn a_gap_with_nothing_kept_after_it_is_told_once() {
    let server = history_server(|config| config.heartbeat_ms = 200);
    let addr = server.local_addr();
    // An id from another epoch, on a topic with no history here.
    let target = events_target(&["quiet"], None);
    let mut first = Subscriber::open(addr, &target, &[("Last-Event-ID", "1-5")]);
    let gap = first.next_event("the gap event");
    assert_eq!(gap.event_type, "gap");
    // The heartbeat comes after the stream's first bytes, so they have all been read.
    first.wait_for_comments(1, "a heartbeat after the first bytes");
    let moved = first.last_event_id().to_owned();
    assert!(
        !moved.is_empty() && moved != "1-5",
        "after the gap the client's last id must move to where its stream starts, got {moved:?}"
    );
    drop(first);
    let mut again = Subscriber::open(addr, &target, &[("Last-Event-ID", moved.as_str())]);
    let id = publish(&server.handle(), &Event::new("quiet", "live"));
    let event = again.next_event("the live event, with no gap before it");
    assert_eq!(
        (
            event.event_type.as_str(),
            event.data.as_str(),
            event.last_event_id.as_str()
        ),
        ("message", "live", id.as_str())
    );
}
