//! herald's integration tests, one binary: each module is one capability over real sockets
//! on `127.0.0.1:0` (or the `herald` binary as a child), and [`common`] holds the helpers.
//!
//! One binary instead of one per file because linking is most of what building the tests
//! costs: each binary linked the whole of herald, its dependencies and the helpers again
//! (see ARCHITECTURE.md, "Outside `src/`"). `cargo test --test it resume::` runs one module.
//!
//! The modules share this process, and the harness runs them two at a time in any order, so
//! none of them may change what is process-wide: no environment variables, current
//! directory, signal handlers, resource limits or global logger. What differs per test
//! (environment, limits, signals, a working directory) goes to a child process; temporary
//! files carry the module's name as well as the process id.

mod common;

mod abuse;
mod accept_pause;
mod admission;
mod auth;
mod behind_nginx;
mod browser;
mod cli;
mod cluster;
mod cluster_library;
mod cors;
mod demo_feed;
mod examples;
mod fanout;
mod health_and_demo;
mod http_errors;
mod http_protocol;
mod independent_clients;
mod metrics;
mod process;
mod proptest_roundtrip;
mod publish;
mod readme;
mod resume;
mod roundtrip;
mod shutdown;
mod slow_consumers;
mod subscribe;
mod tidy;
mod timers;
