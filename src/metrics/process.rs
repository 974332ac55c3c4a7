//! The standard process metrics every Prometheus client library exports (`process_*`),
//! read from `/proc/self` when a scrape asks for them and never in between. On other
//! systems, or where a file cannot be read, the families it cannot fill are left out.
//!
//! The only I/O is reading a few small `/proc` files; the parsing is pure and unit-tested
//! on sample text.

use super::exposition::{Family, Kind, Sample, Value};

/// Clock ticks per second in `/proc/self/stat` and `/proc/stat` (`USER_HZ`): 100 in the
/// kernel's user-space ABI on every architecture Rust targets with Linux, and what the
/// Prometheus Go client (`procfs`) assumes too. Reading it with `sysconf(_SC_CLK_TCK)` would
/// need `unsafe` or another crate, for a value that does not vary.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says, each field `None` when its file or line could not be read.
#[derive(Debug, Default, PartialEq)]
struct Process {
    /// User plus system CPU time, in seconds.
    cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    resident_bytes: Option<u64>,
    /// Virtual memory size, in bytes.
    virtual_bytes: Option<u64>,
    /// Open file descriptors.
    open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    start_time_seconds: Option<f64>,
}

/// The `process_*` families this system can fill right now.
pub(crate) fn families() -> Vec<Family> {
    let process = read();
    let int = |value: Option<u64>| value.map(Value::Int);
    let float = |value: Option<f64>| value.map(Value::Float);
    let table: [(&'static str, bool, &'static str, Option<Value>); 6] = [
        (
            "process_cpu_seconds_total",
            true,
            "Total user and system CPU time spent in seconds.",
            float(process.cpu_seconds),
        ),
        (
            "process_resident_memory_bytes",
            false,
            "Resident memory size in bytes.",
            int(process.resident_bytes),
        ),
        (
            "process_virtual_memory_bytes",
            false,
            "Virtual memory size in bytes.",
            int(process.virtual_bytes),
        ),
        (
            "process_open_fds",
            false,
            "Number of open file descriptors.",
            int(process.open_fds),
        ),
        (
            "process_max_fds",
            false,
            "Maximum number of open file descriptors (the soft limit).",
            int(process.max_fds),
        ),
        (
            "process_start_time_seconds",
            false,
            "Start time of the process since unix epoch in seconds.",
            float(process.start_time_seconds),
        ),
    ];
    table
        .into_iter()
        .filter_map(|(name, counter, help, value)| {
            let samples = vec![Sample::plain(value?)];
            Some(Family {
                name,
                help: help.into(),
                kind: if counter {
                    Kind::Counter(samples)
                } else {
                    Kind::Gauge(samples)
                },
            })
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn read() -> Process {
    let file = |path: &str| std::fs::read_to_string(path).ok();
    let stat = file("/proc/self/stat").and_then(|text| parse_stat(&text));
    let status = file("/proc/self/status");
    let boot_time = file("/proc/stat").and_then(|text| parse_boot_time(&text));
    Process {
        cpu_seconds: stat.map(|s| s.cpu_ticks as f64 / USER_HZ),
        resident_bytes: status.as_deref().and_then(|s| status_bytes(s, "VmRSS")),
        virtual_bytes: status.as_deref().and_then(|s| status_bytes(s, "VmSize")),
        open_fds: open_fds(),
        max_fds: file("/proc/self/limits").and_then(|text| parse_max_open_files(&text)),
        start_time_seconds: stat
            .zip(boot_time)
            .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
    }
}

#[cfg(not(target_os = "linux"))]
fn read() -> Process {
    Process::default()
}

/// Counts the entries of `/proc/self/fd`. Since Linux 6.2 the directory's size is that
/// count, which costs nothing however many connections are open; older kernels report 0,
/// and then the entries are counted (once per scrape, like every Prometheus client does).
#[cfg(target_os = "linux")]
fn open_fds() -> Option<u64> {
    const FDS: &str = "/proc/self/fd";
    match std::fs::metadata(FDS) {
        Ok(meta) if meta.len() > 0 => Some(meta.len()),
        Ok(_) => {
            let entries = std::fs::read_dir(FDS).ok()?.count() as u64;
            // The listing includes the descriptor that reads it, which closes right after.
            Some(entries.saturating_sub(1))
        }
        Err(_) => None,
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    /// `utime + stime`, in clock ticks.
    cpu_ticks: u64,
    /// `starttime`: clock ticks after boot.
    start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after_name) = text.rsplit_once(')')?;
    // Field 3 (state) is the first after the name; utime and stime are fields 14 and 15,
    // starttime is field 22 (proc(5)).
    let fields: Vec<&str> = after_name.split_ascii_whitespace().take(20).collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
    })
}

/// `btime` of `/proc/stat`: the boot time in seconds since the Unix epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// A `Name:   123 kB` line of `/proc/PID/status`, in bytes.
fn status_bytes(text: &str, name: &str) -> Option<u64> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit of the `Max open files` line of `/proc/PID/limits` (`None` when
/// `unlimited`, which Linux does not allow for open files anyway).
fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_after_the_last_parenthesis() {
        // A command name with spaces and a `)` of its own, as a hostile thread name can be.
        let text = "4242 (my (evil) name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    150 70 0 0 20 0 9 0 123456 987654321 2000 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 220,
                start_ticks: 123_456,
            })
        );
        for truncated in [
            "",
            "4242 (x",
            "4242 (x) S 1 2 3",
            "4242 (x) S 1 2 3 4 5 6 7 8 9 10 x 70",
        ] {
            assert_eq!(parse_stat(truncated), None, "{truncated:?}");
        }
    }

    #[test]
    fn parses_status_limits_and_boot_time() {
        let status = "Name:\therald\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(2048 * 1024));
        assert_eq!(status_bytes(status, "VmSize"), Some(123_456 * 1024));
        assert_eq!(status_bytes(status, "VmSwap"), None);
        assert_eq!(status_bytes("VmRSS:\t12 MB\n", "VmRSS"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1_048_576));
        assert_eq!(
            parse_max_open_files("Max open files  unlimited  unlimited  files\n"),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let process = read();
        assert!(
            process.resident_bytes.is_some_and(|rss| rss > 0),
            "{process:?}"
        );
        assert!(
            process.virtual_bytes >= process.resident_bytes,
            "{process:?}"
        );
        assert!(process.open_fds.is_some_and(|fds| fds >= 3), "{process:?}");
        assert!(process.max_fds >= process.open_fds, "{process:?}");
        assert!(process.cpu_seconds.is_some(), "{process:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = process.start_time_seconds.unwrap();
        // btime is whole seconds, so the start can read up to a second late.
        assert!(start <= now + 1.0, "started at {start}, now {now}");
        assert!(start > now - 24.0 * 3600.0, "started at {start}, now {now}");
        assert_eq!(families().len(), 6);
    }
}
