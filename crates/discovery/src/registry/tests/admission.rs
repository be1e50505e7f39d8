//! Which messages get in: staleness, signatures, networks, self addresses, hostile bodies.

use super::*;

#[tokio::test(start_paused = true)]
async fn stale_by_nsqd_timestamp() {
    let reg = registry();
    let wall = SystemTime::now();
    let ns = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
    let old = ns(wall - TTL - MS);
    let outcome = reg.observe(&body("a", "10.0.0.1:80", 1, 1), old, Instant::now(), wall);
    assert_eq!(outcome, Outcome::Ignored(IgnoreReason::Stale));
    assert!(live_ids(&reg).is_empty());
    let recent = ns(wall - TTL + MS);
    assert_eq!(
        reg.observe(
            &body("a", "10.0.0.1:80", 1, 2),
            recent,
            Instant::now(),
            wall
        ),
        Outcome::Joined
    );
    let future = ns(wall + Duration::from_secs(60));
    let skewed = reg.observe(
        &body("a", "10.0.0.1:80", 1, 3),
        future,
        Instant::now(),
        wall,
    );
    assert_eq!(skewed, Outcome::Refreshed);
    let unknown = reg.observe(&body("a", "10.0.0.1:80", 1, 4), -5, Instant::now(), wall);
    assert_eq!(unknown, Outcome::Refreshed);
}

#[tokio::test(start_paused = true)]
async fn plain_host_port_is_always_fresh() {
    let reg = registry();
    assert_eq!(observe(&reg, b"10.0.0.7:4151\n"), Outcome::Joined);
    assert_eq!(observe(&reg, b"10.0.0.7:4151\n"), Outcome::Refreshed);
    assert_eq!(observe(&reg, b"10.0.0.7:4151"), Outcome::Refreshed);
    let view = reg.servers(Instant::now());
    assert_eq!(
        (view[0].id.as_str(), view[0].addr.as_str(), view[0].plain),
        ("10.0.0.7:4151", "10.0.0.7:4151", true)
    );
    advance(TTL - MS).await;
    observe(&reg, b"10.0.0.7:4151");
    advance(TTL - MS).await;
    assert_eq!(live_ids(&reg), ["10.0.0.7:4151"]);
}

#[tokio::test(start_paused = true)]
async fn hmac_key_requires_valid_signatures() {
    let key = HmacKey::from_bytes(b"k").unwrap();
    let mut config = RegistryConfig::new(TTL);
    config.hmac_keys = vec![key.clone()];
    let reg = Registry::new(config).unwrap();
    assert_eq!(
        rejected(observe(&reg, &body("a", "10.0.0.1:80", 1, 1))),
        RejectReason::Unsigned
    );
    assert_eq!(
        rejected(observe(&reg, b"10.0.0.1:80")),
        RejectReason::Unsigned
    );
    let mut hb = Heartbeat::new("a", "10.0.0.1:80", 1, 1);
    hb.sent_at_ms = wall_ms(SystemTime::now());
    hb.sign(&key);
    let signed = String::from_utf8(hb.encode()).unwrap();
    let forged = signed.replace("10.0.0.1:80", "10.6.6.6:80");
    assert_eq!(
        rejected(observe(&reg, forged.as_bytes())),
        RejectReason::BadSignature
    );
    assert!(live_ids(&reg).is_empty());
    assert_eq!(observe(&reg, signed.as_bytes()), Outcome::Joined);
}

fn signed_now(key: &HmacKey, id: &str, addr: &str, seq: u64) -> Vec<u8> {
    let mut hb = Heartbeat::new(id, addr, 1, seq);
    hb.sent_at_ms = wall_ms(SystemTime::now());
    hb.sign(key);
    hb.encode()
}

#[tokio::test(start_paused = true)]
async fn rotation_accepts_both_keys_then_refuses_the_retired_one() {
    let old = HmacKey::from_bytes(b"old").unwrap();
    let new = HmacKey::from_bytes(b"new").unwrap();
    let with_keys = |keys: Vec<HmacKey>| {
        let mut config = RegistryConfig::new(TTL);
        config.hmac_keys = keys;
        Registry::new(config).unwrap()
    };
    // Step 1: receivers hold both keys; senders on either key are accepted.
    let both = with_keys(vec![old.clone(), new.clone()]);
    assert!(!both.accepts_unauthenticated());
    assert_eq!(
        observe(&both, &signed_now(&old, "a", "10.0.0.1:80", 1)),
        Outcome::Joined
    );
    assert_eq!(
        observe(&both, &signed_now(&new, "b", "10.0.0.2:80", 1)),
        Outcome::Joined
    );
    assert_eq!(
        observe(&both, &signed_now(&new, "a", "10.0.0.1:80", 2)),
        Outcome::Refreshed,
        "a sender switching keys keeps its place"
    );
    // Step 3: the old key is removed; what it signs now names an unknown key.
    let only_new = with_keys(vec![new.clone()]);
    assert_eq!(
        rejected(observe(&only_new, &signed_now(&old, "a", "10.0.0.1:80", 3))),
        RejectReason::UnknownKey
    );
    assert_eq!(
        observe(&only_new, &signed_now(&new, "a", "10.0.0.1:80", 3)),
        Outcome::Joined
    );
}

