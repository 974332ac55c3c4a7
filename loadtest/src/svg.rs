//! A hand-written SVG chart of a sweep: on the left, delivery latency percentiles (p50,
//! p99, p99.9) against connection count; on the right, server memory per connection
//! against connection count. One line style per target (herald solid, the next dashed).
//!
//! Pure: data in, SVG text out.

use std::fmt::Write;

/// One size of a sweep for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// Open connections.
    pub connections: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Server RSS growth per connection, bytes.
    pub rss_per_connection: f64,
}

/// One target's points, in size order.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The target's label.
    pub name: String,
    /// Its points.
    pub points: Vec<Point>,
}

/// A percentile line: its label, colour and value.
type Percentile = (&'static str, &'static str, fn(&Point) -> f64);

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 400.0;
const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 280.0;
const TOP: f64 = 50.0;
const LEFTS: [f64; 2] = [80.0, 580.0];
const DASHES: [&str; 3] = ["", "8 5", "2 4"];

/// The chart for `series` (up to three targets).
pub fn chart(series: &[Series]) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    let x_max = nice_max(max_of(series, |p| p.connections));
    let lat_max = max_of(series, |p| p.p999_ms.max(p.p99_ms));
    let mem_max = nice_max(max_of(series, |p| p.rss_per_connection));
    let percentiles: [Percentile; 3] = [
        ("p50", "#2a9d8f", |p| p.p50_ms),
        ("p99", "#e9c46a", |p| p.p99_ms),
        ("p99.9", "#e76f51", |p| p.p999_ms),
    ];
    let latency = Scale {
        left: LEFTS[0],
        x_max,
        y_max: decade_above(lat_max),
        y_min: Some(LATENCY_AXIS_MIN_MS),
    };
    let memory = Scale {
        left: LEFTS[1],
        x_max,
        y_max: mem_max,
        y_min: None,
    };
    axes(&mut svg, &latency, "delivery latency (ms, log scale)");
    axes(&mut svg, &memory, "server RSS per connection (bytes)");
    for (s, dash) in series.iter().zip(DASHES) {
        for (_, colour, value) in percentiles {
            line(&mut svg, &latency, s, value, colour, dash);
        }
        line(
            &mut svg,
            &memory,
            s,
            |p| p.rss_per_connection,
            "#264653",
            dash,
        );
    }
    legend(&mut svg, series, &percentiles.map(|(l, c, _)| (l, c)));
    svg.push_str("</svg>\n");
    svg
}

/// Maps data to one panel's pixels. With `y_min` set, the y axis is logarithmic from
/// `y_min` to `y_max` (latencies span decades between servers); otherwise linear from 0.
struct Scale {
    left: f64,
    x_max: f64,
    y_max: f64,
    y_min: Option<f64>,
}

impl Scale {
    fn x(&self, v: f64) -> f64 {
        self.left + PANEL_W * (v / self.x_max).clamp(0.0, 1.0)
    }
    fn y(&self, v: f64) -> f64 {
        let f = match self.y_min {
            Some(min) => (v.max(min) / min).log10() / (self.y_max / min).log10(),
            None => v / self.y_max,
        };
        TOP + PANEL_H * (1.0 - f.clamp(0.0, 1.0))
    }
    /// Gridline values: decades on a log axis, fifths on a linear one.
    fn y_ticks(&self) -> Vec<f64> {
        match self.y_min {
            Some(min) => std::iter::successors(Some(min), |v| Some(v * 10.0))
                .take_while(|v| *v <= self.y_max * 1.000_001)
                .collect(),
            None => (0..=5).map(|i| self.y_max * i as f64 / 5.0).collect(),
        }
    }
}

fn max_of(series: &[Series], f: fn(&Point) -> f64) -> f64 {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(f))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (1 for nothing).
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v * 0.999_999)
        .unwrap_or(10.0 * power)
}

fn axes(svg: &mut String, s: &Scale, title: &str) {
    let (left, bottom, right) = (s.left, TOP + PANEL_H, s.left + PANEL_W);
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="14">{title}</text>
<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{left}" y1="{TOP}" x2="{left}" y2="{bottom}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">connections</text>"##,
        left + PANEL_W / 2.0,
        TOP - 20.0,
        left + PANEL_W / 2.0,
        bottom + 35.0
    );
    for yv in s.y_ticks() {
        let y = s.y(yv);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#ddd"/>
<text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + 4.0,
            label(yv)
        );
    }
    for i in 0..=5 {
        let xv = s.x_max * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            s.x(xv),
            bottom + 16.0,
            label(xv)
        );
    }
}

fn label(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Bottom of the latency axis: loopback deliveries are rarely under 0.1 ms.
const LATENCY_AXIS_MIN_MS: f64 = 0.1;

/// The power of ten at or above `v`, at least ten times the axis bottom.
fn decade_above(v: f64) -> f64 {
    let floor = LATENCY_AXIS_MIN_MS * 10.0;
    if !v.is_finite() || v <= floor {
        return floor;
    }
    10f64.powf(v.log10().ceil())
}

fn line(
    svg: &mut String,
    s: &Scale,
    series: &Series,
    f: fn(&Point) -> f64,
    colour: &str,
    dash: &str,
) {
    let points: Vec<String> = series
        .points
        .iter()
        .filter(|p| f(p).is_finite())
        .map(|p| format!("{:.1},{:.1}", s.x(p.connections), s.y(f(p))))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
        points.join(" ")
    );
    for point in &points {
        let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
        let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
    }
}

fn legend(svg: &mut String, series: &[Series], percentiles: &[(&str, &str)]) {
    let y = HEIGHT - 20.0;
    let mut x = LEFTS[0];
    for (name, colour) in percentiles {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{colour}"/><text x="{}" y="{y}">{name}</text>"#,
            y - 6.0,
            x + 18.0
        );
        x += 70.0;
    }
    for (s, dash) in series.iter().zip(DASHES) {
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="black" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{y}">{}</text>"#,
            y - 4.0,
            x + 30.0,
            y - 4.0,
            x + 36.0,
            escape(&s.name)
        );
        x += 120.0;
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis() {
        assert_eq!(decade_above(0.0), 1.0);
        assert_eq!(decade_above(200.0), 1_000.0);
        let s = Scale {
            left: 0.0,
            x_max: 1.0,
            y_max: 1_000.0,
            y_min: Some(0.1),
        };
        assert_eq!(s.y_ticks().len(), 5);
        assert_eq!(s.y(0.1), TOP + PANEL_H);
        assert_eq!(s.y(1_000.0), TOP);
        assert_eq!(s.y(0.0), TOP + PANEL_H);
    }

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(19_000.0), 20_000.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(100.0), 100.0);
    }

    #[test]
    fn chart_has_a_line_per_series_and_percentile() {
        let point = |n: f64| Point {
            connections: n,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            rss_per_connection: 500.0,
        };
        let series = vec![
            Series {
                name: "herald".into(),
                points: vec![point(1000.0), point(5000.0)],
            },
            Series {
                name: "a<b".into(),
                points: vec![point(1000.0)],
            },
        ];
        let svg = chart(&series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2 * 4);
        assert!(svg.contains("a&lt;b"));
    }
}
