//! A saved registry loaded at start: unconfirmed servers route only while nothing confirmed is live.

use super::*;
use crate::balance::{Balancer, BalancerConfig};

/// The registry of a previous run holding `servers` (id, addr), saved just now.
fn saved_with(servers: &[(&str, &str)]) -> SavedRegistry {
    let before = registry();
    for (n, (id, addr)) in servers.iter().enumerate() {
        observe(&before, &body(id, addr, 7, n as u64 + 1));
    }
    before.saved(Instant::now(), SystemTime::now())
}

fn states(reg: &Registry) -> Vec<(String, &'static str)> {
    reg.servers(Instant::now())
        .into_iter()
        .map(|s| (s.id, s.state))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_restarted_registry_routes_to_the_saved_servers_at_once() {
    let saved = saved_with(&[("a", "10.0.0.1:80"), ("b", "10.0.0.2:80")]);
    assert_eq!(saved.servers.len(), 2);
    let reg = registry();
    let mut rx = reg.subscribe();
    assert_eq!(reg.restore(saved, Instant::now(), SystemTime::now()), 2);
    assert_eq!(live_ids(&reg), ["a", "b"]);
    assert_eq!(
        states(&reg),
        [("a".into(), "unconfirmed"), ("b".into(), "unconfirmed")]
    );
    assert_eq!(
        drain(&mut rx),
        [
            ev(EventKind::Join, "a", "10.0.0.1:80"),
            ev(EventKind::Join, "b", "10.0.0.2:80")
        ]
    );
    let balancer = Balancer::new(reg.clone(), BalancerConfig::default()).unwrap();
    assert!(balancer.pick(&[]).is_some());
}

#[tokio::test(start_paused = true)]
async fn the_first_confirmed_server_takes_all_traffic() {
    let reg = registry();
    reg.restore(
        saved_with(&[("a", "10.0.0.1:80"), ("b", "10.0.0.2:80")]),
        Instant::now(),
        SystemTime::now(),
    );
    // b's next heartbeat (same run, next seq) confirms it; a, perhaps dead, gets nothing more.
    assert_eq!(
        observe(&reg, &body("b", "10.0.0.2:80", 7, 9)),
        Outcome::Refreshed
    );
    assert_eq!(live_ids(&reg), ["b"]);
    assert_eq!(
        states(&reg),
        [("a".into(), "unconfirmed"), ("b".into(), "up")]
    );
    let balancer = Balancer::new(reg.clone(), BalancerConfig::default()).unwrap();
    for _ in 0..20 {
        assert_eq!(balancer.pick(&[]).unwrap().0.id(), "b");
    }
    // a confirmed later joins the rotation.
    observe(&reg, &body("a", "10.0.0.1:80", 7, 9));
    assert_eq!(live_ids(&reg), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn an_unconfirmed_server_expires_after_one_ttl() {
    let reg = registry();
    let mut rx = reg.subscribe();
    reg.restore(
        saved_with(&[("a", "10.0.0.1:80")]),
        Instant::now(),
        SystemTime::now(),
    );
    drain(&mut rx);
    advance(TTL).await;
    assert!(live_ids(&reg).is_empty());
    reg.sweep(Instant::now());
    assert_eq!(drain(&mut rx), [ev(EventKind::Expire, "a", "10.0.0.1:80")]);
}

#[tokio::test(start_paused = true)]
async fn anyone_heard_from_takes_an_unconfirmed_id() {
    let reg = registry();
    reg.restore(
        saved_with(&[("a", "10.0.0.1:80")]),
        Instant::now(),
        SystemTime::now(),
    );
    // Same epoch at another address would be an id conflict against a confirmed holder.
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.9:80", 7, 20)),
        Outcome::Moved
    );
    assert_eq!(states(&reg), [("a".into(), "up")]);
    assert_eq!(reg.live(Instant::now())[0].addr(), "10.0.0.9:80");
}

#[tokio::test(start_paused = true)]
async fn old_foreign_or_refused_saves_load_nothing() {
    let saved = saved_with(&[("a", "10.0.0.1:80")]);
    let reg = registry();
    let mut old = saved.clone();
    old.saved_at_ms -= u64::try_from(MAX_SAVED_AGE.as_millis()).unwrap() + 1;
    assert_eq!(reg.restore(old, Instant::now(), SystemTime::now()), 0);
    let mut other_format = saved.clone();
    other_format.format += 1;
    assert_eq!(
        reg.restore(other_format, Instant::now(), SystemTime::now()),
        0
    );
    // allowed_networks tightened since the save: the policy of today applies.
    let mut cfg = RegistryConfig::new(TTL);
    cfg.allowed_networks = vec!["192.168.0.0/16".parse().unwrap()];
    let strict = Registry::new(cfg).unwrap();
    assert_eq!(strict.restore(saved, Instant::now(), SystemTime::now()), 0);
    assert!(live_ids(&strict).is_empty());
}

#[tokio::test(start_paused = true)]
async fn saved_holds_only_live_servers_and_survives_json() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(TTL / 2).await;
    observe(&reg, &body("b", "10.0.0.2:80", 1, 1));
    advance(TTL / 2).await;
    let saved = reg.saved(Instant::now(), SystemTime::now());
    let ids: Vec<_> = saved.servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["b"]);
    let text = serde_json::to_string(&saved).unwrap();
    assert_eq!(serde_json::from_str::<SavedRegistry>(&text).unwrap(), saved);
}

