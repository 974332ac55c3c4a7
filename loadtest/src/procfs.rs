//! What the loadtest reads from `/proc`: a server's resident memory (`VmRSS`, `RssAnon`
//! from `/proc/PID/status`), its CPU time (`utime + stime` from `/proc/PID/stat`, and
//! `stime` alone), the
//! children of a process (nginx workers of a master), the kernel's TCP memory
//! (`/proc/net/sockstat`) and slab memory (`/proc/meminfo`). Parsing is split from reading so it can be tested on text.

use std::fs;
use std::io;

/// Clock ticks per second in `/proc/PID/stat`. The kernel reports these in `USER_HZ`, which
/// is 100 on every Linux ABI this tool runs on (it is not the kernel's `CONFIG_HZ`).
pub const USER_HZ: f64 = 100.0;

/// Bytes in a page of `/proc/net/sockstat`'s `mem` (x86-64 and aarch64 with 4 KiB pages).
pub const PAGE_BYTES: u64 = 4096;

/// Resident memory of a set of processes, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS` summed, in bytes (shared pages count once per process that touched them).
    pub rss_bytes: u64,
    /// `RssAnon` summed, in bytes: private heap and stacks, no shared memory.
    pub anon_bytes: u64,
}

/// Sums the memory of `pids`. A pid that has gone away is an error: the server died.
pub fn memory(pids: &[u32]) -> io::Result<Memory> {
    let mut total = Memory::default();
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
        total.rss_bytes += status_number(&text, "VmRSS").unwrap_or(0) * 1024;
        total.anon_bytes += status_number(&text, "RssAnon").unwrap_or(0) * 1024;
    }
    Ok(total)
}

/// CPU seconds (user + system, all threads) used so far by `pids`, summed.
pub fn cpu_seconds(pids: &[u32]) -> io::Result<f64> {
    let mut ticks = 0;
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        ticks += stat_cpu_ticks(&text).ok_or_else(|| bad_data("stat"))?;
    }
    Ok(ticks as f64 / USER_HZ)
}

/// Kernel-mode CPU seconds (`stime`, all threads) used so far by `pids`, summed: the part
/// of [`cpu_seconds`] spent in system calls and the network stack.
pub fn system_seconds(pids: &[u32]) -> io::Result<f64> {
    let mut ticks = 0;
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        ticks += stat_system_ticks(&text).ok_or_else(|| bad_data("stat"))?;
    }
    Ok(ticks as f64 / USER_HZ)
}

/// Times the calling thread has blocked so far (`voluntary_ctxt_switches` of
/// `/proc/thread-self/status`): a worker's reading thread blocks only when it has caught up
/// with its sockets, so few of these over a busy window mean it never did.
pub fn own_waits() -> u64 {
    fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|text| status_number(&text, "voluntary_ctxt_switches"))
        .unwrap_or(0)
}

/// CPU seconds used so far by this process.
pub fn own_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| stat_cpu_ticks(&text))
        .map_or(0.0, |ticks| ticks as f64 / USER_HZ)
}

/// The direct children of `parent` (for nginx: the workers of the master).
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|text| stat_ppid(&text))
                == Some(parent)
        })
        .collect();
    out.sort_unstable();
    out
}

/// The kernel's TCP buffer memory (`/proc/net/sockstat` `TCP: ... mem N`), in bytes.
pub fn tcp_mem_bytes() -> u64 {
    fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|text| sockstat_tcp_pages(&text))
        .map_or(0, |pages| pages * PAGE_BYTES)
}

/// The kernel's slab memory (`/proc/meminfo` `Slab:`), in bytes: socket, file and dentry
/// objects of every open connection live there, apart from their buffers.
pub fn slab_bytes() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| status_number(&text, "Slab"))
        .map_or(0, |kib| kib * 1024)
}

fn bad_data(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unreadable /proc {what}"),
    )
}

/// The number of `Name:   1234 kB` (or `Name:\t1234`) in a `/proc/PID/status` text.
fn status_number(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The fields after the command name: `comm` may hold spaces and parentheses, so split at
/// the last `)`.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let close = text.rfind(')')?;
    Some(text[close + 1..].split_whitespace().collect())
}

/// `utime + stime` (fields 14 and 15 of `/proc/PID/stat`) in ticks.
fn stat_cpu_ticks(text: &str) -> Option<u64> {
    let fields = stat_fields(text)?;
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `stime` (field 15 of `/proc/PID/stat`) in ticks.
fn stat_system_ticks(text: &str) -> Option<u64> {
    stat_fields(text)?.get(12)?.parse().ok()
}

/// The parent pid (field 4 of `/proc/PID/stat`).
fn stat_ppid(text: &str) -> Option<u32> {
    stat_fields(text)?.get(1)?.parse().ok()
}

/// Pages after `mem` on the `TCP:` line.
fn sockstat_tcp_pages(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|&w| w == "mem")?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status() {
        let text = "Name:\therald\nVmRSS:\t   12345 kB\nRssAnon:\t  100 kB\n";
        assert_eq!(status_number(text, "VmRSS"), Some(12345));
        assert_eq!(status_number(text, "RssAnon"), Some(100));
        assert_eq!(status_number(text, "VmSwap"), None);
        let meminfo =
            "MemTotal:       24000000 kB\nSlab:             812345 kB\nSReclaimable: 1 kB\n";
        assert_eq!(status_number(meminfo, "Slab"), Some(812_345));
        let switches =
            "Name:\tloadtest\nvoluntary_ctxt_switches:\t25425\nnonvoluntary_ctxt_switches:\t1312\n";
        assert_eq!(
            status_number(switches, "voluntary_ctxt_switches"),
            Some(25_425)
        );
    }

    #[test]
    fn stat() {
        let text = "42 (nginx: worker (x) 1) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(text), Some(281));
        assert_eq!(stat_system_ticks(text), Some(31));
        assert_eq!(stat_ppid(text), Some(7));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn sockstat() {
        let text = "sockets: used 14\nTCP: inuse 4 orphan 0 tw 10069 alloc 4 mem 101\nUDP: inuse 0 mem 0\n";
        assert_eq!(sockstat_tcp_pages(text), Some(101));
    }

    #[test]
    fn live_process() {
        let me = std::process::id();
        assert!(memory(&[me]).unwrap().rss_bytes > 0);
        assert!(cpu_seconds(&[me]).is_ok());
        // Burn CPU until the kernel has counted at least one tick (10 ms) for this
        // process, or 2 s of wall time have passed; `own_cpu_seconds` returns 0.0 when it
        // cannot read `/proc/self/stat`, so this fails if it cannot.
        let started = std::time::Instant::now();
        let mut x = 1u64;
        while own_cpu_seconds() == 0.0 && started.elapsed() < std::time::Duration::from_secs(2) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
            }
        }
        let own = own_cpu_seconds();
        assert!(own > 0.0, "no CPU time counted for this process ({x})");
        // The same process read by pid: at least as much, read later.
        assert!(cpu_seconds(&[me]).unwrap() >= own);
    }

    #[test]
    fn own_waits_count_the_calling_threads_sleeps() {
        let before = own_waits();
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Each sleep blocks this thread once; 0 would mean the file was not read.
        assert!(own_waits() >= before + 3, "{before} -> {}", own_waits());
    }
}
