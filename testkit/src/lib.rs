//! Helpers shared by herald's integration tests (`tests/`), its fuzz checks (`fuzz/`) and its
//! load generator (`loadtest/`), so each protocol has one client-side implementation:
//!
//! - [`sse`]: the WHATWG-exact, incremental `text/event-stream` parser, allocation-free for the
//!   load generator's hot path, with an owned collector for tests;
//! - [`redis`]: a private `redis-server` per test or run, and a blocking client on the `redis`
//!   crate with the stream commands the tests use.
//!
//! herald itself never depends on this crate; it is a dev-dependency of the workspace root.

pub mod redis;
pub mod sse;
