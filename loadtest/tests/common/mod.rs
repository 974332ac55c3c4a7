//! What the loadtest integration tests share: the herald binary and reading numbers out
//! of a JSON report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The herald binary: next to this package's binary when the workspace was built (as
/// `cargo test --workspace` does), otherwise built into a private target directory.
pub fn herald_bin() -> PathBuf {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let dir = loadtest.parent().unwrap();
    let beside = dir.join("herald");
    if beside.exists() {
        return beside;
    }
    let target_dir = dir.parent().unwrap().join("loadtest-herald");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "-p", "herald", "--bin", "herald", "--target-dir"])
        .arg(&target_dir)
        .status()
        .unwrap();
    assert!(status.success(), "building herald failed");
    target_dir.join("debug").join("herald")
}

/// The number at `path` (object keys) in `v`; panics, showing `v`, when there is none.
pub fn number(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v:#}"))
}
