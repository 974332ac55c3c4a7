//! Unit tests of the metrics registry (`metrics/mod.rs`).

use super::*;
use std::sync::Arc;

fn render_sample(format: Format) -> String {
    let stats = Arc::new(LoopStats::default());
    let mut counters = LoopCounters {
        deliveries: 7,
        ..LoopCounters::default()
    };
    counters.record_turn(Duration::from_micros(80));
    counters.record_turn(Duration::from_secs(1));
    counters.publish(&stats);
    let metrics = Metrics::new();
    metrics.count_refusal(404);
    metrics.count_refusal(999); // Not a status herald sends: ignored.
    render(
        &[stats],
        &metrics,
        &Snapshot {
            events_published: 3,
            max_connections: 10,
            bus: crate::bus::BusStats {
                connected: Some(true),
                reconnects: 2,
                ..Default::default()
            },
            auth: Some(Arc::default()),
            notices_dropped: Some(4),
        },
        format,
    )
}

fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// The samples of a page as (name, labels, value), `le` read as a number, so that two
/// formats' spellings of the same bound compare equal.
fn samples(text: &str) -> Vec<(String, String, f64)> {
    let mut samples: Vec<_> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = key.split_once('{').unwrap_or((key, ""));
            let labels = match labels.strip_prefix("le=\"") {
                Some(le) => {
                    let le = le.trim_end_matches("\"}");
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    format!("le={bound}")
                }
                None => labels.to_owned(),
            };
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect();
    samples.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    samples
}

#[test]
fn renders_prometheus_text() {
    let text = render_sample(Format::Text);
    assert_lines(
        &text,
        &[
            "# TYPE herald_deliveries_total counter",
            "herald_deliveries_total 7",
            "herald_events_published_total 3",
            "herald_redis_connected 1",
            "herald_redis_reconnects_total 2",
            "herald_http_refusals_total{status=\"404\"} 1",
            "herald_loop_turn_seconds_bucket{le=\"0.0001\"} 1",
            "herald_loop_turn_seconds_bucket{le=\"0.25\"} 1",
            "herald_loop_turn_seconds_bucket{le=\"+Inf\"} 2",
            "herald_loop_turn_seconds_count 2",
            "# TYPE herald_build_info gauge",
            concat!(
                "herald_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
        ],
    );
    assert!(!text.contains("# EOF"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(
            name.starts_with("herald_") || name.starts_with("process_"),
            "{line}"
        );
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn renders_openmetrics_with_the_same_samples() {
    let text = render_sample(Format::OpenMetrics);
    assert_lines(
        &text,
        &[
            "# TYPE herald_deliveries counter",
            "herald_deliveries_total 7",
            "# TYPE herald_http_refusals counter",
            "herald_http_refusals_total{status=\"404\"} 1",
            "# TYPE herald_loop_turn_seconds histogram",
            "herald_loop_turn_seconds_bucket{le=\"+Inf\"} 2",
            "# TYPE herald_build info",
            concat!(
                "herald_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "# TYPE herald_connections gauge",
        ],
    );
    assert!(text.ends_with("\n# EOF\n"), "{text}");
    assert!(!text.contains("_total counter"), "{text}");
    // The process metrics move between two renders; herald's own samples must not.
    let herald = |text: &str| -> Vec<_> {
        samples(text)
            .into_iter()
            .filter(|(name, ..)| name.starts_with("herald_"))
            .collect()
    };
    assert_eq!(herald(&text), herald(&render_sample(Format::Text)));
}

/// Help is written unescaped by prometheus-client, so it must need no escaping.
#[test]
fn help_needs_no_escaping() {
    let stats = [Arc::new(LoopStats::default())];
    let snapshot = Snapshot {
        events_published: 0,
        max_connections: 0,
        bus: crate::bus::BusStats {
            connected: Some(false),
            ..Default::default()
        },
        auth: Some(Arc::default()),
        notices_dropped: Some(0),
    };
    let mut families = herald_families(&stats, &Metrics::new(), &snapshot);
    families.extend(process::families());
    for family in families {
        assert!(
            !family.help.contains(['\\', '"', '\n']) && family.help.ends_with('.'),
            "{}: {:?}",
            family.name,
            family.help
        );
        if matches!(family.kind, Kind::Counter(_)) {
            assert!(family.name.ends_with("_total"), "{}", family.name);
        }
    }
}
