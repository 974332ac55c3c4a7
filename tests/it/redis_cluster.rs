#![allow(clippy::unwrap_used)]
//! Redis Cluster hosting (issue 15, part 4), with real processes: three `redis-server
//! --cluster-enabled yes` primaries joined by `redis-cli --cluster create` (no replicas),
//! and `herald serve --bus redis --redis-cluster-node ...` nodes whose seeds are the two
//! primaries that do NOT own the stream's hash slot, so a node only reaches the stream by
//! finding the slot's owner.
//!
//! - Two nodes with two subscribers each; publishers alternate between the nodes while the
//!   test migrates the stream's slot to another primary and then to the third one, with the
//!   steps `redis-cli --cluster reshard` takes for one slot (`CLUSTER SETSLOT ... IMPORTING`
//!   and `MIGRATING`, `MIGRATE` of every key in the slot, `CLUSTER SETSLOT ... NODE` on every
//!   primary). Every subscriber must get every acknowledged event, with the id its publish
//!   was answered with, once, in id order; each node must log that it followed `MOVED`.
//! - `/topics` counts the subscribers of every node (the presence hashes live in the
//!   stream's slot, under its hash tag, and move with it).
//! - A third node started after the publishing serves a resume from an early
//!   `Last-Event-ID` by reading the stream (`XRANGE` on the slot's current owner).
//!
//! No wait is timed: every wait polls for a state up to a deadline that only bounds a hang.
//! Every process started here is stopped by its PID.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use crate::common::daemons::*;
use crate::common::metrics::scrape;
use crate::common::*;
use testkit::redis::{free_port, Client};

/// Where Debian's `redis-cli` is (package `redis-tools`, which `redis-server` depends on).
const REDIS_CLI: &str = "/usr/bin/redis-cli";
/// The stream: a hash tag, so the presence keys (`{herald-it}:presence:...`) share its slot.
const STREAM: &str = "{herald-it}";
/// The topic every event goes to.
const TOPIC: &str = "c";
/// The data of the event that ends every subscriber's reading.
const END: &str = "end";
/// Bounds one phase (a cluster forming, a number of acknowledgements, a count settling).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between polls of a state that is still changing.
const POLL: Duration = Duration::from_millis(20);
/// Threads publishing at once, each one publish at a time.
const PUBLISHERS: usize = 2;
/// Acknowledged publishes awaited in each phase (before, between and after migrations).
const PER_PHASE: usize = 100;

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

/// One primary of the cluster.
struct Node {
    port: u16,
    /// Its cluster node id (`CLUSTER MYID`).
    id: String,
    _daemon: Daemon,
}

/// Three primaries forming one cluster, in a scratch directory.
struct RedisCluster {
    nodes: Vec<Node>,
    _scratch: Scratch,
}

