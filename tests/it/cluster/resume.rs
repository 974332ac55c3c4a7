//! Resumes on another node than the one that served the events: from its ring, backfilled
//! from the stream, on a node started after the events, while events keep coming, and with
//! ids the stream has trimmed (the gap event), also after the trim overtook a frozen node.

use super::*;

#[test]
fn resume_on_another_node_from_its_ring() {
    let (_redis, [a, b]) = start_cluster("resume-ring", [("node A", &[]), ("node B", &[])]);
    let nodes = [a.addr(), b.addr()];
    let mut reader = subscribe(a.addr(), &["r"]);
    let mut witness = subscribe(b.addr(), &["r"]);
    let data: Vec<String> = (1..=10).map(|i| format!("e{i}")).collect();

    let mut ids = Vec::new();
    for (i, d) in data[..5].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
    }
    let expected: Vec<Seen> = (0..5).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = reader.events(5).iter().map(seen).collect();
    assert_same_events(&got, &expected, "the reader on A");
    assert_eq!(reader.last_event_id(), ids[4]);
    drop(reader);

    for (i, d) in data[5..].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
    }
    let all: Vec<Seen> = (0..10).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = witness.events(10).iter().map(seen).collect();
    assert_same_events(&got, &all, "the witness on B");

    let backfills = b.metric(BACKFILLS);
    let mut resumed = resume_with_header(b.addr(), &["r"], &ids[4]);
    let end = publish_to(a.addr(), "r", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &all[5..],
        "resume on B after e5 (B's ring holds e1..e10)",
    );
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    assert_eq!(
        b.metric(BACKFILLS),
        backfills,
        "B's ring held every missed event: the resume must not read the stream"
    );
}

#[test]
fn resume_older_than_the_nodes_ring_is_backfilled_from_the_stream() {
    let stream = "resume-backfill";
    let (_redis, [a, b]) = start_cluster(stream, A_AND_SMALL_RING_B);
    let nodes = [a.addr(), b.addr()];
    let mut reader = subscribe(a.addr(), &["r"]);
    let mut witness = subscribe(b.addr(), &["r"]);
    let data: Vec<String> = (1..=12).map(|i| format!("e{i}")).collect();

    let mut ids = Vec::new();
    for (i, d) in data[..5].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
    }
    let got: Vec<Seen> = reader.events(5).iter().map(seen).collect();
    let expected: Vec<Seen> = (0..5).map(|i| message(&data[i], &ids[i])).collect();
    assert_same_events(&got, &expected, "the reader on A");
    drop(reader);

    // e6..e12, with events of another topic in between (the backfill must leave them out).
    for (i, d) in data[5..].iter().enumerate() {
        ids.push(publish_to(nodes[i % 2], "r", d));
        if i % 2 == 0 {
            publish_to(nodes[(i + 1) % 2], "other", &format!("other {i}"));
        }
    }
    let all: Vec<Seen> = (0..12).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = witness.events(12).iter().map(seen).collect();
    assert_same_events(&got, &all, "the witness on B");

    let backfills = b.metric(BACKFILLS);
    let mut resumed = resume_with_header(b.addr(), &["r"], &ids[4]);
    let end = publish_to(a.addr(), "r", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &all[5..],
        "resume on B after e5 (B's ring holds only e11, e12)",
    );
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    let after = b.metric(BACKFILLS);
    assert!(
        after > backfills,
        "{BACKFILLS} on B must go up for a resume older than its ring: {backfills} -> {after}"
    );
}

#[test]
fn a_node_started_after_the_events_serves_the_resume_from_the_stream() {
    let stream = "resume-late-node";
    let (redis, [a]) = start_cluster(stream, [("node A", &[])]);
    let topics = ["r", "s"];
    let mut reader = subscribe(a.addr(), &topics);
    let data: Vec<String> = (1..=6).map(|i| format!("e{i}")).collect();

    let mut ids = Vec::new();
    for (i, d) in data[..3].iter().enumerate() {
        ids.push(publish_to(a.addr(), topics[i % 2], d));
    }
    let all: Vec<Seen> = (0..3).map(|i| message(&data[i], &ids[i])).collect();
    let got: Vec<Seen> = reader.events(3).iter().map(seen).collect();
    assert_same_events(&got, &all, "the reader on A");
    drop(reader);
    for (i, d) in data[3..].iter().enumerate() {
        ids.push(publish_to(a.addr(), topics[(i + 1) % 2], d));
        publish_to(a.addr(), "unrelated", &format!("unrelated {i}"));
    }
    let all: Vec<Seen> = (0..6).map(|i| message(&data[i], &ids[i])).collect();

    let c = Node::spawn("node C (started later)", &redis.url(), stream, &[]);
    c.wait_connected();
    // A subscriber without Last-Event-ID gets only live events, not the stream's past.
    let mut fresh = subscribe(c.addr(), &topics);
    let backfills = c.metric(BACKFILLS);
    // Resume by query parameter this time, on both topics.
    let mut resumed = Subscriber::open(c.addr(), &events_target(&topics, Some(&ids[2])), &[]);
    let end = publish_to(c.addr(), "s", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &all[3..],
        "resume on C (started after e1..e6) after e3",
    );
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    let got = seen_before_end(&mut fresh);
    assert!(
        got.is_empty(),
        "a new subscriber on C got old events {got:?}"
    );
    assert_eq!(fresh.last_event_id(), end);
    let after = c.metric(BACKFILLS);
    assert!(
        after > backfills,
        "{BACKFILLS} on C must go up: it never saw e4..e6 live ({backfills} -> {after})"
    );
}

