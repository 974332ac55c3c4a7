//! Redis failing under a cluster node: crash and restart with no acknowledged event lost,
//! a frozen Redis (SIGSTOP) holding publishes' answers and failing a pipelined batch once,
//! and a stream key of another type answered with 503 until it is gone.

use super::*;

#[test]
fn redis_crash_and_restart_keeps_subscribers_and_loses_no_acknowledged_event() {
    let stream = "outage";
    let heartbeat: &[&str] = &["--heartbeat-ms", "200"];
    let short_ring: &[&str] = &["--heartbeat-ms", "200", "--history-events", "2"];
    let (mut redis, nodes) = start_cluster(
        stream,
        [
            ("node 0", heartbeat),
            ("node 1", heartbeat),
            ("node 2 (history 2)", short_ring),
        ],
    );
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let mut subscribers: Vec<(usize, Subscriber)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..2 {
            subscribers.push((n, subscribe(node.addr(), &["k"])));
        }
    }

    // Before the crash.
    let mut before: Vec<Seen> = Vec::new();
    for i in 0..10 {
        let data = format!("before {i}");
        let id = publish_to(addrs[i % 3], "k", &data);
        before.push(message(&data, &id));
    }
    for (k, (n, subscriber)) in subscribers.iter_mut().enumerate() {
        let got: Vec<Seen> = subscriber.events(before.len()).iter().map(seen).collect();
        assert_same_events(
            &got,
            &before,
            &format!("subscriber {k} on node {n}, before"),
        );
    }

    // A publisher keeps going round the nodes through the crash and the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let steady: Outcomes = Arc::default();
    let steady_thread = steady_publisher(
        addrs.clone(),
        "k",
        "steady",
        5_000,
        stop.clone(),
        steady.clone(),
    );
    wait_until("a few steady publishes before the crash", || {
        accepted_count(&steady) >= 10
    });

    redis.kill();
    for node in &nodes {
        node.wait_metric(
            CONNECTED,
            "herald_redis_connected == 0 with Redis down",
            |v| v == 0.0,
        );
    }
    for (k, (n, subscriber)) in subscribers.iter_mut().enumerate() {
        let comments = subscriber.comments().len();
        subscriber.wait_for_comments(
            comments + 1,
            &format!("a heartbeat on subscriber {k} (node {n}) while Redis is down"),
        );
    }
    // Redis is dead: these can only be refused, and must never show up later.
    let mut never: HashSet<String> = HashSet::new();
    for (n, addr) in addrs.iter().enumerate() {
        let data = format!("while down {n}");
        let response = try_publish(*addr, "k", &data);
        assert_redis_unavailable(&response, &format!("POST /publish on node {n}, Redis down"));
        never.insert(data);
    }
    // A resume older than node 2's ring needs the stream: refused while Redis is down.
    let refused = Subscriber::try_open_on(
        Conn::connect(addrs[2]),
        &events_target(&["k"], None),
        &[("Last-Event-ID", &before[0].2)],
    );
    match refused {
        Ok(subscriber) => panic!(
            "a resume needing a backfill was accepted with Redis down; it got {:?}",
            subscriber.pending_events()
        ),
        Err(response) => assert_redis_unavailable(
            &response,
            "resume on node 2 older than its ring, Redis down",
        ),
    }
    // A resume inside node 0's ring needs no Redis.
    let mut resumed = resume_with_header(addrs[0], &["k"], &before[5].2);
    let got: Vec<Seen> = resumed.events(4).iter().map(seen).collect();
    assert_same_events(
        &got,
        &before[6..],
        "resume inside node 0's ring with Redis down",
    );

    redis.restart();
    // Straight away, before the nodes' readers are back: an entry from another client.
    let external = redis
        .client()
        .xadd(stream, &[("topic", "k"), ("data", "external")]);
    let mut acked: Vec<Seen> = vec![message("external", &external)];
    // Publish round the nodes until each has had one accepted; refusals meanwhile are fine.
    let mut maybe: HashSet<String> = HashSet::new();
    let mut accepted = [false; 3];
    let deadline = Instant::now() + DEADLINE;
    let mut attempt = 0;
    while !accepted.iter().all(|a| *a) {
        assert!(
            Instant::now() < deadline,
            "publishes were not accepted on every node within {DEADLINE:?} of Redis restarting \
             (accepted: {accepted:?})"
        );
        let n = attempt % 3;
        let data = format!("recovering {attempt}");
        let response = try_publish(addrs[n], "k", &data);
        match response.status {
            200 => {
                acked.push(message(&data, &id_from_text_answer(response.body_text())));
                accepted[n] = true;
            }
            503 => {
                maybe.insert(data);
                std::thread::sleep(RETRY_POLL);
            }
            _ => panic!(
                "publish on node {n} while Redis restarts: {}",
                response.summary()
            ),
        }
        attempt += 1;
    }
    let steady_now = accepted_count(&steady);
    wait_until("the steady publisher to get through again", || {
        accepted_count(&steady) >= steady_now + 10
    });
    stop.store(true, Ordering::Release);
    steady_thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let steady = std::mem::take(&mut *steady.lock().unwrap());
    let steady_refused = steady.iter().filter(|(_, id)| id.is_none()).count();
    assert!(
        steady_refused > 0,
        "the steady publisher never saw Redis down ({} publishes)",
        steady.len()
    );
    for (data, id) in steady {
        match id {
            Some(id) => acked.push(message(&data, &id)),
            None => {
                maybe.insert(data);
            }
        }
    }
    for i in 0..10 {
        let data = format!("after {i}");
        let id = publish_to(addrs[i % 3], "k", &data);
        acked.push(message(&data, &id));
    }
    let end = publish_to(addrs[1], "k", "end");
    acked.sort_by_key(|(_, _, id)| id_key(id));

    // Every acknowledged event is in the stream (the AOF kept what was fsynced).
    let stream_ids: HashSet<String> = redis
        .client()
        .xrange(stream, "-", "+")
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    for (_, data, id) in &acked {
        assert!(
            stream_ids.contains(id),
            "acknowledged {data:?} ({id}) is not in the stream"
        );
    }

    let mut readers: Vec<(String, &mut Subscriber)> = subscribers
        .iter_mut()
        .enumerate()
        .map(|(k, (n, s))| (format!("subscriber {k} on node {n}, through the crash"), s))
        .collect();
    readers.push((
        "the subscriber that resumed on node 0 while Redis was down".to_owned(),
        &mut resumed,
    ));
    for (who, subscriber) in readers {
        let got = seen_before_end(subscriber);
        if let Some((_, data, id)) = got.iter().find(|(_, data, _)| never.contains(data)) {
            panic!("{who}: {data:?} ({id}) was refused while Redis was dead, yet delivered");
        }
        assert_acknowledged_delivered(&got, &acked, &maybe, &who);
        assert_eq!(subscriber.last_event_id(), end, "{who}");
    }
    for node in &nodes {
        node.wait_connected();
        let reconnects = node.metric(RECONNECTS);
        assert!(
            reconnects > 0.0,
            "{RECONNECTS} on {} must count the reconnect, is {reconnects}",
            node.label
        );
    }
}

