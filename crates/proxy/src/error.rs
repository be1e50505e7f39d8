//! The answer a request gets when no server gave one.

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No live data server.
    #[error("no live data server")]
    NoServers {
        /// The request id.
        request_id: String,
    },
    /// Every try failed.
    #[error("upstream failed after {tries} tries: {detail}")]
    Upstream {
        /// The request id.
        request_id: String,
        /// Tries made.
        tries: u32,
        /// The last failure.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out after {tries} tries")]
    Timeout {
        /// The request id.
        request_id: String,
        /// Tries made.
        tries: u32,
    },
}

impl ProxyError {
    /// Status code and reason phrase of the answer.
    pub(crate) fn status(&self) -> (u16, &'static str) {
        match self {
            ProxyError::NoServers { .. } => (503, "Service Unavailable"),
            ProxyError::Upstream { .. } => (502, "Bad Gateway"),
            ProxyError::Timeout { .. } => (504, "Gateway Timeout"),
        }
    }

    pub(crate) fn tries(&self) -> u32 {
        match self {
            ProxyError::NoServers { .. } => 0,
            ProxyError::Upstream { tries, .. } | ProxyError::Timeout { tries, .. } => *tries,
        }
    }
}
