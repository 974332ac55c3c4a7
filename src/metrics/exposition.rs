//! The metric families of one scrape as plain values, and their two encodings: the
//! Prometheus text format 0.0.4 (written here) and OpenMetrics 1.0.0 text (written by the
//! `prometheus-client` crate through its collector API).
//!
//! The families are read from herald's own counters when a scrape asks, so counting costs
//! the hot path nothing and `prometheus-client` is only the encoder: its `Counter` and
//! `Histogram` types would add an atomic operation per event, and its registry holds no
//! state between scrapes here. The crate writes no text 0.0.4 (its text encoder is
//! OpenMetrics only), hence the hand-written one, for every scraper that does not prefer
//! OpenMetrics (`curl`, and Prometheus configured for text).
//!
//! Both encodings give every sample the same name: a counter's samples end in `_total` in
//! both; only its `# HELP` and `# TYPE` lines differ: in 0.0.4 they name the family as its
//! samples (as herald always has), in OpenMetrics without `_total`, as that format
//! requires. No I/O here.

use std::borrow::Cow;
use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A sample's value: counts stay exact integers, measurements are floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value {
    /// A count.
    Int(u64),
    /// A measurement (seconds, a timestamp).
    Float(f64),
}

/// One label of a sample. herald's samples have at most one, from a fixed set of values.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    /// The label name.
    pub name: &'static str,
    /// The label value (escaped when written).
    pub value: Cow<'static, str>,
}

/// One sample of a counter or gauge family.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// Its label, if the family has one.
    pub label: Option<Label>,
    /// Its value.
    pub value: Value,
}

impl Sample {
    /// A sample without labels.
    pub(crate) fn plain(value: Value) -> Sample {
        Sample { label: None, value }
    }

    /// A sample with one label.
    pub(crate) fn labeled(
        name: &'static str,
        value: impl Into<Cow<'static, str>>,
        v: Value,
    ) -> Sample {
        Sample {
            label: Some(Label {
                name,
                value: value.into(),
            }),
            value: v,
        }
    }
}

/// A histogram's state at the scrape.
#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    /// Upper bound (in the family's unit) and count of each finite bucket, not cumulative,
    /// bounds increasing.
    pub buckets: Vec<(f64, u64)>,
    /// Observations above the last finite bound.
    pub overflow: u64,
    /// Sum of all observations.
    pub sum: f64,
}

impl Histogram {
    /// Every observation.
    fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum::<u64>() + self.overflow
    }
}

/// What a family holds.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// Monotonic counts; every sample name ends in `_total`.
    Counter(Vec<Sample>),
    /// Values that go up and down.
    Gauge(Vec<Sample>),
    /// A constant 1 whose labels are the information (the name ends in `_info`).
    Info(Label),
    /// A distribution.
    Histogram(Histogram),
}

/// One metric family.
#[derive(Clone, Debug)]
pub(crate) struct Family {
    /// The name its samples carry: a counter's ends in `_total`, an info's in `_info`.
    pub name: &'static str,
    /// One line of help, without `\`, `"` or line breaks, which both formats would need
    /// escaped (`prometheus-client` writes help as given).
    pub help: Cow<'static, str>,
    /// Its type and samples.
    pub kind: Kind,
}

// ---------------------------------------------------------------------------------------------
// Prometheus text 0.0.4
// ---------------------------------------------------------------------------------------------

/// Writes a float as Go's `strconv.ParseFloat` (Prometheus' parser) reads it.
fn write_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}

fn write_value(out: &mut String, value: Value) {
    match value {
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) => write_float(out, f),
    }
}

/// Writes `{name="value"}`, escaping `\`, `"` and line feeds as the format requires.
fn write_label(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "{{{name}=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\"}");
}

