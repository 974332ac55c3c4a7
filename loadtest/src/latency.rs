//! Latency histograms: the one HDR histogram shape every process uses, its transport form
//! between worker and orchestrator (recorded buckets as `[value, count]` pairs, which
//! rebuild the same histogram exactly), and the percentile summary that reports print.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in microseconds (one hour); higher values saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits kept: 0.1 % resolution at every magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A new, empty microsecond histogram.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's preconditions (low >= 1,
    // high >= 2 * low, digits <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// A histogram in transport form: each recorded bucket's highest equivalent value and count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets(pub Vec<(u64, u64)>);

impl Buckets {
    /// The recorded buckets of `h`.
    pub fn of(h: &Histogram<u64>) -> Buckets {
        Buckets(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets into `into`.
    pub fn add_to(&self, into: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            into.saturating_record_n(value.clamp(1, LATENCY_US_MAX), count);
        }
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `h` (all zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip() {
        let mut h = histogram();
        for v in [1, 5, 5, 999, 1_000, 123_456, LATENCY_US_MAX] {
            h.record(v).unwrap();
        }
        let mut rebuilt = histogram();
        Buckets::of(&h).add_to(&mut rebuilt);
        assert_eq!(rebuilt.len(), h.len());
        assert_eq!(Summary::of(&rebuilt), Summary::of(&h));
        let json = serde_json::to_string(&Buckets::of(&h)).unwrap();
        let back: Buckets = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Buckets::of(&h));
    }

    #[test]
    fn summary() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(Summary::of(&histogram()), Summary::default());
    }
}
