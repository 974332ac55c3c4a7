//! Smoke test of `loadtest cluster`: a private redis-server, three herald nodes on the
//! Redis bus and one embedded herald, with tiny sizes (300 subscribers, one second of
//! publishing in two rounds, two short ladder steps, sub-second XADD runs). It asserts that the probe saw
//! stream ids, that the latency runs were clean on both sides, and that every part
//! reported; and `cluster --capacity` on two nodes. It keeps the instrument from rotting;
//! it measures nothing. Needs
//! /usr/bin/redis-server (CI installs it).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use common::{herald_bin, number};

#[test]
fn cluster_against_three_redis_nodes() {
    assert!(
        Path::new("/usr/bin/redis-server").exists(),
        "this test needs /usr/bin/redis-server (apt-get install redis-server)"
    );
    let json = std::env::temp_dir().join(format!("loadtest-cluster-{}.json", std::process::id()));
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("cluster")
        .arg("--herald-bin")
        .arg(herald_bin())
        .args(["--subscribers", "300", "--rate", "20", "--duration", "1"])
        .args(["--rounds", "2"])
        .args(["--search-subscribers", "36", "--search-topics", "6"])
        .args(["--search-publishers", "3", "--search-rate", "100"])
        .args(["--search-embedded", "false"])
        .args(["--search-steps-max", "2", "--search-step-seconds", "0.5"])
        .args(["--ceiling-seconds", "0.3", "--ceiling-connections", "1,2"])
        .args(["--ceiling-depths", "16"])
        .args(["--settle-ms", "100", "--drain-quiet-ms", "2000"])
        .args(["--deadline-seconds", "60"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest cluster failed\n{stdout}\n{stderr}"
    );
    eprintln!(
        "cluster smoke took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(stdout.contains("ratio"), "no summary printed:\n{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);

    assert_eq!(number(&r, &["nodes"]), 3.0);
    let probe_id = r["probes"][1]["id"].as_str().unwrap();
    let (ms, seq) = probe_id.split_once('-').unwrap();
    assert!(
        ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        "{probe_id}"
    );
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r:#}");
    for side in ["latency_embedded", "latency_cluster"] {
        let rounds = r[side].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{side}");
        for round in rounds {
            // 20 events to 300 subscribers on one topic.
            assert_eq!(number(round, &["connected"]), 300.0, "{side}");
            assert_eq!(number(round, &["workers"]), 3.0, "{side}");
            assert_eq!(number(round, &["expected"]), 6_000.0, "{side}");
            assert_eq!(number(round, &["received"]), 6_000.0, "{side}");
            assert_eq!(number(round, &["lost"]), 0.0, "{side}");
            assert_eq!(number(round, &["duplicated"]), 0.0, "{side}");
            assert!(number(round, &["latency", "p99_ms"]) > 0.0, "{side}");
        }
        assert_eq!(number(&r, &[&format!("{side}_merged"), "count"]), 12_000.0);
    }
    assert!(number(&r, &["latency_ratio", "p50"]) > 0.0);
    // 100 ev/s through three nodes is far below anything this machine sustains.
    assert!(
        number(&r, &["sustained_cluster_events_per_second"]) >= 100.0,
        "{r:#}"
    );
    assert!(r["search_embedded"].is_null());
    assert_eq!(r["ceiling"].as_array().unwrap().len(), 2);
    assert!(number(&r, &["ceiling_entries_per_second"]) > 0.0);
    assert!(number(&r, &["ceiling_with_readers", "entries"]) > 0.0);
    for m in r["node_metrics"].as_array().unwrap() {
        assert_eq!(m["herald_redis_connected"].as_f64(), Some(1.0), "{m}");
        assert_eq!(m["herald_redis_entries_skipped_total"].as_f64(), Some(0.0));
    }
}

/// `cluster --capacity` at toy size: two nodes, 300 subscribers in two workers (one per
/// node) from three source addresses, per-node figures and Redis's own, and a clean run.
#[test]
fn capacity_on_two_redis_nodes() {
    assert!(
        Path::new("/usr/bin/redis-server").exists(),
        "this test needs /usr/bin/redis-server (apt-get install redis-server)"
    );
    let json = std::env::temp_dir().join(format!("loadtest-capacity-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("cluster")
        .arg("--herald-bin")
        .arg(herald_bin())
        .args(["--capacity", "--nodes", "2", "--subscribers", "300"])
        .args(["--rate", "20", "--duration", "1", "--per-source", "100"])
        .args(["--settle-ms", "100", "--drain-quiet-ms", "2000"])
        .args(["--deadline-seconds", "60"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest cluster --capacity failed\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("capacity: 300 subscribers on 2 herald nodes"),
        "{stdout}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);

    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r:#}");
    assert_eq!(number(&r, &["nodes"]), 2.0);
    assert_eq!(number(&r, &["node_max_connections"]), 150.0 + 64.0);
    assert_eq!(number(&r, &["source_addresses"]), 3.0);
    // No embedded peer, rate search or ceiling: one run, 20 events.
    assert_eq!(number(&r, &["run", "events"]), 20.0);
    assert_eq!(number(&r, &["run", "expected"]), 6_000.0);
    assert_eq!(number(&r, &["run", "received"]), 6_000.0);
    let nodes = r["per_node"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for node in nodes {
        assert_eq!(number(node, &["subscribers"]), 150.0, "{node}");
        assert_eq!(number(node, &["expected"]), 3_000.0, "{node}");
        assert_eq!(number(node, &["received"]), 3_000.0, "{node}");
        assert_eq!(number(node, &["duplicated"]), 0.0, "{node}");
        assert_eq!(number(node, &["latency", "count"]), 3_000.0, "{node}");
        assert!(
            number(node, &["memory_connected", "rss_bytes"]) > 0.0,
            "{node}"
        );
    }
    assert!(number(&r, &["redis", "used_memory_after"]) > 0.0);
    // The probe's entries, then the 20 events.
    let before = number(&r, &["redis", "stream_length_before"]);
    assert_eq!(number(&r, &["redis", "stream_length_after"]), before + 20.0);
    assert!(number(&r, &["window_seconds"]) > 0.0);
}
