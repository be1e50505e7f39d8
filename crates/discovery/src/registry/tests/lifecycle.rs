//! Join, refresh, ordering, leave and tombstones, expiry, self-preservation, views.

use super::*;

#[tokio::test(start_paused = true)]
async fn join_then_refresh() {
    let reg = registry();
    let mut rx = reg.subscribe();
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 1, 1)),
        Outcome::Joined
    );
    assert_eq!(live_ids(&reg), ["a"]);
    assert_eq!(drain(&mut rx), [ev(EventKind::Join, "a", "10.0.0.1:80")]);
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 1, 2)),
        Outcome::Refreshed
    );
    assert!(drain(&mut rx).is_empty(), "a refresh is not an event");
}

#[tokio::test(start_paused = true)]
async fn older_and_equal_are_ignored() {
    let reg = registry();
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 5, 5)),
        Outcome::Joined
    );
    let dup = observe(&reg, &body("a", "10.0.0.1:80", 5, 5));
    assert_eq!(dup, Outcome::Ignored(IgnoreReason::Duplicate));
    let older_seq = observe(&reg, &body("a", "10.0.0.1:80", 5, 3));
    assert_eq!(older_seq, Outcome::Ignored(IgnoreReason::OutOfOrder));
    let older_epoch = observe(&reg, &body("a", "10.0.0.1:80", 4, 99));
    assert_eq!(older_epoch, Outcome::Ignored(IgnoreReason::OutOfOrder));
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 6, 0)),
        Outcome::Refreshed
    );
    let view = reg.servers(Instant::now());
    assert_eq!((view[0].epoch, view[0].seq), (6, 0));
}

#[tokio::test(start_paused = true)]
async fn an_ignored_message_does_not_extend_life() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 5));
    advance(TTL - MS).await;
    observe(&reg, &body("a", "10.0.0.1:80", 1, 5));
    observe(&reg, &body("a", "10.0.0.1:80", 1, 4));
    advance(MS).await;
    assert!(live_ids(&reg).is_empty());
}

