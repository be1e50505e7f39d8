use super::*;
use proptest::prelude::*;
use serde_json::json;

fn reason(body: &[u8]) -> RejectReason {
    decode(body, None).expect_err("should be rejected").reason()
}

fn key() -> HmacKey {
    HmacKey::from_bytes(b"shared secret").unwrap()
}

fn sample() -> Heartbeat {
    let mut hb = Heartbeat::new("data-1", "10.0.0.5:8080", 1_700_000_000_000, 42);
    hb.sent_at_ms = 1_700_000_123_456;
    hb.interval_ms = 5000;
    hb.meta.insert("weight".into(), json!(3));
    hb.meta.insert("zone".into(), json!("eu-1"));
    hb
}

#[test]
fn json_round_trip() {
    let hb = sample();
    assert_eq!(decode(&hb.encode(), None), Ok(Message::Json(hb.clone())));
    let mut leaving = hb;
    leaving.state = State::Leaving;
    assert_eq!(decode(&leaving.encode(), None), Ok(Message::Json(leaving)));
}

#[test]
fn optional_fields_default_and_unknown_fields_are_tolerated() {
    let body =
        br#"{"future":{"x":[1,2]},"v":1,"id":"a","addr":"h:1","epoch":1,"seq":2,"state":"up"}"#;
    let Ok(Message::Json(hb)) = decode(body, None) else {
        panic!("expected a heartbeat")
    };
    assert_eq!(
        (hb.sent_at_ms, hb.interval_ms, hb.meta.len(), hb.sig),
        (0, 0, 0, None)
    );
}

#[test]
fn plain_host_port_with_whitespace() {
    for body in [
        &b"10.0.0.7:4151"[..],
        b"10.0.0.7:4151\n",
        b"  10.0.0.7:4151 \r\n",
    ] {
        assert_eq!(
            decode(body, None),
            Ok(Message::Plain {
                addr: "10.0.0.7:4151".into()
            })
        );
    }
    let Ok(plain) = decode(b"data.example:80\n", None) else {
        panic!()
    };
    assert_eq!(
        (plain.id(), plain.addr()),
        ("data.example:80", "data.example:80")
    );
}

#[test]
fn signed_round_trip_is_independent_of_field_order_and_spacing() {
    let mut hb = sample();
    hb.sign(&key());
    assert_eq!(
        decode(&hb.encode(), Some(&key())),
        Ok(Message::Json(hb.clone()))
    );

    // Same fields, another order, extra spaces, escaped characters, meta keys reversed: still verifies.
    let body = format!(
        r#"{{ "sig" : "{}", "meta" : {{"zone":"eu\u002d1", "weight":3}}, "state":"up", "interval_ms":5000,
            "sent_at_ms":1700000123456, "seq":42, "epoch":1700000000000, "addr":"10.0.0.5:8080", "id":"data-1", "v":1 }}"#,
        hb.sig.as_deref().unwrap()
    );
    assert!(decode(body.as_bytes(), Some(&key())).is_ok());
}

#[test]
fn tampering_unsigned_and_wrong_key_are_refused() {
    let mut hb = sample();
    hb.sign(&key());
    let body = String::from_utf8(hb.encode()).unwrap();
    let tampered = body.replace("10.0.0.5:8080", "10.0.0.6:8080");
    let err = decode(tampered.as_bytes(), Some(&key())).unwrap_err();
    assert_eq!(err.reason(), RejectReason::BadSignature);
    let tampered_meta = body.replace("\"weight\":3", "\"weight\":30");
    assert_eq!(
        decode(tampered_meta.as_bytes(), Some(&key()))
            .unwrap_err()
            .reason(),
        RejectReason::BadSignature
    );

    let other = HmacKey::from_bytes(b"other").unwrap();
    assert_eq!(
        decode(body.as_bytes(), Some(&other)).unwrap_err().reason(),
        RejectReason::UnknownKey,
        "the kid names a key the receiver does not hold"
    );

    let unsigned = sample().encode();
    assert_eq!(
        decode(&unsigned, Some(&key())).unwrap_err().reason(),
        RejectReason::Unsigned
    );
    assert_eq!(
        decode(b"10.0.0.7:4151", Some(&key())).unwrap_err().reason(),
        RejectReason::Unsigned
    );

    let bad_hex = body.replace(hb.sig.as_deref().unwrap(), "xyz");
    assert_eq!(
        decode(bad_hex.as_bytes(), Some(&key()))
            .unwrap_err()
            .reason(),
        RejectReason::BadSignature
    );
    // Without a key the signature is not checked at all.
    assert!(decode(tampered.as_bytes(), None).is_ok());
}

