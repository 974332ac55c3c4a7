#![allow(clippy::unwrap_used)]
//! `GET /metrics` (issue 4 part 6, issue 12 part 2): `200` Prometheus text (format 0.0.4)
//! whose every line parses as `# HELP`, `# TYPE` or `name{labels} value`, or OpenMetrics
//! 1.0.0 when the scraper's `Accept` prefers it; every family the README lists is there,
//! with no per-topic labels; and after a known amount of activity the counters and gauges
//! hold exactly what happened. Counters settle when the event loops end their turn, so the
//! page is re-read (on one keep-alive connection, which adds no connections) until it
//! matches or [`DEADLINE`] passes.
//!
//! Both formats are also read by a real Prometheus parser, the Python `prometheus_client`
//! library's (Debian's `python3-prometheus-client`, under Debian's `/usr/bin/python3`):
//! its text parser for 0.0.4 and its strict OpenMetrics parser, which refuses a page without
//! `# EOF`, a counter family named with `_total`, a histogram without `+Inf`, and more. It is
//! never skipped: without it the test fails with the command that installs it.
//!
//! - [`activity`]: the Prometheus text page with every documented family and no per-topic
//!   labels, and counters and gauges that hold exactly what happened.
//! - [`python_parser`]: both formats read by `prometheus_client`'s parsers, and `HEAD`
//!   negotiation.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;
use herald::Event;

mod activity;
mod python_parser;

/// Every family the README lists, with its type.
const FAMILIES: [(&str, &str); 16] = [
    ("herald_connections", "gauge"),
    ("herald_connections_max", "gauge"),
    ("herald_connections_accepted_total", "counter"),
    ("herald_connections_refused_total", "counter"),
    ("herald_subscribers", "gauge"),
    ("herald_topics", "gauge"),
    ("herald_events_published_total", "counter"),
    ("herald_deliveries_total", "counter"),
    ("herald_bytes_written_total", "counter"),
    ("herald_stream_writes_total", "counter"),
    ("herald_slow_consumer_closes_total", "counter"),
    ("herald_heartbeats_total", "counter"),
    ("herald_loop_helps_total", "counter"),
    ("herald_auth_failures_total", "counter"),
    ("herald_http_refusals_total", "counter"),
    ("herald_loop_turn_seconds", "histogram"),
];
