//! Entries other Redis clients add to the stream with `XADD`: valid ones reach every node,
//! whatever their stream ids; invalid ones are skipped and counted.

use super::*;

#[test]
fn entries_added_with_xadd_reach_every_node_and_invalid_ones_are_skipped_and_counted() {
    let stream = "external";
    let small_publishes: &[&str] = &["--max-publish-bytes", "4KiB"];
    let (redis, nodes) = start_cluster(
        stream,
        [
            ("node 0", small_publishes),
            ("node 1", small_publishes),
            ("node 2", small_publishes),
        ],
    );
    let topic_sets: [&[&str]; 3] = [&["a"], &["b"], &["a", "b"]];
    let mut subscribers: Vec<(String, Subscriber)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for topics in topic_sets {
            subscribers.push((
                format!("subscriber on node {n}, topics {topics:?}"),
                subscribe(node.addr(), topics),
            ));
        }
    }

    let mut redis_conn = redis.client();
    let note = redis_conn.xadd(
        stream,
        &[
            ("topic", "a,b"),
            ("event", "note"),
            ("data", "line1\nline2"),
        ],
    );
    for (who, subscriber) in &mut subscribers {
        let event = subscriber.next_event(&format!("the XADDed note on the {who}"));
        assert_eq!(
            seen(&event),
            ("note".to_owned(), "line1\nline2".to_owned(), note.clone()),
            "{who}"
        );
    }

    // Invalid entries: a topic with a space, no topic at all, an event name with a newline,
    // data that is not UTF-8, data over --max-publish-bytes.
    let too_big = vec![b'x'; 5_000];
    let invalid: [&[(&[u8], &[u8])]; 5] = [
        &[(b"topic", b"a,b"), (b"data", &too_big)],
        &[(b"topic", b"has space"), (b"data", b"bad 1")],
        &[(b"data", b"bad 2"), (b"event", b"note")],
        &[
            (b"topic", b"a,b"),
            (b"event", b"two\nlines"),
            (b"data", b"bad 3"),
        ],
        &[(b"topic", b"a,b"), (b"data", b"bad \xff\xfe 4")],
    ];
    for fields in invalid {
        redis_conn.xadd_bytes(stream, fields);
    }
    // Valid: the topic field repeated, a retry field and an unknown field.
    let after = redis_conn.xadd(
        stream,
        &[
            ("topic", "a"),
            ("topic", "b"),
            ("source", "billing"),
            ("retry", "1500"),
            ("data", "after"),
        ],
    );
    for (who, subscriber) in &mut subscribers {
        let event =
            subscriber.next_event(&format!("the entry after the invalid ones on the {who}"));
        assert_eq!(seen(&event), message("after", &after), "{who}");
        assert_eq!(subscriber.retry_ms(), Some(1500), "{who}: the retry field");
    }
    // A JSON publish on one node, as a mix with the XADDed entries: answered with
    // {"id":"<stream id>"}, delivered everywhere with that id.
    let response = post(
        nodes[1].addr(),
        "/publish",
        Some("application/json"),
        br#"{"topic":["a","b"],"event":"j","data":{"x":1}}"#,
    );
    assert_eq!(response.status, 200, "JSON publish: {}", response.summary());
    let json_id = id_from_json_answer(response.body_text());
    assert!(
        id_key(&json_id) > id_key(&after),
        "the JSON publish's id {json_id} must follow {after}"
    );
    publish_form(
        nodes[0].addr(),
        &[("topic", "a"), ("topic", "b"), ("data", "end")],
    );
    for (who, subscriber) in &mut subscribers {
        let got = seen_before_end(subscriber);
        assert_eq!(
            got,
            vec![("j".to_owned(), "{\"x\":1}".to_owned(), json_id.clone())],
            "{who}: the JSON publish, then the end"
        );
    }
    for node in &nodes {
        let skipped = node.wait_metric(SKIPPED, "five skipped entries", |v| v >= 5.0);
        assert_eq!(skipped, 5.0, "{SKIPPED} on {}", node.label);
    }
}

/// Issue 10, item 10: entries with stream ids outside what `XADD *` produces today (an
/// outsider's explicit id in microseconds, then one with a sequence near 2^64) are ordinary
/// entries. They, and every publish after them (whose ids now follow theirs), reach every
/// subscriber on every node in stream order with the ids the publishers were answered with;
/// nothing is skipped, and a resume from such an id is served from the stream.
#[test]
fn issue_10_any_valid_stream_id_is_delivered_and_so_is_everything_after_it() {
    let stream = "wide-ids";
    let (redis, [a, b]) = start_cluster(stream, A_AND_SMALL_RING_B);
    let mut subscribers = [
        ("the subscriber on A", subscribe(a.addr(), &["t"])),
        ("the subscriber on B", subscribe(b.addr(), &["t"])),
    ];
    let mut outsider = redis.client();
    let mut xadd = |id: &str, data: &str| {
        let answered: String = outsider.command(&["XADD", stream, id, "topic", "t", "data", data]);
        assert_eq!(answered, id, "the outsider's XADD");
        message(data, id)
    };
    let mut expected = vec![xadd("1733000000000000-0", "outsider, microseconds")];
    for (i, node) in [&a, &b].iter().enumerate() {
        let data = format!("after microseconds {i}");
        expected.push(message(&data, &publish_to(node.addr(), "t", &data)));
    }
    expected.push(xadd(
        "1733000000000000-18446744073709551614",
        "outsider, sequence near 2^64",
    ));
    for (i, node) in [&a, &b, &a].iter().enumerate() {
        let data = format!("after the large sequence {i}");
        expected.push(message(&data, &publish_to(node.addr(), "t", &data)));
    }
    assert_eq!(
        expected[5].2, "1733000000000001-0",
        "Redis carries a full sequence into the millisecond"
    );
    let ids: Vec<&str> = expected.iter().map(|e| e.2.as_str()).collect();
    assert_strictly_increasing(&ids, "the answered ids");
    publish_to(b.addr(), "t", "end");
    for (who, subscriber) in &mut subscribers {
        assert_same_events(&seen_before_end(subscriber), &expected, who);
    }
    // B keeps 2 events per topic: a resume from the first outsider entry needs the stream.
    let mut resumed = resume_with_header(b.addr(), &["t"], &expected[0].2);
    assert_same_events(
        &seen_before_end(&mut resumed),
        &expected[1..],
        "a resume on B from the microsecond id",
    );
    for node in [&a, &b] {
        assert_eq!(node.metric(SKIPPED), 0.0, "{SKIPPED} on {}", node.label);
    }
}
