//! The deterministic simulation (`herald::testing::simulate`, see docs/simulation.md) over
//! a fixed range of seeds. A failure prints the seed and the command that replays it.
//! `SIM_SEEDS=N` runs N seeds instead, `SIM_SEED=S` just seed S.

use herald::testing::{simulate, SimOptions};

/// Seeds CI runs: a few thousand, well under a minute in the debug test profile.
const SEEDS: u64 = 2_000;

#[test]
fn seeds_keep_every_invariant() {
    let options = SimOptions::default();
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds = match (env("SIM_SEED"), env("SIM_SEEDS")) {
        (Some(seed), _) => seed..seed + 1,
        (None, count) => 0..count.unwrap_or(SEEDS),
    };
    let mut failures = Vec::new();
    for seed in seeds {
        if let Err(failure) = simulate(seed, &options) {
            eprintln!("{failure}");
            failures.push(seed);
        }
    }
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
