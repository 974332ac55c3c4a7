//! Unit tests of the report: expected deliveries, loss, ratios and the tables.

use super::*;

#[test]
fn a_worker_that_never_waited_is_named() {
    let mut r = Report {
        target: "herald".into(),
        ..Report::default()
    };
    let table = |r: &Report| {
        let mut out = Vec::new();
        write_table(&mut out, r).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(saturated_worker_note(&r).is_none(), "no figure, no note");
    r.worker_waits_per_second = Some(300.0);
    assert!(!table(&r).contains("never caught up"));
    assert!(table(&r).contains("300.0"));
    r.worker_waits_per_second = Some(0.2);
    assert!(table(&r).contains("never caught up (0.2 waits/s)"));
}

#[test]
fn events_split_over_topics() {
    assert_eq!(events_on_topic(10, 3, 0), 4);
    assert_eq!(events_on_topic(10, 3, 1), 3);
    assert_eq!(events_on_topic(10, 3, 2), 3);
    assert_eq!(events_on_topic(0, 3, 0), 0);
    assert_eq!(events_on_topic(7, 1, 0), 7);
}

#[test]
fn expected_and_lost() {
    // 5 subscribers over 2 topics (3 on topic 0, 2 on topic 1), subscriber 2 failed.
    let per = subscribers_per_topic(5, 2, &[2]);
    assert_eq!(per, vec![2, 2]);
    // Events 0..5: topic 0 gets 0, 2, 4; topic 1 gets 1, 3.
    assert_eq!(expected_deliveries(&per, 0, 5), 2 * 3 + 2 * 2);
    // A later step, events 5..8: topic 0 gets 6; topic 1 gets 5, 7.
    assert_eq!(expected_deliveries(&per, 5, 3), 2 + 2 * 2);
    assert_eq!(lost(10, 7), 3);
    assert_eq!(lost(10, 12), 0);
}

#[test]
fn loss_is_explained_or_fails_the_proof() {
    let d = crate::protocol::Deliveries {
        missed_announced: 5,
        missed_silent: 1,
        tail_reconnecting: 2,
        gap_notices: 1,
        ..Default::default()
    };
    let loss = Loss::of(10, &d);
    assert_eq!((loss.unexplained, loss.unannounced()), (2, 5));
    let mut r = Report {
        events: 3,
        loss,
        ..Report::default()
    };
    r.publish.accepted = 3;
    let why = zero_loss_failure(&r).unwrap();
    assert!(
        why.contains("5 deliveries lost without a gap notice"),
        "{why}"
    );
    r.loss = Loss::of(5, &Default::default());
    r.loss.announced = 5;
    r.loss.unexplained = 0;
    assert_eq!(zero_loss_failure(&r), None);
    r.loss.gap_notices_spurious = 1;
    assert!(
        zero_loss_failure(&r).unwrap().contains("spurious")
            || zero_loss_failure(&r).unwrap().contains("nothing missing")
    );
    r.loss.gap_notices_spurious = 0;
    r.loss.gap_notices_unfounded = 1;
    assert!(zero_loss_failure(&r)
        .unwrap()
        .contains("history still held"));
}

#[test]
fn cpu_and_memory_arithmetic() {
    assert_eq!(per_million(2.0, 4_000_000), Some(0.5));
    assert_eq!(per_million(2.0, 0), None);
    assert_eq!(per_connection(1_000, 11_000, 10), Some(1_000.0));
    assert_eq!(per_connection(11_000, 1_000, 10), Some(-1_000.0));
    assert_eq!(per_connection(0, 5, 0), None);
    assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
    assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    assert_eq!(ratio(None, Some(1.0)), None);
}

#[test]
fn tables_render() {
    let mut r = Report {
        target: "herald".into(),
        scenario: "fanout".into(),
        received: 42,
        ..Report::default()
    };
    r.steps.push(Step {
        rate: 100.0,
        passed: true,
        ..Step::default()
    });
    let mut out = Vec::new();
    write_table(&mut out, &r).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("received"), "{text}");
    assert!(text.contains("pass"), "{text}");
    let mut n = r.clone();
    n.target = "nchan".into();
    n.received = 84;
    let mut out = Vec::new();
    write_comparison(&mut out, &r, &n).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("received") && l.contains("0.500")),
        "{text}"
    );
}
