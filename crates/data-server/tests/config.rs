//! Every bad configuration exits with status 2 and one line naming the file (or variable or
//! flag), the key and what was expected.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("data-server runs")
}

/// Asserts exit status 2 and one stderr line containing every `needle`.
fn assert_config_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from {stderr}");
    }
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("data-server.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn bad_config_files_exit_2_naming_file_key_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 6] = [
        (
            "[server]\nlisten_addr = \"127.0.0.1:0\"\n",
            &["listen_addr", "expected one of", "listen"],
        ),
        (
            "[anounce]\ninterval = \"5s\"\n",
            &["anounce", "expected one of", "announce"],
        ),
        (
            "[announce]\nnsqd_tcp_addresses = []\n",
            &["announce.nsqd_tcp_addresses", "expected at least one nsqd"],
        ),
        (
            "[server]\nadvertise = \"not-an-address\"\n",
            &["server.advertise", "expected host:port"],
        ),
        (
            "[announce]\ninterval = \"0s\"\n",
            &["announce.interval", "must be > 0"],
        ),
        (
            "[announce]\ninterval = 5\n",
            &["announce.interval", "expected a duration"],
        ),
    ];
    for (text, needles) in cases {
        let file = write(dir.path(), text);
        let output = run(&["-c", &file], &[]);
        let mut all = vec![file.as_str()];
        all.extend_from_slice(needles);
        assert_config_error(&output, &all);
    }
}

#[test]
fn bad_overrides_name_the_flag_or_variable() {
    let output = run(&["--set", "announce.interval=0s"], &[]);
    assert_config_error(&output, &["--set announce.interval", "must be > 0"]);
    let output = run(&[], &[("DATA_SERVER__SERVER__ADVERTISE", "0.0.0.0:80")]);
    assert_config_error(
        &output,
        &[
            "DATA_SERVER__SERVER__ADVERTISE",
            "server.advertise",
            "0.0.0.0:80",
        ],
    );
    let output = run(&["--set", "announce.hmac_key_file=/no/such/key"], &[]);
    assert_config_error(&output, &["announce.hmac_key_file", "/no/such/key"]);
    let output = run(&["-c", "/no/such/config.toml"], &[]);
    assert_config_error(&output, &["/no/such/config.toml"]);
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/data-server.toml");
    // The example points at the key `cargo xtask up` makes; any key file will do here.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("heartbeat.key");
    std::fs::write(&key, "example key\n").unwrap();
    let loaded: data_server::Config = svc::ConfigLoader::new("")
        .file(&example)
        .set([format!("announce.hmac_key_file={}", key.display())])
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.announce.nsqd_tcp_addresses[0].to_string(),
        "127.0.0.1:4150"
    );
}

#[test]
fn version_and_help() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("data-server 0."));
    let output = run(&["sidecar", "--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("--advertise") && help.contains("--health-url"),
        "{help}"
    );
}

/// `config/data-server.toml` and the README's config table name exactly the keys of
/// `data_server::Config`, and every value the file sets is the default, but for the port.
#[test]
fn the_example_file_and_the_readme_match_the_defaults() {
    // Port 0, so that the example runs next to anything on 8080.
    testkit::check_config_docs::<data_server::Config>(
        "data-server",
        &["server.listen", "announce.hmac_key_file"],
    );
}
