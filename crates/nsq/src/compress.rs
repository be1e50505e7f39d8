//! Stream compression after IDENTIFY: snappy (framing format) or raw DEFLATE. Both sides work on
//! whole buffers so the connection keeps one simple read loop and one write loop.

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, Result};

/// Decoder of the bytes nsqd sends.
pub(crate) enum Inflater {
    None,
    Snappy {
        pending: BytesMut,
        raw: snap::raw::Decoder,
        seen_id: bool,
    },
    Deflate(Box<Decompress>),
}

/// Encoder of the bytes we send.
pub(crate) enum Deflater {
    None,
    Snappy {
        raw: Box<snap::raw::Encoder>,
        sent_id: bool,
    },
    Deflate(Box<Compress>),
}

const SNAPPY_STREAM_ID: &[u8] = b"\xff\x06\x00\x00sNaPpY";
/// The framing format bounds uncompressed data per chunk.
const SNAPPY_MAX_CHUNK: usize = 65536;

impl Inflater {
    pub(crate) fn snappy() -> Self {
        Inflater::Snappy {
            pending: BytesMut::new(),
            raw: snap::raw::Decoder::new(),
            seen_id: false,
        }
    }

    pub(crate) fn deflate() -> Self {
        Inflater::Deflate(Box::new(Decompress::new(false)))
    }

    pub(crate) fn is_none(&self) -> bool {
        matches!(self, Inflater::None)
    }

    /// Decodes `input` (raw socket bytes), appending plain bytes to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<()> {
        match self {
            Inflater::None => {
                out.extend_from_slice(input);
                Ok(())
            }
            Inflater::Snappy {
                pending,
                raw,
                seen_id,
            } => {
                pending.extend_from_slice(input);
                snappy_chunks(pending, raw, seen_id, out)
            }
            Inflater::Deflate(d) => inflate(d, input, out),
        }
    }
}

fn snappy_chunks(
    pending: &mut BytesMut,
    raw: &mut snap::raw::Decoder,
    seen_id: &mut bool,
    out: &mut BytesMut,
) -> Result<()> {
    loop {
        if pending.len() < 4 {
            return Ok(());
        }
        let kind = pending[0];
        let len =
            usize::from(pending[1]) | usize::from(pending[2]) << 8 | usize::from(pending[3]) << 16;
        if pending.len() < 4 + len {
            return Ok(());
        }
        let chunk = &pending[4..4 + len];
        match kind {
            0xff => {
                if chunk != &SNAPPY_STREAM_ID[4..] {
                    return Err(Error::Malformed("bad snappy stream identifier".into()));
                }
                *seen_id = true;
            }
            _ if !*seen_id => {
                return Err(Error::Malformed(
                    "snappy data before the stream identifier".into(),
                ));
            }
            0x00 | 0x01 => {
                if len < 4 {
                    return Err(Error::Malformed(
                        "snappy chunk shorter than its checksum".into(),
                    ));
                }
                let want = u32::from_le_bytes(chunk[..4].try_into().expect("4 bytes"));
                let data = &chunk[4..];
                let start = out.len();
                if kind == 0x00 {
                    let n = snap::raw::decompress_len(data)
                        .map_err(|e| Error::Malformed(format!("snappy: {e}")))?;
                    if n > SNAPPY_MAX_CHUNK {
                        return Err(Error::Malformed(format!(
                            "snappy chunk inflates to {n} bytes"
                        )));
                    }
                    out.resize(start + n, 0);
                    raw.decompress(data, &mut out[start..])
                        .map_err(|e| Error::Malformed(format!("snappy: {e}")))?;
                } else {
                    out.extend_from_slice(data);
                }
                if masked_crc32c(&out[start..]) != want {
                    return Err(Error::Malformed("snappy checksum mismatch".into()));
                }
            }
            0x02..=0x7f => {
                return Err(Error::Malformed(format!(
                    "reserved unskippable snappy chunk {kind:#x}"
                )));
            }
            _ => {} // padding and skippable chunks
        }
        pending.advance(4 + len);
    }
}

fn inflate(d: &mut Decompress, mut input: &[u8], out: &mut BytesMut) -> Result<()> {
    let mut scratch = [0u8; 16 * 1024];
    loop {
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let status = d
            .decompress(input, &mut scratch, FlushDecompress::Sync)
            .map_err(|e| Error::Malformed(format!("deflate: {e}")))?;
        let used = (d.total_in() - before_in) as usize;
        let made = (d.total_out() - before_out) as usize;
        out.extend_from_slice(&scratch[..made]);
        input = &input[used..];
        if status == Status::StreamEnd {
            return Err(Error::Malformed("deflate stream ended".into()));
        }
        // Done when all input is used and the output buffer was not filled.
        if input.is_empty() && made < scratch.len() {
            return Ok(());
        }
        if used == 0 && made == 0 {
            return Ok(());
        }
    }
}