#[test]
fn resumes_backfilled_while_events_keep_coming_have_no_gap_and_no_duplicate() {
    let stream = "resume-seam";
    let (_redis, [a, b]) = start_cluster(stream, A_AND_SMALL_RING_B);
    let mut witness = subscribe(b.addr(), &["r"]);
    let mut all: Vec<Seen> = Vec::new();
    for i in 0..20 {
        let data = format!("first {i}");
        let id = publish_to(a.addr(), "r", &data);
        all.push(message(&data, &id));
    }
    let got: Vec<Seen> = witness.events(all.len()).iter().map(seen).collect();
    assert_same_events(&got, &all, "the witness on B");

    // While a publisher keeps going on A, clients resume on B from ids B's ring no longer
    // holds: each answer is a backfill from the stream joined to the live events.
    let stop = Arc::new(AtomicBool::new(false));
    let steady: Outcomes = Arc::default();
    let steady_thread = steady_publisher(
        vec![a.addr()],
        "r",
        "steady",
        2_000,
        stop.clone(),
        steady.clone(),
    );
    let backfills = b.metric(BACKFILLS);
    let mut resumed: Vec<(usize, Subscriber)> = Vec::new();
    for j in (0..16).step_by(2) {
        wait_until("the steady publisher to move on", || {
            accepted_count(&steady) >= j * 3
        });
        resumed.push((j, resume_with_header(b.addr(), &["r"], &all[j].2)));
    }
    let steady_now = accepted_count(&steady);
    wait_until("more steady publishes after the last resume", || {
        accepted_count(&steady) >= steady_now + 20
    });
    stop.store(true, Ordering::Release);
    steady_thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    for (data, id) in std::mem::take(&mut *steady.lock().unwrap()) {
        let id = id.unwrap_or_else(|| panic!("steady publish {data:?} was refused"));
        all.push(message(&data, &id));
    }
    let end = publish_to(a.addr(), "r", "end");

    assert_same_events(
        &seen_before_end(&mut witness),
        &all[20..],
        "the witness on B",
    );
    // Every resume is checked before failing, so a failure shows how many went wrong.
    let mut failures = Vec::new();
    for (j, subscriber) in &mut resumed {
        let got = seen_before_end(subscriber);
        if let Some(difference) = difference(&got, &all[*j + 1..]) {
            failures.push(format!("resume after event {j}: {difference}"));
        }
        assert_eq!(subscriber.last_event_id(), end, "resume after event {j}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} resumes on B while events kept coming were wrong:\n{}",
        failures.len(),
        resumed.len(),
        failures.join("\n")
    );
    let after = b.metric(BACKFILLS);
    assert!(
        after >= backfills + resumed.len() as f64,
        "{BACKFILLS} on B: {backfills} -> {after} for {} resumes older than its ring",
        resumed.len()
    );
}

const TRIM_EVENTS: usize = 500;

/// The gap event comes at once, without reading the stream for the client's topics (an id
/// older than the stream cannot make the backfiller read all of it); then what the node's
/// rings keep (issue 10, item 11).
#[test]
fn resume_with_an_id_the_stream_has_trimmed_gets_the_gap_event_then_what_the_node_keeps() {
    let stream = "resume-trimmed";
    let small: &[&str] = &["--redis-maxlen", "10", "--history-events", "5"];
    let (redis, [a, b]) = start_cluster(stream, [("node A", small), ("node B", small)]);
    let mut reader = subscribe(a.addr(), &["r"]);
    let first = publish_to(a.addr(), "r", "e1");
    let event = reader.next_event("e1 on A");
    assert_eq!(seen(&event), message("e1", &first));
    drop(reader);

    // XADD MAXLEN ~ trims whole macro nodes, lazily: publish plenty, from four clients.
    let addrs = [a.addr(), b.addr()];
    let publishers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for k in 0..(TRIM_EVENTS - 1) / 4 + 1 {
                    let i = 2 + t + 4 * k;
                    if i <= TRIM_EVENTS {
                        publish_to(addrs[(t + k) % 2], "r", &format!("e{i}"));
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }

    let mut redis_conn = redis.client();
    let length = redis_conn.xlen(stream);
    assert!(
        length < TRIM_EVENTS as i64,
        "--redis-maxlen 10 must trim the stream; XLEN is {length} after {TRIM_EVENTS} publishes"
    );
    assert!(
        redis_conn.xrange(stream, &first, &first).is_empty(),
        "e1 ({first}) must be trimmed from the stream"
    );
    let kept = redis_conn.xrange(stream, "-", "+");
    let first_entry: Option<(String, redis::Value)> =
        redis_conn.xinfo_stream(stream, "first-entry");
    assert_eq!(
        first_entry.map(|(id, _)| id).as_deref(),
        Some(kept[0].id.as_str()),
        "XINFO STREAM first-entry"
    );
    assert!(id_key(&kept[0].id) > id_key(&first));
    // B's rings keep the 5 newest events of `r`.
    assert!(kept.len() > 5, "the stream keeps more than B's rings");
    let expected: Vec<Seen> = kept[kept.len() - 5..]
        .iter()
        .map(|entry| message(entry.field("data").unwrap(), &entry.id))
        .collect();
    let scanned = b.metric(SCANNED);

    let backfills = b.metric(BACKFILLS);
    let mut resumed = resume_with_header(b.addr(), &["r"], &first);
    let gap = resumed.next_event("the gap event");
    assert_eq!(
        (gap.event_type.as_str(), gap.data.as_str()),
        ("gap", format!("{{\"lastEventId\":\"{first}\"}}").as_str()),
        "a resume from a trimmed id starts with the gap event"
    );
    let end = publish_to(b.addr(), "r", "end");
    assert_same_events(
        &seen_before_end(&mut resumed),
        &expected,
        "after the gap event: what B's rings keep",
    );
    assert_eq!(b.metric(SCANNED), scanned, "no stream entry was read");
    assert_eq!(resumed.last_event_id(), end, "then the live event");
    let after = b.metric(BACKFILLS);
    assert!(
        after > backfills,
        "{BACKFILLS} on B must go up: its ring holds 5 events, the stream {} ({backfills} -> {after})",
        kept.len()
    );
}

/// Entries appended while the node is frozen, with a stream that keeps about 100.
const OVERTAKE_EVENTS: usize = 2_000;

/// A node whose reader is overtaken by the stream's trimming (here: the whole process is
/// frozen with SIGSTOP while 2,000 entries go into a stream that keeps about 100) cannot
/// deliver what was trimmed. It must not skip it silently: it counts the hole, tells its
/// streams to resume, and a resume then starts with the gap event, followed by exactly
/// what the stream still keeps.
#[test]
fn a_node_overtaken_by_the_trim_makes_its_streams_resume_into_the_gap_event() {
    let stream = "overtaken";
    let (redis, [node]) = start_cluster(stream, [("node", &["--redis-maxlen", "100"])]);
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let first = publish_to(node.addr(), "t", "first");
    assert_eq!(
        seen(&subscriber.next_event("the first event")),
        message("first", &first)
    );

    node.process.signal("STOP");
    let mut redis_conn = redis.client();
    for i in 0..OVERTAKE_EVENTS {
        let data = format!("while frozen {i}");
        redis_conn.command::<()>(&[
            "XADD", stream, "MAXLEN", "~", "100", "*", "topic", "t", "data", &data,
        ]);
    }
    assert!(
        redis_conn.xrange(stream, &first, &first).is_empty(),
        "the first event ({first}) must have been trimmed while the node was frozen"
    );
    node.process.signal("CONT");

    // The stream ends with a parting `retry:` (whatever it got before the hole is fine).
    let got = subscriber.read_to_close("the stream to be told to resume");
    let last = got
        .last()
        .map_or(first.clone(), |event| event.last_event_id.clone());
    assert!(
        got.len() < OVERTAKE_EVENTS,
        "the subscriber cannot have received the {OVERTAKE_EVENTS} events, most were trimmed"
    );
    assert!(
        node.metric("herald_redis_holes_total") >= 1.0,
        "the hole is counted"
    );

    let kept = redis_conn.xrange(stream, &format!("({last}"), "+");
    let expected: Vec<Seen> = kept
        .iter()
        .map(|entry| message(entry.field("data").unwrap(), &entry.id))
        .collect();
    let mut resumed = resume_with_header(node.addr(), &["t"], &last);
    let gap = resumed.next_event("the gap event");
    assert_eq!(
        (gap.event_type.as_str(), gap.data.as_str()),
        ("gap", format!("{{\"lastEventId\":\"{last}\"}}").as_str()),
        "the resume after the hole starts with the gap event"
    );
    let end = publish_to(node.addr(), "t", "end");
    let after_gap = seen_before_end(&mut resumed);
    assert_same_events(
        &after_gap,
        &expected,
        "after the gap event: every entry the stream keeps",
    );
    assert!(!end.is_empty());
}
