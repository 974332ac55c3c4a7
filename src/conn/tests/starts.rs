//! Where streams start: the rings and the bus the loop would see, the Last-Event-ID,
//! `earliest` and `since`, wildcards, and what a fetch from the bus turns into (the
//! resume planner, which is pure, has its own table).

use super::*;

/// Where a stream starts on a loop whose rings keep 4 events of topic `a` (1 is evicted)
/// and a bus without a log.
#[test]
fn stream_starts() {
    let appended = [
        Append(1, "a"),
        Append(2, "a"),
        Append(3, "b"),
        Append(4, "a"),
        Append(5, "a"),
        Append(6, "a"),
    ];
    let run = |request: &'static str| {
        let mut script = appended.to_vec();
        script.push(Recv(request));
        let trace = Harness::new().run(&script);
        trace[2..].to_vec()
    };
    let gap = |id: &str| format!("event: gap | data: {{\"lastEventId\":\"{id}\"}}");
    // No id: the stream starts at the newest event, and is told its id.
    assert_eq!(run(subscribe!()), ["retry: 1000 | id: 6"]);
    // An id the rings still cover: what followed it.
    assert_eq!(
        run(subscribe!("4")),
        ["retry: 1000", "id: 5 | data: a", "id: 6 | data: a"]
    );
    // An id at the edge of the rings (1 was evicted): everything after it, with no gap.
    let kept = [
        "id: 2 | data: a",
        "id: 4 | data: a",
        "id: 5 | data: a",
        "id: 6 | data: a",
    ];
    let mut expected = vec!["retry: 1000".to_string()];
    expected.extend(kept.iter().map(|s| s.to_string()));
    assert_eq!(run(subscribe!("1")), expected);
    // An id older than the rings: the gap event, then what they keep.
    let mut expected = vec!["retry: 1000".to_string(), gap("0")];
    expected.extend(kept.iter().map(|s| s.to_string()));
    assert_eq!(run(subscribe!("0")), expected);
    // An id that is not this bus's: the gap event, then everything kept.
    let mut expected = vec!["retry: 1000".to_string(), gap("x")];
    expected.extend(kept.iter().map(|s| s.to_string()));
    assert_eq!(run(subscribe!("x")), expected);
}

/// A wildcard starts like a topic, on the history it gathers from the topics under its
/// prefix (at most one topic's worth: 4 events here), above the floor of what those
/// forgot or did not fit: no id, an id it covers, an id below its floor (the gap), and
/// an exact topic beside it (each event once).
#[test]
fn wildcard_stream_starts() {
    let appended = [
        Append(1, "p/a"),
        Append(2, "q"),
        Append(3, "p/b"),
        Append(4, "p/a"),
        Append(5, "p/c"),
        Append(6, "p/b"),
        Append(7, "p/a"),
        Append(8, "q"),
    ];
    let run = |request: &'static str| {
        let mut script = appended.to_vec();
        script.push(Recv(request));
        let trace = Harness::new().run(&script);
        trace[2..].to_vec()
    };
    let get = |id: &'static str, topics: &'static str| -> &'static str {
        let text =
            format!("GET /events?{topics} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {id}\r\n\r\n");
        Box::leak(text.into_boxed_str())
    };
    let kept = [
        "id: 4 | data: p/a",
        "id: 5 | data: p/c",
        "id: 6 | data: p/b",
        "id: 7 | data: p/a",
    ];
    let from = |first: usize| {
        let mut lines = vec!["retry: 1000".to_string()];
        lines.extend(kept[first..].iter().map(|s| s.to_string()));
        lines
    };
    assert_eq!(
        run("GET /events?topic=p/* HTTP/1.1\r\nHost: x\r\n\r\n"),
        ["retry: 1000 | id: 8"]
    );
    assert_eq!(run(get("5", "topic=p/*")), from(2));
    // 3 is the newest of what did not fit: the wildcard covers everything after it.
    assert_eq!(run(get("3", "topic=p/*")), from(0));
    let mut gap = from(0);
    gap.insert(1, "event: gap | data: {\"lastEventId\":\"1\"}".to_string());
    assert_eq!(run(get("1", "topic=p/*")), gap);
    let mut with_q = from(2);
    with_q.push("id: 8 | data: q".to_string());
    assert_eq!(run(get("5", "topic=p/*&topic=q&topic=p/b")), with_q);
}

