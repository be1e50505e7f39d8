//! Encoding of every client command of the V2 protocol: `NAME[ param]*\n`, some followed by a
//! body `[u32 size][bytes]`. One small function each; all append to a caller's buffer so a
//! writer can batch many commands into one syscall.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::message::MessageId;

/// The protocol magic a client sends once, first.
pub const MAGIC_V2: &[u8] = b"  V2";

fn line(buf: &mut BytesMut, name: &[u8], params: &[&[u8]]) {
    buf.put_slice(name);
    for p in params {
        buf.put_u8(b' ');
        buf.put_slice(p);
    }
    buf.put_u8(b'\n');
}

fn sized(buf: &mut BytesMut, body: &[u8]) {
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
}

/// `IDENTIFY` with its JSON body.
pub fn identify(buf: &mut BytesMut, json: &[u8]) {
    line(buf, b"IDENTIFY", &[]);
    sized(buf, json);
}

/// `AUTH` with the secret as body.
pub fn auth(buf: &mut BytesMut, secret: &[u8]) {
    line(buf, b"AUTH", &[]);
    sized(buf, secret);
}

/// `SUB topic channel`.
pub fn sub(buf: &mut BytesMut, topic: &str, channel: &str) {
    line(buf, b"SUB", &[topic.as_bytes(), channel.as_bytes()]);
}

/// `PUB topic` + body.
pub fn publish(buf: &mut BytesMut, topic: &str, body: &[u8]) {
    buf.reserve(topic.len() + body.len() + 9);
    line(buf, b"PUB", &[topic.as_bytes()]);
    sized(buf, body);
}

/// `MPUB topic` + `[u32 size][u32 count]([u32 len][bytes])*`.
pub fn multi_publish<B: AsRef<[u8]>>(buf: &mut BytesMut, topic: &str, bodies: &[B]) {
    let payload: usize = bodies.iter().map(|b| 4 + b.as_ref().len()).sum::<usize>() + 4;
    buf.reserve(topic.len() + 10 + payload);
    line(buf, b"MPUB", &[topic.as_bytes()]);
    buf.put_u32(payload as u32);
    buf.put_u32(bodies.len() as u32);
    for b in bodies {
        sized(buf, b.as_ref());
    }
}

/// `DPUB topic delay_ms` + body.
pub fn deferred_publish(buf: &mut BytesMut, topic: &str, delay: Duration, body: &[u8]) {
    let ms = delay.as_millis().to_string();
    line(buf, b"DPUB", &[topic.as_bytes(), ms.as_bytes()]);
    sized(buf, body);
}

/// `RDY n`.
pub fn rdy(buf: &mut BytesMut, count: u64) {
    line(buf, b"RDY", &[count.to_string().as_bytes()]);
}

/// `FIN id`.
pub fn fin(buf: &mut BytesMut, id: &MessageId) {
    line(buf, b"FIN", &[id]);
}

/// `REQ id delay_ms`.
pub fn req(buf: &mut BytesMut, id: &MessageId, delay: Duration) {
    let ms = delay.as_millis().to_string();
    line(buf, b"REQ", &[id, ms.as_bytes()]);
}

/// `TOUCH id`.
pub fn touch(buf: &mut BytesMut, id: &MessageId) {
    line(buf, b"TOUCH", &[id]);
}

/// `CLS`: ask nsqd to stop sending messages (it answers `CLOSE_WAIT`).
pub fn cls(buf: &mut BytesMut) {
    line(buf, b"CLS", &[]);
}

/// `NOP`: the answer to a heartbeat.
pub fn nop(buf: &mut BytesMut) {
    line(buf, b"NOP", &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        f(&mut b);
        b.to_vec()
    }

    #[test]
    fn encodings_match_the_spec() {
        let id = *b"0123456789abcdef";
        assert_eq!(enc(|b| sub(b, "t", "c#ephemeral")), b"SUB t c#ephemeral\n");
        assert_eq!(enc(|b| publish(b, "t", b"hi")), b"PUB t\n\0\0\0\x02hi");
        assert_eq!(
            enc(|b| multi_publish(b, "t", &[&b"a"[..], b"bc"])),
            b"MPUB t\n\0\0\0\x0f\0\0\0\x02\0\0\0\x01a\0\0\0\x02bc"
        );
        assert_eq!(
            enc(|b| deferred_publish(b, "t", Duration::from_millis(1500), b"x")),
            b"DPUB t 1500\n\0\0\0\x01x"
        );
        assert_eq!(enc(|b| rdy(b, 2500)), b"RDY 2500\n");
        assert_eq!(enc(|b| fin(b, &id)), b"FIN 0123456789abcdef\n");
        assert_eq!(
            enc(|b| req(b, &id, Duration::from_secs(2))),
            b"REQ 0123456789abcdef 2000\n"
        );
        assert_eq!(enc(|b| touch(b, &id)), b"TOUCH 0123456789abcdef\n");
        assert_eq!(enc(cls), b"CLS\n");
        assert_eq!(enc(nop), b"NOP\n");
        assert_eq!(enc(|b| auth(b, b"s")), b"AUTH\n\0\0\0\x01s");
        assert_eq!(enc(|b| identify(b, b"{}")), b"IDENTIFY\n\0\0\0\x02{}");
    }
}
