//! The system-level fault suite: the whole stack (nsqlookupd, 2 nsqd, archiver, api-server,
//! 3 data servers) under steady load through the proxy, one fault per test, injected and
//! repaired through testkit. Each test states what clients may see (normally nothing), that the
//! registry converges without a false expiry, and that the archive holds every heartbeat the
//! data servers counted as published.
//!
//! Timings are short so that the suite is quick: heartbeats every 300 ms, a 2 s TTL. nsqd runs
//! with `--mem-queue-size=0` ([`DURABLE_NSQD_ARGS`]), without which a SIGKILL of nsqd loses the
//! messages it holds in memory.

use std::time::Duration;

use testkit::{
    DURABLE_NSQD_ARGS, Fault, FaultReport, FaultRun, LoadOptions, SeededRng, StackOptions,
};

/// The proxy's per-try timeout in these tests (the example config has 10 s): what a request
/// that reached a frozen data server waits before its 504.
const TRY_TIMEOUT: &str = "3s";

fn stack_options() -> StackOptions {
    StackOptions {
        announce_interval: "300ms".into(),
        ttl: "2s".into(),
        nsqd_args: DURABLE_NSQD_ARGS.iter().map(|s| s.to_string()).collect(),
        api_sets: vec![format!("proxy.try_timeout={TRY_TIMEOUT}")],
        ..StackOptions::default()
    }
}

fn load_options() -> LoadOptions {
    LoadOptions {
        clients: 3,
        pause: Duration::from_millis(10),
        ..LoadOptions::default()
    }
}

/// Runs one fault under load, checks the report with `check` while the stack still runs (so
/// that a failure prints every process's log), then shuts the stack down gracefully.
async fn run(fault: Fault, check: impl FnOnce(Fault, &FaultReport)) {
    let mut run = FaultRun::start(stack_options(), load_options())
        .await
        .expect("starting the stack under load");
    // Some traffic before the fault, so that keep-alive connections and pools are warm.
    run.load()
        .wait_more_ok(100, Duration::from_secs(30))
        .await
        .unwrap();
    run.inject(fault, &mut SeededRng::new(1))
        .await
        .unwrap_or_else(|e| panic!("{fault}: {e:#}"));
    let report = run.finish().await.expect("final report");
    eprintln!("{fault}:\n{}", report.table());
    if !report.audit.missing.is_empty() {
        eprintln!("archive near the missing heartbeats:");
        let archived = testkit::Archived::read(run.stack.archive_db(), "data_server_addr")
            .await
            .unwrap();
        eprintln!("{}", archived.describe_around(&report.audit.missing));
        for i in 0..run.stack.cluster.len() {
            eprintln!("--- nsqd{i} log ---\n{}", run.stack.cluster.nsqd_log(i));
        }
    }
    check(fault, &report);
    run.shutdown().await.expect("graceful shutdown");
}

/// What every fault must keep: the registry converged (checked by `inject`), no false expiry,
/// and every published heartbeat archived.
fn assert_registry_and_archive(fault: Fault, r: &FaultReport) {
    assert_eq!(
        r.false_expiries, 0,
        "{fault}: a live data server expired: {:?}",
        r.false_expiry_details
    );
    assert!(
        r.audit.missing.is_empty() && r.audit.archived == r.audit.published,
        "{fault}: published heartbeats missing from the archive: {:?} ({} of {} archived)",
        r.audit.missing,
        r.audit.archived,
        r.audit.published
    );
    assert!(r.audit.published > 0, "{fault}: nothing was published");
}

/// Fails the test unless `count` is 0, saying `what` it counts and listing every failed request.
#[track_caller]
fn assert_zero(fault: Fault, r: &FaultReport, count: u64, what: &str) {
    assert_eq!(
        count,
        0,
        "{fault}: {what}:\n{}",
        r.failure_details.join("\n")
    );
}

/// Zero failed requests.
#[track_caller]
fn assert_no_failures(fault: Fault, r: &FaultReport) {
    let what = format!("{} of {} requests failed", r.failures, r.requests);
    assert_zero(fault, r, r.failures, &what);
}

/// Zero failed requests and zero expiries.
fn assert_invisible(fault: Fault, r: &FaultReport) {
    assert_no_failures(fault, r);
    assert_eq!(r.expiries, 0, "{fault}: no server may expire");
    assert_registry_and_archive(fault, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsqd_killed_and_restarted_under_load() {
    // With --mem-queue-size=0 every message nsqd accepted is in its disk queues, and nothing
    // is lost. (The kill waits until nsqd wrote its queues' first metadata; before that, nsqd
    // v1.3.0 loses undelivered messages on restart: see `Fault::NsqdKill`.)
    run(Fault::NsqdKill, |fault, r| {
        assert!(
            r.nsqd_reported_loss.is_empty(),
            "{:?}",
            r.nsqd_reported_loss
        );
        assert_invisible(fault, r);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsqd_frozen_then_thawed() {
    run(Fault::NsqdFreeze, assert_invisible).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsqlookupd_down_for_several_poll_intervals() {
    run(Fault::LookupdDown, assert_invisible).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nsqd_down_for_three_ttls() {
    // Self-preservation: the registry freezes instead of expiring everyone.
    run(Fault::AllNsqdDown, assert_invisible).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_server_frozen_until_expired() {
    run(Fault::DataServerFreeze, data_server_freeze_checks).await;
}

fn data_server_freeze_checks(fault: Fault, r: &FaultReport) {
    // The frozen server's kernel still accepts connections, so a request the proxy sends it
    // waits; it is thawed as soon as the registry expired it, well within the proxy's
    // try timeout, so such a request is late (up to the freeze's length), not failed. A
    // freeze longer than `proxy.try_timeout` would turn each of them into a 504 instead: the
    // proxy does not retry a timed-out try.
    assert!(r.expiries >= 1, "the frozen server expires");
    assert_no_failures(fault, r);
    assert_registry_and_archive(fault, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_of_every_data_server() {
    run(Fault::RollingDeploy, |fault, r| {
        assert_eq!(r.leaves, 3, "each data server left once");
        assert!(r.joins >= 3, "each data server joined again");
        assert_invisible(fault, r);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restarted() {
    run(Fault::ApiServerRestart, api_server_restart_checks).await;
}

fn api_server_restart_checks(fault: Fault, r: &FaultReport) {
    // What clients see, precisely: while no api-server listens, connections to the proxy
    // port are refused (nothing was sent). The draining api-server serves its open
    // connections for `shutdown.drain_grace` with `Connection: close`, so no request is lost
    // to a keep-alive connection closed under it (no `IncompleteMessage`). The new api-server
    // holds requests until its registry hears the first heartbeat (its warm-up), so no
    // `503 no live data server`. Nothing else may fail.
    assert_zero(
        fault,
        r,
        r.closed_while_draining,
        "a keep-alive connection was closed under a request",
    );
    assert_zero(
        fault,
        r,
        r.no_servers_after_restart,
        "the restarted api-server answered 503 before its first heartbeat",
    );
    assert_zero(
        fault,
        r,
        r.unexpected_failures(),
        "failures other than refused connections and closed keep-alive connections",
    );
    eprintln!(
        "{fault}: {} refused while restarting, {} closed while draining, of {} requests",
        r.refused_while_restarting, r.closed_while_draining, r.requests
    );
    assert_eq!(r.expiries, 0);
    assert_registry_and_archive(fault, r);
}
