//! What a [`FaultRun`](crate::FaultRun) saw, from the client's and the archive's side, and the
//! soak's pass rule, table and JSON.

use std::time::Duration;

use crate::audit::AuditReport;

/// What a run saw, from the client's and the archive's side.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    /// The faults injected, in order, with what each did.
    pub faults: Vec<String>,
    /// Requests sent through the proxy.
    pub requests: u64,
    /// Requests without a 2xx answer, refused connections included.
    pub failures: u64,
    /// Of the failures: connections refused while no api-server listened (a restart); no
    /// request was sent on them.
    pub refused_while_restarting: u64,
    /// Of the failures: requests on a keep-alive connection that the draining api-server
    /// closed as they were sent (`IncompleteMessage`), during a restart.
    pub closed_while_draining: u64,
    /// Of the failures: `503 no live data server` answered by a restarted api-server before
    /// its registry heard the first heartbeat (it serves before its registry is warm).
    pub no_servers_after_restart: u64,
    /// Slowest successful request.
    pub max_latency: Duration,
    /// Refused connections the load retried (only with [`LoadOptions::retry_refused`](crate::LoadOptions::retry_refused)).
    pub refused_retries: u64,
    /// Registry joins, leaves, expiries as the api-server's event stream showed them.
    pub joins: u64,
    /// Leaves (graceful `leaving` heartbeats).
    pub leaves: u64,
    /// Expiries (TTL passed without a heartbeat).
    pub expiries: u64,
    /// Expiries of a data server that was running and not frozen: must be 0.
    pub false_expiries: u64,
    /// Lines where a restarted nsqd reported losing disk-queue data on recovery
    /// (`DISKQUEUE(…) … data loss`, a `.bad` file).
    pub nsqd_reported_loss: Vec<String>,
    /// The archive audit.
    pub audit: AuditReport,
    /// One line per failed request.
    pub failure_details: Vec<String>,
    /// One line per false expiry.
    pub false_expiry_details: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl FaultReport {
    /// Failures other than connections refused while the api-server restarted.
    pub fn unexpected_failures(&self) -> u64 {
        self.failures
            - self.refused_while_restarting
            - self.closed_while_draining
            - self.no_servers_after_restart
    }

    /// The pass rule of the soak: no failed request (refused connections during an api-server
    /// restart included), no false expiry, and every published heartbeat archived.
    pub fn passed(&self) -> bool {
        self.failures == 0
            && self.false_expiries == 0
            && self.audit.missing.is_empty()
            && self.audit.archived == self.audit.published
    }

    /// The table `cargo xtask soak` prints.
    pub fn table(&self) -> String {
        let rows = [
            ("requests", self.requests.to_string()),
            ("failures", self.failures.to_string()),
            (
                "  refused while api-server restarted",
                self.refused_while_restarting.to_string(),
            ),
            (
                "  keep-alive connection closed by the draining api-server",
                self.closed_while_draining.to_string(),
            ),
            (
                "  503 from a restarted api-server before its first heartbeat",
                self.no_servers_after_restart.to_string(),
            ),
            (
                "  refused connections retried by the client",
                self.refused_retries.to_string(),
            ),
            (
                "max latency (ok)",
                format!("{:.1} ms", self.max_latency.as_secs_f64() * 1e3),
            ),
            ("joins", self.joins.to_string()),
            ("leaves", self.leaves.to_string()),
            ("expiries", self.expiries.to_string()),
            ("false expiries", self.false_expiries.to_string()),
            ("published", self.audit.published.to_string()),
            ("archived", self.audit.archived.to_string()),
            ("missing", self.audit.missing.len().to_string()),
            (
                "extra (archived, not counted)",
                self.audit.extra.to_string(),
            ),
            ("faults injected", self.faults.len().to_string()),
            ("elapsed", format!("{:.0} s", self.elapsed.as_secs_f64())),
        ];
        let mut out = String::from("| what | value |\n|---|---:|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        out
    }

    /// The same as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "failures": self.failures,
            "refused_while_api_server_restarted": self.refused_while_restarting,
            "refused_retries": self.refused_retries,
            "no_servers_after_api_server_restart": self.no_servers_after_restart,
            "closed_while_api_server_drained": self.closed_while_draining,
            "nsqd_reported_loss": self.nsqd_reported_loss,
            "max_latency_ms": self.max_latency.as_secs_f64() * 1e3,
            "joins": self.joins,
            "leaves": self.leaves,
            "expiries": self.expiries,
            "false_expiries": self.false_expiries,
            "published": self.audit.published,
            "archived": self.audit.archived,
            "missing": self.audit.missing.len(),
            "extra": self.audit.extra,
            "inexact_runs": self.audit.inexact_runs,
            "faults": self.faults,
            "failure_details": self.failure_details,
            "false_expiry_details": self.false_expiry_details,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "passed": self.passed(),
        })
    }
}
