//! Arbitrary bytes as the TOML config file of each binary: the api-server, the data-server and
//! the archiver (invariants in `checks/config.rs`).
#![no_main]

#[path = "../checks/config.rs"]
mod check;

// The archiver's config lives in its binary, not its library; compile the same file here.
#[allow(dead_code)]
#[path = "../../crates/archiver/src/cli/config.rs"]
mod archiver_config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check::check::<api_server::Config>(data);
    check::check::<data_server::Config>(data);
    check::check::<archiver_config::Config>(data);
});
