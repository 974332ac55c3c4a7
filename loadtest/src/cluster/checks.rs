//! Checks and verification of a `cluster` run: the probe that an event published on the
//! first node reaches every node with the id its publish answered, what makes a latency
//! run unfit to compare, the latency of several runs merged, and the `herald_redis_*`
//! metrics of a node.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{post, v4, SseConn};
use super::Probe;
use crate::latency::Summary;
use crate::report::Report;

/// How long the probes may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for a probe event on one node before publishing another.
const PROBE_WAIT: Duration = Duration::from_millis(1_000);

/// The latency of several runs, their histograms merged.
pub fn merged(reports: &[Report]) -> Summary {
    let mut h = crate::latency::histogram();
    for r in reports {
        r.latency_buckets.add_to(&mut h);
    }
    Summary::of(&h)
}

/// What makes a latency run unfit to compare: any loss, repeat, gap, foreign event,
/// refused publish or failed subscription.
pub fn problems(r: &Report) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |what: &str, n: u64| {
        if n > 0 {
            found.push(format!("{}: {n} {what}", r.target));
        }
    };
    check("lost", r.lost);
    check("duplicated", r.duplicated);
    check("gaps", r.gaps);
    check("foreign events", r.foreign);
    check("failed subscriptions", r.failures.total());
    check("refused publishes", r.publish.refused);
    check("publish connection errors", r.publish.io_errors);
    check("disconnects", r.disconnects);
    if r.expected == 0 {
        found.push(format!("{}: nothing was expected", r.target));
    }
    found
}

/// `herald_redis_*` samples of a Prometheus text exposition (labels kept in the name).
pub fn redis_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("herald_redis_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(char::is_whitespace)?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Whether `id` has the form of a Redis stream id, `ms-seq`.
pub fn is_stream_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    matches!(id.split_once('-'), Some((ms, seq)) if digits(ms) && digits(seq))
}

/// Subscribes on every node, publishes probe events on the first until one reaches every
/// node, and checks that every node's `id:` equals the id the publish answered (and, for
/// a Redis cluster, has the stream-id form).
pub fn probe(
    name: &str,
    nodes: &[SocketAddr],
    stream_ids: bool,
    until: Instant,
) -> io::Result<Probe> {
    let started = Instant::now();
    let topic = format!("loadtest-probe-{}", std::process::id());
    let path = format!("/events?topic={topic}");
    let mut conns = nodes
        .iter()
        .map(|&addr| SseConn::open(v4(addr)?, &path, until))
        .collect::<io::Result<Vec<_>>>()?;
    let mut attempts = 0;
    while Instant::now() < until && attempts < 20 {
        attempts += 1;
        let data = format!("probe {attempts}");
        let (status, body) = post(nodes[0], &format!("/publish?topic={topic}"), &data)?;
        let id = body.trim().to_owned();
        if status != 200 {
            return Err(io::Error::other(format!(
                "{name}: probe publish answered {status}: {id}"
            )));
        }
        if stream_ids && !is_stream_id(&id) {
            return Err(io::Error::other(format!(
                "{name}: publish answered {id:?}, not a stream id"
            )));
        }
        let wait_until = (Instant::now() + PROBE_WAIT).min(until);
        let mut seen = 0;
        for (n, conn) in conns.iter_mut().enumerate() {
            if let Some(got) = conn.wait_for(&data, wait_until)? {
                if got != id {
                    return Err(io::Error::other(format!(
                        "{name}: node {n} delivered {data:?} with id {got:?}, the publish answered {id:?}"
                    )));
                }
                seen += 1;
            }
        }
        if seen == conns.len() {
            return Ok(Probe {
                target: name.to_owned(),
                id,
                attempts,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        eprintln!(
            "{name}: probe {attempts} reached {seen} of {} node(s)",
            conns.len()
        );
    }
    Err(io::Error::new(
        ErrorKind::TimedOut,
        format!("{name}: no probe event reached every node"),
    ))
}