#[test]
fn rejection_reasons() {
    let cases: &[(&[u8], RejectReason)] = &[
        (b"", RejectReason::Empty),
        (b" \n\t", RejectReason::Empty),
        (b"\xff\xfe", RejectReason::NotUtf8),
        (b"{\"v\":1,", RejectReason::BadJson),
        (b"{\"v\":1} trailing", RejectReason::BadJson),
        (br#"{"v":1,"v":1}"#, RejectReason::BadJson),
        (b"[1,2]", RejectReason::WrongType),
        (b"\"10.0.0.1:80\"", RejectReason::WrongType),
        (b"12345", RejectReason::WrongType),
        (b"hello", RejectReason::BadAddr),
        (b"[1,2", RejectReason::BadJson),
        (b"[{\"v\":1}", RejectReason::BadJson),
        (b"\"10.0.0.1:80", RejectReason::BadJson),
        (b"[::1]:80x", RejectReason::BadAddr),
        (b"[fe80::1%eth0]:80", RejectReason::BadAddr),
        (b"[10.0.0.1]", RejectReason::BadAddr),
        (b"10.0.0.1:0", RejectReason::BadAddr),
        (b"0.0.0.0:80", RejectReason::BadAddr),
        (b"[::]:80", RejectReason::BadAddr),
        (b"239.1.1.1:80", RejectReason::BadAddr),
        (
            br#"{"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::MissingField,
        ),
        (
            br#"{"v":2,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::UnsupportedVersion,
        ),
        (
            br#"{"v":1.0,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::UnsupportedVersion,
        ),
        (
            br#"{"v":"1","id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::WrongType,
        ),
        (
            br#"{"v":1,"addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::MissingField,
        ),
        (
            br#"{"v":1,"id":null,"addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::MissingField,
        ),
        (
            br#"{"v":1,"id":7,"addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::WrongType,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":"1","seq":1,"state":"up"}"#,
            RejectReason::WrongType,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":-1,"seq":1,"state":"up"}"#,
            RejectReason::BadNumber,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":1.5,"seq":1,"state":"up"}"#,
            RejectReason::BadNumber,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":18446744073709551616,"seq":1,"state":"up"}"#,
            RejectReason::BadNumber,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":1e400,"seq":1,"state":"up"}"#,
            RejectReason::BadJson,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":1,"state":"up"}"#,
            RejectReason::MissingField,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"down"}"#,
            RejectReason::BadState,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up","meta":[]}"#,
            RejectReason::WrongType,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up","sig":5}"#,
            RejectReason::WrongType,
        ),
        (
            br#"{"v":1,"id":"","addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::BadId,
        ),
        (
            br#"{"v":1,"id":"a\nb","addr":"h:1","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::BadId,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::BadAddr,
        ),
        (
            br#"{"v":1,"id":"a","addr":"h:70000","epoch":1,"seq":1,"state":"up"}"#,
            RejectReason::BadAddr,
        ),
    ];
    for (body, expected) in cases {
        let got = decode(body, None);
        assert_eq!(
            got.as_ref().map_err(Rejection::reason).err(),
            Some(*expected),
            "{}: {got:?}",
            String::from_utf8_lossy(body)
        );
    }
    let long_id = format!(
        r#"{{"v":1,"id":"{}","addr":"h:1","epoch":1,"seq":1,"state":"up"}}"#,
        "x".repeat(MAX_ID_BYTES + 1)
    );
    assert_eq!(reason(long_id.as_bytes()), RejectReason::BadId);
    let max_id = long_id.replacen(&"x".repeat(MAX_ID_BYTES + 1), &"x".repeat(MAX_ID_BYTES), 1);
    assert!(decode(max_id.as_bytes(), None).is_ok());
}

#[test]
fn meta_bounds() {
    let mut hb = sample();
    hb.meta
        .insert("blob".into(), json!("x".repeat(MAX_META_BYTES)));
    assert_eq!(reason(&hb.encode()), RejectReason::MetaTooLarge);

    let mut deep = json!(1);
    for _ in 0..MAX_META_DEPTH {
        deep = json!([deep]);
    }
    let mut hb = sample();
    hb.meta.insert("deep".into(), deep);
    assert_eq!(reason(&hb.encode()), RejectReason::MetaTooLarge);
    if let Some(Value::Array(inner)) = hb.meta.get_mut("deep") {
        let unwrapped = inner.remove(0);
        hb.meta.insert("deep".into(), unwrapped);
    }
    assert!(
        decode(&hb.encode(), None).is_ok(),
        "exactly the maximum depth is fine"
    );
}

