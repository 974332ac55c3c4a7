//! How each kind of setting is read from a flag or `HERALD_*` variable and shown as a
//! default: the `Kind` named by each entry of the table in `settings.rs`. No I/O here.

use std::fmt::Display;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::{Arg, ArgAction, ArgMatches};
use serde::Deserialize;

use super::parse_bytes;

/// How one kind of value is read from a flag or `HERALD_*` variable and shown as a default.
pub(crate) trait Kind {
    /// The `Config` field's type.
    type Value;
    /// Gives `arg` its value parser (and, for lists and switches, how many values it takes).
    fn arg(arg: Arg) -> Arg;
    /// The value clap parsed for `id`, if any.
    fn take(matches: &ArgMatches, id: &str) -> Option<Self::Value>;
    /// The value as `--help` and README show it (and as the flag would take it); `None`
    /// for no value.
    fn show(value: &Self::Value) -> Option<String>;
    /// Whether the flag alone, without a value, is allowed (`--demo-feed`).
    const VALUE_OPTIONAL: bool = false;
}

/// Parses with `FromStr`; clap puts the flag's name in front of the reason.
fn parse_text<T: FromStr>(text: &str) -> Result<T, String>
where
    T::Err: Display,
{
    text.parse().map_err(|error: T::Err| error.to_string())
}

/// A value read with `FromStr` and shown with `Display`: addresses, numbers, names, `true`.
pub(crate) struct Text<T>(PhantomData<T>);

impl<T> Kind for Text<T>
where
    T: FromStr + Display + Clone + Send + Sync + 'static,
    T::Err: Display,
{
    type Value = T;
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(parse_text::<T>)
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<T> {
        matches.get_one::<T>(id).cloned()
    }
    fn show(value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

/// A setting that may be unset (`None` by default): no default in `--help`.
pub(crate) struct Optional<K>(PhantomData<K>);

impl<K: Kind> Kind for Optional<K> {
    type Value = Option<K::Value>;
    fn arg(arg: Arg) -> Arg {
        K::arg(arg)
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<Self::Value> {
        K::take(matches, id).map(Some)
    }
    fn show(value: &Self::Value) -> Option<String> {
        value.as_ref().and_then(K::show)
    }
}

/// A byte size: `65536`, `64KiB`, `1MiB` on the command line, a plain count in TOML.
pub(crate) struct Size;

impl Kind for Size {
    type Value = usize;
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(parse_bytes)
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<usize> {
        matches.get_one::<usize>(id).copied()
    }
    fn show(value: &usize) -> Option<String> {
        Some(show_bytes(*value))
    }
}

/// `bytes` in the largest binary unit that divides it, as [`parse_bytes`] reads it back.
pub(crate) fn show_bytes(bytes: usize) -> String {
    for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes != 0 && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// A duration in milliseconds: `500ms`, `30s`, `10m`, `2h`, `1d`, or a plain count of
/// milliseconds, on the command line and in TOML (as text or a number).
pub(crate) struct Millis;

impl Kind for Millis {
    type Value = u64;
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(parse_duration_ms)
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<u64> {
        matches.get_one::<u64>(id).copied()
    }
    fn show(value: &u64) -> Option<String> {
        Some(show_duration_ms(*value))
    }
}

/// Reads `500ms`, `30s`, `10m`, `2h`, `1d` or a plain count of milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 10m or 2h"))?;
    let scale: u64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// `ms` in the largest unit that divides it, as [`parse_duration_ms`] reads it back.
pub(crate) fn show_duration_ms(ms: u64) -> String {
    for (unit, scale) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % scale == 0 {
            return format!("{}{unit}", ms / scale);
        }
    }
    ms.to_string()
}

/// Serde's reading of a [`Millis`] setting in the TOML file: the flag's text, or a number
/// of milliseconds.
pub(crate) fn deserialize_millis<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Count(u64),
        Text(String),
    }
    match Either::deserialize(deserializer)? {
        Either::Count(ms) => Ok(ms),
        Either::Text(text) => parse_duration_ms(&text).map_err(serde::de::Error::custom),
    }
}

/// A list: the flag repeats, its `HERALD_*` variable is comma-separated. Empty by default.
pub(crate) struct List;

impl Kind for List {
    type Value = Vec<String>;
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(clap::value_parser!(String))
            .action(ArgAction::Append)
            .value_delimiter(',')
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<Vec<String>> {
        Some(matches.get_many::<String>(id)?.cloned().collect())
    }
    fn show(value: &Vec<String>) -> Option<String> {
        (!value.is_empty()).then(|| value.join(","))
    }
}

/// A boolean whose flag alone means `true` (`--demo-feed`, `--demo-feed=false`).
pub(crate) struct Switch;

impl Kind for Switch {
    type Value = bool;
    const VALUE_OPTIONAL: bool = true;
    fn arg(arg: Arg) -> Arg {
        Text::<bool>::arg(arg)
            .num_args(0..=1)
            .default_missing_value("true")
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<bool> {
        Text::<bool>::take(matches, id)
    }
    fn show(value: &bool) -> Option<String> {
        Text::<bool>::show(value)
    }
}

/// A log level: `error`, `warn`, `info`, `debug` or `trace` (`off` is not offered: the
/// lines that remain at `error` are the ones an operator needs).
pub(crate) struct Level;

/// Reads a log level named in lower case.
pub(crate) fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    match text {
        "error" | "warn" | "info" | "debug" | "trace" => text.parse().map_err(|_| text.to_owned()),
        _ => Err(format!(
            "{text:?} is not one of error, warn, info, debug, trace"
        )),
    }
}

/// Serde's reading of `log_level` in the TOML file, with the flag's names.
pub(crate) fn deserialize_level<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<log::LevelFilter, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_level(&text).map_err(serde::de::Error::custom)
}

impl Kind for Level {
    type Value = log::LevelFilter;
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(parse_level)
    }
    fn take(matches: &ArgMatches, id: &str) -> Option<log::LevelFilter> {
        matches.get_one::<log::LevelFilter>(id).copied()
    }
    fn show(value: &log::LevelFilter) -> Option<String> {
        Some(value.as_str().to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("0", 0),
            ("250", 250),
            ("250ms", 250),
            ("30s", 30_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
            assert_eq!(parse_duration_ms(&show_duration_ms(ms)), Ok(ms));
        }
        assert_eq!(show_duration_ms(90_000), "90s");
        for bad in [
            "",
            "m",
            "-1s",
            "1.5s",
            "10 m",
            "10min",
            "99999999999999999999",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
    }
}
