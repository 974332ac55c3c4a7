//! Log lines on stderr that can never stop or slow the server: logfmt lines
//! (`ts=... level=... target=... msg="..."`) or JSON lines (`{"ts":...,"level":...,
//! "target":...,"msg":...}`), formatted by `tracing-subscriber` and written by
//! `tracing-appender`'s non-blocking worker thread.
//!
//! The library logs through the `log` facade; [`init`] bridges it into `tracing`
//! (`tracing-log`), so code may use either. A thread that logs only formats the line and
//! offers it to a bounded queue: when the queue is full (stderr is slow or blocked) the line
//! is dropped, and when writing fails (the reader of stderr went away: `EPIPE`) the line is
//! dropped too. Both are counted in [`lines_dropped`], which `/metrics` reports as
//! `herald_log_lines_dropped_total`. Nothing here panics on a failed write, unlike
//! `eprintln!`.
//!
//! Each format is one [`FormatEvent`] implementation over the same writer. The access log
//! (target [`ACCESS_TARGET`], written by the event loops) goes through the same queue, so
//! its dropped lines are counted too; it is let through at `info` whatever the level.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The target of access-log lines (`--access-log`).
pub const ACCESS_TARGET: &str = "herald::access";

/// Lines queued for the writer thread before new ones are dropped. A line is a few hundred
/// bytes, so the queue holds at most about a megabyte while stderr is blocked; a burst of
/// warnings longer than this is better thinned than held in memory or waited for.
pub const LINES_QUEUED_MAX: usize = 4096;

/// Lines whose write to stderr failed (the pipe is broken, the disk is full).
static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The queue's own count of lines dropped because it was full, once [`init`] has run.
static QUEUE_DROPS: OnceLock<ErrorCounter> = OnceLock::new();

/// The queue to the writer thread, once [`init`] has run; [`announce`] writes through it so
/// its lines keep their order with the log lines.
static QUEUE: OnceLock<NonBlocking> = OnceLock::new();

/// The line format, once [`init`] has run; [`announce`] writes its lines in it.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Log lines dropped since start: the queue was full, or stderr could not be written.
pub fn lines_dropped() -> u64 {
    let queue = QUEUE_DROPS
        .get()
        .map_or(0, |counter| counter.dropped_lines());
    WRITE_FAILURES.load(Ordering::Relaxed) + queue as u64
}

/// Keeps the writer thread alive; dropping it writes what is queued (waiting at most about
/// a second, `tracing-appender`'s bound) and stops the thread.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Why logging could not be set up.
#[derive(Debug)]
pub struct InitError(String);

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot set up logging: {}", self.0)
    }
}

impl std::error::Error for InitError {}

/// Installs the process-wide logger: lines in `format` at `level` and above on stderr,
/// plus, with `access_log`, the access log's `info` lines whatever the level; written by a
/// background thread, dropped (and counted) rather than waited for. Call once, before
/// starting the server, and keep the guard until the process ends.
pub fn init(
    level: log::LevelFilter,
    format: LogFormat,
    access_log: bool,
) -> Result<LogGuard, InitError> {
    let (queue, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LINES_QUEUED_MAX)
        .thread_name("herald-log")
        .finish(Stderr);
    let filter = tracing_level(level);
    let mut targets = Targets::new().with_default(filter);
    let mut max_level = filter;
    if access_log {
        targets = targets.with_target(ACCESS_TARGET, Level::INFO);
        max_level = max_level.max(Level::INFO.into());
    }
    let builder = tracing_subscriber::fmt()
        .with_max_level(max_level)
        .with_writer(queue.clone());
    let installed = match format {
        LogFormat::Logfmt => {
            let subscriber = builder.event_format(Logfmt).finish().with(targets);
            tracing::subscriber::set_global_default(subscriber)
        }
        LogFormat::Json => {
            let subscriber = builder.event_format(Json).finish().with(targets);
            tracing::subscriber::set_global_default(subscriber)
        }
    };
    installed.map_err(|error| InitError(error.to_string()))?;
    tracing_log::LogTracer::builder()
        .with_max_level(level)
        .init()
        .map_err(|error| InitError(error.to_string()))?;
    let _ = QUEUE_DROPS.set(queue.error_counter());
    let _ = QUEUE.set(queue);
    let _ = FORMAT.set(format);
    Ok(LogGuard { _worker: worker })
}

/// Writes `line` to stderr whatever the log level, as a line of the log format (logfmt:
/// the text as it is; JSON: an `info` object with the text as `msg`): through the log
/// queue once [`init`] has run, so it never blocks or panics; directly before that,
/// ignoring errors.
pub fn announce(line: &str) {
    let text = match FORMAT.get() {
        Some(LogFormat::Json) => {
            let mut text = String::new();
            let fields = Fields {
                message: line.to_owned(),
                others: Vec::new(),
            };
            // Writing into a String cannot fail.
            let _ = write_json(&mut text, SystemTime::now(), Level::INFO, "herald", &fields);
            text
        }
        _ => format!("{line}\n"),
    };
    let written = match QUEUE.get() {
        Some(queue) => queue.clone().write_all(text.as_bytes()),
        None => io::stderr().write_all(text.as_bytes()),
    };
    if written.is_err() {
        WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
}

fn tracing_level(level: log::LevelFilter) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match level {
        log::LevelFilter::Off => LevelFilter::OFF,
        log::LevelFilter::Error => LevelFilter::ERROR,
        log::LevelFilter::Warn => LevelFilter::WARN,
        log::LevelFilter::Info => LevelFilter::INFO,
        log::LevelFilter::Debug => LevelFilter::DEBUG,
        log::LevelFilter::Trace => LevelFilter::TRACE,
    }
}

