//! Servers for the tests: the configuration every test starts from, an in-process server on
//! `127.0.0.1:0`, publishing through the library handle, and waiting for eventually
//! consistent counters, and the wall clock for tests of times.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::{Config, Event, EventId, Handle, PublishError, Server};

use super::DEADLINE;

/// The configuration every test starts from: an ephemeral port on loopback, two event loops
/// (the machine has two cores), everything else default.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        ..Config::default()
    }
}

/// Starts a server on `127.0.0.1:0` with [`test_config`] changed by `tweak`.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = test_config();
    tweak(&mut config);
    match Server::start(config) {
        Ok(server) => server,
        Err(error) => panic!("herald::Server::start failed: {error}"),
    }
}

/// Publishes through the library handle. `Busy` is the documented "retry shortly" answer of a
/// saturated server, so it is retried (without sleeping) until [`DEADLINE`]; any other error
/// fails the test.
pub fn publish(handle: &Handle, event: &Event) -> EventId {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match handle.publish(event) {
            Ok(id) => return id,
            Err(PublishError::Busy) if Instant::now() < deadline => std::thread::yield_now(),
            Err(error) => panic!("Handle::publish({event:?}) failed: {error}"),
        }
    }
}

/// Waits until `condition` holds, re-checking without sleeping, or fails after [`DEADLINE`].
/// Only for eventually-consistent counters such as [`Handle::stats`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::yield_now();
    }
}

/// The wall clock in Unix ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls the wall clock (bounded by [`DEADLINE`] past `ms`) until it reads later than `ms`:
/// for tests of times (replay `since`, expiry), which wait for the clock, never race it.
pub fn wait_past(ms: u64) {
    let deadline = Instant::now() + DEADLINE + Duration::from_millis(ms.saturating_sub(unix_ms()));
    while unix_ms() <= ms {
        assert!(
            Instant::now() < deadline,
            "the wall clock stopped before {ms}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