impl Deflater {
    pub(crate) fn snappy() -> Self {
        Deflater::Snappy {
            raw: Box::new(snap::raw::Encoder::new()),
            sent_id: false,
        }
    }

    pub(crate) fn deflate(level: u32) -> Self {
        Deflater::Deflate(Box::new(Compress::new(
            flate2::Compression::new(level),
            false,
        )))
    }

    pub(crate) fn is_none(&self) -> bool {
        matches!(self, Deflater::None)
    }

    /// Encodes `input`, appending what goes on the wire to `out`, flushed so that nsqd can
    /// decode every command now.
    pub(crate) fn encode(&mut self, input: &[u8], out: &mut BytesMut) -> Result<()> {
        match self {
            Deflater::None => out.extend_from_slice(input),
            Deflater::Snappy { raw, sent_id } => {
                if !*sent_id {
                    out.extend_from_slice(SNAPPY_STREAM_ID);
                    *sent_id = true;
                }
                let mut scratch = vec![0u8; snap::raw::max_compress_len(SNAPPY_MAX_CHUNK)];
                for piece in input.chunks(SNAPPY_MAX_CHUNK) {
                    let n = raw
                        .compress(piece, &mut scratch)
                        .map_err(|e| Error::Malformed(format!("snappy: {e}")))?;
                    let crc = masked_crc32c(piece);
                    let (kind, data) = if n < piece.len() {
                        (0x00u8, &scratch[..n])
                    } else {
                        (0x01, piece)
                    };
                    let len = data.len() + 4;
                    out.put_u8(kind);
                    out.put_slice(&(len as u32).to_le_bytes()[..3]);
                    out.put_u32_le(crc);
                    out.put_slice(data);
                }
            }
            Deflater::Deflate(c) => {
                let mut input = input;
                let mut scratch = [0u8; 16 * 1024];
                loop {
                    let (before_in, before_out) = (c.total_in(), c.total_out());
                    c.compress(input, &mut scratch, FlushCompress::Sync)
                        .map_err(|e| Error::Malformed(format!("deflate: {e}")))?;
                    let used = (c.total_in() - before_in) as usize;
                    let made = (c.total_out() - before_out) as usize;
                    out.extend_from_slice(&scratch[..made]);
                    input = &input[used..];
                    if input.is_empty() && made < scratch.len() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// CRC-32C (Castagnoli), masked as the snappy framing format specifies. The `crc32c` crate uses
/// the CPU's CRC instructions where there are some (SSE 4.2, ARMv8).
fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(mut enc: Deflater, mut dec: Inflater) {
        let messages: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                (0..(i * 997 % 70_000))
                    .map(|j| (j * 31 + i) as u8)
                    .collect()
            })
            .collect();
        let mut wire = BytesMut::new();
        for m in &messages {
            enc.encode(m, &mut wire).unwrap();
        }
        // Feed the wire in awkward pieces.
        let mut plain = BytesMut::new();
        for piece in wire.chunks(333) {
            dec.feed(piece, &mut plain).unwrap();
        }
        assert_eq!(plain.to_vec(), messages.concat());
    }

    #[test]
    fn masked_crc32c_of_the_check_string() {
        // CRC-32C("123456789") is 0xE3069283 (RFC 3720, B.4), masked as snappy's framing does.
        let crc: u32 = 0xE306_9283;
        assert_eq!(
            masked_crc32c(b"123456789"),
            crc.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn snappy_round_trip_in_pieces() {
        round_trip(Deflater::snappy(), Inflater::snappy());
    }

    #[test]
    fn deflate_round_trip_in_pieces() {
        round_trip(Deflater::deflate(6), Inflater::deflate());
    }

    #[test]
    fn snappy_interop_with_the_reference_framing() {
        use std::io::{Read, Write};
        let data = b"hello hello hello hello snappy framing".repeat(100);
        // Theirs -> ours.
        let mut w = snap::write::FrameEncoder::new(Vec::new());
        w.write_all(&data).unwrap();
        let wire = w.into_inner().unwrap();
        let mut plain = BytesMut::new();
        Inflater::snappy().feed(&wire, &mut plain).unwrap();
        assert_eq!(&plain[..], &data[..]);
        // Ours -> theirs.
        let mut wire = BytesMut::new();
        Deflater::snappy().encode(&data, &mut wire).unwrap();
        let mut back = Vec::new();
        snap::read::FrameDecoder::new(&wire[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn corrupt_snappy_is_an_error_not_a_panic() {
        let mut wire = BytesMut::new();
        Deflater::snappy()
            .encode(b"payload payload payload", &mut wire)
            .unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        assert!(
            Inflater::snappy()
                .feed(&wire, &mut BytesMut::new())
                .is_err()
        );
        assert!(
            Inflater::snappy()
                .feed(b"\x00\x05\x00\x00abcde", &mut BytesMut::new())
                .is_err()
        );
    }
}
