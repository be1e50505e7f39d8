//! The proxy's chunked-body parser on arbitrary bytes (invariants in `checks/chunked.rs`).
#![no_main]

#[path = "../checks/chunked.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
