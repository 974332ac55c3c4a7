//! herald's load generator (issue 3).
//!
//! `run` measures one scenario against one target; `peers` starts nginx + nchan (and
//! optionally herald) and measures the same scenario against both, printing herald/nchan
//! ratios; `cluster` starts redis-server, three herald nodes on the Redis bus and one on the
//! embedded bus, and measures the latency Redis adds and the publish rate one stream
//! sustains; `worker` is the subscriber process the others spawn. Subscribers live in
//! worker processes on `mio` event loops; the orchestrator publishes on a paced absolute
//! schedule, reads server memory and CPU from `/proc`, and merges the workers' HDR
//! histograms into one report (a table on stdout, JSON with `--json`, an SVG chart of a
//! sweep with `--svg`). Only loopback addresses (127.0.0.0/8) can be targeted.

mod capacity;
mod cluster;
mod fleet;
mod http;
mod latency;
mod payload;
mod peers;
mod procfs;
mod protocol;
mod publisher;
mod report;
mod run;
mod scenario;
mod schedule;
mod svg;
mod sweep;
mod target;
mod worker;
mod xadd;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use report::Report;
use scenario::{Scenario, ScenarioArgs};
use target::{Preset, Target};

/// Command line.
#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "herald's load generator: SSE subscribers, paced publishing, herald vs nginx+nchan"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against one target.
    Run(RunArgs),
    /// Start nginx + nchan (and herald from --herald-bin) and run the scenario against both.
    Peers(PeersArgs),
    /// Start redis-server, herald nodes with --bus redis and one embedded herald; measure
    /// the latency Redis adds and the publish rate one stream sustains (or, with
    /// --capacity, what many subscribers cost each node and Redis).
    Cluster(Box<cluster::ClusterArgs>),
    /// Internal: a subscriber process (spec and control words on stdin, JSON lines out).
    #[command(hide = true)]
    Worker,
}

/// Flags of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Preset URL templates for this kind of server (needs --addr).
    #[arg(long, value_enum)]
    target: Option<Preset>,
    /// Server address for the preset, e.g. 127.0.0.1:8080.
    #[arg(long)]
    addr: Option<std::net::SocketAddr>,
    /// Subscribe URL template, e.g. 'http://127.0.0.1:8080/events?topic={topic}'.
    #[arg(long)]
    sub_url: Option<String>,
    /// Publish URL template, e.g. 'http://127.0.0.1:8080/publish?topic={topic}'.
    #[arg(long)]
    pub_url: Option<String>,
    /// Server process id(s) for memory and CPU (repeatable or comma-separated; children,
    /// such as nginx workers, are added).
    #[arg(long, value_delimiter = ',', required = true)]
    server_pid: Vec<u32>,
    /// Label for reports [default: the preset's name, or "target"].
    #[arg(long)]
    name: Option<String>,
    /// Exit with an error unless every expected delivery arrived exactly once or was
    /// announced by a gap notice with a real hole after it (see README, "Zero loss").
    #[arg(long)]
    require_zero_loss: bool,
    #[command(flatten)]
    scenario: ScenarioArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Flags of `peers`.
