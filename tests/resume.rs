#![allow(clippy::unwrap_used)]
//! Resume with `Last-Event-ID` (header) and `lastEventId` (query; the header wins): inside
//! the history, at its edge, older than it (gap event, then what is kept), from another
//! epoch or an unparseable id (gap, then everything kept), for one topic and for several.
//!
//! History is five events per topic. The servers run one event loop and a witness
//! subscriber reads every published event before a resuming subscriber connects, so the
//! loop's history is settled and the expected answer is exact.

mod common;

use std::net::SocketAddr;

use common::*;
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

/// Eight events `e1..e8` on topic `r`; history keeps `e4..e8`.
fn eight_events(server: &Server) -> Vec<String> {
    let publishes: Vec<(&str, &str)> = ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"]
        .iter()
        .map(|d| ("r", *d))
        .collect();
    publish_settled(server, &publishes)
}

fn resume_with_header(addr: SocketAddr, topics: &[&str], id: &str) -> Subscriber {
    Subscriber::open(addr, &events_target(topics, None), &[("Last-Event-ID", id)])
}

fn resume_with_query(addr: SocketAddr, topics: &[&str], id: &str) -> Subscriber {
    Subscriber::open(addr, &events_target(topics, Some(id)), &[])
}

/// Publishes a live `end` event to `topic` and returns `(type, data, id)` of everything
/// received before it.
fn received_until_live_end(
    server: &Server,
    subscriber: &mut Subscriber,
    topic: &str,
) -> Vec<(String, String, String)> {
    let live = publish(&server.handle(), &Event::new(topic, "end"));
    let events = subscriber.events_before("end");
    assert_eq!(
        subscriber.last_event_id(),
        live.as_str(),
        "the live event follows the replay"
    );
    events
        .into_iter()
        .map(|e| (e.event_type, e.data, e.last_event_id))
        .collect()
}

fn messages(
    ids: &[String],
    data: &[&str],
    indexes: std::ops::RangeInclusive<usize>,
) -> Vec<(String, String, String)> {
    indexes
        .map(|i| ("message".to_owned(), data[i].to_owned(), ids[i].clone()))
        .collect()
}

const DATA: [&str; 8] = ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"];

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
fn resume_inside_history_by_header_gets_exactly_the_missed_events_then_live() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    let mut subscriber = resume_with_header(server.local_addr(), &["r"], &ids[4]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "r"),
        messages(&ids, &DATA, 5..=7),
        "resume after e5"
    );
}

#[test]
fn resume_inside_history_replays_the_exact_frames() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    let mut subscriber = resume_with_header(server.local_addr(), &["r"], &ids[5]);
    subscriber.events(2);
    assert_eq!(
        String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
        format!("id: {}\ndata: e7\n\nid: {}\ndata: e8\n\n", ids[6], ids[7])
    );
}

#[test]
fn resume_inside_history_by_query_parameter() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    let mut subscriber = resume_with_query(server.local_addr(), &["r"], &ids[4]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "r"),
        messages(&ids, &DATA, 5..=7),
        "resume after e5 with ?lastEventId="
    );
}

#[test]
fn header_inside_history_wins_over_older_query_parameter() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    // Header e6 (inside the history), query e1 (older than it): no gap, e7 and e8.
    let mut subscriber = Subscriber::open(
        server.local_addr(),
        &events_target(&["r"], Some(&ids[0])),
        &[("Last-Event-ID", &ids[5])],
    );
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "r"),
        messages(&ids, &DATA, 6..=7),
        "Last-Event-ID e6 with ?lastEventId=e1"
    );
}

#[test]
fn older_header_wins_over_query_parameter_inside_history() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    // Header e1 (older than the history), query e6: gap, then everything kept.
    let mut subscriber = Subscriber::open(
        server.local_addr(),
        &events_target(&["r"], Some(&ids[5])),
        &[("Last-Event-ID", &ids[0])],
    );
    let mut expected = vec![gap_event(&ids[0])];
    expected.extend(messages(&ids, &DATA, 3..=7));
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "r"),
        expected,
        "Last-Event-ID e1 with ?lastEventId=e6"
    );
}

