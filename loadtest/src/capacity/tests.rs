//! Unit tests of `cluster --capacity`: each node's share of the subscribers and the
//! `--max-connections` that fits the open-file limit.

use std::net::SocketAddr;

use super::{node_max_connections, per_node_subscribers};
use crate::cluster::{self, ClusterArgs};
use crate::protocol::SOCKETS_PER_WORKER_MAX;
use crate::scenario::Settings;
use crate::target::{Preset, Target};

fn stand_in(nodes: u16) -> Target {
    let t: Vec<(String, String)> = (1..=nodes)
        .map(|p| Preset::Herald.templates(SocketAddr::from(([127, 0, 0, 1], p))))
        .collect();
    Target::cluster("t", &t, &[]).unwrap()
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    args: ClusterArgs,
}

/// The settings `cluster --capacity` derives for `subscribers` on `nodes`.
fn settings(subscribers: usize, nodes: usize) -> Settings {
    let (s, n) = (subscribers.to_string(), nodes.to_string());
    let flags = <Flags as clap::Parser>::parse_from([
        "t",
        "--herald-bin",
        "/x/herald",
        "--capacity",
        "--subscribers",
        &s,
        "--nodes",
        &n,
    ]);
    assert!(flags.args.capacity);
    cluster::latency_settings(&flags.args, 60)
}

#[test]
fn shares_follow_the_worker_split() {
    // 100k on 7 nodes: one worker of 14,286 or 14,285 per node.
    let s = settings(100_000, 7);
    assert_eq!(s.per_worker, 14_286);
    let shares = per_node_subscribers(&stand_in(7), &s, 7);
    assert_eq!(shares.iter().sum::<u64>(), 100_000);
    assert!(
        shares.iter().all(|&s| s == 14_285 || s == 14_286),
        "{shares:?}"
    );
    // 100k on 6 nodes with 15,000 per worker: 12 workers, two per node.
    let s = settings(100_000, 6);
    assert_eq!(s.per_worker, SOCKETS_PER_WORKER_MAX);
    let shares = per_node_subscribers(&stand_in(6), &s, 6);
    assert_eq!(shares.iter().sum::<u64>(), 100_000);
    assert!(
        shares.iter().all(|&s| (16_666..=16_667).contains(&s)),
        "{shares:?}"
    );
}

#[test]
fn max_connections_fit_the_open_files() {
    assert_eq!(node_max_connections(0, 14_286, 20_000), Ok(14_350));
    assert_eq!(node_max_connections(15_000, 14_286, 20_000), Ok(15_000));
    assert!(node_max_connections(14_286, 14_286, 20_000).is_err());
    let e = node_max_connections(0, 25_000, 20_000).unwrap_err();
    assert!(e.contains("add nodes"), "{e}");
    assert!(node_max_connections(19_937, 100, 20_000).is_err());
}