#[derive(clap::Args)]
struct PeersArgs {
    /// herald binary to start (e.g. target/release/herald).
    #[arg(long, conflicts_with_all = ["herald_addr", "herald_pid"])]
    herald_bin: Option<PathBuf>,
    /// Address of an herald already running (instead of --herald-bin).
    #[arg(long, requires = "herald_pid")]
    herald_addr: Option<std::net::SocketAddr>,
    /// Process id of that herald.
    #[arg(long)]
    herald_pid: Option<u32>,
    /// herald's event loop threads (when started here) and nginx's worker processes.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Events kept per topic for resume, by both servers.
    #[arg(long, default_value_t = 1_000)]
    history: usize,
    #[command(flatten)]
    scenario: ScenarioArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Where results go besides the table.
#[derive(clap::Args)]
struct OutputArgs {
    /// Write the report(s) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Sweep: write the SVG chart to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_one(&args),
        Command::Peers(args) => run_peers(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Worker => worker::main(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_one(args: &RunArgs) -> io::Result<()> {
    let target = run_target(args).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut out = io::stdout().lock();
    if args.scenario.scenario == Scenario::Sweep {
        let reports = sweep::run(&[target], &args.scenario, &mut out)?;
        return write_outputs(&args.output, &reports, Some(&reports));
    }
    let settings = args.scenario.settings(args.scenario.scenario, None);
    let report = run::measure(&target, &settings)?;
    report::write_table(&mut out, &report)?;
    write_outputs(&args.output, &report, None)?;
    if args.require_zero_loss {
        if let Some(why) = report::zero_loss_failure(&report) {
            return Err(io::Error::other(format!("not zero loss: {why}")));
        }
        writeln!(
            out,
            "zero loss: {} of {} deliveries received once, {} announced by {} gap notice(s)",
            report.received, report.expected, report.loss.announced, report.loss.gap_notices
        )?;
    }
    Ok(())
}

fn run_target(args: &RunArgs) -> Result<Target, String> {
    let (sub, publish, default_name) = match (args.target, args.addr) {
        (Some(preset), Some(addr)) => {
            let (s, p) = preset.templates(addr);
            let name = format!("{preset:?}").to_lowercase();
            (
                args.sub_url.clone().unwrap_or(s),
                args.pub_url.clone().unwrap_or(p),
                name,
            )
        }
        (Some(_), None) => return Err("--target needs --addr".into()),
        (None, _) => match (&args.sub_url, &args.pub_url) {
            (Some(s), Some(p)) => (s.clone(), p.clone(), "target".to_owned()),
            _ => return Err("give --target and --addr, or --sub-url and --pub-url".into()),
        },
    };
    let name = args.name.clone().unwrap_or(default_name);
    Target::new(&name, &sub, &publish, &args.server_pid)
}

fn run_peers(args: &PeersArgs) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut reports = Vec::new();
    if args.scenario.scenario == Scenario::Sweep {
        // Fresh servers for every size, so each memory reading starts from a clean heap.
        for &size in &args.scenario.sizes {
            let servers = Servers::start(args)?;
            reports.extend(sweep::run_size(
                &servers.targets,
                &args.scenario,
                size,
                &mut out,
            )?);
        }
        sweep::write_summary(&mut out, &reports)?;
        for pair in reports.chunks(2) {
            if let [h, n] = pair {
                report::write_comparison(&mut out, h, n)?;
            }
        }
        return write_outputs(&args.output, &reports, Some(&reports));
    }
    let servers = Servers::start(args)?;
    let settings = args.scenario.settings(args.scenario.scenario, None);
    for target in &servers.targets {
        let report = run::measure(target, &settings)?;
        report::write_table(&mut out, &report)?;
        out.flush()?;
        reports.push(report);
    }
    report::write_comparison(&mut out, &reports[0], &reports[1])?;
    write_outputs(&args.output, &reports, None)
}

/// herald and nchan for one `peers` measurement; the processes this tool started stop
/// when it is dropped.
struct Servers {
    /// herald first, then nchan.
    targets: [Target; 2],
    _herald: Option<peers::Spawned>,
    _nchan: peers::Spawned,
}

impl Servers {
    fn start(args: &PeersArgs) -> io::Result<Servers> {
        let (herald_process, herald) = match (&args.herald_bin, args.herald_addr, args.herald_pid) {
            (Some(bin), _, _) => {
                let spawned = peers::start_herald(bin, args.threads, args.history)?;
                let target = preset_target("herald", Preset::Herald, spawned.addr, spawned.pid())?;
                (Some(spawned), target)
            }
            (None, Some(addr), Some(pid)) => {
                (None, preset_target("herald", Preset::Herald, addr, pid)?)
            }
            _ => {
                return Err(invalid(
                    "give --herald-bin, or --herald-addr with --herald-pid",
                ))
            }
        };
        let nchan_process = peers::start_nchan(args.threads, args.history)?;
        let nchan = preset_target(
            "nchan",
            Preset::Nchan,
            nchan_process.addr,
            nchan_process.pid(),
        )?;
        eprintln!(
            "herald at {} (pids {:?}); nchan at {} (pids {:?})",
            herald.subscribe.addr, herald.pids, nchan.subscribe.addr, nchan.pids
        );
        Ok(Servers {
            targets: [herald, nchan],
            _herald: herald_process,
            _nchan: nchan_process,
        })
    }
}

fn preset_target(
    name: &str,
    preset: Preset,
    addr: std::net::SocketAddr,
    pid: u32,
) -> io::Result<Target> {
    let (sub, publish) = preset.templates(addr);
    Target::new(name, &sub, &publish, &[pid]).map_err(invalid)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}

fn write_outputs(
    output: &OutputArgs,
    json: &impl Serialize,
    sweep: Option<&[Report]>,
) -> io::Result<()> {
    if let Some(path) = &output.json {
        report::write_json(path, json)?;
    }
    match (&output.svg, sweep) {
        (Some(path), Some(reports)) => sweep::write_chart(path, reports),
        (Some(_), None) => Err(invalid("--svg is only drawn for --scenario sweep")),
        _ => Ok(()),
    }
}
