//! The sweep: fan-out at several subscriber counts (1k, 5k, 10k, 19k by default; sizes
//! above one worker's share use several worker processes) against one or more targets,
//! then a summary table and the SVG chart of latency percentiles and memory per
//! connection against connection count.

use std::io::{self, Write};

use crate::report::Report;
use crate::run;
use crate::scenario::{Scenario, ScenarioArgs};
use crate::svg::{self, Point, Series};
use crate::target::Target;

/// Runs the sweep against targets that stay up between sizes (`run` mode: the memory
/// figures of later sizes then include heap the earlier sizes left behind); `peers` uses
/// [`run_size`] with fresh servers per size instead.
pub fn run(
    targets: &[Target],
    args: &ScenarioArgs,
    out: &mut impl Write,
) -> io::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for &size in &args.sizes {
        reports.extend(run_size(targets, args, size, out)?);
    }
    write_summary(out, &reports)?;
    Ok(reports)
}

/// One size of the sweep: fan-out with `size` subscribers against each target in turn.
pub fn run_size(
    targets: &[Target],
    args: &ScenarioArgs,
    size: usize,
    out: &mut impl Write,
) -> io::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for target in targets {
        let settings = args.settings(Scenario::Fanout, Some(size));
        let mut report = run::measure(target, &settings)?;
        report.scenario = "sweep".to_owned();
        crate::report::write_table(out, &report)?;
        out.flush()?;
        reports.push(report);
    }
    Ok(reports)
}

/// One line per size and target.
pub fn write_summary(out: &mut impl Write, reports: &[Report]) -> io::Result<()> {
    writeln!(
        out,
        "{:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "target", "conns", "RSS/conn", "p50 ms", "p99 ms", "p99.9 ms", "lost", "dup"
    )?;
    for r in reports {
        writeln!(
            out,
            "{:<10} {:>8} {:>10.0} {:>10.2} {:>10.2} {:>10.2} {:>8} {:>8}",
            r.target,
            r.connected,
            r.rss_per_connection_bytes.unwrap_or(f64::NAN),
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.lost,
            r.duplicated
        )?;
    }
    Ok(())
}

/// The chart's series: one per target, in the order targets first appear.
pub fn series(reports: &[Report]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for r in reports {
        let point = Point {
            connections: r.connected as f64,
            p50_ms: r.latency.p50_ms,
            p99_ms: r.latency.p99_ms,
            p999_ms: r.latency.p999_ms,
            rss_per_connection: r.rss_per_connection_bytes.unwrap_or(f64::NAN),
        };
        match out.iter_mut().find(|s| s.name == r.target) {
            Some(s) => s.points.push(point),
            None => out.push(Series {
                name: r.target.clone(),
                points: vec![point],
            }),
        }
    }
    out
}

/// Writes the chart of `reports` to `path`.
pub fn write_chart(path: &std::path::Path, reports: &[Report]) -> io::Result<()> {
    std::fs::write(path, svg::chart(&series(reports)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_group_by_target() {
        let report = |target: &str, n: u64| Report {
            target: target.into(),
            connected: n,
            ..Report::default()
        };
        let reports = [report("herald", 1), report("nchan", 1), report("herald", 5)];
        let s = series(&reports);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].points.len(), 2);
        assert_eq!(s[0].points[1].connections, 5.0);
    }
}
