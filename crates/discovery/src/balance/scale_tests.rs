//! Picks among 100,000 servers (issue 19): every strategy spreads over them and skips the servers it must, and
//! servers drawn after their ejection return to rotation without a walk over all of them.

use std::collections::HashSet;
use std::time::SystemTime;

use tokio::time::advance;

use super::*;
use crate::heartbeat::Heartbeat;
use crate::registry::RegistryConfig;

const SERVERS: usize = 100_000;

fn id(i: usize) -> String {
    format!("s{i:06}")
}

/// A registry of `SERVERS` servers that stay live for an hour without heartbeats.
fn large_registry() -> Registry {
    let registry = Registry::new(RegistryConfig::new(Duration::from_secs(3600))).unwrap();
    let (now, wall) = (Instant::now(), SystemTime::now());
    for i in 0..SERVERS {
        let addr = format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255);
        registry.observe(&Heartbeat::new(id(i), &addr, 1, 1).encode(), 0, now, wall);
    }
    registry
}

#[tokio::test(start_paused = true)]
async fn picks_spread_over_100_000_servers_and_skip_ejected_and_excluded_ones() {
    let registry = large_registry();
    let balancer = |strategy| {
        let config = BalancerConfig {
            strategy,
            ..BalancerConfig::default()
        };
        Balancer::new(registry.clone(), config).unwrap()
    };
    // A run of neighbours in id order (one rack, say) and servers spread over the whole range.
    let ejected: HashSet<String> = (10_000..10_300)
        .chain((50_001..SERVERS).step_by(250))
        .map(id)
        .collect();
    let first = balancer(Strategy::P2c);
    for id in &ejected {
        let outcome = first.report_failure(id, Instant::now());
        assert!(matches!(outcome, FailureOutcome::Ejected(_)), "{outcome:?}");
    }
    let exclude = ["s000000", "s000001", "s010300", "s099999"];

    let picks = 20_000;
    for strategy in Strategy::ALL {
        let balancer = balancer(strategy);
        let mut seen = HashSet::new();
        for _ in 0..picks {
            let (backend, _guard) = balancer.pick(&exclude).expect("a live server");
            assert!(
                !ejected.contains(backend.id()),
                "{strategy:?} picked ejected {}",
                backend.id()
            );
            assert!(
                !exclude.contains(&backend.id()),
                "{strategy:?} picked excluded {}",
                backend.id()
            );
            seen.insert(backend.id().to_owned());
        }
        // Drawing 20,000 times from 99,200 servers gives about 18,200 different ones; round robin gives each turn
        // to another server.
        let expected = if strategy == Strategy::RoundRobin {
            picks
        } else {
            17_000
        };
        assert!(
            seen.len() >= expected,
            "{strategy:?}: {} different servers",
            seen.len()
        );
    }

    // Once the ejections are over, the picks themselves return the servers to rotation: round robin reaches every
    // server in one round, and nothing is left for the periodic recovery.
    advance(BalancerConfig::default().base_ejection).await;
    let round_robin = balancer(Strategy::RoundRobin);
    let round: HashSet<String> = (0..SERVERS)
        .map(|_| round_robin.pick(&[]).unwrap().0.id().to_owned())
        .collect();
    assert_eq!(round.len(), SERVERS);
    assert!(round_robin.recover_due(Instant::now()).is_empty());
    assert!(round.is_superset(&ejected));
}
