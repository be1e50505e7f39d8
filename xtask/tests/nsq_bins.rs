//! How `cargo xtask nsq` finds or builds the NSQ programs, as a user runs it.

use std::process::Command;

#[test]
fn without_go_or_binaries_one_error_names_the_three_options() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("nsq")
        .env("PATH", empty.path()) // no go, no nsqd
        .env("CARGO_TARGET_DIR", empty.path().join("target")) // nothing built
        .env_remove("NSQ_BIN_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["NSQ_BIN_DIR", "PATH", "Go", "tools/nsq"] {
        assert!(err.contains(needle), "error names {needle}: {err}");
    }
}

#[test]
fn prints_the_directory_holding_all_seven_programs() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("nsq")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8(out.stdout).unwrap();
    let dir = std::path::Path::new(dir.trim());
    for program in testkit::NSQ_PROGRAMS {
        assert!(
            dir.join(program).is_file(),
            "{program} in {}",
            dir.display()
        );
    }
}
