//! The crate's error type.

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong talking to NSQ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// An operation took longer than its configured bound.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// nsqd answered with an error frame (`E_CODE description`).
    #[error("nsqd error {code}: {description}")]
    Server {
        /// The code before the first space, e.g. `E_BAD_TOPIC`.
        code: String,
        /// The rest of the payload.
        description: String,
    },
    /// The address answers HTTP: it is nsqd's HTTP port, not its TCP port.
    #[error("{0} answered with HTTP: it is an HTTP port, not nsqd's TCP port (default 4150)")]
    HttpPort(SocketAddr),
    /// The peer sent bytes that are not the NSQ protocol.
    #[error("malformed frame from nsqd: {0}")]
    Malformed(String),
    /// A frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A topic or channel name NSQ would reject.
    #[error(
        "invalid {kind} name {name:?}: expected 1-64 characters of [.a-zA-Z0-9_-], optionally ending in #ephemeral"
    )]
    InvalidName {
        /// `topic` or `channel`.
        kind: &'static str,
        /// The rejected name.
        name: String,
    },
    /// A message body NSQ would reject.
    #[error("invalid message body: {0}")]
    InvalidBody(String),
    /// Bad client configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// nsqd requires AUTH and no secret is configured, or AUTH failed.
    #[error("AUTH: {0}")]
    Auth(String),
    /// The connection is closed (by us, by nsqd, or by a failure).
    #[error("connection to nsqd closed")]
    Closed,
    /// nsqlookupd could not be queried.
    #[error("nsqlookupd {addr}: {reason}")]
    Lookup {
        /// The lookupd HTTP address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// Every nsqd of a [`crate::Publisher`] failed; one entry per nsqd tried.
    #[error("publish failed on every nsqd: {}", .0.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<(String, Error)>),
}

impl Error {
    /// Whether nsqd closes the connection after sending this error (only E_FIN_FAILED,
    /// E_REQ_FAILED and E_TOUCH_FAILED leave it open).
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Server { code, .. } => is_fatal_code(code),
            _ => true,
        }
    }
}

/// Whether nsqd treats this error code as fatal (it closes the connection after sending it).
pub fn is_fatal_code(code: &str) -> bool {
    !matches!(code, "E_FIN_FAILED" | "E_REQ_FAILED" | "E_TOUCH_FAILED")
}

/// Splits an error frame payload into (code, description) at the first space.
pub(crate) fn server_error(payload: &[u8]) -> Error {
    let text = String::from_utf8_lossy(payload);
    let (code, description) = match text.split_once(' ') {
        Some((c, d)) => (c.to_string(), d.to_string()),
        None => (text.to_string(), String::new()),
    };
    Error::Server { code, description }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
