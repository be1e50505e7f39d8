//! The heartbeat decoder and signature checks on arbitrary bytes (invariants in
//! `checks/heartbeat.rs`).
#![no_main]

#[path = "../checks/heartbeat.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
