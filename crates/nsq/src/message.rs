//! Messages as nsqd sends them: `[i64 timestamp ns][u16 attempts][16-byte id][body]`.

use bytes::Bytes;

use crate::error::{Error, Result};

/// Length of an NSQ message id.
pub const MESSAGE_ID_LEN: usize = 16;
/// Bytes before the body in a message frame.
const HEADER_LEN: usize = 8 + 2 + MESSAGE_ID_LEN;

/// A 16-byte NSQ message id (ASCII hex as nsqd makes it, but treated as opaque bytes).
pub type MessageId = [u8; MESSAGE_ID_LEN];

/// A message frame's contents, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// nsqd's timestamp when the message was published, in nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// Delivery attempts so far, this one included (1 on first delivery).
    pub attempts: u16,
    /// The message id.
    pub id: MessageId,
    /// The body, untouched.
    pub body: Bytes,
}

impl RawMessage {
    /// Decodes a message frame's data.
    pub fn decode(mut data: Bytes) -> Result<Self> {
        if data.len() < HEADER_LEN {
            return Err(Error::Malformed(format!(
                "message frame of {} bytes is shorter than the {HEADER_LEN}-byte header",
                data.len()
            )));
        }
        let timestamp_ns = i64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
        let attempts = u16::from_be_bytes([data[8], data[9]]);
        let id: MessageId = data[10..HEADER_LEN].try_into().expect("16 bytes");
        let body = data.split_off(HEADER_LEN);
        Ok(Self {
            timestamp_ns,
            attempts,
            id,
            body,
        })
    }
}