impl RedisCluster {
    /// Starts three cluster-enabled redis-servers on free loopback ports (their cluster bus
    /// on other free ports), joins them with `redis-cli --cluster create`, and waits until
    /// each says `cluster_state:ok`.
    fn start(label: &str) -> RedisCluster {
        require(REDIS_SERVER, "redis-server");
        require(REDIS_CLI, "redis-tools");
        let scratch = Scratch::new(label);
        let mut nodes = Vec::new();
        for n in 0..3 {
            let label = format!("node{n}");
            let port = free_port().unwrap();
            let mut args = redis_server_args(&scratch.dir, &label);
            args.extend(
                [
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &scratch.path(&format!("{label}-nodes.conf")),
                    "--cluster-port",
                    &free_port().unwrap().to_string(),
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(str::to_owned),
            );
            let mut daemon = Daemon::spawn(&label, REDIS_SERVER, &args, &scratch.dir);
            daemon.wait_log("Ready to accept connections");
            let id = Client::connect(port)
                .unwrap()
                .command::<String>(&["CLUSTER", "MYID"]);
            nodes.push(Node {
                port,
                id,
                _daemon: daemon,
            });
        }
        let mut create = Command::new(REDIS_CLI);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let log = std::fs::File::create(scratch.path("create.log")).unwrap();
        let mut child = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {REDIS_CLI}: {e}"));
        let deadline = Instant::now() + PHASE_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli --cluster create did not finish within {PHASE_DEADLINE:?}");
            }
            std::thread::sleep(POLL);
        };
        let output = std::fs::read_to_string(scratch.path("create.log")).unwrap();
        assert!(
            status.success(),
            "redis-cli --cluster create: {status}\n{output}"
        );
        let cluster = RedisCluster {
            nodes,
            _scratch: scratch,
        };
        for node in &cluster.nodes {
            wait_for("cluster_state:ok", || {
                cluster
                    .client(node.port)
                    .try_command::<String>(&[b"CLUSTER", b"INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
        }
        cluster
    }

    fn client(&self, port: u16) -> Client {
        Client::connect(port).unwrap()
    }

    /// The stream's hash slot, as Redis computes it.
    fn stream_slot(&self) -> u16 {
        self.client(self.nodes[0].port)
            .command::<u16>(&["CLUSTER", "KEYSLOT", STREAM])
    }

    /// The index of the node that `nodes[asked]` says owns `slot`.
    fn owner_as_seen_by(&self, asked: usize, slot: u16) -> Option<usize> {
        let slots: Value = self
            .client(self.nodes[asked].port)
            .command(&["CLUSTER", "SLOTS"]);
        let Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS answered {slots:?}");
        };
        ranges.iter().find_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let (Value::Int(start), Value::Int(end), Value::Array(primary)) =
                (&fields[0], &fields[1], &fields[2])
            else {
                return None;
            };
            if !(*start..=*end).contains(&i64::from(slot)) {
                return None;
            }
            let Value::Int(port) = primary[1] else {
                return None;
            };
            self.nodes
                .iter()
                .position(|node| i64::from(node.port) == port)
        })
    }

    /// The index of the node that owns `slot`, every node agreeing.
    fn owner(&self, slot: u16) -> usize {
        let owner = self.owner_as_seen_by(0, slot).unwrap();
        for asked in 1..self.nodes.len() {
            assert_eq!(self.owner_as_seen_by(asked, slot), Some(owner));
        }
        owner
    }

    /// Moves `slot` from `nodes[from]` to `nodes[to]` as `redis-cli --cluster reshard` does
    /// for one slot: importing and migrating states, `MIGRATE` of every key in the slot
    /// (the stream and the presence keys), then the new owner on every primary, the target
    /// first.
    fn migrate(&self, slot: u16, from: usize, to: usize) {
        let slot = slot.to_string();
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let mut source_client = self.client(source.port);
        self.client(target.port).command::<String>(&[
            "CLUSTER",
            "SETSLOT",
            &slot,
            "IMPORTING",
            &source.id,
        ]);
        source_client.command::<String>(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target.id]);
        let port = target.port.to_string();
        for _ in 0..1_000 {
            let keys: Vec<String> =
                source_client.command(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &port,
                "",
                "0",
                "10000",
                "REPLACE",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            source_client.command::<String>(&args);
        }
        let others = self.nodes.iter().filter(|n| n.port != target.port);
        for node in std::iter::once(target).chain(others) {
            self.client(node.port)
                .command::<String>(&["CLUSTER", "SETSLOT", &slot, "NODE", &target.id]);
        }
    }

    /// `--redis-cluster-node` flags for every primary but `nodes[owner]`.
    fn seed_flags(&self, owner: usize) -> Vec<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != owner)
            .flat_map(|(_, node)| {
                [
                    "--redis-cluster-node".to_owned(),
                    format!("127.0.0.1:{}", node.port),
                ]
            })
            .collect()
    }
}

/// A herald node on the cluster, seeded with the primaries that do not own the slot.
fn herald_node(cluster: &RedisCluster, owner: usize) -> HeraldProcess {
    // The URL gives only the scheme and credentials; its address is not used.
    let mut flags: Vec<String> = [
        "--bus",
        "redis",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--redis-stream",
        STREAM,
        "--threads",
        "2",
        "--log-level",
        "info",
    ]
    .map(str::to_owned)
    .to_vec();
    flags.extend(cluster.seed_flags(owner));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = HeraldProcess::spawn(&flags);
    wait_for("the node reaching the stream's slot owner", || {
        get(node.addr, "/readyz").status == 200
    });
    node
}

