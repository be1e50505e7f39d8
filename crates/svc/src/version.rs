//! The text behind every binary's `--version`.

use std::sync::OnceLock;

/// The workspace version, shared by every binary (they inherit `version.workspace`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `--version` text: the version, the target and the build profile, e.g.
/// `0.1.0 (x86_64-linux, release build)`. The profile is there because a debug build is an
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
        format!(
            "{VERSION} ({}-{}, {profile} build)",
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
