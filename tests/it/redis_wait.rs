#![allow(clippy::unwrap_used)]
//! Durable acknowledgements (issue 15, part 2): with `--redis-wait-replicas N` a publish is
//! answered `200` only once `WAIT N` confirmed N replicas hold it, otherwise `503` with a
//! one-line reason and `Retry-After`; a batch publish is one `WAIT` after its
//! `MULTI`/`EXEC`. Real processes: a `redis-server` primary, a replica of it, and `herald
//! serve --bus redis`.
//!
//! An acknowledged event is on the replica when the answer comes: the test reads it there
//! right after each `200`. A frozen replica (SIGSTOP) confirms nothing, so publishes and
//! batches get `503` until it runs again; asking for more replicas than there are gets
//! `503` too. What a failover does to acknowledged events with 0 and 1 is
//! `redis_sentinel.rs`'s.

use std::net::SocketAddr;

use crate::common::daemons::*;
use crate::common::*;
use testkit::redis::{free_port, Client};

const STREAM: &str = "durable";
const REASON: &str = "redis did not confirm redis_wait_replicas replicas within redis_wait_timeout";

/// A primary and one replica in `scratch`; returns them with the primary's and the
/// replica's ports.
fn primary_and_replica(scratch: &Scratch) -> (Daemon, Daemon, u16, u16) {
    require(REDIS_SERVER, "redis-server");
    let (primary_port, replica_port) = (free_port().unwrap(), free_port().unwrap());
    let mut args = redis_server_args(&scratch.dir, "primary");
    args.extend(["--port".to_owned(), primary_port.to_string()]);
    let mut primary = Daemon::spawn("primary", REDIS_SERVER, &args, &scratch.dir);
    primary.wait_log("Ready to accept connections");
    let mut args = redis_server_args(&scratch.dir, "replica");
    args.extend([
        "--port".to_owned(),
        replica_port.to_string(),
        "--replicaof".to_owned(),
        format!("127.0.0.1 {primary_port}"),
    ]);
    let mut replica = Daemon::spawn("replica", REDIS_SERVER, &args, &scratch.dir);
    replica.wait_log("MASTER <-> REPLICA sync: Finished with success");
    (primary, replica, primary_port, replica_port)
}

fn node(primary_port: u16, wait_replicas: &str) -> HeraldProcess {
    let url = format!("redis://127.0.0.1:{primary_port}/0");
    let node = HeraldProcess::spawn(&[
        "--bus",
        "redis",
        "--redis-url",
        &url,
        "--redis-stream",
        STREAM,
        "--threads",
        "1",
        "--redis-wait-replicas",
        wait_replicas,
        "--redis-wait-timeout",
        "200ms",
    ]);
    wait_until("the node connected", || {
        get(node.addr, "/readyz").status == 200
    });
    node
}

fn publish_one(addr: SocketAddr, data: &str) -> Response {
    post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", "t"), ("data", data)]).as_bytes(),
    )
}

fn publish_batch(addr: SocketAddr, data: &[&str]) -> Response {
    let body: String = data
        .iter()
        .map(|d| format!("{{\"topic\":\"t\",\"data\":\"{d}\"}}\n"))
        .collect();
    post(
        addr,
        "/publish",
        Some("application/x-ndjson"),
        body.as_bytes(),
    )
}

/// The ids in a batch answer `{"ids":[...]}`.
fn batch_ids(response: &Response) -> Vec<String> {
    assert_eq!(response.status, 200, "{}", response.summary());
    let value: serde_json::Value = serde_json::from_str(response.body_text()).unwrap();
    value["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

/// Whether the replica holds entry `id` right now.
fn on_replica(replica: &mut Client, id: &str) -> bool {
    !replica.xrange(STREAM, id, id).is_empty()
}

fn assert_not_replicated(response: &Response, case: &str) {
    assert_error(response, 503, case);
    assert!(
        response.body_text().starts_with(REASON),
        "{case}: {:?}",
        response.body_text()
    );
    assert_eq!(response.header("retry-after"), Some("1"), "{case}");
}

#[test]
fn with_wait_replicas_1_an_acknowledged_publish_is_already_on_the_replica() {
    let scratch = Scratch::new("wait");
    let (_primary, replica, primary_port, replica_port) = primary_and_replica(&scratch);
    let herald = node(primary_port, "1");
    let mut replica_client = Client::connect(replica_port).unwrap();

    for n in 0..20 {
        let response = publish_one(herald.addr, &format!("one {n}"));
        assert_eq!(response.status, 200, "{}", response.summary());
        let id = id_from_text_answer(response.body_text());
        assert!(
            on_replica(&mut replica_client, &id),
            "publish {n}: {id} not on the replica"
        );
    }
    let ids = batch_ids(&publish_batch(herald.addr, &["b0", "b1", "b2"]));
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert!(
            on_replica(&mut replica_client, id),
            "batch entry {id} not on the replica"
        );
    }

    // A frozen replica confirms nothing: single and batch publishes get 503 (their entries
    // may be stored on the primary all the same).
    send_signal(replica.pid(), "STOP");
    assert_not_replicated(
        &publish_one(herald.addr, "frozen"),
        "a publish, replica frozen",
    );
    assert_not_replicated(
        &publish_batch(herald.addr, &["f0", "f1"]),
        "a batch, replica frozen",
    );
    send_signal(replica.pid(), "CONT");
    wait_until("the replica confirming again", || {
        publish_one(herald.addr, "thawed").status == 200
    });
    assert_healthy(herald.addr, "after the refusals");
}

#[test]
fn more_replicas_than_there_are_is_503_and_0_does_not_wait() {
    let scratch = Scratch::new("wait-two");
    let (_primary, replica, primary_port, _) = primary_and_replica(&scratch);
    let herald = node(primary_port, "2");
    assert_not_replicated(
        &publish_one(herald.addr, "x"),
        "2 replicas wanted, 1 exists",
    );
    drop(herald);
    // Without WAIT a frozen replica changes nothing for publishers.
    let herald = node(primary_port, "0");
    send_signal(replica.pid(), "STOP");
    let response = publish_one(herald.addr, "async");
    send_signal(replica.pid(), "CONT");
    assert_eq!(response.status, 200, "{}", response.summary());
}
