//! The text behind every binary's `--version`.

use std::sync::OnceLock;

/// The workspace version, shared by every binary (they inherit `version.workspace`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from, when the build said (`NSQ_DISCOVERY_COMMIT` in the
/// environment of `cargo build`, as the `Dockerfile` and `cargo xtask` set it); `None` otherwise.
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
}
