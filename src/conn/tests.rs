//! The connection core's protocol at a glance: tables of scripts (bytes arriving, maybe
//! split; a socket that takes only so much; time passing; the bus answering) and what the
//! core wrote and asked for, one short line each. A line is an HTTP answer (`200 1-1`,
//! `404`), an SSE block of a stream (`id: 3 | data: a`, `:` for a heartbeat), or an
//! action (`publish #1 to a`, `await bus`, `linger`, `close (…)`). The resume planner,
//! which is pure, has its own table.

mod harness;

use harness::{check, Harness, In::*};

use crate::bus::{Backfill, BackfillError, BackfillRequest, Resume};
use crate::conn::resume::{self, BusView, Plan};
use crate::conn::StreamRequest;

macro_rules! publish {
    ($data:literal) => {
        concat!(
            "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
            $data
        )
    };
}
macro_rules! health {
    () => {
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    };
}
macro_rules! subscribe {
    () => {
        "GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"
    };
    ($id:literal) => {
        concat!(
            "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ",
            $id,
            "\r\n\r\n"
        )
    };
}

#[test]
fn pipelining() {
    // One publish, answered by the bus at once.
    check(&[Recv(publish!("1"))], &["publish #1 to a", "200 1-1"]);
    // Pipelined requests in one read, answered in request order in one write.
    check(
        &[Recv(concat!(
            "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            publish!("1"),
            health!()
        ))],
        &["publish #1 to a", "404", "200 1-1", "200 ok"],
    );
    // The same bytes split into 7-byte reads: the same answers.
    check(
        &[Split(7), Recv(concat!(publish!("1"), health!()))],
        &["publish #1 to a", "200 1-1", "200 ok"],
    );
    // Publishes the bus answers later, out of order: the answers keep request order, a
    // ready answer waits behind the publishes before it, a refusal takes its place.
    check(
        &[
            BusLater,
            Recv(concat!(
                publish!("1"),
                publish!("2"),
                health!(),
                publish!("3")
            )),
            Published(2, Some("1-2")),
            Published(1, Some("1-1")),
            Published(3, None),
        ],
        &[
            "publish #1 to a",
            "publish #2 to a",
            "publish #3 to a",
            "200 1-1",
            "200 1-2",
            "200 ok",
            "503",
        ],
    );
    // A stream request behind a publish the bus owes waits for its answer, then opens.
    check(
        &[
            BusLater,
            Recv(concat!(publish!("1"), subscribe!())),
            Published(1, Some("1-1")),
        ],
        &[
            "publish #1 to a",
            "await bus",
            "200 1-1",
            "subscribe a after -",
            "200 stream",
            "retry: 1000 | id: 0",
        ],
    );
    // A body sent with `Expect: 100-continue` gets the interim answer first.
    check(
        &[
            Recv("POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"),
            Recv("x"),
        ],
        &["100", "publish #1 to a", "200 1-1"],
    );
}

/// Answers to pipelined requests gather into one write of at most 16 KiB (plus the answer
/// that crossed it); the rest of the requests wait in the head buffer meanwhile.
#[test]
fn pipelined_answers_are_batched_up_to_16_kib() {
    let requests = health!().repeat(220);
    let requests: &'static str = Box::leak(requests.into_boxed_str());
    let trace = Harness::new().run(&[Room(0), Recv(requests)]);
    assert_eq!(trace, ["write blocked"]);
    let mut trace = Harness::new().run(&[Room(0), Recv(requests), Writable]);
    assert_eq!(trace.remove(0), "write blocked");
    assert_eq!(trace.len(), 220, "{trace:?}");
    assert!(trace.iter().all(|line| line == "200 ok"));
    // The blocked write held one batch: 16 KiB and less than one more answer.
    let mut harness = Harness::new();
    for input in [Room(0), Recv(requests)] {
        harness.apply_for_test(input);
    }
    let unsent = harness.unsent_len();
    let answer = 84;
    assert!(
        (16 * 1024..16 * 1024 + answer).contains(&unsent),
        "{unsent}"
    );
}