#[tokio::test(start_paused = true)]
async fn plain_bodies_with_a_key_only_from_allowed_networks() {
    let key = HmacKey::from_bytes(b"k").unwrap();
    let mut config = RegistryConfig::new(TTL);
    config.hmac_keys = vec![key.clone()];
    config.allowed_networks = vec!["10.1.0.0/16".parse().unwrap()];
    let reg = Registry::new(config).unwrap();
    assert!(!reg.accepts_unauthenticated());
    assert_eq!(observe(&reg, b"10.1.0.7:80"), Outcome::Joined);
    assert_eq!(
        rejected(observe(&reg, b"10.2.0.7:80")),
        RejectReason::NotAllowed
    );
    // JSON heartbeats still need a signature, inside the networks too.
    assert_eq!(
        rejected(observe(&reg, &body("a", "10.1.0.8:80", 1, 1))),
        RejectReason::Unsigned
    );
    assert_eq!(
        observe(&reg, &signed_now(&key, "a", "10.1.0.8:80", 1)),
        Outcome::Joined
    );
}

#[test]
fn unauthenticated_without_a_key_whatever_the_networks() {
    assert!(registry().accepts_unauthenticated());
    assert!(registry().view(Instant::now()).unauthenticated);
    // allowed_networks limits the announced address, not who may speak for an id: still unauthenticated.
    let mut config = RegistryConfig::new(TTL);
    config.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
    let networks_only = Registry::new(config).unwrap();
    assert!(networks_only.accepts_unauthenticated());
    assert!(networks_only.view(Instant::now()).unauthenticated);
    let mut config = RegistryConfig::new(TTL);
    config.hmac_keys = vec![HmacKey::from_bytes(b"k").unwrap()];
    assert!(!Registry::new(config).unwrap().accepts_unauthenticated());
}

fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(start_paused = true)]
async fn signed_heartbeats_are_usable_for_one_ttl_so_replays_fail() {
    let key = HmacKey::from_bytes(b"k").unwrap();
    let mut config = RegistryConfig::new(TTL);
    config.hmac_keys = vec![key.clone()];
    let reg = Registry::new(config).unwrap();
    let signed = |epoch, seq, sent_at_ms, state| {
        let mut hb = Heartbeat::new("a", "10.0.0.1:80", epoch, seq);
        hb.sent_at_ms = sent_at_ms;
        hb.state = state;
        hb.sign(&key);
        hb.encode()
    };
    let wall = SystemTime::now();
    let at = |body: &[u8], wall| reg.observe(body, 0, Instant::now(), wall);
    let captured = signed(1, 1, wall_ms(wall), State::Up);
    assert_eq!(at(&captured, wall), Outcome::Joined);
    assert_eq!(
        at(&signed(1, 2, wall_ms(wall), State::Up), wall),
        Outcome::Refreshed
    );
    // Within the TTL, ordering refuses the replay (no seq rollback), and after a leave the tombstone does.
    assert_eq!(
        at(&captured, wall),
        Outcome::Ignored(IgnoreReason::OutOfOrder)
    );
    assert_eq!(
        at(&signed(1, 3, wall_ms(wall), State::Leaving), wall),
        Outcome::Left
    );
    assert_eq!(
        at(&captured, wall),
        Outcome::Ignored(IgnoreReason::Tombstoned)
    );
    // One TTL later the tombstone is gone; the signed timestamp still refuses the capture.
    advance(TTL + MS).await;
    let later = wall + TTL + MS;
    reg.sweep(Instant::now());
    assert_eq!(rejected(at(&captured, later)), RejectReason::Replayed);
    assert!(live_ids(&reg).is_empty());
    // A timestamp too far ahead is refused too (else it would be replayable for longer); the edges are accepted.
    let ttl_ms = TTL.as_millis() as u64;
    assert_eq!(
        rejected(at(
            &signed(2, 1, wall_ms(later) + ttl_ms + 1, State::Up),
            later
        )),
        RejectReason::Replayed
    );
    assert_eq!(
        at(&signed(2, 1, wall_ms(later) + ttl_ms, State::Up), later),
        Outcome::Joined
    );
    assert_eq!(
        at(&signed(2, 2, wall_ms(later) - ttl_ms, State::Up), later),
        Outcome::Refreshed
    );
    // Without a key nothing is signed, so sent_at_ms stays informational.
    let open = registry();
    assert_eq!(
        observe(&open, &body("a", "10.0.0.1:80", 1, 1)),
        Outcome::Joined
    );
}

