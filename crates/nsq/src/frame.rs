//! Pure decoding of nsqd's frames: `[u32 size][i32 type][data]`, size counting type and data.
//! Nothing here does I/O; "not enough bytes yet" is an outcome, never an error, and hostile
//! bytes give an error, never a panic.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::message::RawMessage;

/// Frame type of a response (`OK`, `_heartbeat_`, `CLOSE_WAIT`, JSON).
pub const FRAME_RESPONSE: i32 = 0;
/// Frame type of an error (`E_CODE description`).
pub const FRAME_ERROR: i32 = 1;
/// Frame type of a message.
pub const FRAME_MESSAGE: i32 = 2;

/// "HTTP" read as a big-endian u32: what an HTTP port answers to the magic.
pub const HTTP_SIZE: u32 = u32::from_be_bytes(*b"HTTP");

/// The payload nsqd sends as a heartbeat.
pub const HEARTBEAT: &[u8] = b"_heartbeat_";

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A response payload (`OK`, `_heartbeat_`, `CLOSE_WAIT`, IDENTIFY/AUTH JSON).
    Response(Bytes),
    /// An error payload (`E_CODE description`).
    Error(Bytes),
    /// A message.
    Message(RawMessage),
}

/// The outcome of looking at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, and how many bytes it took.
    Frame(Frame, usize),
    /// The buffer holds only part of a frame; read more.
    Incomplete,
}

