//! The NSQ frame decoder on arbitrary bytes: never panics, never consumes a partial frame,
//! and agrees with itself whether the stream arrives whole or in two pieces.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nsq::frame::{Decoded, decode, decode_from};

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, MAX);
    let mut whole = BytesMut::from(data);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = decode_from(&mut whole, MAX) {
        frames.push(f);
    }
    if let Some(split) = data.first().map(|b| *b as usize % (data.len() + 1)) {
        let mut b = BytesMut::from(&data[..split]);
        let mut pieces = Vec::new();
        let mut failed = false;
        loop {
            match decode_from(&mut b, MAX) {
                Ok(Some(f)) => pieces.push(f),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            b.extend_from_slice(&data[split..]);
            while let Ok(Some(f)) = decode_from(&mut b, MAX) {
                pieces.push(f);
            }
            assert_eq!(pieces, frames);
        }
    }
    if let Ok(Decoded::Frame(_, n)) = decode(data, MAX) {
        assert!(n <= data.len());
    }
});
