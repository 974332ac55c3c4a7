//! Unit tests of the `cluster` module: latency ratios, settings from flags, merged
//! rounds, run problems, metrics and stream ids, and the capped response body.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use clap::Parser;

use super::checks::{is_stream_id, merged, problems, redis_metrics};
use super::settings::{latency_settings, search_settings};
use super::wire::get;
use super::{verdict, ClusterArgs, LatencyRatio};
use crate::latency::Summary;
use crate::report::Report;
use crate::scenario::Scenario;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: ClusterArgs,
}

fn args(extra: &[&str]) -> ClusterArgs {
    let base = ["t", "--herald-bin", "/x/herald"];
    Flags::parse_from(base.iter().chain(extra)).args
}

#[test]
fn ratios() {
    let e = Summary {
        count: 10,
        p50_ms: 2.0,
        p90_ms: 4.0,
        p99_ms: 8.0,
        p999_ms: 0.0,
        max_ms: 10.0,
    };
    let c = Summary {
        p50_ms: 3.0,
        p90_ms: 4.0,
        p99_ms: 4.0,
        p999_ms: 1.0,
        max_ms: 25.0,
        ..e
    };
    let r = LatencyRatio::of(&c, &e);
    assert_eq!(r.p50, Some(1.5));
    assert_eq!(r.p90, Some(1.0));
    assert_eq!(r.p99, Some(0.5));
    assert_eq!(r.p999, None);
    assert_eq!(r.max, Some(2.5));
}

#[test]
fn settings_from_flags() {
    let a = args(&["--subscribers", "9000", "--rate", "20", "--duration", "5"]);
    let s = latency_settings(&a, 100);
    assert_eq!(
        (s.subscribers, s.topics, s.events, s.publishers),
        (9_000, 1, 100, 1)
    );
    assert_eq!(s.per_worker, 3_000);
    assert_eq!(s.scenario, Scenario::Fanout);
    assert_eq!(s.deadline_seconds, 100);
    let s = search_settings(&a, 50);
    assert_eq!(s.scenario, Scenario::Saturation);
    assert_eq!((s.subscribers, s.topics, s.publishers), (72, 12, 6));
    assert_eq!((s.rate, s.events, s.steps_max), (1_000.0, 3_000, 24));
    assert_eq!(s.step_factor, 1.25);
    assert_eq!(s.per_worker, 24);
    // One subscriber per node still makes one worker per node.
    let a = args(&["--subscribers", "2", "--nodes", "3"]);
    assert_eq!(latency_settings(&a, 1).per_worker, 1);
    let a = args(&[
        "--ceiling-connections",
        "1,2,8",
        "--search-embedded",
        "false",
    ]);
    assert_eq!(a.ceiling_connections, vec![1, 2, 8]);
    assert!(!a.search_embedded);
}

#[test]
fn rounds_merge() {
    let report = |values: &[u64]| {
        let mut h = crate::latency::histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        Report {
            latency_buckets: crate::latency::Buckets::of(&h),
            ..Report::default()
        }
    };
    let m = merged(&[report(&[1_000, 2_000]), report(&[3_000, 4_000])]);
    assert_eq!(m.count, 4);
    assert!((m.max_ms - 4.0).abs() < 0.01, "{m:?}");
    assert!((m.p50_ms - 2.0).abs() < 0.01, "{m:?}");
    assert_eq!(merged(&[]), Summary::default());
    let a = args(&["--rounds", "3"]);
    assert_eq!(a.rounds, 3);
}

#[test]
fn clean_and_unclean_reports() {
    let mut r = Report {
        target: "x".into(),
        expected: 10,
        received: 10,
        ..Report::default()
    };
    assert!(problems(&r).is_empty());
    r.lost = 2;
    r.duplicated = 1;
    r.publish.refused = 3;
    let p = problems(&r);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].contains("2 lost"), "{p:?}");
    r = Report::default();
    assert_eq!(problems(&r).len(), 1);
}

#[test]
fn metrics_and_ids() {
    let text = "# HELP herald_redis_connected reader\n# TYPE herald_redis_connected gauge\n\
                herald_redis_connected 1\nherald_redis_reconnects_total 0\n\
                herald_connections 5\nherald_redis_x{a=\"b c\"} 2.5\nherald_redis_bad x\n";
    let m = redis_metrics(text);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m["herald_redis_connected"], 1.0);
    assert_eq!(m["herald_redis_x{a=\"b c\"}"], 2.5);
    assert!(is_stream_id("1764230400123-0"));
    assert!(is_stream_id("0-1"));
    for bad in ["", "1764230400123", "-1", "1-", "a-1", "1-2-3", "1 -2"] {
        assert!(!is_stream_id(bad), "{bad}");
    }
}

/// Serves one connection on a loopback port with `answer` (written in pieces until
/// the client hangs up) and returns the address.
fn one_answer(answer: Vec<u8>, filler: Vec<u8>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let _ = conn.write_all(&answer);
        for _ in 0..1_000 {
            if filler.is_empty() || conn.write_all(&filler).is_err() {
                break;
            }
        }
    });
    addr
}

#[test]
fn exchange_caps_the_body() {
    let ok = one_answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        Vec::new(),
    );
    assert_eq!(get(ok, "/").unwrap(), (200, "hello".to_owned()));

    let announced = one_answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n".to_vec(),
        vec![b'x'; 64 * 1024],
    );
    let until_close = one_answer(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), vec![b'x'; 64 * 1024]);
    let mut chunk = b"10000\r\n".to_vec();
    chunk.resize(chunk.len() + 0x10000, b'x');
    chunk.extend_from_slice(b"\r\n");
    let chunked = one_answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        chunk,
    );
    for addr in [announced, until_close, chunked] {
        let e = get(addr, "/").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("exceeds 1048576 bytes"), "{e}");
    }
}

#[test]
fn a_run_with_problems_fails_and_names_them() {
    assert!(verdict("the capacity run was", &[]).is_ok());
    let problems = vec!["node 1 lost 3".to_owned(), "redis restarted".to_owned()];
    let error = verdict("the capacity run was", &problems).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the capacity run was not clean: node 1 lost 3; redis restarted"
    );
}
