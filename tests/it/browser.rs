#![allow(clippy::unwrap_used)]
//! herald in a real browser: runs the Node suite `tests/browser/herald.test.mjs`, which drives
//! Debian's headless Chromium through playwright-core against this build's herald binary
//! (CORS, a cookie token sent cross-origin withCredentials, reconnect with Last-Event-ID and
//! the events a page loses when it recreates its EventSource instead, `retry:`, README's
//! browser snippet, the demo page's named events, last id and gap). Missing prerequisites
//! fail the test with what to install; they are never a reason to skip.

use std::path::Path;
use std::process::Command;

/// Debian's `chromium` package; the suite never uses a downloaded browser build.
const CHROMIUM: &str = "/usr/bin/chromium";

/// What the suite needs that `cargo test` does not build, each with how to get it.
fn missing_prerequisites(suite: &Path) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|output| output.status.success()) {
        missing.push("node on PATH (apt-get install -y nodejs npm)");
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push("/usr/bin/chromium (apt-get install -y chromium)");
    }
    if !suite
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("tests/browser/node_modules (cd tests/browser && npm ci)");
    }
    missing
}

#[test]
fn browser_end_to_end() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing = missing_prerequisites(&suite);
    assert!(
        missing.is_empty(),
        "the browser tests cannot run; missing: {}",
        missing.join("; ")
    );

    let herald = Path::new(env!("CARGO_BIN_EXE_herald"));
    // target/<profile>/herald: artifacts go to target/browser-artifacts.
    let artifacts = herald
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("browser-artifacts");
    let screenshot = artifacts.join("demo.png");
    // A screenshot left by an earlier run must not pass for this one's.
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "herald.test.mjs"])
        .current_dir(&suite)
        .env("HERALD_BIN", herald)
        .env("HERALD_CHROMIUM", CHROMIUM)
        .env("HERALD_BROWSER_ARTIFACTS", &artifacts)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "node --test tests/browser/herald.test.mjs failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(screenshot.exists(), "the demo page screenshot is missing");
}