#[test]
fn resume_from_the_newest_event_gets_only_live_events() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    let mut subscriber = resume_with_header(server.local_addr(), &["r"], &ids[7]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "r"),
        vec![]
    );
}

#[test]
fn resume_at_the_edge_of_history_has_no_gap() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    // e3 is the newest evicted event: everything after it is still kept.
    let mut subscriber = resume_with_header(server.local_addr(), &["r"], &ids[2]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "r"),
        messages(&ids, &DATA, 3..=7),
        "resume after e3 (the newest evicted)"
    );
}

#[test]
fn resume_older_than_history_gets_gap_then_what_is_kept() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    for given in [&ids[0], &ids[1]] {
        let mut subscriber = resume_with_header(server.local_addr(), &["r"], given);
        subscriber.events(6);
        let expected = format!(
            "{}id: {}\ndata: e4\n\nid: {}\ndata: e5\n\nid: {}\ndata: e6\n\nid: {}\ndata: e7\n\nid: {}\ndata: e8\n\n",
            gap_frame("gap", given),
            ids[3],
            ids[4],
            ids[5],
            ids[6],
            ids[7]
        );
        assert_eq!(
            String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
            expected,
            "resume after {given} (older than history)"
        );
    }
}

#[test]
fn resume_older_than_history_by_query_parameter() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    let mut subscriber = resume_with_query(server.local_addr(), &["r"], &ids[0]);
    let got = received_until_live_end(&server, &mut subscriber, "r");
    let mut expected = vec![gap_event(&ids[0])];
    expected.extend(messages(&ids, &DATA, 3..=7));
    assert_eq!(got, expected);
}

#[test]
fn resume_from_another_epoch_gets_gap_then_everything_kept() {
    let server = history_server(|_| {});
    let ids = eight_events(&server);
    let (epoch, seq) = split_id(&ids[5]);
    let other_epoch = format!("{}-{seq}", epoch - 1);
    for given in ["1-5", other_epoch.as_str()] {
        let mut subscriber = resume_with_header(server.local_addr(), &["r"], given);
        subscriber.events(6);
        let expected = format!(
            "{}id: {}\ndata: e4\n\nid: {}\ndata: e5\n\nid: {}\ndata: e6\n\nid: {}\ndata: e7\n\nid: {}\ndata: e8\n\n",
            gap_frame("gap", given),
            ids[3],
            ids[4],
            ids[5],
            ids[6],
            ids[7]
        );
        assert_eq!(
            String::from_utf8_lossy(subscriber.raw_after_retry_frame()),
            expected,
            "resume with {given:?} from another epoch"
        );
    }
}

#[test]
fn resume_with_an_unparseable_id_gets_gap_then_everything_kept() {
    for given in ["banana", "5", "-", "12-", "-3", "1-2-3", "x-1"] {
        let server = history_server(|_| {});
        let ids = eight_events(&server);
        let mut subscriber = resume_with_header(server.local_addr(), &["r"], given);
        let got = received_until_live_end(&server, &mut subscriber, "r");
        let mut expected = vec![gap_event(given)];
        expected.extend(messages(&ids, &DATA, 3..=7));
        assert_eq!(got, expected, "resume with {given:?}");
    }
}

#[test]
fn resume_from_another_epoch_with_small_history_gets_all_of_it() {
    // Fewer events than the history holds: nothing was evicted, yet another epoch is a gap.
    let server = history_server(|_| {});
    let ids = publish_settled(&server, &[("s", "one"), ("s", "two")]);
    let mut subscriber = resume_with_header(server.local_addr(), &["s"], "1-1");
    let got = received_until_live_end(&server, &mut subscriber, "s");
    assert_eq!(
        got,
        vec![
            gap_event("1-1"),
            ("message".to_owned(), "one".to_owned(), ids[0].clone()),
            ("message".to_owned(), "two".to_owned(), ids[1].clone()),
        ]
    );
}