/// Where a replay starts on the same rings as [`stream_starts`] (event `n` published at
/// `n` s): `earliest` and `since` send what is kept with no gap event, and a Last-Event-ID
/// wins over `since`; with a time to live of 2.5 s at 6.5 s, events 1 to 4 have expired:
/// they are neither replayed nor a reason to skip the gap for an id before them.
#[test]
fn replay_starts() {
    let appended = [
        Append(1, "a"),
        Append(2, "a"),
        Append(3, "b"),
        Append(4, "a"),
        Append(5, "a"),
        Append(6, "a"),
    ];
    let run = |request: &'static str, ttl_ms: Option<u64>| {
        let mut harness = Harness::new();
        harness.limits.history.ttl_ms = ttl_ms;
        harness.table = crate::history::topics::Topics::new(harness.limits.history);
        harness.now.unix_ms = 6_500;
        for append in appended {
            harness.apply_for_test(append);
        }
        harness.apply_for_test(Recv(request));
        harness.trace[2..].to_vec()
    };
    let since = |query: &str| format!("GET /events?topic=a&{query} HTTP/1.1\r\nHost: x\r\n\r\n");
    let leak = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
    let sent = |seqs: &[u32]| {
        let mut lines = vec!["retry: 1000".to_string()];
        lines.extend(seqs.iter().map(|seq| format!("id: {seq} | data: a")));
        lines
    };
    let gap = |id: &str| format!("event: gap | data: {{\"lastEventId\":\"{id}\"}}");
    // (request, time to live) -> what the stream sends before live events
    let table: [(&'static str, Option<u64>, Vec<String>); 11] = [
        (subscribe!("earliest"), None, sent(&[2, 4, 5, 6])),
        (
            leak(since("lastEventId=earliest")),
            None,
            sent(&[2, 4, 5, 6]),
        ),
        (leak(since("since=0")), None, sent(&[2, 4, 5, 6])),
        (leak(since("since=4000")), None, sent(&[4, 5, 6])),
        (leak(since("since=4001")), None, sent(&[5, 6])),
        (leak(since("since=99000")), None, sent(&[])),
        (leak(since("since=1000&lastEventId=5")), None, sent(&[6])),
        (subscribe!("earliest"), Some(2_500), sent(&[5, 6])),
        (leak(since("since=0")), Some(2_500), sent(&[5, 6])),
        // At the edge of what is kept: nothing missed.
        (subscribe!("4"), Some(2_500), sent(&[5, 6])),
        // Before it: the expired events are missed.
        (subscribe!("2"), Some(2_500), {
            let mut lines = sent(&[5, 6]);
            lines.insert(1, gap("2"));
            lines
        }),
    ];
    for (request, ttl, expected) in table {
        assert_eq!(run(request, ttl), expected, "{request:?} ttl {ttl:?}");
    }
}

/// A stream opened with what the bus fetched: the fetched frames, then the rings; a
/// backfill cut at its byte budget ends with a short `retry:` so the client comes straight
/// back for the rest.
#[test]
fn stream_starts_after_a_fetch() {
    let request = |id: &str| StreamRequest {
        topics: vec!["a".into()],
        last_event_id: Some(id.into()),
        resume: Some(Resume::After(id.parse().expect("a number"))),
        cors: String::new(),
        token_until_unix_ms: None,
        client: [127, 0, 0, 1].into(),
        access: None,
        addr: std::net::IpAddr::from([127, 0, 0, 1]),
        ask: None,
    };
    let start = |backfill: Backfill| {
        let mut harness = Harness::new();
        for seq in 3..=6 {
            harness.apply_for_test(Append(seq, "a"));
        }
        harness.bus.can_backfill = true;
        harness.start_stream(request("1"), Some(backfill), 0);
        harness.trace
    };
    let complete = Backfill {
        frames: b"id: 2\ndata: old\n\n".to_vec(),
        gap: false,
        through: 2,
        complete: true,
    };
    assert_eq!(
        start(complete),
        [
            "200 stream",
            "retry: 1000",
            "id: 2 | data: old",
            "id: 3 | data: a",
            "id: 4 | data: a",
            "id: 5 | data: a",
            "id: 6 | data: a"
        ]
    );
    let partial = Backfill {
        frames: b"id: 2\ndata: old\n\nid: 2\n\n".to_vec(),
        gap: true,
        through: 2,
        complete: false,
    };
    assert_eq!(
        start(partial),
        [
            "200 stream",
            "retry: 1000",
            "event: gap | data: {\"lastEventId\":\"1\"}",
            "id: 2 | data: old",
            "id: 2",
            "retry: 100",
            "close (Parted(BackfillCut))"
        ]
    );
}

