//! herald's integration tests, one binary: each module is one capability over real sockets
//! on `127.0.0.1:0` (or with the `herald` binary as a child), and [`common`] holds the
//! helpers. `cargo test --test it resume::` runs one module.
//!
//! One binary instead of one per file because linking was most of what building the tests
//! cost: each binary linked herald and its dependencies again (ARCHITECTURE.md's code map
//! has the figures).
//!
//! The modules share this process, and the harness runs their tests in parallel, in any
//! order, so no test may change what is process-wide: environment variables, the current
//! directory, signal handlers, resource limits, a global logger. Whatever a test needs of
//! these is set on a child process; temporary files are named after their module and the
//! process id.

mod common;

mod abuse;
mod accept_pause;
mod admission;
mod auth;
mod auth_callback;
mod auth_keys;
mod behind_nginx;
mod browser;
mod cli;
mod cluster;
mod cluster_library;
mod coalesce;
mod cors;
mod demo_feed;
mod deploy;
mod examples;
mod fanout;
mod health_and_demo;
mod hooks;
mod http_errors;
mod http_protocol;
mod independent_clients;
mod library_replay;
mod logs;
mod metrics;
mod presence;
mod process;
mod proptest_roundtrip;
mod publish;
mod publish_batch;
mod readme;
mod readyz;
mod redis_cluster;
mod redis_sentinel;
mod redis_tls;
mod redis_wait;
mod replay;
mod resume;
mod roundtrip;
mod shutdown;
mod simulation;
mod slow_consumers;
mod subscribe;
mod tidy;
mod timers;
mod wildcard;
