#![allow(clippy::unwrap_used)]
//! Redis Sentinel and failover (issue 15, parts 1 and 2), with real processes: a
//! `redis-server` primary with two replicas, three `redis-sentinel`s (short
//! `down-after-milliseconds` and `failover-timeout`, so a failover takes a few seconds), and
//! two `herald serve --bus redis --redis-sentinel ...` nodes with two subscribers each.
//! Publishers keep publishing over HTTP on both nodes while the test kills the primary
//! (SIGKILL, by PID); the sentinels promote a replica, and the nodes find it through them.
//!
//! What every subscriber on every node received is then checked against what the
//! publishers were told and against the stream the new primary holds:
//! - each subscriber's ids strictly increase (stream order, no duplicate);
//! - every entry the surviving stream holds from the first event on reached every
//!   subscriber (the readers resumed after their last id on the new primary);
//! - an acknowledged publish (`200` and its id) whose entry the surviving stream does not
//!   hold is *lost*: asynchronous replication had not copied it when the primary died.
//!
//! `/readyz` on a node is polled throughout: it answers 503 while the node has no primary,
//! and 200 again after the failover.
//!
//! To make the loss that asynchronous replication allows happen on purpose (on loopback a
//! replica otherwise copies an entry within microseconds), the "stalled replicas" cases
//! freeze both replicas (SIGSTOP) for a moment before the kill while the publishers send
//! large events: what the primary acknowledged beyond what the kernel's socket buffers
//! hold for the frozen replicas is only in the primary's memory when it dies. With
//! `--redis-wait-replicas 1` those publishes are answered 503 instead (no replica
//! confirmed them), and the test asserts that no acknowledged event is lost; with 0 they
//! are acknowledged and lost. How many is a measurement, not asserted: it depends on how
//! much the publishers sent during the freeze beyond the socket buffers. The counts are
//! BENCHMARKS.md's failover loss table.
//!
//! No wait is timed: every wait polls for a state (a log line, an answer) up to a
//! deadline that only bounds a hang.
//!
//! This file holds the deployment and the failover run ([`failover`]) every case shares;
//! the cases are in [`failovers`] (a sentinel failover after the primary is killed, and
//! manual failovers that demote a live primary), [`stalled_replicas`] (the loss that
//! asynchronous replication allows, with `--redis-wait-replicas` 1 and 0) and [`settings`]
//! (bad sentinel settings exit 2).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::daemons::*;
use crate::common::*;
use testkit::redis::{free_port, Client};

mod failovers;
mod settings;
mod stalled_replicas;

/// The primary's name in the sentinels.
const MASTER: &str = "mymaster";
/// The stream the nodes share.
const STREAM: &str = "failover";
/// The topic every event goes to.
const TOPIC: &str = "f";
/// The data of the event that ends every subscriber's reading.
const END: &str = "end";
/// Bounds one phase of the test (a failover, a number of acknowledgements).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// Threads publishing at once, each one publish at a time.
const PUBLISHERS: usize = 4;
/// Pause between polls of a state that is still changing.
const POLL: Duration = Duration::from_millis(20);

/// One failover run.
#[derive(Clone, Copy)]
struct Case {
    /// `--redis-wait-replicas`.
    wait_replicas: usize,
    /// Freeze both replicas for a moment before killing the primary.
    stall_replicas: bool,
    /// Ask the sentinels for a failover (`SENTINEL FAILOVER`) instead of killing the
    /// primary: it stays up and is demoted to a replica.
    manual: bool,
    /// Bytes of padding in each event's data.
    padding: usize,
}

/// What a run measured.
struct Outcome {
    /// Publishes answered `200`.
    acknowledged: usize,
    /// Publishes refused (any other answer).
    refused: usize,
    /// Acknowledged publishes whose entry the surviving stream does not hold.
    lost: usize,
    /// Acknowledged while the replicas were frozen.
    acknowledged_while_stalled: usize,
    /// Acknowledged after the primary was killed (by the new primary).
    acknowledged_after_kill: usize,
    /// Events every subscriber received.
    received: Vec<usize>,
}

impl Outcome {
    /// One line for the log of the run (and BENCHMARKS.md's loss table).
    fn summary(&self) -> String {
        format!(
            "acknowledged {} (while the replicas were frozen: {}, by the new primary: {}), \
             refused {}, acknowledged but lost {}, received per subscriber {:?}",
            self.acknowledged,
            self.acknowledged_while_stalled,
            self.acknowledged_after_kill,
            self.refused,
            self.lost,
            self.received
        )
    }
}

