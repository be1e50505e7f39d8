//! What a running announcer reports: why one heartbeat was not published, and its counters.

/// Why one heartbeat was not published by a running announcer (from [`Announcer::announce`] and
/// [`Announcer::leave`]); the periodic loop counts and retries these itself.
///
/// Not to be confused with [`AnnouncerConfigError`](crate::AnnouncerConfigError): a configuration refused at start-up.
///
/// [`Announcer::announce`]: crate::Announcer::announce
/// [`Announcer::leave`]: crate::Announcer::leave
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// [`Announcer::leave`](crate::Announcer::leave) was called already: nothing more is announced.
    #[error("the announcer has left: no more heartbeats")]
    Left,
    /// Every nsqd failed; one entry per nsqd tried, with its error.
    #[error("no nsqd took the heartbeat: {}", .0.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<(String, String)>),
    /// The NSQ client refused the message itself (so no nsqd would take it).
    #[error("heartbeat refused before publishing: {0}")]
    Refused(String),
}

/// A snapshot of an announcer's counters, for metrics and health pages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnnouncerStats {
    /// `up` heartbeats an nsqd took.
    pub heartbeats_sent: u64,
    /// `leaving` heartbeats an nsqd took.
    pub leaving_sent: u64,
    /// Heartbeats no nsqd took.
    pub failed_heartbeats: u64,
    /// Ticks skipped because the health check failed.
    pub skipped_unhealthy: u64,
    /// Failed publishes per nsqd (also those another nsqd then took), in configuration order.
    pub publish_failures: Vec<(String, u64)>,
    /// Whether the last health check passed (`true` before the first).
    pub healthy: bool,
    /// Whether the last heartbeat reached an nsqd (`true` until one fails).
    pub reachable: bool,
    /// Whether [`Announcer::leave`](crate::Announcer::leave) was called.
    pub left: bool,
    /// What became of the solicitations received ([`Announcer::answer_solicitations`](crate::Announcer::answer_solicitations)).
    pub solicitations: crate::SolicitationStats,
}
