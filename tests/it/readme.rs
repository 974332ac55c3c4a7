//! README.md's configuration table and `herald serve --help` describe the same flags with
//! the same defaults as `Config::default()`, so none can drift from the others: the table is
//! generated from the settings table (`HERALD_UPDATE_README=1` rewrites it).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use herald::config::{Config, SETTINGS};

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

/// Each `--flag` of `herald serve --help` and the `[default: ...]` it shows, if any.
fn defaults_in_help() -> BTreeMap<String, Option<String>> {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // An option is its `--flag` line and the lines up to the next one, joined.
    let mut options: Vec<String> = Vec::new();
    for line in help.lines().map(str::trim) {
        match options.last_mut() {
            Some(option) if !line.starts_with('-') => {
                option.push(' ');
                option.push_str(line);
            }
            _ if line.starts_with('-') => options.push(line.to_owned()),
            _ => {}
        }
    }
    options
        .iter()
        .filter(|option| option.starts_with("--"))
        .map(|option| {
            let flag = option.split([' ', '<', '[']).next().unwrap().to_owned();
            let default = option
                .split_once("[default: ")
                .map(|(_, rest)| rest.split_once(']').unwrap().0.to_owned());
            (flag, default)
        })
        .collect()
}

#[test]
fn serve_help_shows_config_default_for_every_setting() {
    let help = defaults_in_help();
    let defaults = Config::default();
    for setting in SETTINGS {
        let flag = setting.flag();
        assert!(help.contains_key(&flag), "--help does not list {flag}");
        assert_eq!(
            help[&flag],
            setting.shown(&defaults),
            "{flag}: --help's default differs from Config::default()"
        );
    }
    assert_eq!(help.len(), SETTINGS.len() + 1, "{help:?}"); // and --config
}

#[test]
fn readme_configuration_table_is_generated_from_the_settings() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find("| flag | default | meaning |")
        .expect("README has the configuration table");
    let length = readme[start..]
        .find("\n\n")
        .map_or(readme.len() - start, |end| end + 1);
    let expected = herald::config::settings::readme_table();
    if readme[start..start + length] == expected {
        return;
    }
    if std::env::var_os("HERALD_UPDATE_README").is_some() {
        let updated = format!(
            "{}{expected}{}",
            &readme[..start],
            &readme[start + length..]
        );
        std::fs::write(path, updated).unwrap();
        return;
    }
    panic!(
        "README's configuration table is stale; run this test with HERALD_UPDATE_README=1, \
         or paste:\n{expected}"
    );
}
