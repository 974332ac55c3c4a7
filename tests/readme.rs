//! README.md's configuration table and `herald serve --help` describe the same flags, so
//! neither can drift from the other.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;

fn flags_in_help() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .map(|rest| format!("--{}", rest.split([' ', '<']).next().unwrap()))
        .filter(|flag| flag != "--help")
        .collect()
}

fn flags_in_readme() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `--"))
        .map(|rest| format!("--{}", rest.split([' ', '`']).next().unwrap()))
        .collect()
}

#[test]
fn readme_configuration_table_lists_exactly_the_serve_flags() {
    let help = flags_in_help();
    let readme = flags_in_readme();
    assert!(help.len() > 20, "help parsed badly: {help:?}");
    let missing: Vec<_> = help.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&help).collect();
    assert!(
        missing.is_empty(),
        "flags missing from README's table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "README lists flags herald does not have: {stale:?}"
    );
}
