//! The processes of a `cluster` run: a private redis-server, the herald nodes on its
//! stream and the embedded peer, and the load targets they make.

use std::io;
use std::net::SocketAddr;

use testkit::redis::{Options, RedisServer};

use super::{invalid, ClusterArgs};
use crate::peers::{self, Spawned};
use crate::target::{Preset, Target};

/// The processes of one `cluster` run; all stop when it is dropped (nodes first).
pub(super) struct Processes {
    pub(super) nodes: Vec<Spawned>,
    pub(super) embedded: Spawned,
    pub(super) redis: RedisServer,
}

/// Starts a private redis-server (named after `label`) and `args.nodes` herald nodes on
/// its stream, each with `extra` flags after the bus's.
pub(crate) fn start_redis_nodes(
    args: &ClusterArgs,
    label: &str,
    extra: &[String],
) -> io::Result<(RedisServer, Vec<Spawned>)> {
    let redis = RedisServer::launch(&Options {
        bin: args.redis_server.clone(),
        durable: false,
        ..Options::new(label)
    })?;
    let mut flags = vec![
        "--bus".to_owned(),
        "redis".to_owned(),
        "--redis-url".to_owned(),
        redis.url(),
        "--redis-stream".to_owned(),
        args.stream.clone(),
        "--redis-maxlen".to_owned(),
        args.redis_maxlen.to_string(),
    ];
    flags.extend_from_slice(extra);
    let mut nodes = Vec::new();
    for _ in 0..args.nodes.max(1) {
        nodes.push(peers::start_herald_with(
            &args.herald_bin,
            args.node_threads,
            args.history,
            &flags,
        )?);
    }
    Ok((redis, nodes))
}

impl Processes {
    pub(super) fn start(args: &ClusterArgs) -> io::Result<Processes> {
        let (redis, nodes) = start_redis_nodes(args, "loadtest", &[])?;
        let embedded = peers::start_herald(&args.herald_bin, args.threads, args.history)?;
        Ok(Processes {
            nodes,
            embedded,
            redis,
        })
    }

    pub(super) fn embedded_target(&self) -> io::Result<Target> {
        let (sub, publish) = Preset::Herald.templates(self.embedded.addr);
        Target::new("embedded", &sub, &publish, &[self.embedded.pid()]).map_err(invalid)
    }

    /// The nodes as one target; CPU and memory count every node and redis.
    pub(super) fn cluster_target(&self) -> io::Result<Target> {
        let templates: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| Preset::Herald.templates(n.addr))
            .collect();
        let mut pids: Vec<u32> = self.nodes.iter().map(Spawned::pid).collect();
        pids.push(self.redis.pid());
        let name = format!("redis x{}", self.nodes.len());
        Target::cluster(&name, &templates, &pids).map_err(invalid)
    }

    pub(super) fn node_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}
