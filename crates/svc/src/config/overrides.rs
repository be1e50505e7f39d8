//! Overrides from the environment (`PREFIX__SECTION__KEY=value`) and from `--set key.path=value`,
//! merged into the parsed file before serde sees it, so that one deserialization (and one kind
//! of error message) covers every source.

use std::ffi::OsString;

use toml::{Table, Value};

use super::error::{ConfigError, ConfigErrorKind, Origin};

/// One key set from outside the file.
#[derive(Debug, Clone)]
pub(crate) struct Override {
    /// The key path, one segment per table level.
    pub(crate) key: Vec<String>,
    /// The text as given, kept to retry it as another type (see [`Override::alternatives`]).
    pub(crate) raw: String,
    /// The value currently merged into the table.
    pub(crate) value: Value,
    pub(crate) origin: Origin,
}

impl Override {
    fn new(key: Vec<String>, raw: String, origin: Origin) -> Self {
        let value = parse_value(&raw);
        Override {
            key,
            raw,
            value,
            origin,
        }
    }

    /// The dotted key path, as serde_path_to_error spells it.
    pub(crate) fn dotted(&self) -> String {
        self.key.join(".")
    }

    /// Other readings of the raw text to try, in order, when the first reading has the wrong
    /// type: `id=123` meant the string "123", and `list=a:1,b:2` meant a list. The type is only
    /// known to serde, so the loader asks for these one at a time after a type error.
    pub(crate) fn alternatives(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.value.is_str() {
            out.push(Value::String(self.raw.clone()));
        }
        if !self.value.is_array() && !self.raw.trim().is_empty() {
            let items = self.raw.split(',').map(|item| parse_value(item.trim()));
            out.push(Value::Array(items.collect()));
        }
        out
    }

    /// Puts `value` at this override's key path in `root`, creating tables on the way.
    pub(crate) fn apply(&self, root: &mut Table, value: Value) -> Result<(), ConfigError> {
        let Some((last, parents)) = self.key.split_last() else {
            unreachable!("override keys are checked to be non-empty when parsed");
        };
        let mut table = root;
        for (depth, segment) in parents.iter().enumerate() {
            let slot = table
                .entry(segment.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            table = match slot {
                Value::Table(inner) => inner,
                other => {
                    let prefix = self.key[..=depth].join(".");
                    let detail = format!(
                        "{}: expected {prefix} to be a table, found {} {other}",
                        self.dotted(),
                        other.type_str(),
                    );
                    return Err(self.error(detail));
                }
            };
        }
        table.insert(last.clone(), value);
        Ok(())
    }

    fn error(&self, detail: String) -> ConfigError {
        let key = Some(self.dotted());
        ConfigError::new(ConfigErrorKind::Override, self.origin.clone(), key, detail)
    }
}

/// Reads `raw` as a TOML value when it is one (`5`, `true`, `["a:1"]`, `"quoted"`), else as the
/// plain string it is (`5s`, `127.0.0.1:9000`), so that env vars need no TOML quoting.
pub(crate) fn parse_value(raw: &str) -> Value {
    // A one-key document lets TOML's own grammar decide; a raw text smuggling in a second key
    // (`1\nother = 2`) yields two and is taken literally instead.
    match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut doc) if doc.len() == 1 => doc
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        _ => Value::String(raw.to_owned()),
    }
}

