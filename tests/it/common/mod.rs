//! Shared helpers for herald's integration tests, one module per concern:
//!
//! - [`server`]: the test configuration, an in-process server on `127.0.0.1:0`, publishing
//!   through the library handle, waiting for eventually consistent counters and for the
//!   wall clock;
//! - [`http`]: a raw HTTP/1.1 client over real TCP sockets, request builders, the shared
//!   error-answer assertions and hand-written encoders;
//! - [`sse`]: an open `GET /events` stream, read through `testkit::sse` (the WHATWG-exact
//!   parser shared with `fuzz/` and `loadtest/`), whose event types it re-exports;
//! - [`metrics`]: `GET /metrics` checked against the Prometheus text format as it is parsed;
//! - [`process`]: the `herald` binary as a child process, spawning a child and draining its
//!   stderr, signals by PID;
//! - [`daemons`]: `redis-server` with any arguments (a TLS port, a replica) and `redis-sentinel`.
//!
//! Everything is re-exported here, so a test module says `use crate::common::*;`. A private
//! `redis-server` per test and its client come from `testkit::redis`.
//! Every read goes until a delimiter or a deadline ([`DEADLINE`]); nothing here sleeps. A read
//! that runs out of time fails the test with what it was waiting for and what it got.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

pub mod daemons;
pub mod http;
pub mod metrics;
pub mod process;
pub mod server;
pub mod sse;

pub use http::*;
pub use metrics::*;
pub use process::*;
pub use server::*;
pub use sse::*;

/// How long any single wait (a read helper, a publish retry, a child process line) may take
/// before the test fails. Generous: it only bounds a hang, it never measures speed.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The `retry:` value a server sends when `retry_ms` is left at its default.
pub const RETRY_MS_DEFAULT: u32 = 3_000;
