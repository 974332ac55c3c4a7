//! The connection core's protocol at a glance: tables of scripts (bytes arriving, maybe
//! split; a socket that takes only so much; time passing; the bus answering) and what the
//! core wrote and asked for, one short line each. A line is an HTTP answer (`200 1-1`,
//! `404`), an SSE block of a stream (`id: 3 | data: a`, `:` for a heartbeat), or an
//! action (`publish #1 to a`, `await bus`, `linger`, `close (…)`). Where streams start,
//! and the resume planner's own table, are in `tests/starts.rs`.

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

// After the macros, so the resume tables can use them.
mod starts;

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