#[tokio::test(start_paused = true)]
async fn refresh_extends_and_expiry_is_checked_at_read() {
    let reg = registry();
    let mut rx = reg.subscribe();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    drain(&mut rx);
    advance(Duration::from_secs(8)).await;
    observe(&reg, &body("a", "10.0.0.1:80", 1, 2));
    advance(Duration::from_secs(8)).await;
    assert_eq!(
        live_ids(&reg),
        ["a"],
        "16 s after joining but 8 s after the refresh"
    );
    advance(Duration::from_secs(2)).await;
    // Expired by the clock; no sweep has run, yet no read returns it.
    assert!(live_ids(&reg).is_empty());
    assert_eq!(reg.live_count(Instant::now()), 0);
    assert!(reg.servers(Instant::now()).is_empty());
    assert!(
        drain(&mut rx).is_empty(),
        "expire events come from the sweep"
    );
    let swept = reg.sweep(Instant::now());
    assert_eq!(swept.len(), 1);
    assert_eq!(
        (swept[0].kind, swept[0].id.as_str()),
        (EventKind::Expire, "a")
    );
    assert_eq!(drain(&mut rx), [ev(EventKind::Expire, "a", "10.0.0.1:80")]);
    assert!(reg.sweep(Instant::now()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn sweep_expires_only_the_silent() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    observe(&reg, &body("b", "10.0.0.2:80", 1, 1));
    advance(Duration::from_secs(6)).await;
    observe(&reg, &body("b", "10.0.0.2:80", 1, 2));
    advance(Duration::from_secs(5)).await;
    let swept = reg.sweep(Instant::now());
    assert_eq!(
        swept.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(live_ids(&reg), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_after_expiry_rejoins() {
    let reg = registry();
    let mut rx = reg.subscribe();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(TTL).await;
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 1, 2)),
        Outcome::Joined
    );
    assert_eq!(
        drain(&mut rx),
        [
            ev(EventKind::Join, "a", "10.0.0.1:80"),
            ev(EventKind::Expire, "a", "10.0.0.1:80"),
            ev(EventKind::Join, "a", "10.0.0.1:80"),
        ]
    );
}

/// A heartbeat read the clock in time, but a sweep took the lock first and expired its server: the heartbeat is
/// judged no earlier than that sweep, so the server lives one full TTL from the rejoin and events stay in time order.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_applied_after_a_sweep_is_judged_no_earlier_than_it() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(TTL - MS).await;
    let read_before_the_lock = Instant::now();
    advance(2 * MS).await;
    let swept = reg.sweep(Instant::now());
    assert_eq!(swept.len(), 1, "{swept:?}");
    let mut rx = reg.subscribe();
    let outcome = reg.observe(
        &body("a", "10.0.0.1:80", 1, 2),
        0,
        read_before_the_lock,
        SystemTime::now(),
    );
    assert_eq!(outcome, Outcome::Joined);
    let joined = rx.try_recv().unwrap();
    assert!(
        joined.at >= swept[0].at,
        "the join is not dated before the expiry it follows"
    );
    advance(TTL - MS).await;
    assert_eq!(live_ids(&reg), ["a"], "live for one TTL from the rejoin");
    advance(MS).await;
    assert!(live_ids(&reg).is_empty());
}

#[tokio::test(start_paused = true)]
async fn leaving_removes_at_once_and_tombstone_blocks_late_up() {
    let reg = registry();
    let mut rx = reg.subscribe();
    observe(&reg, &body("a", "10.0.0.1:80", 5, 1));
    assert_eq!(
        observe(&reg, &leaving("a", "10.0.0.1:80", 5, 2)),
        Outcome::Left
    );
    assert!(live_ids(&reg).is_empty());
    let late = observe(&reg, &body("a", "10.0.0.1:80", 5, 1));
    assert_eq!(late, Outcome::Ignored(IgnoreReason::Tombstoned));
    let later_seq = observe(&reg, &body("a", "10.0.0.1:80", 5, 3));
    assert_eq!(
        later_seq,
        Outcome::Ignored(IgnoreReason::Tombstoned),
        "same run, even if the seq is higher"
    );
    let older_run = observe(&reg, &body("a", "10.0.0.1:80", 4, 100));
    assert_eq!(older_run, Outcome::Ignored(IgnoreReason::Tombstoned));
    let again = observe(&reg, &leaving("a", "10.0.0.1:80", 5, 2));
    assert_eq!(again, Outcome::Ignored(IgnoreReason::Duplicate));
    assert!(live_ids(&reg).is_empty());
    assert_eq!(
        drain(&mut rx),
        [
            ev(EventKind::Join, "a", "10.0.0.1:80"),
            ev(EventKind::Leave, "a", "10.0.0.1:80")
        ]
    );
    // A restarted process has a newer epoch and may join at once.
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 6, 1)),
        Outcome::Joined
    );
    assert_eq!(live_ids(&reg), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn tombstone_lasts_one_ttl() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 5, 1));
    observe(&reg, &leaving("a", "10.0.0.1:80", 5, 2));
    advance(TTL - MS).await;
    let blocked = observe(&reg, &body("a", "10.0.0.1:80", 5, 3));
    assert_eq!(blocked, Outcome::Ignored(IgnoreReason::Tombstoned));
    advance(MS).await;
    reg.sweep(Instant::now());
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 5, 3)),
        Outcome::Joined
    );
}

#[tokio::test(start_paused = true)]
async fn leaving_before_up_and_old_leaving() {
    let reg = registry();
    // NSQ may hand over the leave before the last up.
    let early = observe(&reg, &leaving("a", "10.0.0.1:80", 5, 9));
    assert_eq!(early, Outcome::Ignored(IgnoreReason::NotRegistered));
    let late = observe(&reg, &body("a", "10.0.0.1:80", 5, 8));
    assert_eq!(late, Outcome::Ignored(IgnoreReason::Tombstoned));
    assert!(live_ids(&reg).is_empty());

    // A leave from a previous run does not remove the current one.
    observe(&reg, &body("b", "10.0.0.2:80", 7, 1));
    let old = observe(&reg, &leaving("b", "10.0.0.2:80", 6, 50));
    assert_eq!(old, Outcome::Ignored(IgnoreReason::OutOfOrder));
    assert_eq!(live_ids(&reg), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn newer_heartbeat_moves_the_address() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    let mut rx = reg.subscribe();
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.2:80", 2, 1)),
        Outcome::Moved
    );
    assert_eq!(reg.live(Instant::now())[0].addr(), "10.0.0.2:80");
    assert_eq!(
        drain(&mut rx),
        [
            ev(EventKind::Leave, "a", "10.0.0.1:80"),
            ev(EventKind::Join, "a", "10.0.0.2:80")
        ]
    );
    // The old run's late heartbeat (NSQ does not order) cannot move it back.
    let stale_addr = observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    assert_eq!(rejected(stale_addr), RejectReason::IdConflict);
    assert_eq!(reg.live(Instant::now())[0].addr(), "10.0.0.2:80");
}