/// The primary, its replicas and the sentinels, in a scratch directory.
struct Deployment {
    primary: Daemon,
    replicas: Vec<Daemon>,
    sentinel_ports: Vec<u16>,
    _sentinels: Vec<Daemon>,
    _scratch: Scratch,
}

fn redis_server(scratch: &Scratch, label: &str, port: u16, extra: &[String]) -> Daemon {
    let mut args = redis_server_args(&scratch.dir, label);
    args.extend(["--port".to_owned(), port.to_string()]);
    args.extend_from_slice(extra);
    Daemon::spawn(label, REDIS_SERVER, &args, &scratch.dir)
}

impl Deployment {
    /// Starts a primary, two replicas and three sentinels with a quorum of two, and waits
    /// until every sentinel knows both replicas and the other sentinels.
    fn start(label: &str, down_after_ms: u64) -> Deployment {
        require(REDIS_SERVER, "redis-server");
        require(REDIS_SENTINEL, "redis-sentinel");
        let scratch = Scratch::new(label);
        let primary_port = free_port().unwrap();
        let mut primary = redis_server(&scratch, "primary", primary_port, &[]);
        primary.wait_log("Ready to accept connections");
        let mut replicas = Vec::new();
        let mut replica_ports = Vec::new();
        for n in 0..2 {
            let port = free_port().unwrap();
            let replica_of = [
                "--replicaof".to_owned(),
                format!("127.0.0.1 {primary_port}"),
            ];
            replicas.push(redis_server(
                &scratch,
                &format!("replica{n}"),
                port,
                &replica_of,
            ));
            replica_ports.push(port);
        }
        for replica in &mut replicas {
            replica.wait_log("MASTER <-> REPLICA sync: Finished with success");
        }
        let sentinel_ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
        let mut sentinels = Vec::new();
        for (n, port) in sentinel_ports.iter().enumerate() {
            let label = format!("sentinel{n}");
            let conf = scratch.dir.join(format!("{label}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile {log}\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} {down_after_ms}\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 2\n",
                    log = Daemon::log_path(&scratch.dir, &label).display(),
                    dir = scratch.dir.display(),
                ),
            )
            .unwrap();
            let conf = conf.to_str().unwrap().to_owned();
            sentinels.push(Daemon::spawn(&label, REDIS_SENTINEL, &[conf], &scratch.dir));
        }
        for (n, sentinel) in sentinels.iter_mut().enumerate() {
            sentinel.wait_log(&format!("+monitor master {MASTER}"));
            for port in &replica_ports {
                sentinel.wait_log(&format!("+slave slave 127.0.0.1:{port}"));
            }
            for (m, port) in sentinel_ports.iter().enumerate() {
                if m != n {
                    sentinel.wait_log(&format!("127.0.0.1 {port} @ {MASTER}"));
                }
            }
        }
        Deployment {
            primary,
            replicas,
            sentinel_ports,
            _sentinels: sentinels,
            _scratch: scratch,
        }
    }

    /// The primary's port as the first sentinel that answers names it.
    fn primary_port(&self) -> Option<u16> {
        self.sentinel_ports.iter().find_map(|port| {
            let mut client = Client::connect(*port).ok()?;
            let addr: Vec<String> = client
                .try_command(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", MASTER.as_bytes()])
                .ok()?;
            addr.get(1)?.parse().ok()
        })
    }

    /// `--redis-sentinel` flags for every sentinel.
    fn flags(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .flat_map(|port| ["--redis-sentinel".to_owned(), format!("127.0.0.1:{port}")])
            .collect()
    }
}

/// A publish's outcome: its sequence number, and its id when it was acknowledged.
struct Published {
    seq: usize,
    id: Option<String>,
    /// Whether the replicas were frozen when it was answered.
    while_stalled: bool,
    /// Whether the primary had been killed when it was answered.
    after_kill: bool,
}

/// Publishes `seq`, padded, on `addr`; the id when acknowledged. A refused publish or a
/// connection the node closed counts as not acknowledged.
fn try_publish(addr: SocketAddr, seq: usize, padding: usize) -> Option<String> {
    let data = format!("{seq:08} {}", "x".repeat(padding));
    let response = post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", TOPIC), ("data", &data)]).as_bytes(),
    );
    match response.status {
        200 => Some(id_from_text_answer(response.body_text())),
        503 => None,
        other => panic!("publish {seq}: unexpected {other}: {}", response.summary()),
    }
}

