//! The `heartbeat` fuzz target's corpus, replayed on stable with the same invariants.

#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;
#[path = "../../../fuzz/checks/heartbeat.rs"]
mod heartbeat;

#[test]
fn heartbeat_corpus_holds_the_invariants() {
    corpus::each_input("heartbeat", heartbeat::check);
}

/// Found by the heartbeat fuzz target: `1.5e086` read as 1.5000000000000004e86, which printed
/// and read again became 1.5000000000000002e86, so a receiver rebuilt other canonical bytes than
/// the signer's and refused a correctly signed heartbeat with a float in `meta`.
#[test]
fn signed_heartbeat_with_a_float_in_meta_verifies() {
    use discovery::{HmacKey, Message, decode};
    let body = br#"{"v":1,"id":"d","addr":"10.1.2.3:80","epoch":1,"seq":1,"state":"up","meta":{"f":1.5e086}}"#;
    let Ok(Message::Json(mut hb)) = decode(body, None) else {
        panic!("a valid heartbeat");
    };
    let key = HmacKey::from_bytes(b"key").expect("a non-empty key");
    hb.sign(&key);
    assert_eq!(decode(&hb.encode(), Some(&key)), Ok(Message::Json(hb)));
}
