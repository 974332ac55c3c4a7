//! README.md's configuration table and `herald serve --help` describe the same flags with
//! the same defaults as `Config::default()`, so none can drift from the others: the table is
//! generated from the settings table (`HERALD_UPDATE_README=1` rewrites it). Every README
//! section `--help` points to ("see Cluster mode") is a heading README has.
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

/// README's headings (`##` and deeper), as written after the hashes.
fn readme_headings() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .lines()
        .filter(|line| line.starts_with("##"))
        .map(|line| line.trim_start_matches('#').trim().to_owned())
        .collect()
}

/// The anchor GitHub gives a heading: lower case, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
fn anchor_of(heading: &str) -> String {
    heading
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| match c {
            ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// What `herald <args>` prints, as one line: clap wraps long help, and a reference may
/// straddle the break.
fn help_of(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "herald {args:?} failed");
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The README sections a help text points readers to: after each "see" (and an optional
/// "README" or "README's"), a phrase that starts with a capital letter, up to the next `)`,
/// `;`, `,` or `.`. "see `--flag`" or "see below" are not references to a section.
fn section_references(help: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in help.match_indices("see ") {
        if help[..at]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
        {
            continue; // "foresee ", not "see ".
        }
        let rest = &help[at + "see ".len()..];
        let rest = rest
            .strip_prefix("README's ")
            .or_else(|| rest.strip_prefix("README "))
            .unwrap_or(rest);
        let phrase = rest.split([')', ';', ',', '.']).next().unwrap().trim();
        if phrase.starts_with(|c: char| c.is_ascii_uppercase()) && phrase != "README" {
            found.push(phrase.to_owned());
        }
    }
    found
}

#[test]
fn section_references_finds_the_names_after_see() {
    assert_eq!(
        section_references(
            "x (see Cluster mode), y; see the docs, see `--z`, see README's Tokens."
        ),
        ["Cluster mode", "Tokens"]
    );
}

/// Issue 12: every "see <section>" in `herald --help` and `herald serve --help` names a
/// heading README really has, so a reader can find it.
#[test]
fn help_references_name_readme_headings() {
    let headings = readme_headings();
    let mut references = Vec::new();
    for args in [&["--help"][..], &["serve", "--help"]] {
        let help = help_of(args);
        for reference in section_references(&help) {
            references.push((args, reference));
        }
    }
    // The settings table points to at least these two today; none found means the parser
    // (or the help) broke, not that all is well.
    assert!(
        references.len() >= 2,
        "no section references found: {references:?}"
    );
    let unknown: Vec<_> = references
        .iter()
        .filter(|(_, reference)| !headings.contains(reference))
        .collect();
    assert!(
        unknown.is_empty(),
        "--help names sections README does not have (its headings: {headings:?}): {unknown:?}"
    );
}

/// The Markdown links in the settings' help (README's configuration table renders them)
/// lead to a heading of that name.
#[test]
fn settings_help_links_lead_to_readme_headings() {
    let headings = readme_headings();
    let mut links = 0;
    for setting in SETTINGS {
        let mut rest = setting.help;
        while let Some(open) = rest.find('[') {
            rest = &rest[open + 1..];
            let Some((text, after)) = rest.split_once("](#") else {
                continue;
            };
            if text.contains(['[', ']']) {
                continue; // A bracket that opens no link, such as `[1-2]`.
            }
            let anchor = after.split(')').next().unwrap();
            links += 1;
            assert!(
                headings.contains(text) && anchor_of(text) == anchor,
                "{}: [{text}](#{anchor}) is not a README heading with that anchor",
                setting.flag()
            );
        }
    }
    assert!(links >= 2, "the settings' help links were not found");
}
