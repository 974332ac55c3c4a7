//! Failovers with both replicas frozen (SIGSTOP) just before the kill: with
//! `--redis-wait-replicas 1` no acknowledged event is lost; with 0 acknowledged events can
//! be lost (measured, not asserted).

use super::*;

/// Padding of the events in the stalled-replica runs: large, so the publishers send more
/// during the freeze than the frozen replicas' socket buffers take in.
const STALL_PADDING: usize = 32 * 1024;

#[test]
fn with_wait_replicas_1_no_acknowledged_event_is_lost_in_a_failover() {
    let outcome = failover(
        "sentinel-wait-1",
        Case {
            wait_replicas: 1,
            stall_replicas: true,
            manual: false,
            padding: STALL_PADDING,
        },
    );
    eprintln!(
        "failover with frozen replicas, --redis-wait-replicas 1: {}",
        outcome.summary()
    );
    assert_eq!(outcome.lost, 0, "{}", outcome.summary());
}

#[test]
fn with_wait_replicas_0_acknowledged_events_can_be_lost_in_a_failover() {
    let outcome = failover(
        "sentinel-wait-0",
        Case {
            wait_replicas: 0,
            stall_replicas: true,
            manual: false,
            padding: STALL_PADDING,
        },
    );
    eprintln!(
        "failover with frozen replicas, --redis-wait-replicas 0: {}",
        outcome.summary()
    );
}