/// Renders `families` in the Prometheus text exposition format, version 0.0.4.
pub(crate) fn encode_text(families: &[Family]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in families {
        let name = family.name;
        let kind = match family.kind {
            Kind::Counter(_) => "counter",
            Kind::Gauge(_) | Kind::Info(_) => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
        match &family.kind {
            Kind::Counter(samples) | Kind::Gauge(samples) => {
                for sample in samples {
                    out.push_str(name);
                    if let Some(label) = &sample.label {
                        write_label(&mut out, label.name, &label.value);
                    }
                    out.push(' ');
                    write_value(&mut out, sample.value);
                    out.push('\n');
                }
            }
            Kind::Info(label) => {
                out.push_str(name);
                write_label(&mut out, label.name, &label.value);
                out.push_str(" 1\n");
            }
            Kind::Histogram(histogram) => {
                let mut cumulative = 0;
                for &(bound, count) in &histogram.buckets {
                    cumulative += count;
                    let _ = write!(out, "{name}_bucket{{le=\"");
                    write_float(&mut out, bound);
                    let _ = writeln!(out, "\"}} {cumulative}");
                }
                let count = histogram.count();
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
                let _ = write!(out, "{name}_sum ");
                write_float(&mut out, histogram.sum);
                let _ = writeln!(out, "\n{name}_count {count}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// OpenMetrics 1.0.0, through prometheus-client
// ---------------------------------------------------------------------------------------------

/// The families of one scrape as a `prometheus-client` collector.
#[derive(Debug)]
struct Scraped(Vec<Family>);

/// Encodes one sample (with its label, if any) of a counter or gauge family. Each sample
/// gets its own encoder from the family's, through `encode_family` (with no labels when it
/// has none), as `prometheus-client`'s own `Family` does.
fn encode_sample(
    family: &mut MetricEncoder<'_>,
    sample: &Sample,
    counter: bool,
) -> Result<(), std::fmt::Error> {
    match &sample.label {
        Some(label) => {
            let labels = [(label.name, label.value.as_ref())];
            encode_value(family.encode_family(&labels)?, sample.value, counter)
        }
        None => encode_value(family.encode_family(&NO_LABELS)?, sample.value, counter),
    }
}

fn encode_value(
    encoder: MetricEncoder<'_>,
    value: Value,
    counter: bool,
) -> Result<(), std::fmt::Error> {
    match (value, counter) {
        (Value::Int(n), true) => ConstCounter::new(n).encode(encoder),
        (Value::Float(f), true) => ConstCounter::new(f).encode(encoder),
        (Value::Int(n), false) => ConstGauge::new(n).encode(encoder),
        (Value::Float(f), false) => ConstGauge::new(f).encode(encoder),
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let help = family.help.as_ref();
            match &family.kind {
                Kind::Counter(samples) => {
                    // OpenMetrics names the family without the `_total` its samples carry.
                    let name = family.name.strip_suffix("_total").unwrap_or(family.name);
                    let mut metric =
                        encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    for sample in samples {
                        encode_sample(&mut metric, sample, true)?;
                    }
                }
                Kind::Gauge(samples) => {
                    let mut metric =
                        encoder.encode_descriptor(family.name, help, None, MetricType::Gauge)?;
                    for sample in samples {
                        encode_sample(&mut metric, sample, false)?;
                    }
                }
                Kind::Info(label) => {
                    let name = family.name.strip_suffix("_info").unwrap_or(family.name);
                    let mut metric =
                        encoder.encode_descriptor(name, help, None, MetricType::Info)?;
                    metric.encode_info(&[(label.name, label.value.as_ref())])?;
                }
                Kind::Histogram(histogram) => {
                    let mut metric = encoder.encode_descriptor(
                        family.name,
                        help,
                        None,
                        MetricType::Histogram,
                    )?;
                    // prometheus-client writes the bucket bounded by infinity as `le="+Inf"`.
                    let mut buckets = histogram.buckets.clone();
                    buckets.push((f64::INFINITY, histogram.overflow));
                    metric.encode_histogram::<NoLabelSet>(
                        histogram.sum,
                        histogram.count(),
                        &buckets,
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The empty label set.
const NO_LABELS: [(&str, &str); 0] = [];

/// Renders `families` as an OpenMetrics 1.0.0 text exposition, ending in `# EOF`.
pub(crate) fn encode_openmetrics(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scraped(families)));
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail, and no collector here returns an error.
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}