#[test]
fn deadlines_of_the_exchange() {
    // A head not complete within head_timeout: 408, then a lingering close.
    check(
        &[Recv("GET /heal"), At(499), At(500), At(1499), At(1500)],
        &[
            "deadline: drive",
            "408",
            "linger",
            "close (deadline: close Finished)",
        ],
    );
    // A kept-alive connection idle for idle_timeout is closed without a word.
    check(
        &[Recv(health!()), At(1999), At(2000)],
        &["200 ok", "close (deadline: close PeerGone)"],
    );
    // A request that starts on an idle connection is under the head deadline again.
    check(
        &[Recv(health!()), At(1000), Recv("GET"), At(1499), At(1500)],
        &["200 ok", "deadline: drive", "408", "linger"],
    );
    // A 408 the client never reads gets one more head timeout, then a close.
    check(
        &[Room(0), Recv("GET /x"), At(500), At(1000)],
        &[
            "deadline: drive",
            "write blocked",
            "close (deadline: close PeerGone)",
        ],
    );
    // A deadline while a publish is at the bus: the bus is waited for, a head timeout at
    // a time, and its answer goes out when it comes.
    check(
        &[
            BusLater,
            Recv(publish!("1")),
            At(500),
            At(1000),
            Published(1, Some("1-1")),
        ],
        &[
            "publish #1 to a",
            "deadline: drive",
            "deadline: drive",
            "200 1-1",
        ],
    );
    // A final answer (Connection: close) is followed by a lingering close: the peer's own
    // close ends it, or the linger time.
    check(
        &[
            Recv("GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            PeerCloses,
        ],
        &["404", "linger", "close (peer closed)"],
    );
    check(
        &[
            Recv("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            At(1000),
        ],
        &["200 ok", "linger", "close (deadline: close Finished)"],
    );
    // A malformed head is answered and closed, whatever follows it.
    check(
        &[Recv(concat!("GET / HTTP/9\r\n\r\n", health!()))],
        &["400", "linger"],
    );
}

#[test]
fn deadlines_of_a_stream() {
    let opened = ["subscribe a after -", "200 stream", "retry: 1000 | id: 0"];
    let with = |rest: &[&'static str]| -> Vec<String> {
        opened.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    // A quiet stream gets a heartbeat every interval.
    let trace = Harness::new().run(&[Recv(subscribe!()), At(999), At(1000), At(2000)]);
    assert_eq!(
        trace,
        with(&["heartbeat queued", ":", "heartbeat queued", ":"])
    );
    // A busy one does not: the check moves to a full interval after its last write.
    let trace = Harness::new().run(&[
        Recv(subscribe!()),
        At(600),
        Append(1, "a"),
        At(1000),
        At(1600),
    ]);
    assert_eq!(trace, with(&["id: 1 | data: a", "heartbeat queued", ":"]));
    // A blocked stream that writes no byte for two intervals is a slow consumer.
    let trace = Harness::new().run(&[
        Recv(subscribe!()),
        Room(0),
        Append(1, "a"),
        At(1000),
        At(2000),
    ]);
    assert_eq!(
        trace,
        with(&[
            "write blocked",
            "write blocked",
            "close (deadline: close Stalled)"
        ])
    );
    // A blocked stream that falls more than max_lag_bytes behind is closed at once.
    let trace = Harness::new().run(&[
        Recv(subscribe!()),
        Room(0),
        Append(1, "a"),
        Append(2, "a"),
        Append(3, "a"),
        Append(4, "a"),
        Append(5, "a"),
    ]);
    assert_eq!(trace, with(&["write blocked", "close (slow consumer)"]));
    // At the end of its lifetime (or its token's) a stream is sent back with a jittered
    // `retry:` (1000 ms plus 7 from the harness's random number) and closed.
    let mut harness = Harness::new();
    harness.expires_ms = 1_500;
    let trace = harness.run(&[Recv(subscribe!()), At(1000), At(1500)]);
    assert_eq!(
        trace,
        with(&[
            "heartbeat queued",
            ":",
            "retry: 1007",
            "close (Parted(Lifetime))"
        ])
    );
    // A frame in flight is finished before the parting `retry:`.
    let mut harness = Harness::new();
    harness.expires_ms = 500;
    let trace = harness.run(&[
        Recv(subscribe!()),
        Room(3),
        Append(1, "a"),
        At(500),
        Writable,
    ]);
    assert_eq!(
        trace,
        with(&[
            "write blocked",
            "write blocked",
            "id: 1 | data: a",
            "retry: 1007",
            "close (Parted(Lifetime))"
        ])
    );
}

/// Regression: a stream whose write returned `WouldBlock` must say so, or the writable
/// readiness that follows is ignored and the stream stalls until it is closed as slow.
#[test]
fn a_stream_that_would_block_waits_for_writable() {
    let mut harness = Harness::new();
    for input in [Recv(subscribe!()), Room(0), Append(1, "a")] {
        harness.apply_for_test(input);
    }
    let stream = harness
        .conn
        .as_mut()
        .and_then(|c| c.stream_mut())
        .expect("streaming");
    assert!(stream.is_blocked());
    assert!(
        stream.on_writable(),
        "the writable readiness is the stream's"
    );
    assert!(!stream.on_writable(), "once");
    let trace = Harness::new().run(&[Recv(subscribe!()), Room(0), Append(1, "a"), Writable]);
    assert_eq!(
        trace,
        [
            "subscribe a after -",
            "200 stream",
            "retry: 1000 | id: 0",
            "write blocked",
            "id: 1 | data: a"
        ]
    );
}

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

#[test]
fn authorization() {
    use harness::App;
    let opened = ["subscribe a after -", "200 stream", "retry: 1000 | id: 0"];
    // A subscription waits for the application, then opens, or gets its refusal.
    let mut allowed = vec!["ask #1 a"];
    allowed.extend(opened);
    check(
        &[Authorizing, Recv(subscribe!()), Decided(1, App::Allow)],
        &allowed,
    );
    check(
        &[
            Authorizing,
            Recv(subscribe!()),
            Decided(1, App::AllowTopics("b,a*")),
        ],
        &allowed,
    );
    check(
        &[
            Authorizing,
            Recv(subscribe!()),
            Decided(1, App::AllowTopics("b")),
        ],
        &["ask #1 a", "403", "linger"],
    );
    check(
        &[
            Authorizing,
            Recv(subscribe!()),
            Decided(1, App::Unauthorized),
        ],
        &["ask #1 a", "401", "linger"],
    );
    check(
        &[Authorizing, Recv(subscribe!()), Decided(1, App::Forbidden)],
        &["ask #1 a", "403", "linger"],
    );
    check(
        &[
            Authorizing,
            Recv(subscribe!()),
            Decided(1, App::Unavailable),
        ],
        &["ask #1 a", "503", "linger"],
    );
    // A grant that has already ended is a 401, not a stream that ends at once.
    check(
        &[
            Authorizing,
            Recv(subscribe!()),
            Decided(1, App::AllowUntil(0)),
        ],
        &["ask #1 a", "401", "linger"],
    );
    // No decision within auth_timeout (2 s by default): 503, and a late decision finds no
    // question to answer.
    check(
        &[
            Authorizing,
            Recv(subscribe!()),
            At(1999),
            At(2000),
            Decided(1, App::Allow),
        ],
        &[
            "ask #1 a",
            "deadline: drive",
            "503",
            "linger",
            "#1 is no one's",
        ],
    );
    // A 503 the client does not read gets a head timeout to go out, then a close (the
    // simulation found it hanging with no deadline at all).
    check(
        &[Authorizing, Recv(subscribe!()), Room(0), At(2000), At(2500)],
        &[
            "ask #1 a",
            "deadline: drive",
            "write blocked",
            "close (deadline: close PeerGone)",
        ],
    );
    // Nothing more is read while the application decides: a pipelined request waits.
    check(
        &[
            Authorizing,
            Recv(concat!(subscribe!(), health!())),
            Decided(1, App::Forbidden),
        ],
        &["ask #1 a", "403", "linger"],
    );
    // A grant's end sends the stream back with a jittered retry.
    let trace = Harness::new().run(&[
        Authorizing,
        Recv(subscribe!()),
        Decided(1, App::AllowUntil(1_500)),
        At(1_500),
    ]);
    let mut ends = allowed.clone();
    ends.extend(["retry: 1007", "close (Parted(TokenExpired))"]);
    assert_eq!(trace, ends);
    // A publish asks before its body is read, and goes on with the decision: its topics
    // must be within the grant's.
    check(
        &[Authorizing, Recv(publish!("1")), Decided(1, App::Allow)],
        &["ask #1 publish a", "publish #2 to a", "200 1-2"],
    );
    check(
        &[
            Authorizing,
            Recv(publish!("1")),
            Decided(1, App::AllowTopics("b")),
        ],
        &["ask #1 publish a", "403"],
    );
    check(
        &[
            Authorizing,
            Recv(concat!(publish!("1"), health!())),
            Decided(1, App::Unauthorized),
        ],
        // The body was not read: the connection closes after the refusal.
        &["ask #1 publish a", "401", "linger"],
    );
    check(
        &[Authorizing, Recv(publish!("1")), At(2000)],
        &["ask #1 publish a", "deadline: drive", "503", "linger"],
    );
    // Each publish of a pipeline is asked about in turn, after the answers before it; one
    // refused before its body was read ends the connection.
    check(
        &[
            Authorizing,
            Recv(concat!(publish!("1"), publish!("2"))),
            Decided(1, App::Allow),
            Decided(3, App::Forbidden),
        ],
        &[
            "ask #1 publish a",
            "publish #2 to a",
            "200 1-2",
            "ask #3 publish a",
            "403",
            "linger",
        ],
    );
}