/// The writer thread's stderr: a line it cannot write is counted and dropped, never
/// returned as an error (the worker would ignore it uncounted) and never a panic.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(line).is_err() {
            WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // Stderr is unbuffered.
    }
}

/// The logfmt line: `ts=<RFC 3339 UTC> level=<level> target=<module> msg="<message>"`,
/// then any structured fields as `key=value` (text quoted and escaped, numbers and
/// booleans bare).
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        with_parts(event, |level, target, fields| {
            write!(
                writer,
                "ts={} level={} target={target} msg=\"{}\"",
                utc_timestamp(SystemTime::now()),
                level_name(level),
                escape(&fields.message),
            )?;
            for (name, value) in &fields.others {
                match value {
                    serde_json::Value::String(text) => {
                        write!(writer, " {name}=\"{}\"", escape(text))?
                    }
                    other => write!(writer, " {name}={other}")?,
                }
            }
            writeln!(writer)
        })
    }
}

/// The JSON line: one object with `ts`, `level`, `target` and `msg`, then the event's
/// fields under their names (numbers and booleans as JSON numbers and booleans). Every
/// string is encoded by `serde_json`, so any text makes valid JSON on one line.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        with_parts(event, |level, target, fields| {
            write_json(&mut writer, SystemTime::now(), level, target, fields)
        })
    }
}

/// Hands an event's level, target and fields to `write`. Records from the `log` facade
/// carry their real level and target in fields, which the normalized metadata reads.
fn with_parts<R>(event: &Event<'_>, write: impl FnOnce(Level, &str, &Fields) -> R) -> R {
    let normalized = event.normalized_metadata();
    let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut fields = Fields::default();
    event.record(&mut fields);
    write(*metadata.level(), metadata.target(), &fields)
}

/// Keys of every JSON line; an event field of the same name is written as `field.<name>`
/// so no object has a key twice.
const JSON_KEYS: [&str; 4] = ["ts", "level", "target", "msg"];

/// Writes one JSON object and a newline.
fn write_json(
    writer: &mut impl fmt::Write,
    time: SystemTime,
    level: Level,
    target: &str,
    fields: &Fields,
) -> fmt::Result {
    write!(
        writer,
        "{{\"ts\":{},\"level\":{},\"target\":{},\"msg\":{}",
        json_string(&utc_timestamp(time)),
        json_string(level_name(level)),
        json_string(target),
        json_string(&fields.message),
    )?;
    for (name, value) in &fields.others {
        let key = match JSON_KEYS.contains(name) {
            true => json_string(&format!("field.{name}")),
            false => json_string(name),
        };
        write!(writer, ",{key}:{value}")?;
    }
    writeln!(writer, "}}")
}

/// `text` as a JSON string literal, quotes included.
fn json_string(text: &str) -> serde_json::Value {
    serde_json::Value::String(text.to_owned())
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Escapes a value for a double-quoted logfmt field, so a line is always one line.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// An event's message and other fields, without the `log.*` fields `tracing-log` adds.
/// Values keep their kind (text, number, boolean) for the formats that show it.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, serde_json::Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, serde_json::Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, serde_json::Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, serde_json::Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, serde_json::Value::String(format!("{value:?}")));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: serde_json::Value) {
        match (field.name(), value) {
            ("message", serde_json::Value::String(text)) => self.message = text,
            ("message", other) => self.message = other.to_string(),
            (name, _) if name.starts_with("log.") => {}
            (name, value) => self.others.push((name, value)),
        }
    }
}

/// RFC 3339 UTC time with milliseconds (`2026-11-27T04:40:09.123Z`).
fn utc_timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(951_782_400_123);
        assert_eq!(utc_timestamp(leap_day), "2000-02-29T00:00:00.123Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_795_754_409);
        assert_eq!(utc_timestamp(later), "2026-11-27T04:40:09.000Z");
    }

    /// Collects what the formatter writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What `format` writes for one warning with a text, a number and a clashing field.
    fn one_line<F>(format: F) -> String
    where
        F: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(format)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: "herald::test",
                peer = "a b",
                status = 404u64,
                level = "x",
                "said \"hi\"\nand left"
            );
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn lines_are_logfmt_with_the_message_escaped_and_fields_appended() {
        let text = one_line(Logfmt);
        let (ts, rest) = text.split_once(' ').unwrap();
        assert!(ts.starts_with("ts=") && ts.ends_with('Z'), "{text:?}");
        assert_eq!(
            rest,
            "level=warn target=herald::test msg=\"said \\\"hi\\\"\\nand left\" peer=\"a b\" \
             status=404 level=\"x\"\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_stable_keys_and_typed_fields() {
        let text = one_line(Json);
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(text.ends_with("}\n"), "{text:?}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let object = value.as_object().unwrap();
        assert!(object["ts"].as_str().unwrap().ends_with('Z'), "{text}");
        assert_eq!(object["level"], "warn");
        assert_eq!(object["target"], "herald::test");
        assert_eq!(object["msg"], "said \"hi\"\nand left");
        assert_eq!(object["peer"], "a b");
        assert_eq!(object["status"], 404);
        assert_eq!(object["field.level"], "x");
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
        assert!(text.starts_with("{\"ts\":"), "{text}");
    }
}
