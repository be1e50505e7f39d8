//! The project's own binaries (data-server, api-server, archiver) for tests that run them as
//! real processes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Result, bail};

use crate::bins::{target_dir, workspace_root};

/// Path of the project binary `name` in `target/debug`, building every workspace binary first
/// (once per test process; a no-op when they are fresh). Safe inside `cargo test`: cargo
/// releases its build lock before running tests.
pub fn project_bin(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "--workspace", "--bins", "--quiet"])
                .status()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "cargo build --workspace --bins failed with {status}"
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    let path = target_dir().join("debug").join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist after building the workspace binaries",
            path.display()
        );
    }
    Ok(path)
}
