//! Which exposition format a scrape gets, from its `Accept` header (RFC 9110 §12.5.1).
//!
//! OpenMetrics 1.0.0 when the client prefers it to Prometheus text 0.0.4, as Prometheus
//! does (`application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5`);
//! text 0.0.4 otherwise, including when there is no `Accept`, `*/*`, or nothing herald can
//! serve (a scraper that cannot read text gains nothing from a 406). Pure; the header is
//! hostile input, read within [`ACCEPT_RANGES_MAX`] ranges and never asserted on.

use crate::http::head::trim_ows;

/// Media ranges read from a request's `Accept` lines; later ones are ignored. Scrapers send
/// fewer than ten; the cap bounds the work a hostile header can cause.
pub(crate) const ACCEPT_RANGES_MAX: usize = 32;

/// An exposition format herald serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text exposition format 0.0.4: the default.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format a request with these `Accept` header lines gets.
    pub(crate) fn negotiate(accept: &[&[u8]]) -> Format {
        let mut best = [Match::NONE; 2];
        let ranges = accept
            .iter()
            .flat_map(|line| line.split(|&b| b == b','))
            .take(ACCEPT_RANGES_MAX);
        for range in ranges {
            let Some(range) = MediaRange::parse(range) else {
                continue;
            };
            for (format, best) in [Format::Text, Format::OpenMetrics].iter().zip(&mut best) {
                if let Some(specificity) = range.specificity_for(*format) {
                    // The most specific range that matches decides (RFC 9110 §12.5.1).
                    if specificity > best.specificity {
                        *best = Match {
                            specificity,
                            quality: range.quality,
                        };
                    }
                }
            }
        }
        let [text, openmetrics] = best;
        if openmetrics.quality > 0 && openmetrics.quality > text.quality {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// The range that decides a format's quality so far.
#[derive(Clone, Copy)]
struct Match {
    /// 0 for `*/*`, 1 for `type/*`, 2 for `type/subtype`; -1 when nothing matched.
    specificity: i8,
    /// In thousandths (`q=0.5` is 500).
    quality: u16,
}

impl Match {
    const NONE: Match = Match {
        specificity: -1,
        quality: 0,
    };
}

/// One media range of an `Accept` header, as far as negotiation needs it.
struct MediaRange<'a> {
    /// `type`, lowercase compared.
    kind: &'a [u8],
    /// `subtype`.
    subtype: &'a [u8],
    /// The `version` parameter, unquoted.
    version: Option<&'a [u8]>,
    /// `q` in thousandths; 1000 when absent.
    quality: u16,
}

impl<'a> MediaRange<'a> {
    /// Parses `type/subtype;param=value;q=0.5`; `None` when it is not a media range or its
    /// `q` is malformed (such a range is ignored, as if not sent).
    fn parse(text: &'a [u8]) -> Option<MediaRange<'a>> {
        let mut parts = text.split(|&b| b == b';');
        let media = trim_ows(parts.next()?);
        let slash = media.iter().position(|&b| b == b'/')?;
        let (kind, subtype) = (&media[..slash], &media[slash + 1..]);
        if kind.is_empty() || subtype.is_empty() {
            return None;
        }
        let mut range = MediaRange {
            kind,
            subtype,
            version: None,
            quality: 1000,
        };
        for parameter in parts {
            let parameter = trim_ows(parameter);
            let Some(equals) = parameter.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = trim_ows(&parameter[..equals]);
            let value = unquote(trim_ows(&parameter[equals + 1..]));
            if name.eq_ignore_ascii_case(b"q") {
                range.quality = parse_quality(value)?;
            } else if name.eq_ignore_ascii_case(b"version") {
                range.version = Some(value);
            }
        }
        Some(range)
    }

    /// How specifically this range names `format`, or `None` if it does not accept it.
    fn specificity_for(&self, format: Format) -> Option<i8> {
        let (kind, subtype, versions): (&[u8], &[u8], &[&[u8]]) = match format {
            Format::Text => (b"text", b"plain", &[b"0.0.4"]),
            // 0.0.1 is the draft Prometheus 2 asked for; the format is the same.
            Format::OpenMetrics => (b"application", b"openmetrics-text", &[b"1.0.0", b"0.0.1"]),
        };
        if self.kind == b"*" && self.subtype == b"*" {
            return Some(0);
        }
        if !self.kind.eq_ignore_ascii_case(kind) {
            return None;
        }
        if self.subtype == b"*" {
            return Some(1);
        }
        let version_ok = self.version.is_none_or(|v| versions.contains(&v));
        (self.subtype.eq_ignore_ascii_case(subtype) && version_ok).then_some(2)
    }
}

/// A quoted-string's content (escapes are not needed for the values compared here).
fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in thousandths.
fn parse_quality(value: &[u8]) -> Option<u16> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for position in 0..3 {
        let digit = fraction.get(position).map_or(0, |d| u16::from(d - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept: &[&str], expected: Format) {
        let lines: Vec<&[u8]> = accept.iter().map(|l| l.as_bytes()).collect();
        assert_eq!(Format::negotiate(&lines), expected, "Accept: {accept:?}");
    }

    #[test]
    fn negotiates_like_prometheus_expects() {
        use Format::{OpenMetrics, Text};
        // What Prometheus 2 sends by default.
        check(
            &["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
            OpenMetrics,
        );
        // Prometheus 3 puts protobuf first, which herald does not serve.
        check(
            &["application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"],
            OpenMetrics,
        );
        // Prometheus with `scrape_protocols: [PrometheusText0.0.4]`.
        check(&["text/plain;version=0.0.4;q=0.5,*/*;q=0.1"], Text);
        check(&[], Text);
        check(&["*/*"], Text);
        check(&["application/json"], Text);
        check(&["application/openmetrics-text"], OpenMetrics);
        check(
            &["Application/OpenMetrics-Text; Version=\"1.0.0\"; Q=0.9"],
            OpenMetrics,
        );
        check(&["application/*"], OpenMetrics);
        check(&["text/plain, application/openmetrics-text"], Text);
        check(
            &["text/plain;q=0.9", "application/openmetrics-text"],
            OpenMetrics,
        );
        check(&["application/openmetrics-text;q=0", "*/*"], Text);
        check(&["application/openmetrics-text;version=2.0.0"], Text);
        // The most specific range decides: `*/*;q=1` does not lift a refused OpenMetrics.
        check(&["*/*, application/openmetrics-text;q=0"], Text);
        // A malformed q drops its range only.
        check(
            &["application/openmetrics-text;q=2", "text/plain;q=0.1"],
            Text,
        );
        check(
            &["text/plain;q=x, application/openmetrics-text;q=0.001"],
            OpenMetrics,
        );
        // Junk is ignored, never a failure.
        check(&[",,;;==/,/x,x/,\u{0}"], Text);
    }

    #[test]
    fn reads_only_the_first_ranges() {
        let mut header = "x/y,".repeat(ACCEPT_RANGES_MAX);
        header.push_str("application/openmetrics-text");
        check(&[&header], Format::Text);
    }

    #[test]
    fn parses_qvalues() {
        for (text, expected) in [
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.75", Some(750)),
            ("0.001", Some(1)),
            ("0.0001", None),
            ("", None),
            (".5", None),
            ("2", None),
            ("-0", None),
            ("0.x", None),
        ] {
            assert_eq!(parse_quality(text.as_bytes()), expected, "q={text}");
        }
    }
}
