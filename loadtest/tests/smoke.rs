//! Smoke test of the whole load generator against a real herald on 127.0.0.1:0: a tiny
//! fan-out (200 subscribers, 2 topics, 50 events) and a tiny churn (subscribers reconnect
//! with Last-Event-ID while events flow), each asserting zero loss, zero duplicates and a
//! report that adds up. It keeps the instrument from rotting; it measures nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use common::{herald_bin, number};

/// herald, killed when the test ends however it ends.
struct Herald {
    child: Child,
    addr: String,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_herald() -> Herald {
    let mut child = Command::new(herald_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "herald exited without listening"
        );
        if let Some(rest) = line.trim().split("listening on http://").nth(1) {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    // Keep draining herald's stderr so it can never block on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Herald { child, addr }
}

/// Runs `loadtest run` against `herald` with `args` and returns the JSON report.
fn run(herald: &Herald, name: &str, args: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!("loadtest-{name}-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "--target", "herald", "--addr", &herald.addr])
        .args(["--server-pid", &herald.child.id().to_string()])
        .args([
            "--settle-ms",
            "100",
            "--drain-quiet-ms",
            "3000",
            "--deadline-seconds",
            "40",
        ])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest failed\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("latency p99"),
        "no table printed:\n{stdout}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    report
}

fn n(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report:#}"))
}

/// Delivery counts add up: everything expected arrived once, with sane latencies.
fn assert_clean(report: &Value, expected: u64) {
    assert_eq!(n(report, "connected"), 200, "{report:#}");
    assert_eq!(number(report, &["failures", "status"]), 0.0);
    assert_eq!(n(report, "expected"), expected, "{report:#}");
    assert_eq!(n(report, "received"), expected, "{report:#}");
    assert_eq!(n(report, "lost"), 0, "{report:#}");
    assert_eq!(n(report, "duplicated"), 0, "{report:#}");
    assert_eq!(number(report, &["latency", "count"]) as u64, expected);
    let (p50, p99, max) = (
        number(report, &["latency", "p50_ms"]),
        number(report, &["latency", "p99_ms"]),
        number(report, &["latency", "max_ms"]),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
    assert_eq!(
        number(report, &["publish", "accepted"]) as u64,
        n(report, "events")
    );
    assert!(report["rss_per_connection_bytes"].is_number(), "{report:#}");
    assert!(number(report, &["deliveries_per_second"]) > 0.0);
}

#[test]
fn fanout_and_churn_against_herald() {
    let herald = start_herald();
    let sizes = ["--subscribers", "200", "--topics", "2"];

    let fanout = run(
        &herald,
        "fanout",
        &[
            &sizes[..],
            &["--scenario", "fanout", "--events", "50", "--rate", "100"],
        ]
        .concat(),
    );
    // 50 events over 2 topics: 25 per topic, 100 subscribers per topic.
    assert_clean(&fanout, 200 * 25);

    let churn = run(
        &herald,
        "churn",
        &[
            &sizes[..],
            &[
                "--scenario",
                "churn",
                "--events",
                "150",
                "--rate",
                "50",
                "--churn-percent",
                "20",
            ],
        ]
        .concat(),
    );
    assert_clean(&churn, 200 * 75);
    assert!(n(&churn, "reconnects") >= 40, "{churn:#}");
}
