//! Fan-out across three cluster nodes sharing one Redis stream, and pipelined publishes on
//! one connection answered in request order.

use super::*;

/// The publishes of the fan-out test: event `i` goes to `a`, `b` or both, some with an event
/// name, some with several lines of data.
struct Spec {
    topics: Vec<&'static str>,
    event: Option<&'static str>,
    data: String,
}

fn spec(i: usize) -> Spec {
    let topics = match i % 5 {
        0 | 1 => vec!["a"],
        2 | 3 => vec!["b"],
        _ => vec!["a", "b"],
    };
    let event = (i % 4 == 1).then_some("tick");
    let data = if i % 6 == 0 {
        format!("ev {i}\nsecond line of {i}\n\nafter a blank line")
    } else {
        format!("ev {i}")
    };
    Spec {
        topics,
        event,
        data,
    }
}

fn publish_spec(addr: SocketAddr, spec: &Spec) -> String {
    let mut pairs: Vec<(&str, &str)> = spec.topics.iter().map(|t| ("topic", *t)).collect();
    if let Some(event) = spec.event {
        pairs.push(("event", event));
    }
    pairs.push(("data", &spec.data));
    publish_form(addr, &pairs)
}

const FANOUT_EVENTS: usize = 300;
const FANOUT_PUBLISHERS: usize = 3;
const SUBSCRIBERS_PER_NODE: usize = 30;

#[test]
fn three_nodes_deliver_every_event_once_in_stream_order_with_the_published_ids() {
    let stream = "fanout";
    let (redis, nodes) = start_cluster(stream, [("node 0", &[]), ("node 1", &[]), ("node 2", &[])]);
    let topic_sets: [&[&str]; 3] = [&["a"], &["b"], &["a", "b"]];
    // (node, topic set, subscriber): ten of each set on every node.
    let mut subscribers: Vec<(usize, usize, Subscriber)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for k in 0..SUBSCRIBERS_PER_NODE {
            let set = k % topic_sets.len();
            subscribers.push((n, set, subscribe(node.addr(), topic_sets[set])));
        }
    }

    // Three publisher threads, each going round the three nodes; event i comes from thread
    // i % 3.
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let publishers: Vec<_> = (0..FANOUT_PUBLISHERS)
        .map(|t| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                (0..FANOUT_EVENTS / FANOUT_PUBLISHERS)
                    .map(|k| {
                        let i = t + FANOUT_PUBLISHERS * k;
                        (i, publish_spec(addrs[(t + k) % addrs.len()], &spec(i)))
                    })
                    .collect::<Vec<(usize, String)>>()
            })
        })
        .collect();
    let mut published: Vec<(usize, String)> = Vec::new();
    for (t, publisher) in publishers.into_iter().enumerate() {
        let ids = publisher
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let in_order: Vec<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
        assert_strictly_increasing(
            &in_order,
            &format!("publisher {t}: one client's acknowledged publishes"),
        );
        published.extend(ids);
    }
    published.sort_by_key(|(_, id)| id_key(id));
    let all_ids: Vec<&str> = published.iter().map(|(_, id)| id.as_str()).collect();
    assert_strictly_increasing(&all_ids, "all publish answers (no id given twice)");

    // Each publish is one stream entry, whose id is the answered id.
    let mut redis_conn = redis.client();
    let entries = redis_conn.xrange(stream, "-", "+");
    let entry_ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        entry_ids, all_ids,
        "the stream's entries must be exactly the acknowledged publishes"
    );
    for (entry, (i, _)) in entries.iter().zip(&published) {
        let spec = spec(*i);
        assert_eq!(
            (entry.field("data"), entry.field("event")),
            (Some(spec.data.as_str()), spec.event),
            "stream entry {} of publish {i}: {:?}",
            entry.id,
            entry.fields
        );
    }

    let end = publish_form(addrs[1], &[("topic", "a"), ("topic", "b"), ("data", "end")]);
    let mut sequences_per_node: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for (k, (n, set, subscriber)) in subscribers.iter_mut().enumerate() {
        let topics = topic_sets[*set];
        let expected: Vec<Seen> = published
            .iter()
            .filter_map(|(i, id)| {
                let spec = spec(*i);
                spec.topics.iter().any(|t| topics.contains(t)).then(|| {
                    (
                        spec.event.unwrap_or("message").to_owned(),
                        spec.data,
                        id.clone(),
                    )
                })
            })
            .collect();
        let who = format!("subscriber {k} on node {n}, topics {topics:?}");
        let got = seen_before_end(subscriber);
        assert_same_events(&got, &expected, &who);
        assert_eq!(subscriber.last_event_id(), end, "{who}: the sentinel's id");
        if topics.len() == 2 {
            let ids: Vec<String> = got.into_iter().map(|(_, _, id)| id).collect();
            if sequences_per_node[*n].is_empty() {
                sequences_per_node[*n] = ids;
            } else {
                assert_eq!(sequences_per_node[*n], ids, "{who}: differs from its node");
            }
        }
    }
    for (n, ids) in sequences_per_node.iter().enumerate() {
        assert_eq!(
            ids, &sequences_per_node[0],
            "node {n} delivered another id sequence than node 0"
        );
    }
}

/// Publishes sent back to back on one connection, without waiting for answers.
const PIPELINED_PUBLISHES: usize = 300;

/// A publisher that pipelines (sends many requests before reading any answer) keeps many
/// publishes at Redis at once, and still gets its answers in request order, each id the
/// one its event carries, with the events delivered in that order.
#[test]
fn pipelined_publishes_on_one_connection_are_answered_in_order() {
    let (_redis, [node]) = start_cluster("pipelined", [("node", &[])]);
    let mut subscriber = subscribe(node.addr(), &["p"]);
    let mut requests = Vec::new();
    for i in 0..PIPELINED_PUBLISHES {
        requests.extend_from_slice(&post_request(
            "/publish?topic=p",
            Some("text/plain"),
            format!("pipelined {i}").as_bytes(),
            &[],
        ));
    }
    let mut conn = Conn::connect(node.addr());
    conn.send(&requests);
    let ids: Vec<String> = (0..PIPELINED_PUBLISHES)
        .map(|i| {
            let answer = conn.read_response(&format!("answer {i}"));
            assert_eq!(answer.status, 200, "publish {i}: {}", answer.summary());
            answer.body_text().trim().to_owned()
        })
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_strictly_increasing(&refs, "the answers, in request order");
    let events = subscriber.events(PIPELINED_PUBLISHES);
    for (i, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(
            seen(event),
            message(&format!("pipelined {i}"), id),
            "event {i} carries the id its publish was answered with"
        );
    }
}
