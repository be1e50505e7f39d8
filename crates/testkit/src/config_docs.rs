//! Ties a binary's documented config to its config type, so that `config/<binary>.toml`, the
//! README's "Configuration" table and the defaults in code cannot drift apart: the defaults are
//! written once, in the config type's `Default`, and the documents are checked against it.
//!
//! The example files' style, which this check relies on:
//! - a key set in the file (`key = value`) states its default, unless it is one of the few
//!   "site values" the example sets on purpose (an address, a database path), which the caller
//!   lists;
//! - a commented key (`# key = value`) is documented but optional: its value is an example,
//!   not a default (e.g. an address for a key that is off unless set);
//! - a commented table header (`# [server.meta]`) documents a free-form map: the map is the key,
//!   what follows it is its example content.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::workspace_root;

/// `section.key` -> value, for a config of `[section]` tables.
type Keys = BTreeMap<String, Value>;

/// Checks `config/<binary>.toml`, the README's config table row of `binary` and the `binary` table
/// of ARCHITECTURE.md's configuration section against the config type `C` (its `Default` being the
/// defaults): every key of the file exists in `C`; every key the file sets, except `site_values`,
/// equals `C`'s default; every key of `C` appears in the file (set or commented); the README's key
/// list for `binary` names exactly the keys of `C` (`section.*` standing for a whole section);
/// ARCHITECTURE.md's table has one row per key of `C`, and a default cell that starts with a
/// literal (`` `5s` ``) states `C`'s default (a computed default is written in words). Panics
/// listing every difference found.
pub fn check_config_docs<C>(binary: &str, site_values: &[&str])
where
    C: Default + Serialize + DeserializeOwned,
{
    let root = workspace_root();
    let example = root.join("config").join(format!("{binary}.toml"));
    let text = read(&example);
    let readme = read(&root.join("README.md"));
    let architecture = read(&root.join("ARCHITECTURE.md"));
    let defaults = flatten(&defaults::<C>());
    let mut problems = check_example::<C>(&text, site_values);
    problems.extend(check_readme_row(
        &readme,
        binary,
        &defaults.keys().cloned().collect(),
    ));
    problems.extend(check_architecture_table(&architecture, binary, &defaults));
    assert!(
        problems.is_empty(),
        "config/{binary}.toml, README.md and ARCHITECTURE.md disagree with the {binary}'s config type:\n- {}",
        problems.join("\n- ")
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

fn defaults<C: Default + Serialize>() -> Value {
    serde_json::to_value(C::default()).expect("a config serializes to JSON")
}

/// The differences between an example file and `C`.
fn check_example<C>(text: &str, site_values: &[&str]) -> Vec<String>
where
    C: Default + Serialize + DeserializeOwned,
{
    let mut problems = Vec::new();
    let defaults = flatten(&defaults::<C>());
    // Parsed through `C` itself, so "1m" and "60s", or 10 and 10.0, compare equal.
    let parsed: C = match toml::from_str(text) {
        Ok(config) => config,
        Err(err) => return vec![format!("the file does not parse as this config: {err}")],
    };
    let parsed = flatten(&serde_json::to_value(parsed).expect("a config serializes to JSON"));
    let set = set_keys(text);
    let commented = commented_keys(text);
    for key in set.iter().chain(&commented) {
        if !defaults.contains_key(key) {
            problems.push(format!("the file names `{key}`, which is not a key"));
        }
    }
    for key in &set {
        let (Some(default), Some(value)) = (defaults.get(key), parsed.get(key)) else {
            continue;
        };
        let site = site_values.contains(&key.as_str());
        if !site && value != default {
            problems.push(format!(
                "`{key}` is set to {value} in the file, but its default is {default}"
            ));
        }
        if site && value == default {
            problems.push(format!(
                "`{key}` is listed as a site value but the file sets its default"
            ));
        }
    }
    for key in site_values {
        if !set.contains(*key) {
            problems.push(format!("site value `{key}` is not set in the file"));
        }
    }
    for key in defaults.keys() {
        if !set.contains(key) && !commented.contains(key) {
            problems.push(format!("`{key}` is missing from the file"));
        }
    }
    problems
}

/// `section.key` of every value of a two-level config (a map field is one key).
fn flatten(config: &Value) -> Keys {
    let mut keys = Keys::new();
    for (section, table) in config.as_object().expect("a config is a table") {
        for (key, value) in table.as_object().expect("a config section is a table") {
            keys.insert(format!("{section}.{key}"), value.clone());
        }
    }
    keys
}

/// The keys the file sets.
fn set_keys(text: &str) -> BTreeSet<String> {
    let table: toml::Table = text.parse().expect("checked by the parse into the config");
    let mut keys = BTreeSet::new();
    for (section, value) in table {
        if let Some(section_table) = value.as_table() {
            for key in section_table.keys() {
                keys.insert(format!("{section}.{key}"));
            }
        } else {
            keys.insert(section);
        }
    }
    keys
}

/// The keys documented in comments: `# key = value` lines and `# [section.map]` headers.
fn commented_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        let (commented, body) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if let Some(header) = body.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = header.trim().to_owned();
            // A commented sub-table documents a map field of its parent section.
            if commented && section.contains('.') {
                keys.insert(section.clone());
            }
            continue;
        }
        // Keys inside a map field are its content, not config keys.
        if !commented || section.is_empty() || section.contains('.') {
            continue;
        }
        if let Some((key, value)) = body.split_once('=') {
            let key = key.trim();
            let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if is_key && !value.trim().is_empty() {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

/// The differences between the README's key list for `binary` and `keys`.
fn check_readme_row(readme: &str, binary: &str, keys: &BTreeSet<String>) -> Vec<String> {
    let cell = format!("`{binary}`");
    let Some(row) = readme.lines().find(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        cells.len() > 3 && cells[2] == cell
    }) else {
        return vec![format!(
            "README.md has no configuration table row for {cell}"
        )];
    };
    let listed = row.split('|').map(str::trim).nth(3).unwrap_or_default();
    let mut problems = Vec::new();
    let mut covered = BTreeSet::new();
    for item in listed.split(',').map(str::trim) {
        let name = item.trim_matches('`');
        let matching: Vec<&String> = match name.strip_suffix(".*") {
            Some(section) => keys
                .iter()
                .filter(|k| k.strip_prefix(section).is_some_and(|r| r.starts_with('.')))
                .collect(),
            None => keys.iter().filter(|k| *k == name).collect(),
        };
        if !item.starts_with('`') || matching.is_empty() {
            problems.push(format!(
                "README.md lists {item:?} for {cell}, which is not a key"
            ));
        }
        covered.extend(matching);
    }
    for key in keys.iter().filter(|k| !covered.contains(k)) {
        problems.push(format!("README.md does not list `{key}` for {cell}"));
    }
    problems
}

/// The differences between ARCHITECTURE.md's table for `binary` (the table after the line
/// `**<binary>**`) and `defaults`.
fn check_architecture_table(doc: &str, binary: &str, defaults: &Keys) -> Vec<String> {
    let title = format!("**{binary}**");
    let Some(start) = doc.lines().position(|l| l.trim().starts_with(&title)) else {
        return vec![format!(
            "ARCHITECTURE.md has no configuration table for {binary}"
        )];
    };
    let rows = doc
        .lines()
        .skip(start + 1)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2); // header and separator
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let key = cells.get(1).copied().unwrap_or_default().trim_matches('`');
        let cell = cells.get(2).copied().unwrap_or_default();
        listed.insert(key.to_owned());
        let Some(default) = defaults.get(key) else {
            problems.push(format!(
                "ARCHITECTURE.md lists `{key}` for {binary}, which is not a key"
            ));
            continue;
        };
        let literal = cell.strip_prefix('`').and_then(|rest| rest.split_once('`'));
        if let Some((literal, _)) = literal {
            let actual = match default {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if literal != actual {
                problems.push(format!(
                    "ARCHITECTURE.md gives `{key}` the default `{literal}`; the code's is `{actual}`"
                ));
            }
        }
    }
    for key in defaults.keys().filter(|k| !listed.contains(*k)) {
        problems.push(format!(
            "ARCHITECTURE.md does not list `{key}` for {binary}"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        server: Server,
    }

    #[derive(Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Server {
        listen: String,
        id: Option<String>,
        meta: BTreeMap<String, String>,
        timeout: u32,
    }

    impl Default for Server {
        fn default() -> Self {
            Server {
                listen: "127.0.0.1:8080".into(),
                id: None,
                meta: BTreeMap::new(),
                timeout: 10,
            }
        }
    }

    const GOOD: &str = "\
# An example.
[server]
# Port 0 picks a free port.
listen = \"127.0.0.1:0\"
# id = \"data-1\"
timeout = 10
# [server.meta]
# zone = \"local\"
";

    #[test]
    fn the_architecture_table_must_list_every_key_with_its_default() {
        let defaults = flatten(&defaults::<Config>());
        let doc = "\
**demo** (`src/config.rs`)

| key | default | notes |
|---|---|---|
| `server.listen` | `127.0.0.1:8080` | |
| `server.id` | none (random) | computed, in words |
| `server.meta` | `{}` | |
| `server.timeout` | `10` | |

More text.
";
        assert_eq!(
            check_architecture_table(doc, "demo", &defaults),
            Vec::<String>::new()
        );
        let drifted = doc
            .replace("`10` |", "`11` |")
            .replace("| `server.meta` | `{}` | |\n", "");
        assert_eq!(
            check_architecture_table(&drifted, "demo", &defaults),
            [
                "ARCHITECTURE.md gives `server.timeout` the default `11`; the code's is `10`",
                "ARCHITECTURE.md does not list `server.meta` for demo",
            ]
        );
    }

    #[test]
    fn a_file_in_the_documented_style_passes() {
        assert_eq!(
            check_example::<Config>(GOOD, &["server.listen"]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn drift_in_the_file_is_named() {
        let drifted = GOOD
            .replace("timeout = 10", "timeout = 11")
            .replace("# id =", "# ident =");
        assert_eq!(
            check_example::<Config>(&drifted, &["server.listen"]),
            [
                "the file names `server.ident`, which is not a key",
                "`server.timeout` is set to 11 in the file, but its default is 10",
                "`server.id` is missing from the file",
            ]
        );
        assert_eq!(
            check_example::<Config>(GOOD, &[]),
            [
                "`server.listen` is set to \"127.0.0.1:0\" in the file, but its default is \
                 \"127.0.0.1:8080\""
            ]
        );
    }

    #[test]
    fn the_readme_row_must_name_every_key() {
        let keys: BTreeSet<String> = ["a.x", "a.y", "b.z"].map(String::from).into();
        let readme = "| file | binary | keys |\n|---|---|---|\n| f | `bin` | `a.*`, `b.z` |\n";
        assert_eq!(check_readme_row(readme, "bin", &keys), Vec::<String>::new());
        let readme = "| f | `bin` | `a.x`, `b.w`, batching |\n";
        assert_eq!(
            check_readme_row(readme, "bin", &keys),
            [
                "README.md lists \"`b.w`\" for `bin`, which is not a key",
                "README.md lists \"batching\" for `bin`, which is not a key",
                "README.md does not list `a.y` for `bin`",
                "README.md does not list `b.z` for `bin`",
            ]
        );
    }
}
