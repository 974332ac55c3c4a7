//! Idle timeouts behind nginx: heartbeats keep nginx's `proxy_read_timeout` from cutting a
//! quiet stream, and nginx cuts one whose heartbeat comes after its read timeout.

use super::*;

/// How long the quiet stream is watched: more than three of nginx's 2 s read timeouts.
const QUIET_WATCH: Duration = Duration::from_secs(7);

#[test]
fn heartbeats_keep_nginx_read_timeout_from_cutting_a_quiet_stream() {
    let herald = HeraldProcess::spawn(&["--heartbeat-ms", "500"]);
    let nginx = Nginx::start("heartbeat", |listen| {
        readme_config(
            herald.addr,
            listen,
            &[("proxy_read_timeout 1h;", "proxy_read_timeout 2s;")],
        )
    });
    let mut stream = EventStream::open(nginx.addr, None, &events_target(&["quiet"], None), &[])
        .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()));
    let opened = Instant::now();
    loop {
        match stream.read_before(opened + QUIET_WATCH) {
            Outcome::Bytes => {}
            Outcome::TimedOut => break,
            Outcome::Ended => panic!(
                "the quiet stream ended after {:?} with {} heartbeats; last chunk: {}",
                opened.elapsed(),
                stream.heartbeats(),
                stream.ended_with_last_chunk()
            ),
        }
    }
    assert!(
        stream.pending.is_empty(),
        "nothing was published, yet events arrived: {:?}",
        stream.pending
    );
    assert!(
        stream.heartbeats() > 0,
        "no heartbeat comment arrived in {QUIET_WATCH:?}"
    );
    eprintln!(
        "heartbeat: {} heartbeat comments through nginx in {QUIET_WATCH:?}, no close",
        stream.heartbeats()
    );

    publish_form(
        herald.addr,
        &[("topic", "quiet"), ("data", "after the quiet")],
    );
    let event = stream.next_event("the event published after the quiet spell");
    assert_eq!(event.data, "after the quiet");
    let log = nginx.error_log();
    assert!(
        !log.contains("upstream timed out"),
        "nginx error log:\n{log}"
    );
}

/// The control: the same quiet stream, but herald's heartbeat comes later than nginx's read
/// timeout. nginx cuts the stream, so the heartbeats are what kept the other one open.
#[test]
fn nginx_cuts_a_quiet_stream_whose_heartbeat_comes_after_its_read_timeout() {
    let herald = HeraldProcess::spawn(&["--heartbeat-ms", "5000"]);
    let nginx = Nginx::start("no-heartbeat", |listen| {
        readme_config(
            herald.addr,
            listen,
            &[("proxy_read_timeout 1h;", "proxy_read_timeout 1s;")],
        )
    });
    let mut stream = EventStream::open(nginx.addr, None, &events_target(&["quiet"], None), &[])
        .unwrap_or_else(|refused| panic!("through nginx: {}", refused.summary()));
    // Before herald's first heartbeat (5 s after the `retry:` frame): if nginx has not cut
    // the stream by then, it would not have without heartbeats either.
    let watch_until = Instant::now() + Duration::from_secs(4);
    loop {
        match stream.read_before(watch_until) {
            Outcome::Bytes => {}
            Outcome::Ended => break,
            Outcome::TimedOut => {
                panic!("nginx kept a stream quiet for 4 s open despite proxy_read_timeout 1s")
            }
        }
    }
    assert_eq!(stream.heartbeats(), 0, "a heartbeat arrived");
    assert!(
        !stream.ended_with_last_chunk(),
        "the response was ended, not cut by nginx's timeout"
    );
    let log = nginx.error_log();
    assert!(
        log.contains("upstream timed out"),
        "nginx error log:\n{log}"
    );
}
