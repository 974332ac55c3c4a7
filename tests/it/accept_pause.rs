//! The hard ceiling of admission: past `max_connections` every connection is accepted and
//! refused with 503, but when 1,024 refused connections are still closing (lingering) a
//! loop stops accepting, leaves newcomers in the kernel's backlog, and resumes below the
//! low-water mark. Nobody is reset or dropped: every client reads its 503.
#![allow(clippy::unwrap_used)]

use crate::common::{get, parse_metrics_response, start, wait_until, Conn, Subscriber};

/// More than the per-loop lingering cap (1,024), so the loop must pause and resume.
const REFUSED: usize = 1_200;

#[test]
fn refusals_past_the_lingering_cap_wait_in_the_backlog_and_all_get_503() {
    let server = start(|config| {
        config.threads = 1;
        config.max_connections = 1;
    });
    let addr = server.local_addr();
    // The one admitted connection.
    let holder = Subscriber::open(addr, "/events?topic=hold", &[]);

    // Clients that never close: each refused connection lingers on the server for a second.
    let mut refused: Vec<Conn> = (0..REFUSED).map(|_| Conn::connect(addr)).collect();
    for (i, conn) in refused.iter_mut().enumerate() {
        let response = conn.read_response(&format!("the 503 of refused connection {i}"));
        assert_eq!(
            response.status,
            503,
            "connection {i}: {}",
            response.summary()
        );
        assert!(
            response.header("Retry-After").is_some(),
            "connection {i}: {}",
            response.summary()
        );
    }

    // Once the server has seen the holder leave, a scrape is admitted again.
    drop(holder);
    let mut page = None;
    wait_until("a /metrics request to be admitted", || {
        let response = get(addr, "/metrics");
        let admitted = response.status == 200;
        page = Some(response);
        admitted
    });
    let metrics = parse_metrics_response(&page.unwrap());
    assert!(
        metrics.value("herald_accept_pauses_total") >= 1.0,
        "the loop never paused accepting: {}",
        metrics.text
    );
    assert!(
        metrics.value("herald_connections_refused_total{reason=\"max_connections\"}")
            >= REFUSED as f64,
        "{}",
        metrics.text
    );
}
