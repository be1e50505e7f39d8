use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::advance;

use super::*;
use crate::event::EventKind;
use crate::heartbeat::Heartbeat;
use crate::registry::RegistryConfig;

const TTL: Duration = Duration::from_secs(10);

fn join(registry: &Registry, id: &str, addr: &str, weight: Option<u64>) {
    let mut hb = Heartbeat::new(id, addr, 1, 1);
    if let Some(w) = weight {
        hb.meta.insert("weight".into(), json!(w));
    }
    registry.observe(&hb.encode(), 0, Instant::now(), SystemTime::now());
}

/// A registry with servers a, b, c (weights as given) and a balancer over it.
fn setup(strategy: Strategy, weights: [Option<u64>; 3]) -> Balancer {
    setup_with_ttl(strategy, weights, TTL)
}

fn setup_with_ttl(strategy: Strategy, weights: [Option<u64>; 3], ttl: Duration) -> Balancer {
    let registry = Registry::new(RegistryConfig::new(ttl)).unwrap();
    for (i, (id, w)) in ["a", "b", "c"].into_iter().zip(weights).enumerate() {
        join(&registry, id, &format!("10.0.0.{}:80", i + 1), w);
    }
    let config = BalancerConfig {
        strategy,
        ..BalancerConfig::default()
    };
    Balancer::new(registry, config).unwrap()
}

fn counts(balancer: &Balancer, picks: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        let (backend, _guard) = balancer.pick(&[]).expect("a live server");
        *counts.entry(backend.id().to_owned()).or_default() += 1;
    }
    counts
}

fn count(counts: &HashMap<String, usize>, id: &str) -> usize {
    counts.get(id).copied().unwrap_or(0)
}

fn events(rx: &mut tokio::sync::broadcast::Receiver<crate::Event>) -> Vec<(EventKind, String)> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push((e.kind, e.id)),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn round_robin_is_exact() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    let counts = counts(&balancer, 300);
    for id in ["a", "b", "c"] {
        assert_eq!(count(&counts, id), 100, "{counts:?}");
    }
}

