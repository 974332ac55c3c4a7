//! Unit tests of the topic table (`history/topics.rs`).

use super::*;
use bytes::Bytes;

fn limits(events: usize, bytes: usize, total_bytes: usize) -> HistoryLimits {
    HistoryLimits {
        events,
        bytes,
        total_bytes,
        ttl_ms: None,
    }
}

fn frame(len: usize) -> Frame {
    Bytes::from(vec![b'x'; len])
}

#[test]
fn names() {
    assert!(is_valid_name("prices/AAPL:1", 128));
    assert!(is_valid_name("a", 1));
    assert!(!is_valid_name("", 128));
    assert!(!is_valid_name("ab", 1));
    assert!(!is_valid_name("a b", 128));
    assert!(!is_valid_name("a*", 128));
    assert!(!is_valid_name("é", 128));
}

#[test]
fn per_topic_count_limit() {
    let mut topics = Topics::new(limits(2, usize::MAX, usize::MAX));
    for seq in 1..=5 {
        topics.append(seq, &["a".into()], &frame(10));
    }
    let id = topics.find("a").unwrap();
    let ring = &topics.get(id).unwrap().ring;
    assert_eq!((ring.oldest_seq(), ring.evicted_max()), (Some(4), 3));
}

#[test]
fn distinct_topic_flood_stays_within_total_budget() {
    let budget = 64 * 1024;
    let mut topics = Topics::new(limits(100, 10_000, budget));
    let mut sink = Vec::new();
    for seq in 1..=10_000u128 {
        topics.append(seq, &[format!("t{seq}").into()], &frame(100));
        topics.take_dirty(&mut sink);
        topics.sweep(&sink);
        assert!(topics.charged_bytes() <= budget);
    }
    assert!(topics.len() < 400, "{} topics kept", topics.len());
    assert!(topics.order.len() <= 2 * topics.entries_live + 64);
    // A topic created after others were forgotten reports their evictions as a gap.
    let (id, _) = topics.subscribe("t1", SubscriberRef { conn: 0, slot: 0 });
    assert!(!topics.get(id).unwrap().ring.covers(1));
}

/// Subscriptions to many topics do not use up the history budget: a new event on a
/// subscribed topic is kept until it is sent, however many topics are subscribed.
#[test]
fn subscribed_topics_do_not_crowd_out_new_events() {
    let budget = 64 * 1024;
    let mut topics = Topics::new(limits(100, 10_000, budget));
    let name = |i: usize| format!("{i:0>120}");
    for i in 0..1_000 {
        topics.subscribe(&name(i), SubscriberRef { conn: i, slot: 0 });
    }
    assert_eq!(
        topics.charged_bytes(),
        0,
        "subscribed topics are not charged"
    );
    topics.append(1, &[name(7).into()], &frame(100));
    let id = topics.find(&name(7)).unwrap();
    let ring = &topics.get(id).unwrap().ring;
    assert_eq!(ring.len(), 1, "the new event is kept");
    assert!(ring.covers(0));
    // Once nobody subscribes, a topic is charged again and may be evicted.
    for i in 0..1_000 {
        let id = topics.find(&name(i)).unwrap();
        topics.unsubscribe(id, 0);
    }
    assert!(topics.charged_bytes() <= budget);
    assert!(topics.len() <= 1);
}

/// Expiry on append drops the appended topic's expired events; expiry before a resume
/// drops the named topics' and forgets a topic left with nothing, so a topic created
/// again reports the gap. `since` finds the first event at or after a time.
#[test]
fn expiry_is_lazy_and_keeps_the_books() {
    let mut topics = Topics::new(HistoryLimits {
        ttl_ms: Some(100),
        ..limits(100, 10_000, 1 << 20)
    });
    topics.append_at(1, &["a".into()], &frame(10), 1_000);
    topics.append_at(2, &["b".into()], &frame(10), 1_050);
    topics.append_at(3, &["a".into()], &frame(10), 1_120);
    let a = topics.find("a").unwrap();
    let ring = &topics.get(a).unwrap().ring;
    assert_eq!((ring.oldest_seq(), ring.evicted_max()), (Some(3), 1));
    // `b` was not touched: its expired event waits for a reader.
    assert_eq!(topics.entries_live, 2);
    let names = ["a".to_string(), "b".to_string()];
    assert_eq!(topics.cursor_since(&names, 1_040), 1);
    assert_eq!(topics.cursor_since(&names, 1_100), 2);
    assert_eq!(topics.cursor_since(&names, 2_000), 3);
    let mut sink = Vec::new();
    topics.take_dirty(&mut sink);
    topics.expire(&names, 1_160);
    assert_eq!(topics.entries_live, 1);
    assert_eq!(topics.find("b"), None, "nothing kept, nobody subscribed");
    assert_eq!(topics.evicted_max("b"), 2);
    assert_eq!(topics.newest_seq("a", 1_219), Some(3));
    assert_eq!(
        topics.newest_seq("a", 1_220),
        None,
        "expired, not yet evicted"
    );
    topics.expire(&names, 1_220);
    assert_eq!(topics.entries_live, 0);
    assert_eq!(topics.charged_bytes(), 0);
}

