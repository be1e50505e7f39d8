//! Invariants of the NSQ frame decoder on arbitrary bytes, shared by the `frame` fuzz target and
//! the stable corpus test in `crates/nsq/tests/fuzz_corpus.rs`.
//!
//! Never panics; a frame never claims more bytes than were given and decodes the same from
//! exactly its own bytes (one byte fewer is `Incomplete`); the stream decodes to the same frames
//! whether it arrives whole or in two pieces.

use bytes::BytesMut;
use nsq::frame::{Decoded, decode, decode_from};

const MAX: usize = 64 * 1024;

/// Checks every invariant on `data`; panics on a violation.
pub fn check(data: &[u8]) {
    if let Ok(Decoded::Frame(frame, n)) = decode(data, MAX) {
        assert!(n <= data.len(), "consumed {n} of {} bytes", data.len());
        assert_eq!(decode(&data[..n], MAX).ok(), Some(Decoded::Frame(frame, n)));
        assert_eq!(decode(&data[..n - 1], MAX).ok(), Some(Decoded::Incomplete));
    }

    let mut whole = BytesMut::from(data);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = decode_from(&mut whole, MAX) {
        frames.push(f);
    }

    let Some(split) = data.first().map(|b| *b as usize % (data.len() + 1)) else {
        return;
    };
    let mut buf = BytesMut::from(&data[..split]);
    let mut pieces = Vec::new();
    loop {
        match decode_from(&mut buf, MAX) {
            Ok(Some(f)) => pieces.push(f),
            Ok(None) => break,
            // An error in the first piece is also one in the whole stream: nothing to compare.
            Err(_) => return,
        }
    }
    buf.extend_from_slice(&data[split..]);
    while let Ok(Some(f)) = decode_from(&mut buf, MAX) {
        pieces.push(f);
    }
    assert_eq!(pieces, frames);
}