/// The overrides among `vars` named `<prefix>__A__B…`, for key `a.b…`, shallow keys first so
/// that `P__SERVER__LISTEN` still wins over a whole `P__SERVER={…}` table.
pub(crate) fn from_env(
    prefix: &str,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Override>, ConfigError> {
    if prefix.is_empty() {
        return Ok(Vec::new());
    }
    let wanted = format!("{prefix}__");
    let mut found = Vec::new();
    for (name, value) in vars {
        // Names that are not UTF-8 cannot start with our (UTF-8) prefix.
        let Some(name) = name.to_str() else { continue };
        let Some(path) = name.strip_prefix(&wanted) else {
            continue;
        };
        let origin = Origin::Env(name.to_owned());
        let key: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if key.iter().any(String::is_empty) {
            let detail = format!(
                "expected a name like {wanted}SECTION__KEY, found an empty key segment in {name:?}"
            );
            return Err(ConfigError::new(
                ConfigErrorKind::Override,
                origin,
                None,
                detail,
            ));
        }
        let Ok(raw) = value.into_string() else {
            let detail = format!("{}: expected UTF-8 text, found other bytes", key.join("."));
            return Err(ConfigError::new(
                ConfigErrorKind::Override,
                origin,
                None,
                detail,
            ));
        };
        found.push(Override::new(key, raw, origin));
    }
    found.sort_by_cached_key(|o| (o.key.len(), o.origin.to_string()));
    Ok(found)
}

/// Parses `--set key.path=value` flags, kept in the order given (the last one wins).
pub(crate) fn from_flags(flags: &[String]) -> Result<Vec<Override>, ConfigError> {
    flags
        .iter()
        .map(|flag| {
            let parsed = flag.split_once('=').and_then(|(key, raw)| {
                let key: Vec<String> = key.trim().split('.').map(|s| s.trim().to_owned()).collect();
                let complete = key.iter().all(|segment| !segment.is_empty());
                complete.then(|| (key, raw.to_owned()))
            });
            match parsed {
                Some((key, raw)) => {
                    let origin = Origin::Flag(key.join("."));
                    Ok(Override::new(key, raw, origin))
                }
                None => Err(ConfigError::new(
                    ConfigErrorKind::Override,
                    Origin::Flag(flag.clone()),
                    None,
                    format!("expected key.path=value, found {flag:?}"),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn values_are_toml_when_they_parse_else_plain_strings() {
        assert_eq!(parse_value("5"), Value::Integer(5));
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(parse_value("0.5"), Value::Float(0.5));
        assert_eq!(parse_value("\"5\""), Value::String("5".into()));
        assert_eq!(parse_value("5s"), Value::String("5s".into()));
        assert_eq!(
            parse_value("127.0.0.1:9000"),
            Value::String("127.0.0.1:9000".into())
        );
        assert_eq!(
            parse_value("1\nother = 2"),
            Value::String("1\nother = 2".into())
        );
        assert_eq!(parse_value(""), Value::String(String::new()));
        let list = parse_value(r#"["a:1","b:2"]"#);
        assert_eq!(list, Value::Array(vec!["a:1".into(), "b:2".into()]));
    }

    #[test]
    fn env_names_map_to_lowercase_key_paths() {
        let vars = env(&[
            ("DATA_SERVER__SERVER__LISTEN", "127.0.0.1:9000"),
            ("DATA_SERVER__ANNOUNCE__NSQD_TCP_ADDRESSES", "[]"),
            ("DATA_SERVERX__IGNORED", "1"),
            ("OTHER", "1"),
        ]);
        let found = from_env("DATA_SERVER", vars).unwrap();
        let keys: Vec<String> = found.iter().map(Override::dotted).collect();
        assert_eq!(keys, ["announce.nsqd_tcp_addresses", "server.listen"]);
    }

    #[test]
    fn bad_env_names_and_flags_are_reported() {
        let err = from_env("P", env(&[("P__A____B", "1")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"environment variable P__A____B: expected a name like P__SECTION__KEY, found an empty key segment in "P__A____B""#
        );
        let err = from_flags(&["announce.interval".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"--set announce.interval: expected key.path=value, found "announce.interval""#
        );
        assert!(from_flags(&["a..b=1".to_owned()]).is_err());
        let ok = from_flags(&["a.b=x=y".to_owned()]).unwrap();
        assert_eq!(ok[0].value, Value::String("x=y".into()));
    }

    #[test]
    fn apply_refuses_to_descend_into_a_non_table() {
        let mut root: Table = toml::from_str("server = \"x\"").unwrap();
        let flag = &from_flags(&["server.listen=1".to_owned()]).unwrap()[0];
        let err = flag.apply(&mut root, flag.value.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"--set server.listen: server.listen: expected server to be a table, found string "x""#
        );
    }
}