#[tokio::test(start_paused = true)]
async fn allowed_networks_and_hostnames() {
    let mut config = RegistryConfig::new(TTL);
    config.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
    let reg = Registry::new(config).unwrap();
    assert_eq!(
        rejected(observe(&reg, &body("x", "192.168.1.5:80", 1, 1))),
        RejectReason::NotAllowed
    );
    assert_eq!(
        rejected(observe(&reg, &body("y", "data.example:80", 1, 1))),
        RejectReason::NotAllowed
    );
    assert_eq!(
        rejected(observe(&reg, &leaving("x", "192.168.1.5:80", 1, 2))),
        RejectReason::NotAllowed
    );
    assert_eq!(
        observe(&reg, &body("z", "10.9.9.9:80", 1, 1)),
        Outcome::Joined
    );
    assert_eq!(live_ids(&reg), ["z"]);

    let open = registry();
    assert_eq!(
        observe(&open, &body("y", "data.example:80", 1, 1)),
        Outcome::Joined
    );
    assert_eq!(open.live(Instant::now())[0].socket_addr(), None);
}

#[tokio::test(start_paused = true)]
async fn own_listen_address_never_registers() {
    let mut config = RegistryConfig::new(TTL);
    config.self_addrs = vec!["0.0.0.0:8080".into(), "127.0.0.1:9090".into()];
    let reg = Registry::new(config).unwrap();
    assert_eq!(
        rejected(observe(&reg, &body("me", "127.0.0.1:8080", 1, 1))),
        RejectReason::SelfAddress
    );
    assert_eq!(
        rejected(observe(&reg, b"localhost:9090")),
        RejectReason::SelfAddress
    );
    assert_eq!(
        observe(&reg, &body("other-host", "10.0.0.5:8080", 1, 1)),
        Outcome::Joined
    );
    assert_eq!(
        observe(&reg, &body("other-port", "127.0.0.1:8081", 1, 1)),
        Outcome::Joined
    );
    assert_eq!(live_ids(&reg), ["other-host", "other-port"]);
}

#[test]
fn config_errors() {
    assert_eq!(
        Registry::new(RegistryConfig::new(Duration::ZERO)).unwrap_err(),
        ConfigError::ZeroTtl
    );
    let config = RegistryConfig {
        self_addrs: vec!["not an address".into()],
        ..RegistryConfig::default()
    };
    let err = Registry::new(config).unwrap_err();
    assert!(err.to_string().contains("not an address"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn outcomes_are_counted_by_reason() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    observe(&reg, b"{not json");
    observe(&reg, b"{not json");
    observe(&reg, b"");
    observe(&reg, &vec![b'x'; 1 << 20]);
    let counts = reg.outcome_counts();
    let get = |outcome: &str, reason: Option<&str>| {
        counts
            .iter()
            .find(|c| c.outcome == outcome && c.reason == reason)
            .map(|c| c.count)
    };
    assert_eq!(get("joined", None), Some(1));
    assert_eq!(get("ignored", Some("duplicate")), Some(1));
    assert_eq!(get("rejected", Some("bad_json")), Some(2));
    assert_eq!(get("rejected", Some("empty")), Some(1));
    assert_eq!(get("rejected", Some("too_large")), Some(1));
    assert_eq!(get("rejected", Some("self_address")), Some(0));
    assert_eq!(
        Outcome::Ignored(IgnoreReason::Stale).labels(),
        ("ignored", Some("stale"))
    );
}

#[tokio::test(start_paused = true)]
async fn hostile_bodies_never_panic() {
    let reg = registry();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in [0usize, 1, 7, 64, 1000, 70_000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        assert!(matches!(observe(&reg, &bytes), Outcome::Rejected(_)));
    }
    let deep = format!("{{\"v\":1,\"meta\":{}", "[".repeat(50_000));
    assert_eq!(
        rejected(observe(&reg, deep.as_bytes())),
        RejectReason::BadJson
    );
    let huge = br#"{"v":1,"id":"a","addr":"10.0.0.1:80","epoch":99999999999999999999999,"seq":1,"state":"up"}"#;
    assert_eq!(rejected(observe(&reg, huge)), RejectReason::BadNumber);
    let wrong = br#"{"v":1,"id":["a"],"addr":"10.0.0.1:80","epoch":1,"seq":1,"state":"up"}"#;
    assert_eq!(rejected(observe(&reg, wrong)), RejectReason::WrongType);
    assert!(live_ids(&reg).is_empty());
}
