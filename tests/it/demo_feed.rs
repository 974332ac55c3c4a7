//! `herald serve --demo-feed` publishes the sample ticker, metrics and alert events the demo
//! page shows, on topic `demo`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use crate::common::{HeraldProcess, Subscriber};

#[test]
fn demo_feed_publishes_ticks_metrics_and_alerts_on_topic_demo() {
    let server = HeraldProcess::spawn(&["--threads", "1", "--demo-feed"]);
    // An id from no run of this server: the answer is a gap event, then everything kept,
    // which includes the feed's first second (ticks, metrics and an alert).
    let mut subscriber = Subscriber::open(server.addr, "/events?topic=demo&lastEventId=0-0", &[]);
    let gap = subscriber.next_event("the gap event");
    assert_eq!(gap.event_type, "gap");
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let event = subscriber.next_event("tick, metrics and alert events");
        assert!(
            !event.last_event_id.is_empty(),
            "feed events carry ids: {event:?}"
        );
        assert!(
            event.data.starts_with('{') && event.data.ends_with('}'),
            "{event:?}"
        );
        match event.event_type.as_str() {
            "tick" => assert!(event.data.contains("\"symbol\":"), "{event:?}"),
            "metrics" => assert!(event.data.contains("\"cpu\":"), "{event:?}"),
            "alert" => assert!(event.data.contains("\"level\":"), "{event:?}"),
            other => panic!("unexpected event {other:?}"),
        }
        seen.insert(event.event_type);
    }
}