/// How long a publish is watched for a premature answer while Redis is frozen: the
/// observation window of the behaviour under test, not a synchronisation.
const FROZEN_WINDOW: Duration = Duration::from_millis(1_000);

#[test]
fn a_publish_is_answered_only_after_redis_acknowledged_it() {
    let (redis, [node]) = start_cluster("frozen", [("node", &["--heartbeat-ms", "200"])]);
    let mut subscriber = subscribe(node.addr(), &["t"]);
    let before = publish_to(node.addr(), "t", "before");
    assert_eq!(
        seen(&subscriber.next_event("the event before")),
        message("before", &before)
    );

    // Freeze Redis (SIGSTOP): its socket stays open, it just does not answer.
    redis.signal("STOP");
    let mut conn = Conn::connect(node.addr());
    conn.send(post_request(
        "/publish",
        Some("application/x-www-form-urlencoded"),
        b"topic=t&data=held",
        &[("Connection", "close")],
    ));
    let mut raw = conn.try_clone_stream();
    raw.set_read_timeout(Some(FROZEN_WINDOW)).unwrap();
    let mut early = [0u8; 1024];
    let early = match raw.read(&mut early) {
        Ok(n) => early[..n].to_vec(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Vec::new(),
        Err(e) => panic!("reading the held publish's answer: {e}"),
    };
    // The subscriber keeps getting heartbeats meanwhile.
    let comments = subscriber.comments().len();
    subscriber.wait_for_comments(comments + 1, "a heartbeat while Redis is frozen");
    redis.signal("CONT");
    if !early.is_empty() {
        let text = String::from_utf8_lossy(&early);
        assert!(
            !text.starts_with("HTTP/1.1 200"),
            "the publish was answered 200 while Redis was frozen: {text:?}"
        );
        assert!(
            text.starts_with("HTTP/1.1 503"),
            "a publish while Redis is frozen may only be refused with 503, got {text:?}"
        );
        return; // Refused, so not acknowledged: nothing more to check.
    }
    let response = conn.read_response("the held publish's answer after Redis resumed");
    let after = publish_to(node.addr(), "t", "after");
    let got = seen_before(&mut subscriber, "after");
    match response.status {
        200 => {
            let held = id_from_text_answer(response.body_text());
            assert_same_events(
                &got,
                &[message("held", &held)],
                "the publish answered 200 after Redis resumed",
            );
        }
        503 => assert!(
            got.iter().all(|(_, data, _)| data == "held"),
            "unexpected events {got:?}"
        ),
        _ => panic!("the held publish: {}", response.summary()),
    }
    assert_eq!(subscriber.last_event_id(), after);
}

/// Publishes tried while the stream's key holds a string.
const WRONG_TYPE_PUBLISHES: usize = 50;

/// A stream name that holds another type of key: Redis accepts the connections and refuses
/// every command. Publishes get 503 (never a false 200), the node keeps serving, its log
/// says why without a line per attempt, and once the key is gone everything works.
#[test]
fn a_stream_key_of_another_type_gets_503_without_flooding_the_log_then_recovers() {
    let redis = RedisServer::start("wrong-type");
    let stream = "wrong-type";
    let mut redis_conn = redis.client();
    redis_conn.command::<()>(&["SET", stream, "not a stream"]);
    let mut node = Node::spawn("node", &redis.url(), stream, &["--log-level", "info"]);
    let mut subscriber = subscribe(node.addr(), &["t"]);
    for i in 0..WRONG_TYPE_PUBLISHES {
        assert_redis_unavailable(
            &try_publish(node.addr(), "t", &format!("refused {i}")),
            "a publish while the key is a string",
        );
    }
    assert_eq!(
        node.metric(CONNECTED),
        0.0,
        "the reader cannot read a string"
    );
    redis_conn.command::<()>(&["DEL", stream]);
    node.wait_connected();
    let deadline = Instant::now() + DEADLINE;
    let id = loop {
        let answer = try_publish(node.addr(), "t", "accepted");
        if answer.status == 200 {
            break answer.body_text().trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "publishing never recovered: {}",
            answer.summary()
        );
        std::thread::sleep(RETRY_POLL);
    };
    assert_eq!(
        seen(&subscriber.next_event("the first accepted event")),
        message("accepted", &id),
        "no refused publish reached a subscriber"
    );
    node.process.signal("TERM");
    node.wait_exit(DEADLINE);
    let wrong_type_lines = node
        .process
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("WRONGTYPE"))
        .count();
    assert!(
        (1..=6).contains(&wrong_type_lines),
        "the log names the cause, without a line per refused publish or read: \
         {wrong_type_lines} WRONGTYPE lines"
    );
}

/// Publishes pipelined on one connection while Redis is frozen.
const FROZEN_PIPELINED: usize = 20;

/// A frozen Redis (SIGSTOP: its socket open, nothing answered) fails a batch of pipelined
/// publishes once, within the bus's timeouts, instead of waiting the read timeout again
/// for every publish of the batch: all of them are answered 503 within the test deadline
/// (with one timeout per publish it took 40 s).
#[test]
fn a_frozen_redis_fails_a_pipelined_batch_once() {
    let (redis, [node]) = start_cluster("frozen-batch", [("node", &[])]);
    publish_to(node.addr(), "t", "warm");
    redis.signal("STOP");
    let mut requests = Vec::new();
    for i in 0..FROZEN_PIPELINED {
        requests.extend_from_slice(&post_request(
            "/publish?topic=t",
            Some("text/plain"),
            format!("frozen {i}").as_bytes(),
            &[],
        ));
    }
    let mut conn = Conn::connect(node.addr());
    conn.send(&requests);
    for i in 0..FROZEN_PIPELINED {
        let answer = conn.read_response(&format!("answer {i} while Redis is frozen"));
        assert_redis_unavailable(&answer, "a publish while Redis is frozen");
    }
    redis.signal("CONT");
}