/// How a subscription's Last-Event-ID turns into a plan, and what a fetch that came back
/// turns into.
#[test]
fn resume_plans() {
    let limits = harness::limits();
    let budget = limits.lag_bytes_max;
    let request = |resume: Option<Resume>| StreamRequest {
        topics: vec!["a".into()],
        last_event_id: resume.map(|_| "id".into()),
        resume,
        cors: String::new(),
        token_until_unix_ms: None,
        client: [127, 0, 0, 1].into(),
        access: None,
        addr: std::net::IpAddr::from([127, 0, 0, 1]),
        ask: None,
    };
    let log = |reach_floor| BusView {
        can_backfill: true,
        reach_floor,
    };
    let no_log = BusView {
        can_backfill: false,
        reach_floor: Some(0),
    };
    let fetch_as = |replay, after, until, bytes_max, so_far| Plan::Fetch {
        fetch: BackfillRequest {
            after,
            until,
            topics: vec!["a".into()],
            bytes_max,
            client: [127, 0, 0, 1].into(),
            replay,
        },
        so_far,
    };
    let fetch = |after, until, bytes_max, so_far| fetch_as(false, after, until, bytes_max, so_far);
    let from = |after, gap| Some(Resume::From { after, gap });
    // (resume, bus, newest eviction of the rings) -> plan
    let table: [(Option<Resume>, BusView, u128, Plan); 13] = [
        // earliest, since, and an id older than the time to live keeps: from the rings
        // when they reach back, else a replay from the log (which tells no gap of its own).
        (from(7, false), log(Some(0)), 5, Plan::Start(None)),
        (from(0, false), no_log, 5, Plan::Start(None)),
        (
            from(0, false),
            log(Some(0)),
            5,
            fetch_as(true, 0, 5, budget, None),
        ),
        (
            from(3, true),
            log(Some(9)),
            5,
            fetch_as(true, 3, 9, budget, None),
        ),
        (
            from(3, false),
            log(None),
            5,
            Plan::Refuse(BackfillError::Unavailable.into()),
        ),
        (None, log(Some(0)), 5, Plan::Start(None)),
        (Some(Resume::After(10)), log(Some(0)), 5, Plan::Start(None)),
        (Some(Resume::After(5)), log(Some(0)), 5, Plan::Start(None)),
        (Some(Resume::After(3)), no_log, 5, Plan::Start(None)),
        (
            Some(Resume::After(3)),
            log(Some(0)),
            5,
            fetch(3, 5, budget, None),
        ),
        // Events the bus never delivered (at or below its reach) come from its log too.
        (
            Some(Resume::After(3)),
            log(Some(9)),
            5,
            fetch(3, 9, budget, None),
        ),
        (Some(Resume::Unknown), log(Some(0)), 5, Plan::Start(None)),
        (
            Some(Resume::After(3)),
            log(None),
            5,
            Plan::Refuse(BackfillError::Unavailable.into()),
        ),
    ];
    for (resume, bus, evicted, expected) in table {
        let plan = resume::plan(&request(resume), bus, evicted, &limits);
        assert_eq!(plan, expected, "{resume:?} {bus:?} evicted {evicted}");
    }
    let fetched = |frames: &[u8], through, complete| Backfill {
        frames: frames.to_vec(),
        gap: false,
        through,
        complete,
    };
    let request = request(Some(Resume::After(3)));
    // (what came back, newest eviction now) -> plan
    let table = [
        // The rings still cover the rest: start.
        (
            fetched(b"12", 5, true),
            5,
            Plan::Start(Some(fetched(b"12", 5, true))),
        ),
        // Cut at its budget: start with it (the stream sends the client back at once).
        (
            fetched(b"12", 4, false),
            9,
            Plan::Start(Some(fetched(b"12", 4, false))),
        ),
        // The rings evicted past its end meanwhile: fetch the difference, on what is left
        // of the budget.
        (
            fetched(b"12", 5, true),
            8,
            fetch(5, 8, budget - 2, Some(fetched(b"12", 5, true))),
        ),
        // ...unless the budget is spent: start, and come back for the rest.
        (
            fetched(&vec![b'x'; budget], 5, true),
            8,
            Plan::Start(Some(fetched(&vec![b'x'; budget], 5, false))),
        ),
    ];
    for (backfill, evicted, expected) in table {
        let plan = resume::after_fetch(&request, backfill, log(Some(0)), evicted, &limits);
        assert_eq!(plan, expected, "evicted {evicted}");
    }
    // Parts join in order; a gap in any part is a gap.
    let first = Backfill {
        gap: true,
        ..fetched(b"ab", 5, true)
    };
    let merged = resume::merge(Some(first), fetched(b"cd", 8, false));
    assert_eq!(
        merged,
        Backfill {
            gap: true,
            ..fetched(b"abcd", 8, false)
        }
    );
    assert_eq!(
        resume::merge(None, fetched(b"cd", 8, true)),
        fetched(b"cd", 8, true)
    );
}
