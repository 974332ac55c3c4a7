//! The examples in `examples/` run as real programs: each must serve subscribers and exit 0.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `cargo test` builds examples next to the test binaries: target/<profile>/examples/.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

#[test]
fn embedded_example_serves_its_ticker_and_exits_cleanly() {
    let mut child = Command::new(example_path("embedded"))
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_EXAMPLE_EVENTS", "15")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the embedded example is built by cargo test");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("serving on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let addr = url.split('/').next().unwrap();

    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /events?topic=prices HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until two tick events have arrived (or the 10 s read timeout fails the test).
    while String::from_utf8_lossy(&received)
        .matches("event: tick\n")
        .count()
        < 2
    {
        let n = stream.read(&mut chunk).expect("ticks within 10 s");
        assert!(
            n > 0,
            "stream closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("data: {\"symbol\":\""), "{text}");

    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "example failed: {rest}");
    assert!(rest.contains("published 45 events"), "{rest}");
}

#[test]
fn job_progress_example_publishes_each_jobs_progress_to_its_topic() {
    let mut child = Command::new(example_path("job_progress"))
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_EXAMPLE_JOBS", "3")
        .env("HERALD_EXAMPLE_STEP_MS", "200")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the job_progress example is built by cargo test");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("serving on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();

    // Job 3 has 3 steps (3 + 3 % 3): it runs last, so subscribing now catches all of it.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /events?topic=jobs/3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("event: done\n") {
        let n = stream.read(&mut chunk).expect("job 3 finishes within 10 s");
        assert!(
            n > 0,
            "stream closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    let progress: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(
        progress,
        [
            r#"{"job":3,"percent":33}"#,
            r#"{"job":3,"percent":66}"#,
            r#"{"job":3,"status":"done"}"#
        ],
        "{text}"
    );

    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "example failed: {rest}");
    assert!(rest.contains("all 3 jobs done"), "{rest}");
}