// 300 picks over 3 servers: the standard deviation of one count is about 8, so ±35 is over 4 sigma.
#[tokio::test(start_paused = true)]
async fn random_and_p2c_spread_evenly() {
    for strategy in [Strategy::Random, Strategy::P2c] {
        let balancer = setup(strategy, [None; 3]);
        let counts = counts(&balancer, 300);
        for id in ["a", "b", "c"] {
            assert!(
                (65..=135).contains(&count(&counts, id)),
                "{strategy:?}: {counts:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn weights_are_honoured_by_random_and_p2c() {
    for strategy in [Strategy::Random, Strategy::P2c] {
        let balancer = setup(strategy, [Some(1), Some(2), Some(3)]);
        let counts = counts(&balancer, 600);
        // Expected 100 / 200 / 300; standard deviations about 9, 12 and 12.
        assert!(
            (50..=150).contains(&count(&counts, "a")),
            "{strategy:?}: {counts:?}"
        );
        assert!(
            (140..=260).contains(&count(&counts, "b")),
            "{strategy:?}: {counts:?}"
        );
        assert!(
            (240..=360).contains(&count(&counts, "c")),
            "{strategy:?}: {counts:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_less_loaded() {
    let balancer = setup(Strategy::P2c, [None; 3]);
    let mut held = Vec::new();
    for id in ["a", "b"] {
        for _ in 0..5 {
            let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|o| *o != id).collect();
            held.push(balancer.pick(&others).unwrap());
        }
    }
    let counts = counts(&balancer, 300);
    // c wins whenever it is one of the two sampled: 2/3 of the time, about 200.
    assert!(count(&counts, "c") >= 160, "{counts:?}");
    drop(held);
    assert!(
        balancer
            .registry()
            .live(Instant::now())
            .iter()
            .all(|b| b.in_flight() == 0)
    );
}

#[tokio::test(start_paused = true)]
async fn in_flight_survives_snapshot_rebuilds() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    let registry = balancer.registry().clone();
    let (a, guard) = balancer.pick(&["b", "c"]).unwrap();
    assert_eq!(a.in_flight(), 1);
    // Membership and weight changes rebuild the snapshot.
    join(&registry, "d", "10.0.0.4:80", None);
    let mut hb = Heartbeat::new("a", "10.0.0.1:80", 1, 2);
    hb.meta.insert("weight".into(), json!(7));
    registry.observe(&hb.encode(), 0, Instant::now(), SystemTime::now());
    let rebuilt = registry.live(Instant::now());
    let a_now = rebuilt.iter().find(|b| b.id() == "a").unwrap();
    assert!(
        !Arc::ptr_eq(&a, a_now),
        "a new Backend after the weight change"
    );
    assert_eq!((a_now.weight(), a_now.in_flight()), (7, 1));
    let stats = balancer.stats(Instant::now());
    assert_eq!(stats.iter().find(|s| s.id == "a").unwrap().in_flight, 1);
    drop(guard);
    assert_eq!(a_now.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn exclude_and_empty() {
    let balancer = setup(Strategy::P2c, [None; 3]);
    for _ in 0..50 {
        assert_eq!(balancer.pick(&["a", "b"]).unwrap().0.id(), "c");
    }
    assert!(balancer.pick(&["a", "b", "c"]).is_none());
    let empty = Balancer::new(
        Registry::new(RegistryConfig::new(TTL)).unwrap(),
        BalancerConfig::default(),
    )
    .unwrap();
    assert!(empty.pick(&[]).is_none());
}

#[tokio::test(start_paused = true)]
async fn expired_servers_are_not_picked_between_sweeps() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    advance(TTL - Duration::from_secs(1)).await;
    let refresh = Heartbeat::new("b", "10.0.0.2:80", 1, 2).encode();
    balancer
        .registry()
        .observe(&refresh, 0, Instant::now(), SystemTime::now());
    advance(Duration::from_secs(1)).await;
    let counts = counts(&balancer, 30);
    assert_eq!(count(&counts, "b"), 30, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn ejection_grows_and_is_capped_and_recovers() {
    // A long TTL keeps the servers live while virtual time runs through the ejections.
    let balancer = setup_with_ttl(Strategy::RoundRobin, [None; 3], Duration::from_secs(3600));
    let mut rx = balancer.registry().subscribe();
    let mut expected = Vec::new();
    for secs in [1, 2, 4, 8, 16, 30, 30] {
        let outcome = balancer.report_failure("a", Instant::now());
        assert_eq!(outcome, FailureOutcome::Ejected(Duration::from_secs(secs)));
        assert_eq!(
            balancer.report_failure("a", Instant::now()),
            FailureOutcome::Counted,
            "already out"
        );
        let during = counts(&balancer, 30);
        assert_eq!(count(&during, "a"), 0, "{during:?}");
        advance(Duration::from_secs(secs) - Duration::from_millis(1)).await;
        assert!(balancer.recover_due(Instant::now()).is_empty());
        advance(Duration::from_millis(1)).await;
        assert_eq!(count(&counts(&balancer, 30), "a"), 10, "back after {secs}s");
        expected.extend([
            (EventKind::Eject, "a".to_owned()),
            (EventKind::Recover, "a".to_owned()),
        ]);
    }
    assert_eq!(events(&mut rx), expected);
    let stats = balancer.stats(Instant::now());
    assert_eq!(stats.iter().find(|s| s.id == "a").unwrap().ejections, 7);

    // A success after recovery resets the growth.
    succeed(&balancer, "a");
    let outcome = balancer.report_failure("a", Instant::now());
    assert_eq!(outcome, FailureOutcome::Ejected(Duration::from_secs(1)));
    let stats = balancer.stats(Instant::now());
    assert_eq!(
        stats.iter().find(|s| s.id == "a").unwrap().ejected_for_ms,
        Some(1000)
    );
}

#[tokio::test(start_paused = true)]
async fn never_ejects_more_than_the_share() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    let now = Instant::now();
    assert!(matches!(
        balancer.report_failure("a", now),
        FailureOutcome::Ejected(_)
    ));
    assert_eq!(
        balancer.report_failure("b", now),
        FailureOutcome::KeptByShareLimit
    );
    assert_eq!(
        balancer.report_failure("c", now),
        FailureOutcome::KeptByShareLimit
    );
    let counts = counts(&balancer, 30);
    assert_eq!((count(&counts, "b"), count(&counts, "c")), (15, 15));
    let stats = balancer.stats(now);
    assert_eq!(
        stats.iter().map(|s| s.failures).sum::<u64>(),
        3,
        "failures are counted anyway"
    );
    assert_eq!(balancer.report_failure("zzz", now), FailureOutcome::Unknown);

    // A lone server is never ejected with the default share.
    let registry = Registry::new(RegistryConfig::new(TTL)).unwrap();
    join(&registry, "solo", "10.0.0.9:80", None);
    let solo = Balancer::new(registry, BalancerConfig::default()).unwrap();
    assert_eq!(
        solo.report_failure("solo", now),
        FailureOutcome::KeptByShareLimit
    );
    assert!(solo.pick(&[]).is_some());
}

#[tokio::test(start_paused = true)]
async fn all_ejected_still_routes_somewhere() {
    let registry = Registry::new(RegistryConfig::new(TTL)).unwrap();
    join(&registry, "a", "10.0.0.1:80", None);
    join(&registry, "b", "10.0.0.2:80", None);
    let config = BalancerConfig {
        max_ejected_share: 1.0,
        ..BalancerConfig::default()
    };
    let balancer = Balancer::new(registry, config).unwrap();
    assert!(matches!(
        balancer.report_failure("a", Instant::now()),
        FailureOutcome::Ejected(_)
    ));
    assert!(matches!(
        balancer.report_failure("b", Instant::now()),
        FailureOutcome::Ejected(_)
    ));
    assert!(
        balancer.pick(&[]).is_some(),
        "a recently failed server beats a 503"
    );
    assert_eq!(balancer.pick(&["a"]).unwrap().0.id(), "b");
}

#[tokio::test(start_paused = true)]
async fn health_reports_reach_every_server_of_a_large_registry_by_id() {
    // Lookups by id are a binary search over the id-sorted snapshot: every one of many servers is found, in any
    // order of joining, and an id between two others is not.
    let registry = Registry::new(RegistryConfig::new(TTL)).unwrap();
    let ids: Vec<String> = (0..1000)
        .rev()
        .map(|n| format!("data-{:04}", n * 2))
        .collect();
    for (n, id) in ids.iter().enumerate() {
        join(
            &registry,
            id,
            &format!("10.0.{}.{}:80", n / 250, n % 250),
            None,
        );
    }
    let config = BalancerConfig {
        failure_threshold: 2,
        ..BalancerConfig::default()
    };
    let balancer = Balancer::new(registry, config).unwrap();
    let now = Instant::now();
    for id in &ids {
        assert_eq!(
            balancer.report_failure(id, now),
            FailureOutcome::Counted,
            "{id}"
        );
    }
    assert_eq!(
        balancer.report_failure("data-0001", now),
        FailureOutcome::Unknown
    );
    assert_eq!(
        balancer.report_failure("data-9999", now),
        FailureOutcome::Unknown
    );
    // A success ends the streak: the next failure is the first again.
    succeed(&balancer, "data-1998");
    assert_eq!(
        balancer.report_failure("data-1998", now),
        FailureOutcome::Counted
    );
}

#[tokio::test(start_paused = true)]
async fn failure_threshold_needs_consecutive_failures() {
    let registry = Registry::new(RegistryConfig::new(TTL)).unwrap();
    for (id, addr) in [("a", "10.0.0.1:80"), ("b", "10.0.0.2:80")] {
        join(&registry, id, addr, None);
    }
    let config = BalancerConfig {
        failure_threshold: 3,
        ..BalancerConfig::default()
    };
    let balancer = Balancer::new(registry, config).unwrap();
    let now = Instant::now();
    assert_eq!(balancer.report_failure("a", now), FailureOutcome::Counted);
    assert_eq!(balancer.report_failure("a", now), FailureOutcome::Counted);
    succeed(&balancer, "a");
    assert_eq!(balancer.report_failure("a", now), FailureOutcome::Counted);
    assert_eq!(balancer.report_failure("a", now), FailureOutcome::Counted);
    assert!(matches!(
        balancer.report_failure("a", now),
        FailureOutcome::Ejected(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn ejection_survives_rebuild() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    assert!(matches!(
        balancer.report_failure("a", Instant::now()),
        FailureOutcome::Ejected(_)
    ));
    join(balancer.registry(), "d", "10.0.0.4:80", None);
    let counts = counts(&balancer, 30);
    assert_eq!(count(&counts, "a"), 0, "{counts:?}");
}

#[test]
fn config_validation_and_strategy_names() {
    let registry = Registry::new(RegistryConfig::new(TTL)).unwrap();
    let bad = |config: BalancerConfig| Balancer::new(registry.clone(), config).unwrap_err();
    let share = bad(BalancerConfig {
        max_ejected_share: 1.5,
        ..BalancerConfig::default()
    });
    assert_eq!(share, ConfigError::BadEjectedShare(1.5));
    let times = bad(BalancerConfig {
        max_ejection: Duration::from_millis(10),
        ..BalancerConfig::default()
    });
    assert!(matches!(times, ConfigError::BadEjectionTimes { .. }));
    let threshold = bad(BalancerConfig {
        failure_threshold: 0,
        ..BalancerConfig::default()
    });
    assert_eq!(threshold, ConfigError::ZeroFailureThreshold);

    for s in Strategy::ALL {
        assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    assert_eq!(
        "least_conn".parse::<Strategy>(),
        Err(ConfigError::UnknownStrategy("least_conn".into()))
    );
    // The names in the message come from the one list of strategies.
    assert_eq!(
        ConfigError::UnknownStrategy("least_conn".into()).to_string(),
        r#"unknown balancer strategy "least_conn": expected "p2c", "p2c_ewma", "round_robin" or "random""#
    );
    assert_eq!(Strategy::default(), Strategy::P2c);
}

#[tokio::test(start_paused = true)]
async fn a_moved_server_starts_with_a_clean_health_record() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    let (_a, guard) = balancer.pick(&["b", "c"]).unwrap();
    assert!(matches!(
        balancer.report_failure("a", Instant::now()),
        FailureOutcome::Ejected(_)
    ));
    // A new run (epoch) at another address: only that may move an id.
    let moved = Heartbeat::new("a", "10.0.0.99:80", 2, 1).encode();
    balancer
        .registry()
        .observe(&moved, 0, Instant::now(), SystemTime::now());
    let stats = balancer.stats(Instant::now());
    let a = stats.iter().find(|s| s.id == "a").unwrap();
    assert_eq!(
        (a.addr.as_str(), a.ejected_for_ms, a.in_flight),
        ("10.0.0.99:80", None, 1)
    );
    assert_eq!(count(&counts(&balancer, 30), "a"), 10);
    drop(guard);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_server_returns_to_rotation_at_its_first_heartbeat() {
    let balancer = setup(Strategy::RoundRobin, [None; 3]);
    let mut rx = balancer.registry().subscribe();
    assert!(matches!(
        balancer.report_failure("a", Instant::now()),
        FailureOutcome::Ejected(_)
    ));
    // The old run's heartbeats (same epoch) do not end the ejection...
    let same_run = Heartbeat::new("a", "10.0.0.1:80", 1, 2).encode();
    balancer
        .registry()
        .observe(&same_run, 0, Instant::now(), SystemTime::now());
    assert_eq!(count(&counts(&balancer, 30), "a"), 0);
    // ...a new run at the same address does, well before the ejection time is over.
    let restarted = Heartbeat::new("a", "10.0.0.1:80", 2, 1).encode();
    balancer
        .registry()
        .observe(&restarted, 0, Instant::now(), SystemTime::now());
    assert_eq!(count(&counts(&balancer, 30), "a"), 10);
    let seen = events(&mut rx);
    assert!(
        seen.contains(&(EventKind::Eject, "a".into()))
            && seen.contains(&(EventKind::Recover, "a".into())),
        "{seen:?}"
    );
}

/// Feeds one `latency` answer of server `id` to the balancer, now.
fn answered(balancer: &Balancer, id: &str, latency: Duration) {
    let live = balancer.registry().live(Instant::now());
    let backend = live.iter().find(|b| b.id() == id).expect("a live server");
    balancer.observe_latency(backend, latency, Instant::now());
}

const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(20);

#[tokio::test(start_paused = true)]
async fn p2c_ewma_avoids_a_slow_server_from_its_first_slow_answer() {
    let balancer = setup(Strategy::P2cEwma, [None; 3]);
    // Before any answer every server is neutral: an even spread (±35 is over 4 sigma).
    let before = counts(&balancer, 300);
    for id in ["a", "b", "c"] {
        assert!((65..=135).contains(&count(&before, id)), "{before:?}");
    }
    answered(&balancer, "a", FAST);
    answered(&balancer, "b", FAST);
    answered(&balancer, "c", SLOW);
    let after = counts(&balancer, 300);
    assert_eq!(count(&after, "c"), 0, "{after:?}");
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_weighs_latency_by_load() {
    let balancer = setup(Strategy::P2cEwma, [None; 3]);
    answered(&balancer, "a", FAST);
    answered(&balancer, "b", FAST * 3);
    answered(&balancer, "c", SLOW);
    // a is three times faster than b, but with 5 requests in flight its cost is 6 ms against b's 3 ms.
    let held: Vec<_> = (0..5)
        .map(|_| balancer.pick(&["b", "c"]).unwrap())
        .collect();
    let counts = counts(&balancer, 300);
    assert!(count(&counts, "b") > count(&counts, "a"), "{counts:?}");
    drop(held);
    let counts = self::counts(&balancer, 300);
    assert!(count(&counts, "a") > count(&counts, "b"), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_spreads_over_servers_less_than_twice_as_slow_as_each_other() {
    // Equal servers differ by noise; sequential requests (nothing in flight) must still reach all of them rather
    // than all go to whichever looks a little faster.
    let balancer = setup(Strategy::P2cEwma, [None; 3]);
    answered(&balancer, "a", FAST);
    answered(&balancer, "b", FAST * 3 / 2);
    answered(&balancer, "c", FAST * 19 / 10);
    let even = counts(&balancer, 300);
    for id in ["a", "b", "c"] {
        assert!((65..=135).contains(&count(&even, id)), "{even:?}");
    }
    // More than twice as slow as either other, latency decides again.
    answered(&balancer, "c", FAST * 7 / 2);
    let uneven = counts(&balancer, 300);
    assert_eq!(count(&uneven, "c"), 0, "{uneven:?}");
}

#[tokio::test(start_paused = true)]
async fn under_load_p2c_ewma_weighs_latency_even_within_the_tie() {
    let balancer = setup(Strategy::P2cEwma, [None; 3]);
    answered(&balancer, "a", FAST);
    answered(&balancer, "c", FAST * 19 / 10);
    // One request in flight on each of a and c: the same load, so the latency decides (a: 1 ms x 2 against c:
    // 1.9 ms x 2), where a tie would split the picks between them.
    let _on_a = balancer.pick(&["b", "c"]).unwrap();
    let _on_c = balancer.pick(&["a", "b"]).unwrap();
    let mut to_c = 0;
    for _ in 0..300 {
        let (backend, _guard) = balancer.pick(&["b"]).unwrap();
        to_c += usize::from(backend.id() == "c");
    }
    assert_eq!(
        to_c, 0,
        "{to_c} of 300 picks went to the slower of two equally loaded servers"
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_treats_a_new_server_as_neutral() {
    let balancer = setup(Strategy::P2cEwma, [None; 3]);
    answered(&balancer, "a", FAST);
    answered(&balancer, "b", FAST);
    // c has not answered yet: compared at the other's estimate, so by load alone, neither flooded nor starved.
    let counts = counts(&balancer, 300);
    assert!((65..=135).contains(&count(&counts, "c")), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_tries_a_slow_server_again_and_returns_it_when_it_recovers() {
    // Long enough a TTL that nobody expires without heartbeats.
    let balancer = setup_with_ttl(Strategy::P2cEwma, [None; 3], Duration::from_secs(3600));
    answered(&balancer, "c", SLOW);
    // Every pick answers: a and b in 1 ms, c in 20 ms while slow, in 1 ms once recovered. 100 picks a second.
    let run = |seconds: u64, c_latency: Duration| {
        let balancer = balancer.clone();
        async move {
            let mut c_picks = 0;
            for _ in 0..seconds * 100 {
                let (backend, _guard) = balancer.pick(&[]).unwrap();
                let latency = if backend.id() == "c" {
                    c_picks += 1;
                    c_latency
                } else {
                    FAST
                };
                balancer.observe_latency(&backend, latency, Instant::now());
                advance(Duration::from_millis(10)).await;
            }
            c_picks
        }
    };
    // While c stays slow it is only probed, each time its estimate has decayed to the others' (ln 20 = 3 time
    // constants): a few requests in 10 s, not its third.
    let probes = run(10, SLOW).await;
    assert!((1..=10).contains(&probes), "{probes} probes in 10 s");
    // Once c is fast again, its next probe brings it back to its share within seconds.
    run(5, FAST).await;
    let recovered = run(3, FAST).await;
    assert!(recovered >= 60, "{recovered} of 300 picks after recovery");
}

#[tokio::test(start_paused = true)]
async fn only_p2c_ewma_keeps_latency() {
    let balancer = setup(Strategy::P2c, [None; 3]);
    answered(&balancer, "a", SLOW);
    let live = balancer.registry().live(Instant::now());
    assert!(live.iter().all(|b| b.peer().latency_nanos(0).is_none()));
}

/// A successful request to server `id`.
fn succeed(balancer: &Balancer, id: &str) {
    let live = balancer.inner.registry.live_set(Instant::now());
    balancer.report_success(live.find(id).expect("a live server"));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_expired_while_ejected_returns_as_a_new_run() {
    let ttl = Duration::from_millis(500);
    let balancer = setup_with_ttl(Strategy::RoundRobin, [None; 3], ttl);
    let registry = balancer.registry().clone();
    assert_eq!(
        balancer.report_failure("a", Instant::now()),
        FailureOutcome::Ejected(Duration::from_secs(1))
    );
    // a goes silent (it crashed) and expires while still ejected; b and c stay.
    advance(Duration::from_millis(400)).await;
    for (id, addr) in [("b", "10.0.0.2:80"), ("c", "10.0.0.3:80")] {
        let hb = Heartbeat::new(id, addr, 1, 2).encode();
        registry.observe(&hb, 0, Instant::now(), SystemTime::now());
    }
    advance(Duration::from_millis(200)).await;
    let expired = registry.sweep(Instant::now());
    assert_eq!(expired.len(), 1, "{expired:?}");
    let mut rx = registry.subscribe();
    // Its old run coming back (the same epoch) is still ejected...
    let same_run = Heartbeat::new("a", "10.0.0.1:80", 1, 5).encode();
    assert_eq!(
        registry.observe(&same_run, 0, Instant::now(), SystemTime::now()),
        crate::Outcome::Joined
    );
    assert_eq!(count(&counts(&balancer, 30), "a"), 0);
    let mut leaving = Heartbeat::new("a", "10.0.0.1:80", 1, 6);
    leaving.state = crate::State::Leaving;
    registry.observe(&leaving.encode(), 0, Instant::now(), SystemTime::now());
    // ...a restart (a newer epoch) takes it back into rotation at its first heartbeat, with a clean record.
    let restarted = Heartbeat::new("a", "10.0.0.1:80", 2, 1).encode();
    assert_eq!(
        registry.observe(&restarted, 0, Instant::now(), SystemTime::now()),
        crate::Outcome::Joined
    );
    assert_eq!(count(&counts(&balancer, 30), "a"), 10);
    assert_eq!(
        events(&mut rx),
        [
            (EventKind::Join, "a".to_owned()),
            (EventKind::Leave, "a".to_owned()),
            (EventKind::Join, "a".to_owned()),
            (EventKind::Recover, "a".to_owned()),
        ]
    );
    assert_eq!(
        balancer.report_failure("a", Instant::now()),
        FailureOutcome::Ejected(Duration::from_secs(1)),
        "the ejection streak starts again"
    );
}