#[tokio::test(start_paused = true)]
async fn id_collision_keeps_the_live_holder() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 5, 1));
    let mut rx = reg.subscribe();
    // Same run (epoch), older run, same (epoch, seq), a leave: none takes over or removes the holder.
    for hostile in [
        body("a", "10.6.6.6:80", 5, 99),
        body("a", "10.6.6.6:80", 4, 1),
        body("a", "10.6.6.6:80", 5, 1),
        leaving("a", "10.6.6.6:80", 5, 100),
    ] {
        let outcome = observe(&reg, &hostile);
        assert_eq!(
            rejected(outcome),
            RejectReason::IdConflict,
            "{}",
            String::from_utf8_lossy(&hostile)
        );
    }
    assert_eq!(reg.live(Instant::now())[0].addr(), "10.0.0.1:80");
    assert!(drain(&mut rx).is_empty());
    // The holder goes on as before: its seq was not touched by the hostile seq 99.
    assert_eq!(
        observe(&reg, &body("a", "10.0.0.1:80", 5, 2)),
        Outcome::Refreshed
    );

    // Plain bodies carry no epoch: they cannot take an id over from a JSON holder, nor the reverse.
    observe(&reg, &body("10.0.0.7:80", "10.0.0.8:80", 1, 1));
    assert_eq!(
        rejected(observe(&reg, b"10.0.0.7:80")),
        RejectReason::IdConflict
    );
    observe(&reg, b"10.0.0.9:80");
    assert_eq!(
        rejected(observe(&reg, &body("10.0.0.9:80", "10.0.0.10:80", 1, 1))),
        RejectReason::IdConflict
    );
    let addrs: Vec<String> = reg
        .live(Instant::now())
        .iter()
        .map(|b| b.addr().to_owned())
        .collect();
    assert_eq!(addrs, ["10.0.0.8:80", "10.0.0.9:80", "10.0.0.1:80"]);
    let conflicts = reg
        .outcome_counts()
        .into_iter()
        .find(|c| c.reason == Some("id_conflict"))
        .unwrap();
    assert_eq!(conflicts.count, 6);

    // A newer run may move the id; once the holder expired, anyone may take the id.
    assert_eq!(
        observe(&reg, &body("a", "10.6.6.6:80", 6, 1)),
        Outcome::Moved
    );
    observe(&reg, &body("b", "10.0.0.2:80", 9, 1));
    advance(TTL).await;
    assert_eq!(
        observe(&reg, &body("b", "10.0.0.3:80", 1, 1)),
        Outcome::Joined
    );
}

#[tokio::test(start_paused = true)]
async fn weight_from_meta_and_rebuild_on_change() {
    let reg = registry();
    let mut hb = Heartbeat::new("a", "10.0.0.1:80", 1, 1);
    hb.meta.insert("weight".into(), json!(3));
    observe(&reg, &hb.encode());
    assert_eq!(reg.live(Instant::now())[0].weight(), 3);
    hb.seq = 2;
    hb.meta.insert("weight".into(), json!(5));
    assert_eq!(observe(&reg, &hb.encode()), Outcome::Refreshed);
    assert_eq!(reg.live(Instant::now())[0].weight(), 5);
    assert_eq!(reg.servers(Instant::now())[0].meta["weight"], json!(5));
}

