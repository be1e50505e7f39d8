//! Loading a TOML config file into any serde type, with environment and `--set` overrides.
//!
//! The file is parsed into a TOML table, the overrides are merged into that table (file < env <
//! flags), and serde then deserializes the result once, tracked by `serde_path_to_error` so that
//! every problem can name its key. Merging before deserializing keeps one code path and one
//! message shape for every source; only the origin in front of the message differs.

mod error;
mod overrides;

use std::ffi::OsString;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use error::describe_serde_error;
pub use error::{
    CONFIG_ERROR_EXIT_CODE, ConfigError, ConfigErrorKind, Invalid, Origin, Validate,
    exit_on_config_error,
};
use overrides::Override;

/// The config flags every binary shares: `-c/--config FILE` and repeatable `--set KEY=VALUE`.
///
/// Flatten it into the binary's clap parser with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
// Without this, a binary with no doc comment of its own would show this type's doc as its
// `--help` description.
#[command(about = None, long_about = None)]
pub struct ConfigArgs {
    /// TOML config file (without one, the defaults apply)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key, `section.key=value` (repeatable; beats the file and the
    /// environment)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// A loader for these flags: the `-c` file is required when given, and variables named
    /// `<env_prefix>__SECTION__KEY` override the file.
    pub fn loader(&self, env_prefix: &str) -> ConfigLoader {
        let loader = ConfigLoader::new(env_prefix).set(self.set.iter().cloned());
        match &self.config {
            Some(path) => loader.file(path),
            None => loader,
        }
    }
}

/// Builds a configuration from a TOML file, environment variables and `--set` flags.
///
/// Precedence: defaults (serde's) < file < environment < flags. Values from the environment or
/// flags are read as TOML when they parse as TOML (`5`, `true`, `["a:1","b:2"]`, `"text"`),
/// else as plain strings (`5s`, `127.0.0.1:9000`); a value of the wrong type is retried as a
/// string, then as a comma-separated list (`a:1,b:2`).
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    env_prefix: String,
    file: Option<PathBuf>,
    file_optional: bool,
    flags: Vec<String>,
    // None reads the process environment; tests inject theirs, since setting process
    // variables is unsafe with threads (and this crate forbids unsafe).
    env: Option<Vec<(OsString, OsString)>>,
}

impl ConfigLoader {
    /// A loader reading variables named `<env_prefix>__SECTION__KEY` (an empty prefix reads
    /// none), with no file and no flags yet.
    pub fn new(env_prefix: impl Into<String>) -> Self {
        ConfigLoader {
            env_prefix: env_prefix.into(),
            file: None,
            file_optional: false,
            flags: Vec::new(),
            env: None,
        }
    }

    /// Reads this TOML file, which must exist.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self.file_optional = false;
        self
    }

    /// Reads this TOML file if it exists; when it does not, the defaults apply.
    pub fn optional_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self.file_optional = true;
        self
    }

    /// Adds `key.path=value` overrides, applied in order after the environment.
    pub fn set<I, S>(mut self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.flags.extend(flags.into_iter().map(Into::into));
        self
    }

    /// Uses these variables instead of the process environment (for tests).
    pub fn with_env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Reads, merges, deserializes and validates the configuration.
    ///
    /// The error is one line naming where the bad value came from, its key and the problem;
    /// see [`exit_on_config_error`].
    pub fn load<T: DeserializeOwned + Validate>(&self) -> Result<T, ConfigError> {
        let (base, table) = self.read_file()?;
        self.load_table(base, table)
    }

    /// Like [`load`](Self::load), with `text` as the file's content (any file set is not read);
    /// errors from the text name [`Origin::Text`]. For callers that already hold the TOML, such
    /// as the fuzz targets, which feed it arbitrary input.
    pub fn load_str<T: DeserializeOwned + Validate>(&self, text: &str) -> Result<T, ConfigError> {
        let table = parse_table(text, &Origin::Text)?;
        self.load_table(Origin::Text, table)
    }

    fn load_table<T: DeserializeOwned + Validate>(
        &self,
        base: Origin,
        mut table: Table,
    ) -> Result<T, ConfigError> {
        let env = self
            .env
            .clone()
            .unwrap_or_else(|| std::env::vars_os().collect());
        let mut all = overrides::from_env(&self.env_prefix, env)?;
        all.extend(overrides::from_flags(&self.flags)?);
        for item in &all {
            item.apply(&mut table, item.value.clone())?;
        }
        let config: T = deserialize(table, &all, &base)?;
        config.validate().map_err(|invalid| {
            let origin = origin_for(invalid.key(), &all, &base);
            let key = Some(invalid.key().to_owned());
            ConfigError::new(
                ConfigErrorKind::Validation,
                origin,
                key,
                invalid.to_string(),
            )
        })?;
        Ok(config)
    }

    fn read_file(&self) -> Result<(Origin, Table), ConfigError> {
        let Some(path) = &self.file else {
            return Ok((Origin::Defaults, Table::new()));
        };
        let origin = Origin::File(path.clone());
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && self.file_optional => {
                return Ok((Origin::Defaults, Table::new()));
            }
            Err(err) => {
                let detail = format!("cannot read the config file ({err})");
                return Err(ConfigError::new(
                    ConfigErrorKind::Read,
                    origin,
                    None,
                    detail,
                ));
            }
        };
        let table = parse_table(&text, &origin)?;
        Ok((origin, table))
    }
}