#[test]
fn hostile_inputs_never_panic() {
    let one_mib = vec![b'a'; 1 << 20];
    assert_eq!(reason(&one_mib), RejectReason::TooLarge);
    let mut just_over = b"{\"v\":1,\"pad\":\"".to_vec();
    just_over.resize(MAX_BODY_BYTES + 1, b' ');
    assert_eq!(reason(&just_over), RejectReason::TooLarge);

    // Deep nesting, in an unknown field, in meta, and at top level, within the size limit.
    let depth = MAX_BODY_BYTES / 4;
    let nested_unknown = format!("{{\"x\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
    // serde skips unknown values without recursion, so depth there is harmless; the fields are still missing.
    assert_eq!(
        reason(nested_unknown.as_bytes()),
        RejectReason::MissingField
    );
    let nested_meta = format!(
        r#"{{"v":1,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up","meta":{}1{}}}"#,
        "{\"a\":".repeat(depth / 2),
        "}".repeat(depth / 2)
    );
    assert_eq!(reason(nested_meta.as_bytes()), RejectReason::BadJson);
    assert_eq!(reason("[".repeat(depth).as_bytes()), RejectReason::BadJson);
    // Balanced, it is valid JSON (serde_json skips it without recursion): an array where an object belongs.
    let deep_array = format!("{}{}", "[".repeat(depth / 2), "]".repeat(depth / 2));
    assert_eq!(reason(deep_array.as_bytes()), RejectReason::WrongType);
    assert_eq!(reason("{".repeat(depth).as_bytes()), RejectReason::BadJson);

    let huge = format!(
        r#"{{"v":1,"id":"a","addr":"h:1","epoch":{},"seq":1,"state":"up"}}"#,
        "9".repeat(5000)
    );
    assert!(decode(huge.as_bytes(), None).is_err());
    let many_keys: String = (0..4000).map(|i| format!(",\"k{i}\":{i}")).collect();
    let wide_meta = format!(
        r#"{{"v":1,"id":"a","addr":"h:1","epoch":1,"seq":1,"state":"up","meta":{{"a":0{many_keys}}}}}"#
    );
    assert_eq!(reason(wide_meta.as_bytes()), RejectReason::MetaTooLarge);
}

#[test]
fn rejection_detail_is_short_for_hostile_text() {
    let body = format!("{}:80", "a".repeat(10_000));
    let err = decode(body.as_bytes(), None).unwrap_err();
    assert!(err.to_string().len() < 200, "{err}");
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&body, None);
        let _ = decode(&body, Some(&key()));
    }

    #[test]
    fn decode_never_panics_on_json_like_text(body in "[{}\\[\\]\":,0-9a-z .\\-e]{0,512}") {
        let _ = decode(body.as_bytes(), None);
    }

    #[test]
    fn any_valid_heartbeat_round_trips_signed(
        id in "[a-zA-Z0-9_.:-]{1,128}",
        port in 1u16..,
        epoch in any::<u64>(),
        seq in any::<u64>(),
        leaving in any::<bool>(),
        zone in "\\PC{0,40}",
    ) {
        let mut hb = Heartbeat::new(id, format!("10.1.2.3:{port}"), epoch, seq);
        hb.state = if leaving { State::Leaving } else { State::Up };
        hb.meta.insert("zone".into(), json!(zone));
        hb.sign(&key());
        prop_assert_eq!(decode(&hb.encode(), Some(&key())), Ok(Message::Json(hb)));
    }
}

#[test]
fn signed_heartbeats_name_their_key_outside_the_signed_bytes() {
    let mut hb = sample();
    hb.sign(&key());
    assert_eq!(hb.kid.as_deref(), Some(key().kid()));
    let body = String::from_utf8(hb.encode()).unwrap();
    assert!(
        body.ends_with(&format!(
            r#","kid":"{}","sig":"{}"}}"#,
            key().kid(),
            hb.sig.as_deref().unwrap()
        )),
        "{body}"
    );
    assert!(
        !String::from_utf8(hb.canonical_bytes())
            .unwrap()
            .contains("kid")
    );
    assert_eq!(
        decode(body.as_bytes(), Some(&key())),
        Ok(Message::Json(hb.clone()))
    );

    // A heartbeat signed before key ids existed (no kid) still verifies: each key is tried.
    let mut old_style = hb.clone();
    old_style.kid = None;
    let keys = [HmacKey::from_bytes(b"other").unwrap(), key()];
    assert_eq!(
        decode(&old_style.encode(), &keys[..]),
        Ok(Message::Json(old_style))
    );
    // A kid nobody holds, or of the wrong type, is refused.
    let unknown = body.replace(key().kid(), "0000000000000000");
    assert_eq!(
        decode(unknown.as_bytes(), Some(&key()))
            .unwrap_err()
            .reason(),
        RejectReason::UnknownKey
    );
    let wrong = body.replace(&format!("\"{}\"", key().kid()), "7");
    assert_eq!(
        decode(wrong.as_bytes(), Some(&key())).unwrap_err().reason(),
        RejectReason::WrongType
    );
}
