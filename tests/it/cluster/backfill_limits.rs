//! Limits of the stream backfill (issue 10): hostile resumes read at most one scan budget and
//! do not starve other clients, and a backfill bigger than the lag budget comes in parts
//! that add up exactly.

use super::*;

/// Entries in the stream of the resume-amplification test.
const AMPLIFY_ENTRIES: usize = 60_000;
/// Hostile resumes in that test (all from one address).
const AMPLIFY_HOSTILE: usize = 60;
/// Entries one backfill reads at most (the bus's `BACKFILL_SCAN_MAX`).
const BACKFILL_SCAN_MAX: usize = 4_096;

/// Issue 10, item 11: resumes cannot make the node's backfiller read the whole stream for
/// one client, nor make other clients wait behind them. On a 60,000-entry stream:
/// - `Last-Event-ID: 0-1` (older than the stream) gets the gap event at once, reading no
///   entry;
/// - a resume from the first entry on a topic with no events reads at most one scan budget
///   of entries, then moves the client's last id to the last entry read (`id:`), sends a
///   short `retry:` and closes, so the client continues from there;
/// - 60 such resumes from one address, then one legitimate resume from another: the
///   legitimate one is served in its turn, not after the 60 (order of completion).
#[test]
fn issue_10_hostile_resumes_are_bounded_and_do_not_starve_other_clients() {
    let redis = RedisServer::start("amplify");
    let stream = "amplify";
    let mut admin = redis.client();
    let count = AMPLIFY_ENTRIES.to_string();
    admin.command::<()>(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do \
         redis.call('XADD', KEYS[1], '*', 'topic', 'busy', 'data', 'e' .. i) end",
        "1",
        stream,
        &count,
    ]);
    let head = admin.xrange_count(stream, "-", "+", BACKFILL_SCAN_MAX + 1);
    let first = head[0].id.clone();
    let last_of_first_scan = head[BACKFILL_SCAN_MAX].id.clone();
    let tail = admin.xrevrange_count(stream, "+", "-", 100);
    // The node starts after the entries: every resume here is served from the stream.
    let node = Node::spawn("node", &redis.url(), stream, &[]);
    node.wait_connected();

    let scanned = node.metric(SCANNED);
    let mut early = resume_with_header(node.addr(), &["quiet"], "0-1");
    let gap = early.next_event("the gap event for 0-1");
    assert_eq!(gap.event_type, "gap");
    assert_eq!(
        node.metric(SCANNED),
        scanned,
        "an id older than the stream reads no entry"
    );
    drop(early);

    // One hostile resume alone: one scan budget, then an id to continue from.
    let target = events_target(&["quiet"], None);
    let mut probe = Subscriber::open(node.addr(), &target, &[("Last-Event-ID", &first)]);
    let events = probe.read_to_close("the first part of a resume on a quiet topic");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        probe.last_event_id(),
        last_of_first_scan,
        "the client continues after the last entry read"
    );
    assert_eq!(probe.retry_ms(), Some(100), "and comes back shortly");
    assert_eq!(node.metric(SCANNED), scanned + BACKFILL_SCAN_MAX as f64);

    let (done, order) = mpsc::channel::<(String, u16)>();
    let hostile_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let addr = node.addr();
    let mut threads = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..AMPLIFY_HOSTILE {
        let (done, target, first) = (done.clone(), target.clone(), first.clone());
        let mut conn = Conn::connect_with(addr, Some(hostile_ip), None);
        sockets.push(conn.try_clone_stream());
        threads.push(std::thread::spawn(move || {
            conn.send(build_request(
                "GET",
                &target,
                &[("Last-Event-ID", &first)],
                b"",
            ));
            // Read to the close (the end of a part, or the test shutting the socket down).
            let mut answer = Vec::new();
            while let Some(bytes) = conn.read_some("a hostile resume") {
                answer.extend_from_slice(&bytes);
            }
            let status = match answer.get(9..12) {
                Some(code) => String::from_utf8_lossy(code).parse().unwrap_or(0),
                None => 0, // Cut off by the test before it was served.
            };
            let _ = done.send(("hostile".to_owned(), status));
        }));
    }
    // The backfiller is busy with them before the legitimate resume arrives.
    node.wait_metric(SCANNED, "hostile resumes being read", |v| {
        v > scanned + BACKFILL_SCAN_MAX as f64
    });
    let resume_from = tail[tail.len() - 1].id.clone();
    let expected: Vec<Seen> = tail[..tail.len() - 1]
        .iter()
        .rev()
        .map(|entry| message(entry.field("data").unwrap(), &entry.id))
        .collect();
    let legit_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let conn = Conn::connect_with(addr, Some(legit_ip), None);
    let mut legit = Subscriber::open_on(
        conn,
        &events_target(&["busy"], None),
        &[("Last-Event-ID", &resume_from)],
    );
    let got: Vec<Seen> = legit.events(expected.len()).iter().map(seen).collect();
    let _ = done.send(("legit".to_owned(), 200));
    assert_same_events(&got, &expected, "the legitimate resume");
    let mut before = 0;
    let mut refused = 0;
    for _ in 0..=AMPLIFY_HOSTILE {
        let (who, status) = order
            .recv_timeout(DEADLINE)
            .expect("every resume completes");
        match (who.as_str(), status) {
            ("legit", _) => break,
            (_, 200) => before += 1,
            (_, 503) => refused += 1,
            (_, other) => panic!("a hostile resume got {other}"),
        }
    }
    assert!(
        before <= 4,
        "{before} hostile resumes (of {AMPLIFY_HOSTILE}; {refused} refused) completed before \
         the legitimate one: it must be served in its turn"
    );
    for socket in sockets {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn a_backfill_bigger_than_the_lag_budget_comes_in_parts_that_add_up_exactly() {
    let stream = "resume-parts";
    let small_budget: &[&str] = &[
        "--history-events",
        "2",
        "--max-publish-bytes",
        "16KiB",
        "--max-lag-bytes",
        "64KiB",
    ];
    let (_redis, [a, b]) = start_cluster(
        stream,
        [
            ("node A", &[]),
            ("node B (history 2, 64 KiB lag budget)", small_budget),
        ],
    );
    // 100 events of 2 KiB, then `end`: about 200 KiB to backfill, over three times B's lag
    // budget.
    let mut witness = subscribe(b.addr(), &["r"]);
    let mut all: Vec<Seen> = Vec::new();
    for i in 0..100 {
        let data = format!("{i:04} {}", "x".repeat(2048));
        let id = publish_to(a.addr(), "r", &data);
        all.push(message(&data, &id));
    }
    let end = publish_to(a.addr(), "r", "end");
    assert_same_events(&seen_before_end(&mut witness), &all, "the witness on B");

    // Resume like an EventSource: reconnect with the last id after each close, until `end`.
    let mut got: Vec<Seen> = Vec::new();
    let mut last = all[0].2.clone();
    let mut parts = 0;
    loop {
        parts += 1;
        assert!(
            parts <= 20,
            "after 20 parts only {} of {} events arrived",
            got.len(),
            all.len() - 1
        );
        let (events, ended) = read_part(b.addr(), "r", &last);
        assert!(
            ended.is_some() || !events.is_empty(),
            "part {parts} closed without an event (resuming after {last})"
        );
        if let Some(event) = events.iter().find(|e| e.event_type != "message") {
            panic!("part {parts}: unexpected {event:?}");
        }
        if let Some(event) = events.last() {
            last = event.last_event_id.clone();
        }
        got.extend(events.iter().map(seen));
        if let Some(end_id) = ended {
            assert_eq!(end_id, end, "the end's id");
            break;
        }
    }
    assert!(
        parts > 1,
        "a 200 KiB backfill must not fit a 64 KiB lag budget in one part"
    );
    assert_same_events(&got, &all[1..], &format!("the {parts} parts"));
}

/// One resume on `addr` after `last_id`, read until the event with data `end` (its id is
/// returned, the event itself is not in the list) or until the server closes the stream
/// (`None`).
fn read_part(addr: SocketAddr, topic: &str, last_id: &str) -> (Vec<SseEvent>, Option<String>) {
    let mut conn = Conn::connect(addr);
    conn.send(build_request(
        "GET",
        &events_target(&[topic], None),
        &[("Last-Event-ID", last_id)],
        b"",
    ));
    let head = conn.read_head("the head of a resume");
    assert_eq!(
        head.status,
        200,
        "resume after {last_id}: {}",
        head.summary()
    );
    let mut parser = SseCollector::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let Some(bytes) = conn.read_some(&format!("the resume after {last_id}")) else {
            return (events, None);
        };
        for event in parser.feed(&bytes) {
            if event.data == "end" {
                return (events, Some(event.last_event_id));
            }
            events.push(event);
        }
    }
    panic!("the resume after {last_id} neither closed nor sent `end` within {DEADLINE:?}");
}