/// Parses a config file's text into a TOML table; `origin` names it in a syntax error.
fn parse_table(text: &str, origin: &Origin) -> Result<Table, ConfigError> {
    toml::from_str::<Table>(text).map_err(|err| {
        // toml's own Display draws a multi-line snippet; a config error is one line.
        let at = err.span().map_or(0, |span| span.start);
        let (line, column) = line_and_column(text, at);
        let detail = format!("line {line}, column {column}: {}", err.message());
        ConfigError::new(ConfigErrorKind::Syntax, origin.clone(), None, detail)
    })
}

/// One override being re-read as another type after a type error at its key.
struct Retry {
    index: usize,
    rest: std::vec::IntoIter<Value>,
    first: serde_path_to_error::Error<toml::de::Error>,
}

/// Deserializes `table`, retrying overrides whose first reading had the wrong type.
fn deserialize<T: DeserializeOwned>(
    mut table: Table,
    all: &[Override],
    base: &Origin,
) -> Result<T, ConfigError> {
    let mut retry: Option<Retry> = None;
    // Each attempt uses up one alternative reading; the cap only guards against surprises.
    for _ in 0..=4 * all.len() {
        let err = match serde_path_to_error::deserialize(Value::Table(table.clone())) {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let path = key_path(err.path());
        let type_error = err.inner().message().starts_with("invalid type: ");
        let owner = all.iter().rposition(|o| o.dotted() == path);
        let (true, Some(index)) = (type_error, owner) else {
            return Err(convert(&err, all, base));
        };
        if retry.as_ref().is_none_or(|r| r.index != index) {
            let rest = all[index].alternatives().into_iter();
            retry = Some(Retry {
                index,
                rest,
                first: err,
            });
        }
        let current = retry.as_mut().expect("set just above");
        match current.rest.next() {
            Some(value) => all[index].apply(&mut table, value)?,
            // No reading has the right type: report the one the user most likely meant.
            None => return Err(convert(&current.first, all, base)),
        }
    }
    let err = serde_path_to_error::deserialize::<_, T>(Value::Table(table))
        .err()
        .expect("the last attempt failed, so this one fails too");
    Err(convert(&err, all, base))
}

fn convert(
    err: &serde_path_to_error::Error<toml::de::Error>,
    all: &[Override],
    base: &Origin,
) -> ConfigError {
    let path = key_path(err.path());
    let (kind, key, detail) = describe_serde_error(&path, err.inner().message());
    let origin = origin_for(&key, all, base);
    ConfigError::new(kind, origin, Some(key).filter(|k| !k.is_empty()), detail)
}

/// Spells a serde path as config keys are written: `announce.nsqd_tcp_addresses[1]`.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// The override that supplied the value at `key`, else the file: the last override set at
/// `key` or above it, or one below it, which created `key` as a table (`--set serve.listen=…`
/// makes an unknown `serve`).
fn origin_for(key: &str, all: &[Override], base: &Origin) -> Origin {
    let related = |other: &str| is_within(key, other) || is_within(other, key);
    all.iter()
        .rev()
        .find(|o| related(&o.dotted()))
        .map_or_else(|| base.clone(), |o| o.origin.clone())
}

/// Whether `key` is `prefix` or a key inside it (`a.b` is within `a`, `a.b[1]` within `a.b`).
fn is_within(key: &str, prefix: &str) -> bool {
    key == prefix
        || (key.starts_with(prefix) && matches!(key.as_bytes()[prefix.len()], b'.' | b'['))
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