#[tokio::test(start_paused = true)]
async fn self_preservation_freezes_expiry_and_grants_grace() {
    let reg = registry();
    let mut rx = reg.subscribe();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(Duration::from_secs(5)).await;
    observe(&reg, &body("b", "10.0.0.2:80", 1, 1));
    drain(&mut rx);

    reg.set_bus_alive(false, Instant::now());
    assert!(reg.self_preservation());
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        live_ids(&reg),
        ["a", "b"],
        "nothing expires while the bus is down"
    );
    assert!(reg.sweep(Instant::now()).is_empty());
    let view = reg.view(Instant::now());
    assert!(view.self_preservation);
    assert_eq!(
        view.servers.iter().map(|s| s.state).collect::<Vec<_>>(),
        ["held", "held"]
    );

    reg.set_bus_alive(true, Instant::now());
    assert!(!reg.self_preservation());
    advance(TTL - MS).await;
    assert_eq!(
        live_ids(&reg),
        ["a", "b"],
        "one TTL of grace from the recovery"
    );
    assert!(reg.sweep(Instant::now()).is_empty());
    observe(&reg, &body("b", "10.0.0.2:80", 1, 2));
    advance(MS).await;
    assert_eq!(live_ids(&reg), ["b"]);
    reg.sweep(Instant::now());
    assert_eq!(drain(&mut rx), [ev(EventKind::Expire, "a", "10.0.0.1:80")]);
}

#[tokio::test(start_paused = true)]
async fn repeated_bus_reports_do_not_extend_grace() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(TTL - MS).await;
    reg.set_bus_alive(true, Instant::now());
    advance(MS).await;
    assert!(
        live_ids(&reg).is_empty(),
        "an alive bus that stays alive grants nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn server_view_reports_ages() {
    let reg = registry();
    let mut hb = Heartbeat::new("a", "10.0.0.1:80", 3, 4);
    hb.interval_ms = 2000;
    observe(&reg, &hb.encode());
    advance(Duration::from_millis(2500)).await;
    let view = reg.view(Instant::now());
    assert_eq!(view.ttl_ms, 10_000);
    let a = &view.servers[0];
    assert_eq!(
        (a.state, a.last_seen_ms, a.expires_in_ms),
        ("up", 2500, 7500)
    );
    assert_eq!(
        (a.epoch, a.seq, a.interval_ms, a.plain, a.weight),
        (3, 4, 2000, false, 1)
    );
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["servers"][0]["last_seen_ms"], 2500);
    assert_eq!(json["self_preservation"], false);
}

#[tokio::test(start_paused = true)]
async fn peer_state_is_pruned_once_gone_and_idle() {
    let reg = registry();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(TTL).await;
    reg.sweep(Instant::now());
    assert!(reg.lock().peers.is_empty());
    assert!(reg.lock().entries.is_empty());
}

#[tokio::test(start_paused = true)]
async fn bus_down_keeps_only_servers_live_at_that_moment() {
    let reg = registry();
    let mut rx = reg.subscribe();
    observe(&reg, &body("a", "10.0.0.1:80", 1, 1));
    advance(TTL).await;
    observe(&reg, &body("b", "10.0.0.2:80", 1, 1));
    reg.set_bus_alive(false, Instant::now());
    advance(TTL * 3).await;
    assert_eq!(
        live_ids(&reg),
        ["b"],
        "a had expired before the bus went down"
    );
    assert_eq!(
        drain(&mut rx),
        [
            ev(EventKind::Join, "a", "10.0.0.1:80"),
            ev(EventKind::Join, "b", "10.0.0.2:80"),
            ev(EventKind::Expire, "a", "10.0.0.1:80"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn events_are_counted_exactly_even_when_a_subscriber_falls_behind() {
    // A buffer of 4 events, and a zone of 10 servers that join and then expire in one sweep: the subscriber lags,
    // the counts do not.
    let reg = Registry::new(RegistryConfig {
        event_capacity: 4,
        ..RegistryConfig::new(TTL)
    })
    .unwrap();
    let mut rx = reg.subscribe();
    for i in 0..10 {
        observe(
            &reg,
            &body(&format!("s{i}"), &format!("10.0.0.{i}:80"), 1, 1),
        );
    }
    advance(TTL).await;
    assert_eq!(reg.sweep(Instant::now()).len(), 10);
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
    let counts: Vec<(&str, u64)> = reg
        .event_counts()
        .into_iter()
        .map(|(kind, n)| (kind.as_str(), n))
        .collect();
    assert_eq!(
        counts,
        [
            ("join", 10),
            ("leave", 0),
            ("expire", 10),
            ("eject", 0),
            ("recover", 0)
        ]
    );
}
