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
