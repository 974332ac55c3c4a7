//! README "Cluster mode": three nodes on one Redis behind the README's `upstream` block;
//! subscribers are spread over the nodes and get every event once, in order.

use super::*;

/// The fenced `nginx` block of README's "Cluster mode" section, for three nodes on `nodes`
/// and listening on `listen`.
fn readme_cluster_config(nodes: &[SocketAddr; 3], listen: SocketAddr) -> String {
    const FENCE: &str = "```nginx\n";
    let (_, section) = README
        .split_once("## Cluster mode")
        .expect("README.md has a \"Cluster mode\" section");
    let start = section.find(FENCE).expect("an ```nginx block in it") + FENCE.len();
    let end = start + section[start..].find("```").unwrap();
    let mut block = section[start..end].to_owned();
    let listen = format!("listen {listen};");
    let nodes: Vec<String> = nodes.iter().map(|addr| format!("server {addr} ")).collect();
    let replacements = [
        ("server 127.0.0.1:8081 ", nodes[0].as_str()),
        ("server 127.0.0.1:8082 ", nodes[1].as_str()),
        ("server 127.0.0.1:8083 ", nodes[2].as_str()),
        ("listen 443 ssl http2;", listen.as_str()),
    ];
    for (from, to) in replacements {
        assert_eq!(
            block.matches(from).count(),
            1,
            "README's cluster nginx block should contain {from:?} exactly once:\n{block}"
        );
        block = block.replace(from, to);
    }
    block
}

/// Subscribers opened through the README's cluster block.
const CLUSTER_SUBSCRIBERS: usize = 30;
/// Events published through it.
const CLUSTER_EVENTS: usize = 20;

/// README "Cluster mode": three nodes on one Redis behind the README's `upstream` block.
/// `least_conn` spreads the subscribers over every node, publishes through nginx reach
/// every subscriber once, in order, with the same ids whichever node serves it.
#[test]
fn readme_cluster_config_spreads_subscribers_over_the_nodes() {
    let redis = testkit::redis::RedisServer::start("nginx-cluster");
    let url = redis.url();
    let nodes: Vec<HeraldProcess> = (0..3)
        .map(|_| {
            HeraldProcess::spawn(&[
                "--bus",
                "redis",
                "--redis-url",
                &url,
                "--redis-stream",
                "nginx-cluster",
                "--threads",
                "1",
            ])
        })
        .collect();
    let addrs = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    for addr in addrs {
        wait_until("every node's reader is connected", || {
            scrape(addr).get("herald_redis_connected") == Some(1.0)
        });
    }
    let nginx = Nginx::start("cluster", |listen| readme_cluster_config(&addrs, listen));
    let target = events_target(&["score"], None);
    let mut streams: Vec<EventStream> = (0..CLUSTER_SUBSCRIBERS)
        .map(|_| {
            EventStream::open(nginx.addr, None, &target, &[])
                .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()))
        })
        .collect();
    let per_node: Vec<f64> = addrs
        .iter()
        .map(|&addr| scrape(addr).value("herald_subscribers"))
        .collect();
    assert_eq!(
        per_node.iter().sum::<f64>(),
        CLUSTER_SUBSCRIBERS as f64,
        "every subscriber is on some node: {per_node:?}"
    );
    assert!(
        per_node.iter().all(|&n| n >= 5.0),
        "least_conn spreads {CLUSTER_SUBSCRIBERS} subscribers over the three nodes: {per_node:?}"
    );

    let mut publisher = Conn::connect(nginx.addr);
    let mut ids = Vec::with_capacity(CLUSTER_EVENTS);
    for i in 0..CLUSTER_EVENTS {
        publisher.send(post_request(
            "/publish?topic=score",
            Some("text/plain"),
            format!("goal {i}").as_bytes(),
            &[],
        ));
        let answer = publisher.read_response("the publish answer through nginx");
        assert_eq!(answer.status, 200, "publish: {}", answer.summary());
        ids.push(answer.body_text().trim().to_owned());
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let event = stream.next_event(&format!("event {i} on subscriber {n}"));
            assert_eq!(
                (event.data.as_str(), event.last_event_id.as_str()),
                (format!("goal {i}").as_str(), id.as_str()),
                "subscriber {n} gets every event once, in order, with the stream's ids"
            );
        }
    }
    drop(nginx);
    drop(nodes);
}
