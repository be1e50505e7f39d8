//! Process-wide `tracing` setup: `RUST_LOG` filtering, human or JSON-lines output on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Reads `LOG_FORMAT`: `json` for [`LogFormat::Json`]; unset, empty, `text` or `human` for
    /// [`LogFormat::Human`]; anything else is an error naming the accepted values.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var("LOG_FORMAT").ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("" | "text" | "human") => Ok(LogFormat::Human),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            Some(other) => Err(format!(
                "LOG_FORMAT: expected \"json\" or \"text\", found {other:?}; using text"
            )),
        }
    }
}

/// Installs the global subscriber: filter from `RUST_LOG` when set, else `default_filter`
/// (e.g. `"info,svc=debug"`); format from `LOG_FORMAT` (see [`LogFormat::from_env`]).
///
/// Returns whether this call installed it: a second call (tests, or a binary calling it twice)
/// is harmless and returns `false`. Logs go to stderr so that stdout stays free for output a
/// command is asked for.
pub fn init_tracing(default_filter: &str) -> bool {
    // Problems are logged once the subscriber exists, rather than lost or printed unformatted.
    let mut problems = Vec::new();
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|err| {
            problems.push(format!(
                "RUST_LOG: expected a filter like \"info,svc=debug\", found {spec:?} ({err}); using {default_filter:?}"
            ));
            fallback_filter(default_filter)
        }),
        _ => fallback_filter(default_filter),
    };
    let format = LogFormat::from_env().unwrap_or_else(|problem| {
        problems.push(problem);
        LogFormat::Human
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .is_ok(),
        // Flattened, so that `message` and the event's fields are top-level keys.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
            .is_ok(),
    };
    if installed {
        for problem in problems {
            tracing::warn!("{problem}");
        }
    }
    installed
}

fn fallback_filter(default_filter: &str) -> EnvFilter {
    // A bad built-in default is a programming error, but logging must still work.
    EnvFilter::try_new(default_filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_values() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Human));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Human));
        assert_eq!(LogFormat::parse(Some("JSON")), Ok(LogFormat::Json));
        let err = LogFormat::parse(Some("xml")).unwrap_err();
        assert_eq!(
            err,
            r#"LOG_FORMAT: expected "json" or "text", found "xml"; using text"#
        );
    }

    #[test]
    fn init_twice_is_harmless() {
        let first = init_tracing("info");
        let second = init_tracing("debug");
        // Another test may have installed it first; at most one call can win.
        assert!(!(first && second));
        assert!(!second);
        tracing::info!("logging works after a second init");
    }
}
