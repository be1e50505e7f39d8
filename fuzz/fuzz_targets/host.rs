//! The proxy's `Host` validator on arbitrary bytes (invariants in `checks/host.rs`).
#![no_main]

#[path = "../checks/host.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
