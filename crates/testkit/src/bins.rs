//! Where the NSQ binaries come from (ARCHITECTURE.md §4.9), in this order:
//! 1. the directory named by `NSQ_BIN_DIR`;
//! 2. `nsqd` and the other programs on `PATH`;
//! 3. `target/nsq/bin/`, built from `tools/nsq` with the Go toolchain when it is missing or stale.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// The NSQ release `tools/nsq` pins; the build stamp records it.
pub const NSQ_VERSION: &str = "v1.3.0";

/// Every program `tools/nsq` builds.
pub const NSQ_PROGRAMS: [&str; 7] = [
    "nsqd",
    "nsqlookupd",
    "nsqadmin",
    "to_nsq",
    "nsq_tail",
    "bench_reader",
    "bench_writer",
];

/// Go package path of each program, in the order of [`NSQ_PROGRAMS`].
const GO_PACKAGES: [&str; 7] = [
    "github.com/nsqio/nsq/apps/nsqd",
    "github.com/nsqio/nsq/apps/nsqlookupd",
    "github.com/nsqio/nsq/apps/nsqadmin",
    "github.com/nsqio/nsq/apps/to_nsq",
    "github.com/nsqio/nsq/apps/nsq_tail",
    "github.com/nsqio/nsq/bench/bench_reader",
    "github.com/nsqio/nsq/bench/bench_writer",
];

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit sits two levels below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The directory `cargo xtask nsq` builds into.
pub fn built_bin_dir() -> PathBuf {
    target_dir().join("nsq").join("bin")
}

/// The directory holding every NSQ program, found in the order of ARCHITECTURE.md §4.9; builds
/// `target/nsq/bin/` when neither `NSQ_BIN_DIR` nor `PATH` has them. The answer is computed
/// once per process.
pub fn nsq_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Full path of one NSQ program.
pub fn nsq_bin(program: &str) -> Result<PathBuf> {
    Ok(nsq_bin_dir()?.join(program))
}

fn has_all(dir: &Path) -> bool {
    NSQ_PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

fn locate() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NSQ_BIN_DIR") {
        let dir = PathBuf::from(dir);
        let missing: Vec<_> = NSQ_PROGRAMS
            .iter()
            .filter(|p| !dir.join(p).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "NSQ_BIN_DIR={} lacks {:?}; unset it to build NSQ from tools/nsq, or point it at a directory holding {:?}",
                dir.display(),
                missing,
                NSQ_PROGRAMS
            );
        }
        return Ok(dir);
    }
    if let Some(dir) = on_path() {
        return Ok(dir);
    }
    build_nsq(false)
}

/// The first `PATH` entry that holds every program.
fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find(|dir| has_all(dir))
}

/// What the build stamp holds: the pinned version and the exact module files it was built from.
fn stamp_contents(tools: &Path) -> Result<String> {
    let go_mod = std::fs::read_to_string(tools.join("go.mod"))
        .with_context(|| format!("reading {}", tools.join("go.mod").display()))?;
    let go_sum = std::fs::read_to_string(tools.join("go.sum")).unwrap_or_default();
    Ok(format!(
        "{NSQ_VERSION}\n{:016x}\n",
        fnv1a(go_mod.as_bytes()) ^ fnv1a(go_sum.as_bytes()).rotate_left(1)
    ))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds the seven programs into `target/nsq/bin/` unless a build for the pinned version is
/// already there (or `force`). Safe to call from several processes at once: each builds into
/// its own directory and the first complete build wins the rename.
pub fn build_nsq(force: bool) -> Result<PathBuf> {
    let tools = workspace_root().join("tools").join("nsq");
    let out = built_bin_dir();
    let stamp_path = out.join(".stamp");
    let stamp = stamp_contents(&tools)?;
    if !force
        && has_all(&out)
        && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        return Ok(out);
    }
    let go = which("go").ok_or_else(|| {
        anyhow::anyhow!(
            "NSQ binaries not found and no Go toolchain to build them. Either: (1) set NSQ_BIN_DIR to a \
             directory holding {programs:?}; (2) put those programs on PATH; or (3) install Go (1.21+) so \
             that `cargo xtask nsq` (and the tests, on demand) can build them from tools/nsq into {out}",
            programs = NSQ_PROGRAMS,
            out = out.display()
        )
    })?;
    let parent = out.parent().expect("bin dir has a parent");
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!("bin.building.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    eprintln!(
        "building NSQ {NSQ_VERSION} from {} into {} (first time only)",
        tools.display(),
        out.display()
    );
    let mut dest = staging.as_os_str().to_owned();
    dest.push("/");
    let status = Command::new(go)
        .current_dir(&tools)
        .arg("build")
        .arg("-trimpath")
        .arg("-o")
        .arg(&dest)
        .args(GO_PACKAGES)
        .env("CGO_ENABLED", "0")
        .status()
        .context("running `go build` in tools/nsq")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("`go build` in {} failed with {status}", tools.display());
    }
    std::fs::write(staging.join(".stamp"), &stamp)?;
    // Replace any stale build; if another process finished first, keep its copy.
    if out.exists() && std::fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str())
    {
        let _ = std::fs::remove_dir_all(&out);
    }
    if std::fs::rename(&staging, &out).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if !has_all(&out) {
        bail!(
            "NSQ build finished but {} lacks some of {NSQ_PROGRAMS:?}",
            out.display()
        );
    }
    Ok(out)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