/// Publishes `data` on `addr`; the id when acknowledged, `None` when refused with 503.
fn try_publish(addr: SocketAddr, data: &str) -> Option<String> {
    let response = post(
        addr,
        "/publish",
        Some("application/x-www-form-urlencoded"),
        form(&[("topic", TOPIC), ("data", data)]).as_bytes(),
    );
    match response.status {
        200 => Some(id_from_text_answer(response.body_text())),
        503 => None,
        other => panic!("publish {data}: unexpected {other}: {}", response.summary()),
    }
}

/// What `subscriber` reads up to the end event, as (data, id) per event.
fn read_all(subscriber: &mut Subscriber) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let event = subscriber.next_event("the next event of the cluster run");
        if event.data == END {
            return seen;
        }
        seen.push((event.data, event.last_event_id));
    }
}

/// The subscriber count `/topics` reports for [`TOPIC`] on `addr`.
fn topic_count(addr: SocketAddr) -> u64 {
    let response = get(addr, &format!("/topics?topic={TOPIC}"));
    assert_eq!(response.status, 200, "{}", response.summary());
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    body["topics"][TOPIC]["subscribers"].as_u64().unwrap()
}

/// Checks that `seen` holds every acknowledged publish once, with its id, in id order.
fn check_subscriber(who: &str, seen: &[(String, String)], acknowledged: &[(String, String)]) {
    for pair in seen.windows(2) {
        assert!(
            split_id(&pair[0].1) < split_id(&pair[1].1),
            "{who}: ids not strictly increasing: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let got: HashSet<&(String, String)> = seen.iter().collect();
    let missing: Vec<_> = acknowledged.iter().filter(|a| !got.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{who}: {} of {} acknowledged events never arrived (or with another id): {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn nodes_follow_the_stream_slot_through_migrations_and_share_presence_and_history() {
    let cluster = RedisCluster::start("redis-cluster");
    let slot = cluster.stream_slot();
    let first_owner = cluster.owner(slot);
    let mut nodes = [
        herald_node(&cluster, first_owner),
        herald_node(&cluster, first_owner),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();

    let readers: Vec<_> = addrs
        .iter()
        .flat_map(|addr| [*addr, *addr])
        .map(|addr| {
            let mut subscriber = subscribe(addr, &[TOPIC]);
            std::thread::spawn(move || read_all(&mut subscriber))
        })
        .collect();
    for addr in &addrs {
        wait_for("/topics counting both nodes' subscribers", || {
            topic_count(*addr) == 4
        });
    }

    // Publishers alternate between the nodes; refusals (the moments of a migration when no
    // node serves the stream) are retried with the next sequence number.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (stop, next, addrs) = (stop.clone(), next.clone(), addrs.clone());
            let (acknowledged, refused) = (acknowledged.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let data = format!("{seq:08}");
                    match try_publish(addrs[seq % addrs.len()], &data) {
                        Some(id) => acknowledged.lock().unwrap().push((data, id)),
                        None => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(POLL);
                        }
                    }
                }
            })
        })
        .collect();
    let count = || acknowledged.lock().unwrap().len();
    let mut owners = vec![first_owner];
    wait_for("acknowledged publishes before any migration", || {
        count() >= PER_PHASE
    });
    for step in 1..=2 {
        let from = *owners.last().unwrap();
        let to = (from + 1) % cluster.nodes.len();
        let before = count();
        cluster.migrate(slot, from, to);
        assert_eq!(cluster.owner(slot), to);
        owners.push(to);
        wait_for(
            &format!("acknowledged publishes after migration {step}"),
            || count() >= before + PER_PHASE,
        );
    }
    stop.store(true, Ordering::Release);
    for publisher in publishers {
        publisher.join().unwrap();
    }
    // The end event goes through a node too, once it is acknowledged.
    wait_for("the end event acknowledged", || {
        try_publish(addrs[0], END).is_some()
    });
    let received: Vec<Vec<(String, String)>> =
        readers.into_iter().map(|r| r.join().unwrap()).collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut in_order = acknowledged.clone();
    in_order.sort_by_key(|(_, id)| split_id(id));
    for (n, seen) in received.iter().enumerate() {
        check_subscriber(&format!("subscriber {n} (node {})", n / 2), seen, &in_order);
    }
    eprintln!(
        "redis cluster: slot {slot} owned by nodes {owners:?}; acknowledged {}, refused {}, \
         received per subscriber {:?}",
        acknowledged.len(),
        refused.load(Ordering::Relaxed),
        received.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // Every acknowledged event is in the stream on the slot's last owner.
    let mut redis = cluster.client(cluster.nodes[*owners.last().unwrap()].port);
    let stored: Vec<(String, String)> = redis
        .xrange(STREAM, "-", "+")
        .into_iter()
        .map(|entry| (entry.field("data").unwrap().to_owned(), entry.id))
        .filter(|(data, _)| data != END)
        .collect();
    let stored_set: HashSet<&(String, String)> = stored.iter().collect();
    assert!(acknowledged.iter().all(|a| stored_set.contains(a)));

    // A node started now knows nothing of these events: a resume from an early id is served
    // from the stream, on the slot's current owner, found through the other two.
    // (What it replays is what the stream holds after the id: every acknowledged event,
    // and any a refused publish stored all the same.)
    let late = herald_node(&cluster, *owners.last().unwrap());
    let from = &in_order[9].1;
    let mut resumed = Subscriber::open(
        late.addr,
        &events_target(&[TOPIC], None),
        &[("Last-Event-ID", from)],
    );
    let replayed = read_all(&mut resumed);
    let after: Vec<(String, String)> = stored
        .iter()
        .filter(|(_, id)| split_id(id) > split_id(from))
        .cloned()
        .collect();
    assert_eq!(replayed, after, "the resume on the late node after {from}");
    assert!(scrape(late.addr).value("herald_redis_backfills_total") >= 1.0);
    // The first nodes' subscribers are gone; the late node's one counts everywhere.
    for addr in [addrs[0], addrs[1], late.addr] {
        wait_for("/topics counting the late node's subscriber", || {
            topic_count(addr) == 1
        });
    }

    for node in &mut nodes {
        node.signal("TERM");
        assert!(node.wait_exit(PHASE_DEADLINE).success());
        let moved = node
            .stderr_lines()
            .iter()
            .filter(|line| line.contains(&format!("hash slot {slot} of the stream moved to")))
            .count();
        assert!(
            moved >= 2,
            "a node did not log following MOVED twice: {:?}",
            node.stderr_lines()
        );
    }
    drop(late);
    drop(cluster);
}

#[test]
fn bad_cluster_settings_exit_2_naming_the_setting() {
    for (flags, setting) in [
        (
            &["--redis-cluster-node", "127.0.0.1"][..],
            "redis_cluster_nodes",
        ),
        (
            &["--redis-cluster-node", "127.0.0.1:0"][..],
            "redis_cluster_nodes",
        ),
        (
            &[
                "--redis-cluster-node",
                "127.0.0.1:7000",
                "--redis-sentinel",
                "127.0.0.1:26379",
            ][..],
            "redis_cluster_nodes",
        ),
        (
            &[
                "--redis-cluster-node",
                "127.0.0.1:7000",
                "--redis-url",
                "redis://127.0.0.1:7000/2",
            ][..],
            "redis_url",
        ),
        (
            &[
                "--redis-cluster-node",
                "127.0.0.1:7000",
                "--redis-stream",
                "a}b",
            ][..],
            "redis_stream",
        ),
    ] {
        let mut args = vec!["--bus", "redis"];
        args.extend_from_slice(flags);
        let output = without_herald_env(&mut herald_serve(&args))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{flags:?}: {stderr}");
        assert!(
            stderr.contains(setting) || stderr.contains(&setting.replace('_', "-")),
            "{flags:?}: {stderr}"
        );
    }
}
