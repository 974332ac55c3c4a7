//! Replays one seed of the deterministic simulation, or runs many (by count or for a time
//! budget) and prints seeds per second and every failing seed.
//!
//! ```text
//! cargo run --release --features internals --example simulate -- --seed 42
//! cargo run --release --features internals --example simulate -- --seeds 1000000
//! cargo run --release --features internals --example simulate -- --seconds 600 --from 1000000
//! ```

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use herald::testing::{simulate, SimOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let options = SimOptions::default();
    if let Some(seed) = value("--seed") {
        match simulate(seed, &options) {
            Ok(stats) => println!("seed {seed} passed: {stats:?}"),
            Err(failure) => {
                println!("{failure}");
                std::process::exit(1);
            }
        }
        return;
    }
    let from = value("--from").unwrap_or(0);
    let count = value("--seeds").unwrap_or(u64::MAX);
    let budget = value("--seconds").map(Duration::from_secs);
    if value("--seeds").is_none() && budget.is_none() {
        println!("usage: simulate --seed N | --seeds COUNT | --seconds S [--from FIRST]");
        std::process::exit(2);
    }
    let started = Instant::now();
    let mut failures = 0u64;
    let mut ran = 0u64;
    let mut last_report = Instant::now();
    for seed in from..from.saturating_add(count) {
        if budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        if let Err(failure) = simulate(seed, &options) {
            failures += 1;
            println!("{failure}");
        }
        ran += 1;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let rate = ran as f64 / started.elapsed().as_secs_f64();
            println!(
                "{ran} seeds ({from}..{}), {rate:.0} seeds/s, {failures} failing",
                from + ran
            );
        }
    }
    let rate = ran as f64 / started.elapsed().as_secs_f64();
    println!(
        "ran {ran} seeds ({from}..{}) in {:.1} s, {rate:.0} seeds/s, {failures} failing",
        from + ran,
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
