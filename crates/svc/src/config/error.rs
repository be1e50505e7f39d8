//! One-line configuration errors, and the validation hook that reports in the same shape.
//!
//! Every error reads `<where>: <key>: <problem>`, where `<where>` is the file, the environment
//! variable or the `--set` flag that supplied the offending value. ARCHITECTURE.md (§4.3, §4.7) promises
//! that a bad config exits with status 2 and one message naming the file, the key and the problem.

use std::fmt;
use std::path::PathBuf;

/// Exit status of a binary whose configuration is bad (ARCHITECTURE.md §4.7).
pub const CONFIG_ERROR_EXIT_CODE: i32 = 2;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The TOML config file.
    File(PathBuf),
    /// TOML text given to [`ConfigLoader::load_str`](crate::ConfigLoader::load_str).
    Text,
    /// No config file was used, so the value is a default (or is missing).
    Defaults,
    /// An environment variable, by name.
    Env(String),
    /// A `--set key=value` flag, by its key (or its whole text when it could not be split).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Defaults => f.write_str("config (no file given)"),
            Origin::Text => f.write_str("config text"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(key) => write!(f, "--set {key}"),
        }
    }
}

/// What kind of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The config file could not be read (missing when required, unreadable).
    Read,
    /// The config file is not valid TOML.
    Syntax,
    /// A `--set` flag or an environment variable could not be applied.
    Override,
    /// A key the configuration does not have.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong type or out of range, as found while deserializing.
    InvalidValue,
    /// A value rejected by [`Validate`] after deserializing.
    Validation,
}

/// A bad configuration, as one line: `<file, env var or flag>: <key>: <problem>`.
///
/// Print it with `error: ` in front, or let [`exit_on_config_error`] do so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {detail}")]
pub struct ConfigError {
    kind: ConfigErrorKind,
    origin: Origin,
    key: Option<String>,
    // Everything after "<origin>: ", already one line; built where the error is made because
    // each kind words it differently (an unknown key names its table, a syntax error its line).
    detail: String,
}

