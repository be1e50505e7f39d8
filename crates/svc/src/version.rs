//! The text behind every binary's `--version`.

use std::sync::OnceLock;

/// The workspace version, shared by every binary (they inherit `version.workspace`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from, when the build said (`NSQ_DISCOVERY_COMMIT` in the
/// environment of `cargo build`; the `Dockerfile` takes it as a build argument); `None` otherwise.
pub fn commit() -> Option<&'static str> {
    option_env!("NSQ_DISCOVERY_COMMIT").filter(|c| !c.trim().is_empty())
}

/// `--version` (and `-V`) text: the version, the commit when known, the target and the build
/// profile, e.g. `0.1.0 (x86_64-linux, release build)` or `0.1.0 (1a2b3c4d5e6f, x86_64-linux,
/// release build)`. The profile is there because a debug build is an
/// order of magnitude slower, which matters when someone reports a benchmark.
///
/// For clap: `#[command(version = svc::long_version())]`.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let commit = commit().map(|c| format!("{c}, ")).unwrap_or_default();
        format!(
            "{VERSION} ({commit}{}-{}, {profile} build)",
            std::env::consts::ARCH,
            std::env::consts::OS
        )
    })
}

/// The end of every binary's `--help`: where settings come from (file, environment, `--set`, with
/// `example`, one of the binary's own keys), and the logging variables `RUST_LOG` and `LOG_FORMAT`.
///
/// For clap: `#[command(after_help = svc::help_footer("API_SERVER", "discovery.ttl=10s"))]`.
pub fn help_footer(env_prefix: &str, example: &str) -> String {
    let (key, value) = example.split_once('=').unwrap_or((example, ""));
    let variable = format!(
        "{env_prefix}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    );
    format!(
        "Configuration: defaults < -c FILE < environment < --set. Any key of the file can be set in \
         the environment as {env_prefix}__SECTION__KEY (e.g. {variable}={value}) or with \
         --set section.key=value (e.g. --set {example}).\n\n\
         Environment:\n  \
         RUST_LOG     log filter, e.g. \"info\" or \"info,discovery=debug\" (default: info)\n  \
         LOG_FORMAT   \"text\" (default) or \"json\": one JSON object per line on stderr"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_starts_with_the_crate_version() {
        let text = long_version();
        assert!(text.starts_with(&format!("{VERSION} (")), "{text}");
        assert!(text.ends_with(" build)"), "{text}");
        assert!(std::ptr::eq(text, long_version()), "computed once");
    }

    #[test]
    fn help_footer_names_the_variables() {
        let footer = help_footer("API_SERVER", "discovery.ttl=10s");
        assert!(
            footer.contains("API_SERVER__DISCOVERY__TTL=10s"),
            "{footer}"
        );
        assert!(footer.contains("--set discovery.ttl=10s"), "{footer}");
        assert!(
            footer.contains("RUST_LOG") && footer.contains("LOG_FORMAT"),
            "{footer}"
        );
    }
}