#[tokio::test(start_paused = true)]
async fn generation_moves_on_membership_not_on_refresh() {
    let reg = registry();
    let g0 = reg.generation();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    let g1 = reg.generation();
    assert!(g1 > g0);
    observe(&reg, &body("a", "10.0.0.1:80", 1, 2));
    assert_eq!(reg.generation(), g1);
}

/// A server loaded from a file and never heard from again keeps its last-heard time through every later save, so
/// an api-server that restarts again and again (or during an NSQ outage) stops bringing it back once it has been
/// silent for `MAX_SAVED_AGE`, however fresh the file.
#[tokio::test(start_paused = true)]
async fn a_server_nobody_hears_from_is_not_brought_back_by_saving_it_again() {
    let minute = Duration::from_secs(60);
    let t0 = SystemTime::now();
    let first = saved_with(&[("gone", "10.0.0.1:80"), ("alive", "10.0.0.2:80")]);
    // Restart 1, 6 minutes later: both loaded; only "alive" is heard from; the file is saved again.
    let second_run = registry();
    assert_eq!(
        second_run.restore(first, Instant::now(), t0 + 6 * minute),
        2
    );
    second_run.observe(
        &body("alive", "10.0.0.2:80", 7, 10),
        0,
        Instant::now(),
        t0 + 6 * minute,
    );
    let second = second_run.saved(Instant::now(), t0 + 7 * minute);
    assert_eq!(
        second.saved_at_ms,
        crate::registry::saved::unix_ms(t0 + 7 * minute)
    );
    // Restart 2, 11 minutes after "gone" was last heard: only "alive" comes back.
    let third_run = registry();
    assert_eq!(
        third_run.restore(second, Instant::now(), t0 + 11 * minute),
        1
    );
    assert_eq!(live_ids(&third_run), ["alive"]);
}

#[tokio::test(start_paused = true)]
async fn a_format_1_file_still_loads_its_servers_aged_by_the_file() {
    let text = format!(
        r#"{{"format":1,"saved_at_ms":{},"servers":[{{"id":"a","addr":"10.0.0.1:80","order":[7,1],"interval_ms":5000,"meta":{{}}}}]}}"#,
        crate::registry::saved::unix_ms(SystemTime::now())
    );
    let old: SavedRegistry = serde_json::from_str(&text).unwrap();
    let reg = registry();
    assert_eq!(
        reg.restore(old.clone(), Instant::now(), SystemTime::now()),
        1
    );
    let saved_again = reg.saved(Instant::now(), SystemTime::now());
    assert_eq!(saved_again.format, SAVED_FORMAT);
    assert_eq!(saved_again.servers[0].heard_at_ms, Some(old.saved_at_ms));
}