#[test]
fn gap_event_name_is_configurable() {
    let server = history_server(|config| config.gap_event = "reset-state".to_owned());
    let ids = eight_events(&server);
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

/// x1..x3 on `x`, then y1..y7 on `y`: seqs 1..3 and 4..10; y1 and y2 (seqs 4, 5) are evicted.
fn two_topics(server: &Server) -> Vec<String> {
    publish_settled(
        server,
        &[
            ("x", "x1"),
            ("x", "x2"),
            ("x", "x3"),
            ("y", "y1"),
            ("y", "y2"),
            ("y", "y3"),
            ("y", "y4"),
            ("y", "y5"),
            ("y", "y6"),
            ("y", "y7"),
        ],
    )
}

const TWO_TOPICS_DATA: [&str; 10] = ["x1", "x2", "x3", "y1", "y2", "y3", "y4", "y5", "y6", "y7"];

#[test]
fn multi_topic_resume_inside_history_merges_missed_events_in_id_order() {
    let server = history_server(|_| {});
    let data = [
        "x1", "x2", "x3", "y1", "y2", "y3", "y4", "y5", "y6", "y7", "x4", "y8", "x5",
    ];
    let publishes: Vec<(&str, &str)> = data.iter().map(|d| (&d[..1], *d)).collect();
    let ids = publish_settled(&server, &publishes);
    // x keeps x1..x5 (nothing evicted); y keeps y4..y8 (y3, seq 6, is its newest evicted).
    // After y5 (seq 8) nothing missed was evicted: no gap, the missed events of both topics
    // in id order.
    let mut subscriber = resume_with_header(server.local_addr(), &["x", "y"], &ids[7]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "x"),
        messages(&ids, &data, 8..=12)
    );
}

#[test]
fn multi_topic_resume_at_the_edge_of_one_topic_has_no_gap() {
    let server = history_server(|_| {});
    let ids = two_topics(&server);
    // y2 (seq 5) is y's newest evicted event; x evicted nothing.
    let mut subscriber = resume_with_header(server.local_addr(), &["x", "y"], &ids[4]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "x"),
        messages(&ids, &TWO_TOPICS_DATA, 5..=9)
    );
}

#[test]
fn multi_topic_resume_older_than_one_topics_history_gets_gap_then_every_kept_event_after_it() {
    let server = history_server(|_| {});
    let ids = two_topics(&server);
    // After x3 (seq 3): y evicted y1 and y2 (seqs 4, 5 > 3), so there is a gap, and then
    // every kept event of x and y after x3, in id order. x1..x3 are still kept but the
    // client already has them, so they are not sent again.
    let mut subscriber = resume_with_header(server.local_addr(), &["x", "y"], &ids[2]);
    let got = received_until_live_end(&server, &mut subscriber, "y");
    let mut expected = vec![gap_event(&ids[2])];
    expected.extend(messages(&ids, &TWO_TOPICS_DATA, 5..=9));
    assert_eq!(got, expected);
}

#[test]
fn resume_of_a_topic_that_evicted_nothing_is_never_a_gap() {
    let server = history_server(|_| {});
    let ids = two_topics(&server);
    // Only x: after x1, x2 and x3 follow; y's evictions do not matter.
    let mut subscriber = resume_with_header(server.local_addr(), &["x"], &ids[0]);
    assert_eq!(
        received_until_live_end(&server, &mut subscriber, "x"),
        messages(&ids, &TWO_TOPICS_DATA, 1..=2)
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
        assert_eq!(
            received_until_live_end(&server, &mut subscriber, "r"),
            messages(&ids, &DATA, 5..=7)
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