impl ConfigError {
    pub(crate) fn new(
        kind: ConfigErrorKind,
        origin: Origin,
        key: Option<String>,
        detail: String,
    ) -> Self {
        // A value echoed back could hold a newline; the message must stay one line.
        let detail = detail.replace('\n', "\\n");
        ConfigError {
            kind,
            origin,
            key,
            detail,
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The file, environment variable or flag that supplied the offending value.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The dotted key path of the offending value (`announce.interval`, `list[1]`), if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Prints `error: <the one-line message>` to stderr and exits with status 2 (ARCHITECTURE.md §4.7).
pub fn exit_on_config_error(err: ConfigError) -> ! {
    eprintln!("error: {err}");
    std::process::exit(CONFIG_ERROR_EXIT_CODE)
}

/// A value that deserialized fine but is not acceptable, reported by [`Validate`].
///
/// Displays as `<key>: expected <expected>, found <found>`; the loader puts the file (or the
/// override that supplied the value) in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: expected {expected}, found {found}")]
pub struct Invalid {
    key: String,
    expected: String,
    found: String,
}

impl Invalid {
    /// A problem with the value at the dotted `key` path (e.g. `announce.interval`).
    ///
    /// `found` is shown as given: quote strings yourself (`format!("{s:?}")`), and add the
    /// reason in parentheses when it helps, e.g. `"0s" (must be > 0)`.
    pub fn new(
        key: impl Into<String>,
        expected: impl fmt::Display,
        found: impl fmt::Display,
    ) -> Self {
        Invalid {
            key: key.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// The dotted key path.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What an acceptable value looks like.
    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// What was found instead.
    pub fn found(&self) -> &str {
        &self.found
    }
}

/// Checks that a deserialized configuration makes sense as a whole, after serde is done.
///
/// The loader calls it once and reports the [`Invalid`] it returns in the usual one-line form.
/// Types with nothing to check can rely on the default: `impl Validate for MyConfig {}`.
pub trait Validate {
    /// `Ok(())` when the configuration is usable, else the first problem found.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// Rewrites one of serde's messages (deserializing at `path`) into the one-line detail and
/// the key to report. serde words errors as "invalid type: X, expected Y"; ours say
/// "expected Y, found X", and unknown keys should name their table.
pub(crate) fn describe_serde_error(path: &str, message: &str) -> (ConfigErrorKind, String, String) {
    let names = backticked(message);
    if message.starts_with("unknown field `") {
        let (table, unknown) = match path.rsplit_once('.') {
            Some((parent, last)) => (format!("in [{parent}]"), last),
            None => ("at the top level".to_owned(), path),
        };
        let unknown = names.first().map_or(unknown, String::as_str);
        let allowed = match &names[1.min(names.len())..] {
            [] => "no keys are allowed there".to_owned(),
            rest => format!("expected one of: {}", rest.join(", ")),
        };
        let detail = format!("unknown key {unknown:?} {table} ({allowed})");
        return (ConfigErrorKind::UnknownKey, path.to_owned(), detail);
    }
    if let (true, Some(field)) = (message.starts_with("missing field `"), names.first()) {
        let key = join_key(path, field);
        let detail = format!("{key}: missing required key");
        return (ConfigErrorKind::MissingKey, key, detail);
    }
    let problem = if message.starts_with("unknown variant `") && !names.is_empty() {
        let found = &names[0];
        match &names[1..] {
            [] => format!("found {found:?}, but no values are allowed"),
            [only] => format!("expected {only}, found {found:?}"),
            many => format!("expected one of: {}, found {found:?}", many.join(", ")),
        }
    } else if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        match rest.split_once(", expected ") {
            Some((found, expected)) => {
                format!("expected {expected}, found {}", found.replace('`', ""))
            }
            None => message.to_owned(),
        }
    } else if let Some(rest) = message.strip_prefix("invalid length ") {
        match rest.split_once(", expected ") {
            Some((len, expected)) => format!("expected {expected}, found {len} elements"),
            None => message.to_owned(),
        }
    } else {
        // Our own types (durations, host:port, fractions) already say "expected …, found …".
        message.to_owned()
    };
    let detail = if path.is_empty() {
        problem
    } else {
        format!("{path}: {problem}")
    };
    (ConfigErrorKind::InvalidValue, path.to_owned(), detail)
}

/// `a.b` + `c` = `a.b.c`; the empty path is the top level.
pub(crate) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The words serde puts between backticks, in order.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_its_table_and_the_allowed_keys() {
        let (kind, key, detail) = describe_serde_error(
            "announce.intervall",
            "unknown field `intervall`, expected one of `topic`, `interval`",
        );
        assert_eq!(kind, ConfigErrorKind::UnknownKey);
        assert_eq!(key, "announce.intervall");
        assert_eq!(
            detail,
            r#"unknown key "intervall" in [announce] (expected one of: topic, interval)"#
        );
        let (_, _, detail) = describe_serde_error("x", "unknown field `x`, there are no fields");
        assert_eq!(
            detail,
            r#"unknown key "x" at the top level (no keys are allowed there)"#
        );
    }

    #[test]
    fn wrong_type_says_expected_then_found() {
        let (kind, key, detail) =
            describe_serde_error("server.port", "invalid type: string \"a\", expected u16");
        assert_eq!(kind, ConfigErrorKind::InvalidValue);
        assert_eq!(key, "server.port");
        assert_eq!(detail, r#"server.port: expected u16, found string "a""#);
        let (_, _, detail) =
            describe_serde_error("p", "invalid value: integer `70000`, expected u16");
        assert_eq!(detail, "p: expected u16, found integer 70000");
        let (_, _, detail) =
            describe_serde_error("t", "invalid length 3, expected a tuple of size 2");
        assert_eq!(detail, "t: expected a tuple of size 2, found 3 elements");
    }

    #[test]
    fn unknown_variant_and_missing_key() {
        let (_, _, detail) = describe_serde_error(
            "balancer.strategy",
            "unknown variant `p2cc`, expected one of `p2c`, `round_robin`, `random`",
        );
        assert_eq!(
            detail,
            r#"balancer.strategy: expected one of: p2c, round_robin, random, found "p2cc""#
        );
        let (kind, key, detail) = describe_serde_error("server", "missing field `listen`");
        assert_eq!(kind, ConfigErrorKind::MissingKey);
        assert_eq!(key, "server.listen");
        assert_eq!(detail, "server.listen: missing required key");
    }

    #[test]
    fn origins_and_invalid_display() {
        let err = ConfigError::new(
            ConfigErrorKind::Validation,
            Origin::Env("X__A".into()),
            Some("a".into()),
            "a: bad\nvalue".into(),
        );
        assert_eq!(err.to_string(), "environment variable X__A: a: bad\\nvalue");
        assert_eq!(Origin::Flag("a.b".into()).to_string(), "--set a.b");
        let invalid = Invalid::new("a.b", "a positive number", 0);
        assert_eq!(
            invalid.to_string(),
            "a.b: expected a positive number, found 0"
        );
    }
}
