//! Invariants of the heartbeat decoder and its signing on arbitrary bytes, shared by the
//! `heartbeat` fuzz target and the stable corpus test in `crates/discovery/tests/fuzz_corpus.rs`.
//!
//! Never panics; a key only ever adds a check (whatever decodes with it decodes the same
//! without); a decoded heartbeat re-encodes, in wire and canonical form, to bodies that decode
//! to the same value; signing it makes a body that verifies with that key and no other (by
//! its `kid`, or by trying each key when the `kid` is taken away).

use discovery::{HmacKey, Message, decode};

/// Checks every invariant on `data`; panics on a violation.
pub fn check(data: &[u8]) {
    let key = HmacKey::from_bytes(b"fuzz key").expect("a non-empty key");
    let other = HmacKey::from_bytes(b"other key").expect("a non-empty key");
    let unsigned = decode(data, None);
    let signed = decode(data, Some(&key));
    if let Ok(message) = &signed {
        assert_eq!(
            unsigned.as_ref().ok(),
            Some(message),
            "a key only adds checks"
        );
    }
    match unsigned {
        Ok(Message::Json(hb)) => {
            let again = decode(&hb.encode(), None);
            assert_eq!(
                again.ok(),
                Some(Message::Json(hb.clone())),
                "encode round trip"
            );

            // The canonical bytes leave out `sig` and `kid` (which only names the key).
            let mut plain = hb.clone();
            plain.sig = None;
            plain.kid = None;
            let again = decode(&plain.canonical_bytes(), None);
            assert_eq!(
                again.ok(),
                Some(Message::Json(plain.clone())),
                "canonical round trip"
            );

            let mut resigned = plain;
            resigned.sign(&key);
            let resigned_copy = resigned.clone();
            let body = resigned.encode();
            let again = decode(&body, Some(&key));
            assert_eq!(
                again.ok(),
                Some(Message::Json(resigned)),
                "signed round trip"
            );
            assert!(
                decode(&body, Some(&other)).is_err(),
                "verified with the wrong key"
            );
            let mut without_kid = resigned_copy;
            without_kid.kid = None;
            let both = [other.clone(), key.clone()];
            assert_eq!(
                decode(&without_kid.encode(), &both[..]).ok(),
                Some(Message::Json(without_kid.clone())),
                "a signature without kid verifies with any key of the set"
            );
            assert!(
                decode(&without_kid.encode(), Some(&other)).is_err(),
                "a signature without kid verified with the wrong key"
            );
            if signed.is_ok() {
                assert_eq!(hb.verify(&key), Ok(()));
            }
        }
        Ok(Message::Plain { addr }) => {
            assert_eq!(addr, addr.trim());
            assert!(signed.is_err(), "a plain body passed a signature check");
            let again = decode(addr.as_bytes(), None);
            assert_eq!(again.ok(), Some(Message::Plain { addr }));
        }
        Err(_) => assert!(signed.is_err(), "a key made a rejected body acceptable"),
    }
}