/// Reads the frame header at the front of `buf`: `Some((total length, frame type))` once the
/// whole frame is buffered, `None` while it is incomplete.
fn header(buf: &[u8], max_size: usize) -> Result<Option<(usize, i32)>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size == HTTP_SIZE {
        return Err(Error::Malformed("HTTP".into()));
    }
    let size = size as usize;
    if size < 4 {
        return Err(Error::Malformed(format!(
            "frame size {size} is smaller than its 4-byte type"
        )));
    }
    if size > max_size {
        return Err(Error::FrameTooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < 4 + size {
        return Ok(None);
    }
    Ok(Some((
        4 + size,
        i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
    )))
}

fn build(kind: i32, data: Bytes) -> Result<Frame> {
    Ok(match kind {
        FRAME_RESPONSE => Frame::Response(data),
        FRAME_ERROR => Frame::Error(data),
        FRAME_MESSAGE => Frame::Message(RawMessage::decode(data)?),
        other => return Err(Error::Malformed(format!("unknown frame type {other}"))),
    })
}

/// Decodes the frame at the front of `buf` without consuming it.
///
/// `max_size` bounds the announced size, so a hostile peer cannot make us buffer without limit.
pub fn decode(buf: &[u8], max_size: usize) -> Result<Decoded> {
    match header(buf, max_size)? {
        None => Ok(Decoded::Incomplete),
        Some((total, kind)) => Ok(Decoded::Frame(
            build(kind, Bytes::copy_from_slice(&buf[8..total]))?,
            total,
        )),
    }
}

/// Decodes and consumes the frame at the front of `buf`, without copying its data.
pub fn decode_from(buf: &mut BytesMut, max_size: usize) -> Result<Option<Frame>> {
    match header(buf, max_size)? {
        None => {
            if buf.len() >= 4 {
                // Make room for the rest of the announced frame in one allocation.
                let want = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4;
                buf.reserve(want.saturating_sub(buf.len()));
            }
            Ok(None)
        }
        Some((total, kind)) => {
            buf.advance(8);
            let data = buf.split_to(total - 8).freeze();
            build(kind, data).map(Some)
        }
    }
}

/// A frame as nsqd writes it (size, type, data), for tests that play nsqd.
#[cfg(test)]
pub(crate) fn frame(kind: i32, data: &[u8]) -> Vec<u8> {
    let mut v = ((data.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message_frame(attempts: u16, body: &[u8]) -> Vec<u8> {
        let mut d = 1_700_000_000_000_000_000i64.to_be_bytes().to_vec();
        d.extend_from_slice(&attempts.to_be_bytes());
        d.extend_from_slice(b"0123456789abcdef");
        d.extend_from_slice(body);
        frame(FRAME_MESSAGE, &d)
    }

    #[test]
    fn response_error_and_message() {
        let mut buf = frame(FRAME_RESPONSE, b"OK");
        buf.extend(frame(FRAME_ERROR, b"E_BAD_TOPIC bad"));
        buf.extend(message_frame(3, b"hello"));
        let mut b = BytesMut::from(&buf[..]);
        assert_eq!(
            decode_from(&mut b, 1024).unwrap(),
            Some(Frame::Response(Bytes::from_static(b"OK")))
        );
        assert_eq!(
            decode_from(&mut b, 1024).unwrap(),
            Some(Frame::Error(Bytes::from_static(b"E_BAD_TOPIC bad")))
        );
        let Some(Frame::Message(m)) = decode_from(&mut b, 1024).unwrap() else {
            panic!("expected a message")
        };
        assert_eq!(m.attempts, 3);
        assert_eq!(&m.id, b"0123456789abcdef");
        assert_eq!(&m.body[..], b"hello");
        assert_eq!(m.timestamp_ns, 1_700_000_000_000_000_000);
        assert!(b.is_empty());
        assert_eq!(decode_from(&mut b, 1024).unwrap(), None);
    }

    #[test]
    fn every_prefix_is_incomplete_never_an_error() {
        let whole = message_frame(1, b"some body bytes");
        for cut in 0..whole.len() {
            assert_eq!(
                decode(&whole[..cut], 1024).unwrap(),
                Decoded::Incomplete,
                "cut {cut}"
            );
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_from(&mut b, 1024).unwrap(), None);
            assert_eq!(b.len(), cut, "an incomplete frame consumes nothing");
        }
        assert!(matches!(decode(&whole, 1024).unwrap(), Decoded::Frame(_, n) if n == whole.len()));
    }

    #[test]
    fn http_port_is_recognised() {
        let reply = b"HTTP/1.1 400 Bad Request\r\n";
        assert!(matches!(decode(reply, 1024), Err(Error::Malformed(m)) if m == "HTTP"));
        let mut b = BytesMut::from(&reply[..4]);
        assert!(matches!(decode_from(&mut b, 1024), Err(Error::Malformed(m)) if m == "HTTP"));
    }

    #[test]
    fn oversized_tiny_and_unknown_frames_are_errors() {
        let big = frame(FRAME_RESPONSE, &[0u8; 100]);
        assert!(matches!(
            decode(&big, 50),
            Err(Error::FrameTooLarge { size: 104, max: 50 })
        ));
        let tiny = [0, 0, 0, 2, 0, 0];
        assert!(decode(&tiny, 50).is_err());
        assert!(decode(&frame(7, b"x"), 50).is_err());
        // A message frame too short to hold the 26-byte header.
        assert!(decode(&frame(FRAME_MESSAGE, &[0u8; 25]), 50).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 256);
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_from(&mut b, 256) {}
        }

        #[test]
        fn both_decoders_agree_and_split_streams_decode_the_same(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            split in 0usize..600,
        ) {
            let mut stream = Vec::new();
            for (i, body) in bodies.iter().enumerate() {
                stream.extend(message_frame(i as u16 + 1, body));
            }
            // Whole stream at once.
            let mut all = BytesMut::from(&stream[..]);
            let mut whole = Vec::new();
            while let Some(f) = decode_from(&mut all, 4096).unwrap() { whole.push(f); }
            prop_assert_eq!(whole.len(), bodies.len());
            // The same stream arriving in two pieces.
            let split = split.min(stream.len());
            let mut b = BytesMut::from(&stream[..split]);
            let mut pieces = Vec::new();
            while let Some(f) = decode_from(&mut b, 4096).unwrap() { pieces.push(f); }
            b.extend_from_slice(&stream[split..]);
            while let Some(f) = decode_from(&mut b, 4096).unwrap() { pieces.push(f); }
            prop_assert_eq!(&pieces, &whole);
            // The slice decoder sees the same first frame.
            if let Decoded::Frame(f, _) = decode(&stream, 4096).unwrap() {
                prop_assert_eq!(&f, &whole[0]);
            }
            for (f, body) in whole.iter().zip(&bodies) {
                match f { Frame::Message(m) => prop_assert_eq!(&m.body[..], &body[..]), _ => prop_assert!(false) }
            }
        }
    }
}
