//! Invariants of the proxy's chunked-body parser on arbitrary bytes, shared by the `chunked` fuzz target and the
//! stable corpus replay in `crates/proxy/tests/fuzz_corpus.rs`.
//!
//! The first byte chooses where the rest is split in two; the parser must give the same answer however its input
//! arrives (a proxy that frames a body differently depending on TCP segmentation can be made to smuggle requests).

use proxy::h1::ChunkedParser;

/// What parsing all of an input said.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    consumed: usize,
    data: Vec<u8>,
    done: bool,
    error: bool,
}

fn parse(parts: &[&[u8]]) -> Outcome {
    let mut parser = ChunkedParser::default();
    let mut outcome = Outcome {
        consumed: 0,
        data: Vec::new(),
        done: false,
        error: false,
    };
    for part in parts {
        if outcome.done {
            break;
        }
        match parser.advance(part, |d| outcome.data.extend_from_slice(d)) {
            Ok(n) => {
                assert!(n <= part.len(), "consumed {n} of {} bytes", part.len());
                assert!(
                    n == part.len() || parser.done(),
                    "stopped at {n} of {} bytes without finishing",
                    part.len()
                );
                outcome.consumed += n;
                outcome.done = parser.done();
            }
            Err(_) => {
                outcome.error = true;
                break;
            }
        }
    }
    outcome
}

/// Checks one input.
pub fn check(input: &[u8]) {
    let Some((&split, body)) = input.split_first() else {
        return;
    };
    let whole = parse(&[body]);
    let at = usize::from(split).min(body.len());
    let (a, b) = body.split_at(at);
    let parts = parse(&[a, b]);
    if whole.error {
        // An error may only be found later when the input comes in parts, never not at all.
        assert!(parts.error, "split at {at}: {parts:?}, whole input failed");
        return;
    }
    assert_eq!(whole, parts, "split at {at}");
    assert!(whole.data.len() <= whole.consumed, "{whole:?}");
    if whole.done {
        // The data again as one chunk parses to the same data.
        let mut again = format!("{:x}\r\n", whole.data.len()).into_bytes();
        again.extend_from_slice(&whole.data);
        again.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut single = Vec::new();
        if !whole.data.is_empty() {
            let mut p = ChunkedParser::default();
            let n = p
                .advance(&again, |d| single.extend_from_slice(d))
                .expect("a well-formed body");
            assert!(p.done() && n == again.len());
            assert_eq!(single, whole.data);
        }
    }
}
