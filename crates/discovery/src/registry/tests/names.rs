//! Host names on the api-server's own ports: resolved in the background, never on the heartbeat path.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::*;
use crate::registry::lookup::Resolver;

/// Lookups waiting for the test's answer, by name.
type Waiting = Arc<Mutex<Vec<(String, oneshot::Sender<Vec<SocketAddr>>)>>>;

/// A resolver whose answers the test gives, one per lookup, when it chooses; it records the names asked for.
struct Dns {
    asked: Arc<Mutex<Vec<String>>>,
    answers: Waiting,
}

impl Dns {
    fn registry(&self) -> Registry {
        let (asked, answers) = (Arc::clone(&self.asked), Arc::clone(&self.answers));
        let resolver = Resolver::new(move |name, _port| {
            let (tx, rx) = oneshot::channel();
            asked.lock().unwrap().push(name.clone());
            answers.lock().unwrap().push((name, tx));
            Box::pin(async move { rx.await.unwrap_or_default() })
        });
        let mut config = RegistryConfig::new(TTL);
        config.self_addrs = vec!["127.0.0.1:8080".into()];
        Registry::with_resolver(config, resolver).unwrap()
    }

    fn answer(&self, name: &str, addrs: &[&str]) {
        let mut answers = self.answers.lock().unwrap();
        let at = answers.iter().position(|(n, _)| n == name).unwrap();
        let (_, tx) = answers.remove(at);
        let _ = tx.send(addrs.iter().map(|a| a.parse().unwrap()).collect());
    }
}

fn dns() -> Dns {
    Dns {
        asked: Arc::default(),
        answers: Arc::default(),
    }
}

async fn heartbeat(reg: &Registry, id: &str, addr: &str, seq: u64) -> Outcome {
    reg.observe_resolving(&body(id, addr, 1, seq), 0, SystemTime::now())
        .await
}

fn self_address_count(reg: &Registry) -> u64 {
    reg.outcome_counts()
        .iter()
        .find(|c| c.reason == Some("self_address"))
        .map_or(0, |c| c.count)
}

/// Lets the spawned lookup tasks run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_lookup_holds_up_no_heartbeat_and_a_self_alias_is_removed_once_resolved() {
    let dns = dns();
    let reg = dns.registry();
    let mut rx = reg.subscribe();
    let start = Instant::now();
    // DNS does not answer: both names on our port are admitted at once, as is everyone else.
    assert_eq!(
        heartbeat(&reg, "alias", "Alias.example:8080", 1).await,
        Outcome::Joined
    );
    assert_eq!(
        heartbeat(&reg, "other", "other.example:8080", 1).await,
        Outcome::Joined
    );
    assert_eq!(
        heartbeat(&reg, "ip", "10.0.0.1:8080", 1).await,
        Outcome::Joined
    );
    assert_eq!(
        heartbeat(&reg, "alias", "Alias.example:8080", 2).await,
        Outcome::Refreshed
    );
    assert_eq!(Instant::now(), start, "no heartbeat waited");
    settle().await;
    assert_eq!(
        *dns.asked.lock().unwrap(),
        ["alias.example", "other.example"],
        "one lookup per name, however many heartbeats"
    );

    // The alias turns out to be this api-server: removed then, and refused from then on.
    dns.answer("alias.example", &["127.0.0.1:8080"]);
    dns.answer("other.example", &["203.0.113.7:8080"]);
    settle().await;
    assert_eq!(live_ids(&reg), ["ip", "other"]);
    assert_eq!(self_address_count(&reg), 1);
    assert_eq!(
        rejected(heartbeat(&reg, "alias", "alias.example:8080", 3).await),
        RejectReason::SelfAddress
    );
    assert_eq!(self_address_count(&reg), 2);
    assert_eq!(
        heartbeat(&reg, "other", "other.example:8080", 2).await,
        Outcome::Refreshed
    );
    assert_eq!(
        drain(&mut rx),
        [
            ev(EventKind::Join, "alias", "Alias.example:8080"),
            ev(EventKind::Join, "other", "other.example:8080"),
            ev(EventKind::Join, "ip", "10.0.0.1:8080"),
            ev(EventKind::Leave, "alias", "Alias.example:8080"),
        ]
    );
    assert_eq!(dns.asked.lock().unwrap().len(), 2, "answers are cached");

    // Once the answer is stale, the name is still judged by it while it is looked up again.
    advance(Duration::from_secs(61)).await;
    observe(&reg, &body("other", "other.example:8080", 1, 3));
    assert_eq!(
        rejected(heartbeat(&reg, "alias", "alias.example:8080", 4).await),
        RejectReason::SelfAddress
    );
    settle().await;
    assert_eq!(dns.asked.lock().unwrap().len(), 3, "looked up again");
}

#[tokio::test(start_paused = true)]
async fn lookups_are_bounded() {
    let dns = dns();
    let reg = dns.registry();
    for i in 0..20 {
        let addr = format!("n{i}.example:8080");
        assert_eq!(
            heartbeat(&reg, &format!("n{i}"), &addr, 1).await,
            Outcome::Joined
        );
    }
    settle().await;
    assert_eq!(
        dns.asked.lock().unwrap().len(),
        crate::registry::names::MAX_LOOKUPS
    );
    // A finished lookup frees a slot for the next heartbeat of a name not resolved yet.
    dns.answer("n0.example", &[]);
    settle().await;
    assert_eq!(
        heartbeat(&reg, "n19", "n19.example:8080", 2).await,
        Outcome::Refreshed
    );
    settle().await;
    assert_eq!(
        dns.asked.lock().unwrap().last().map(String::as_str),
        Some("n19.example")
    );
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_checked_before_its_name_was_found_to_be_us_does_not_bring_it_back() {
    // The race: a heartbeat passes the policy while its name is unknown; the lookup then finds the name is this
    // api-server and removes its servers; only then does the heartbeat take the registry's lock.
    let reg = dns().registry();
    let hb = body("alias", "me.local:8080", 1, 1);
    let Decoded { message, addr } = decode_with_addr(&hb, KeySet::from(&[][..]), true).unwrap();
    let (verdict, unresolved) =
        reg.inner
            .policy
            .check(message.addr(), &addr, Instant::now().into_std());
    assert!(
        verdict.is_ok() && unresolved.is_some(),
        "admitted, unresolved"
    );
    let us: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert!(
        reg.inner
            .policy
            .resolved("me.local".into(), 8080, &[us], Instant::now().into_std())
    );
    let outcome = reg.apply_checked(message, addr, true, 0, None, SystemTime::now());
    assert_eq!(rejected(outcome), RejectReason::SelfAddress);
    assert!(live_ids(&reg).is_empty());
}