fn kept(topics: &Topics, name: &str) -> (Vec<Seq>, Seq) {
    let ring = &topics.get(topics.find(name).unwrap()).unwrap().ring;
    let seqs = (0..ring.len()).map(|i| ring.get(i).unwrap().seq).collect();
    (seqs, ring.evicted_max())
}

/// A pattern's ring gets every event of the topics under its prefix, topics created
/// later included, each event once; it gathers what those topics keep when it is
/// created, above a floor that covers what they forgot or did not fit; and it leaves
/// the table, the index and the budget's books like a topic.
#[test]
fn patterns_gather_are_fed_once_and_leave_no_trace() {
    let mut topics = Topics::new(limits(3, 10_000, 1 << 20));
    topics.append(1, &["p/a".into()], &frame(10));
    topics.append(2, &["p/a".into()], &frame(10));
    topics.append(3, &["q".into()], &frame(10));
    topics.append(4, &["p/b".into()], &frame(10));
    topics.append(5, &["p/a".into()], &frame(10));
    // The newest three under `p/` are 2, 4, 5; 1 did not fit.
    assert_eq!(
        topics.evicted_max("p/*"),
        1,
        "the floor it would gather above"
    );
    let (id, position) = topics.subscribe("p/*", SubscriberRef { conn: 0, slot: 0 });
    assert_eq!(kept(&topics, "p/*"), (vec![2, 4, 5], 1));
    assert_eq!(
        topics.evicted_max("x/*"),
        0,
        "nothing under x/ was ever kept"
    );
    topics.append(6, &["p/c".into(), "p/a".into()], &frame(10));
    topics.append(7, &["pq".into()], &frame(10));
    topics.append(8, &["p/".into()], &frame(10));
    assert_eq!(kept(&topics, "p/*"), (vec![5, 6, 8], 4));
    // A wider pattern beside it: both fed, neither twice.
    topics.subscribe("p*", SubscriberRef { conn: 1, slot: 0 });
    topics.append(9, &["pq".into(), "p/a".into()], &frame(10));
    assert_eq!(kept(&topics, "p*").0, vec![7, 8, 9]);
    assert_eq!(kept(&topics, "p/*").0, vec![6, 8, 9]);
    // Unsubscribed and forgotten, a pattern leaves; topics do not inherit its floor.
    let mut sink = Vec::new();
    topics.take_dirty(&mut sink);
    topics.sweep(&sink);
    assert_eq!(topics.unsubscribe(id, position), None);
    let p = topics.find("p*").unwrap();
    topics.unsubscribe(p, 0);
    let names: Vec<String> = ["p/*", "p*"].map(String::from).to_vec();
    topics.limits.ttl_ms = Some(1);
    topics.expire(&names, 10);
    assert_eq!(topics.find("p/*"), None);
    assert_eq!(topics.find("p*"), None);
    assert!(topics.patterns.is_empty());
    assert_eq!(topics.forgotten_max, 0);
}

#[test]
fn unsubscribe_reports_moved_subscriber_and_removes_empty_topic() {
    let mut topics = Topics::new(limits(10, 1000, 10_000));
    let a = SubscriberRef { conn: 1, slot: 0 };
    let b = SubscriberRef { conn: 2, slot: 3 };
    let (id, pa) = topics.subscribe("t", a);
    let (_, pb) = topics.subscribe("t", b);
    assert_eq!((pa, pb), (0, 1));
    assert_eq!(topics.unsubscribe(id, pa), Some(b));
    assert_eq!(topics.name(id), Some("t"));
    assert_eq!(topics.unsubscribe(id, 0), None);
    assert_eq!(topics.find("t"), None);
    assert_eq!(topics.charged_bytes(), 0);
}