/// What one subscriber read: (sequence number, id) per event, up to the end event.
fn read_all(mut subscriber: Subscriber) -> Vec<(usize, String)> {
    let mut seen = Vec::new();
    loop {
        let event = subscriber.next_event("the next event of the failover run");
        if event.data == END {
            return seen;
        }
        let seq = event.data[..8].parse().unwrap();
        seen.push((seq, event.last_event_id));
    }
}

/// Waits until `condition` holds, polling; fails after [`PHASE_DEADLINE`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PHASE_DEADLINE:?}"
        );
        std::thread::sleep(POLL);
    }
}

fn id_key(id: &str) -> (u64, u64) {
    split_id(id)
}

/// Runs one failover and checks every subscriber; returns what it measured.
fn failover(label: &str, case: Case) -> Outcome {
    let down_after_ms = if case.stall_replicas { 3_000 } else { 1_000 };
    let mut deployment = Deployment::start(label, down_after_ms);
    let wait = case.wait_replicas.to_string();
    let mut flags: Vec<String> = [
        "--bus",
        "redis",
        "--redis-stream",
        STREAM,
        "--redis-master-name",
        MASTER,
        "--threads",
        "2",
        "--max-lag-bytes",
        "256MiB",
        "--history-total-bytes",
        "256MiB",
    ]
    .map(str::to_owned)
    .to_vec();
    if case.wait_replicas > 0 {
        flags.extend(
            [
                "--redis-wait-replicas",
                &wait,
                "--redis-wait-timeout",
                "300ms",
            ]
            .map(str::to_owned),
        );
    }
    flags.extend(deployment.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let nodes = [HeraldProcess::spawn(&flags), HeraldProcess::spawn(&flags)];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    for addr in &addrs {
        wait_for("the node finding the primary", || {
            get(*addr, "/readyz").status == 200
        });
    }

    let readers: Vec<_> = addrs
        .iter()
        .flat_map(|addr| [*addr, *addr])
        .map(|addr| {
            let subscriber = subscribe(addr, &[TOPIC]);
            std::thread::spawn(move || read_all(subscriber))
        })
        .collect();

    // /readyz of the first node, polled throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let readiness = {
        let (stop, killed, addr) = (stop.clone(), killed.clone(), addrs[0]);
        std::thread::spawn(move || {
            let mut after_kill = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let response = get(addr, "/readyz");
                if killed.load(Ordering::Acquire) {
                    after_kill.push((response.status, response.body_text().to_owned()));
                }
                std::thread::sleep(POLL);
            }
            after_kill
        })
    };

    // Publishers, each alternating between the nodes.
    let next = Arc::new(AtomicUsize::new(0));
    let first_after_kill = AtomicUsize::new(usize::MAX);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (stop, killed, stalled) = (stop.clone(), killed.clone(), stalled.clone());
            let (next, outcomes, addrs) = (next.clone(), outcomes.clone(), addrs.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let id = try_publish(addrs[seq % addrs.len()], seq, case.padding);
                    if id.is_none() {
                        // Refused at once while there is no primary: no need to spin.
                        std::thread::sleep(POLL);
                    }
                    outcomes.lock().unwrap().push(Published {
                        seq,
                        id,
                        while_stalled: stalled.load(Ordering::Acquire),
                        after_kill: killed.load(Ordering::Acquire),
                    });
                }
            })
        })
        .collect();
    let acknowledged = |filter: fn(&Published) -> bool| {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.id.is_some() && filter(p))
            .count()
    };

    wait_for("100 acknowledged publishes", || {
        acknowledged(|_| true) >= 100
    });
    if case.stall_replicas {
        for replica in &deployment.replicas {
            send_signal(replica.pid(), "STOP");
        }
        stalled.store(true, Ordering::Release);
        // Long enough for the publishers to send more than the socket buffers hold, short
        // enough that the sentinels still count the replicas as up.
        let until = Instant::now() + Duration::from_millis(down_after_ms / 2);
        while Instant::now() < until {
            std::thread::sleep(POLL);
        }
    }
    let old_primary = deployment.primary_port();
    first_after_kill.store(next.load(Ordering::Acquire), Ordering::Release);
    killed.store(true, Ordering::Release);
    if case.manual {
        let mut sentinel = Client::connect(deployment.sentinel_ports[0]).unwrap();
        sentinel.command::<String>(&["SENTINEL", "FAILOVER", MASTER]);
    } else {
        deployment.primary.kill();
    }
    if case.stall_replicas {
        for replica in &deployment.replicas {
            send_signal(replica.pid(), "CONT");
        }
        stalled.store(false, Ordering::Release);
    }
    wait_for("the sentinels promoting a replica", || {
        deployment
            .primary_port()
            .is_some_and(|port| Some(port) != old_primary)
    });
    wait_for("100 publishes acknowledged by the new primary", || {
        acknowledged(|p| p.after_kill) >= 100
    });
    // From where both nodes write to the new primary (publish n goes through node n % 2),
    // every entry must reach every subscriber; before it, after a manual failover, a node
    // still writing to the old primary moves its reader's last id past entries the other
    // node wrote to the new one (see `nodes_follow_a_manual_failover_...`).
    let mut settled_after = None;
    wait_for("both nodes writing to the new primary", || {
        let Some(port) = deployment.primary_port() else {
            return false;
        };
        let Ok(mut redis) = Client::connect(port) else {
            return false;
        };
        let entries = redis.xrevrange_count(STREAM, "+", "-", 64);
        let nodes: HashSet<usize> = entries
            .iter()
            .filter_map(|entry| entry.field("data")?.get(..8)?.parse::<usize>().ok())
            .filter(|seq| *seq >= first_after_kill.load(Ordering::Acquire))
            .map(|seq| seq % 2)
            .collect();
        settled_after = entries.first().map(|entry| entry.id.clone());
        nodes.len() == 2
    });
    let settled_after = settled_after.unwrap();
    // Each node is ready again once its reader's backoff (at most 2 s) let it find the new
    // primary.
    for addr in &addrs {
        wait_for("the node ready again after the failover", || {
            get(*addr, "/readyz").status == 200
        });
    }
    stop.store(true, Ordering::Release);
    for publisher in publishers {
        publisher.join().unwrap();
    }

    // The end event goes straight into the new primary's stream, as any application's
    // entry would: it needs no replica, whatever --redis-wait-replicas says.
    let new_primary = deployment.primary_port().unwrap();
    let mut redis = Client::connect(new_primary).unwrap();
    redis.xadd(STREAM, &[("topic", TOPIC), ("data", END)]);
    let received: Vec<Vec<(usize, String)>> =
        readers.into_iter().map(|r| r.join().unwrap()).collect();
    let after_kill = readiness.join().unwrap();

    let surviving: Vec<String> = redis
        .xrange(STREAM, "-", "+")
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    let surviving_set: HashSet<&str> = surviving.iter().map(String::as_str).collect();
    let outcomes = outcomes.lock().unwrap();
    let lost = outcomes
        .iter()
        .filter_map(|p| p.id.as_deref())
        .filter(|id| !surviving_set.contains(id))
        .count();

    for (n, seen) in received.iter().enumerate() {
        let who = format!("subscriber {n} (node {})", n / 2);
        for pair in seen.windows(2) {
            assert!(
                id_key(&pair[0].1) < id_key(&pair[1].1),
                "{who}: ids not strictly increasing: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        let got: HashSet<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
        // Every entry of the surviving stream after the subscriber's first event (and
        // before the end event) reached it.
        let first = seen.first().map(|(_, id)| id_key(id)).unwrap();
        let first = match case.manual {
            true => first.max(id_key(&settled_after)),
            false => first,
        };
        let missing: Vec<&String> = surviving
            .iter()
            .filter(|id| id_key(id) >= first)
            .filter(|id| !got.contains(id.as_str()))
            .collect();
        assert!(
            missing.len() <= 1,
            "{who}: {} surviving entries never arrived: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        // The one exception allowed above is the end event itself.
        if let Some(id) = missing.first() {
            assert_eq!(**id, *surviving.last().unwrap(), "{who}");
        }
        // What it got with a sequence number is what that publish was answered with.
        for (seq, id) in seen {
            if let Some(Published {
                id: Some(acked), ..
            }) = outcomes.iter().find(|p| p.seq == *seq)
            {
                assert_eq!(acked, id, "{who}: publish {seq}");
            }
        }
    }
    // A manual failover is over in moments, and a node may never see it as an outage.
    assert!(
        case.manual
            || after_kill.iter().any(|(status, body)| *status == 503
                && body.starts_with("not ready: the redis bus is disconnected")),
        "/readyz never answered 503 while the primary was gone: {after_kill:?}"
    );
    drop(nodes);
    drop(deployment);
    Outcome {
        acknowledged: outcomes.iter().filter(|p| p.id.is_some()).count(),
        refused: outcomes.iter().filter(|p| p.id.is_none()).count(),
        lost,
        acknowledged_while_stalled: outcomes
            .iter()
            .filter(|p| p.id.is_some() && p.while_stalled)
            .count(),
        acknowledged_after_kill: outcomes
            .iter()
            .filter(|p| p.id.is_some() && p.after_kill)
            .count(),
        received: received.iter().map(Vec::len).collect(),
    }
}
