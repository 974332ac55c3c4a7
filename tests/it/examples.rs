//! The examples in `examples/` run as real programs: each must serve subscribers and exit 0.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

/// `cargo test` builds examples next to the test binaries: target/<profile>/examples/.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

/// A running example: the process, its stderr after the first line, and its address.
struct Example {
    child: Child,
    stderr: BufReader<ChildStderr>,
    addr: String,
}

impl Example {
    /// Starts `name` on a free port; its first stderr line is `serving on http://ADDR...`.
    fn start(name: &str, env: &[(&str, &str)]) -> Example {
        let mut child = Command::new(example_path(name))
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("example {name} (built by cargo test): {e}"));
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        let url = first
            .trim()
            .strip_prefix("serving on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let addr = url.split('/').next().unwrap().to_owned();
        Example {
            child,
            stderr,
            addr,
        }
    }

    /// Subscribes to `topic` and reads until `done` holds for the text received, or fails
    /// after the 10 s read timeout.
    fn read_stream_until(&self, topic: &str, done: impl Fn(&str) -> bool) -> String {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /events?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&received)) {
            let n = stream.read(&mut chunk).expect("events within 10 s");
            let so_far = String::from_utf8_lossy(&received);
            assert!(n > 0, "stream closed early: {so_far}");
            received.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(received).unwrap()
    }

    /// Waits for the example to exit 0 and returns the rest of its stderr.
    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        assert!(status.success(), "example failed: {rest}");
        rest
    }
}

#[test]
fn embedded_example_serves_its_ticker_and_exits_cleanly() {
    let example = Example::start("embedded", &[("HERALD_EXAMPLE_EVENTS", "15")]);
    let text =
        example.read_stream_until("prices", |text| text.matches("event: tick\n").count() >= 2);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("data: {\"symbol\":\""), "{text}");
    let rest = example.finish();
    assert!(rest.contains("published 45 events"), "{rest}");
}

#[test]
fn job_progress_example_publishes_each_jobs_progress_to_its_topic() {
    let example = Example::start(
        "job_progress",
        &[
            ("HERALD_EXAMPLE_JOBS", "3"),
            ("HERALD_EXAMPLE_STEP_MS", "200"),
        ],
    );
    // Job 3 has 3 steps (3 + 3 % 3): it runs last, so subscribing now catches all of it.
    let text = example.read_stream_until("jobs/3", |text| text.contains("event: done\n"));
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(
        data,
        [
            r#"{"job":3,"percent":33}"#,
            r#"{"job":3,"percent":66}"#,
            r#"{"job":3,"status":"done"}"#
        ],
        "{text}"
    );
    let rest = example.finish();
    assert!(rest.contains("all 3 jobs done"), "{rest}");
}
