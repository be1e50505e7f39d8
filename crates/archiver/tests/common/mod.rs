//! Helpers shared by the integration tests: owned messages and whole-range reads.
#![allow(dead_code)] // each test binary uses a different subset

use archiver::{BatchOutcome, NewMessage, Range, Store, StoredMessage};

/// An owned message, so tests can build batches without juggling lifetimes.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub nsqd: String,
    pub msg_id: [u8; 16],
    pub nsqd_ts_ns: i64,
    pub attempts: u16,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn as_new(&self) -> NewMessage<'_> {
        NewMessage {
            topic: &self.topic,
            nsqd: &self.nsqd,
            msg_id: self.msg_id,
            nsqd_ts_ns: self.nsqd_ts_ns,
            attempts: self.attempts,
            body: &self.body,
        }
    }
}

/// NSQ message ids are 16 hex characters; derive one from a number.
pub fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(format!("{n:016x}").as_bytes());
    id
}

pub fn msg(topic: &str, nsqd: &str, n: u64, nsqd_ts_ns: i64, body: &[u8]) -> Msg {
    Msg {
        topic: topic.to_owned(),
        nsqd: nsqd.to_owned(),
        msg_id: msg_id(n),
        nsqd_ts_ns,
        attempts: 1,
        body: body.to_vec(),
    }
}

pub fn insert(store: &mut Store, msgs: &[Msg]) -> BatchOutcome {
    let batch: Vec<NewMessage<'_>> = msgs.iter().map(Msg::as_new).collect();
    store.insert_batch(&batch).expect("insert_batch")
}

/// Reads a whole range page by page, the way the replayer and `archiver query` will.
pub fn read_all(store: &Store, range: &Range) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut range = range.clone();
    loop {
        let page = store.query(&range).expect("query");
        let done = page.len() < range.limit;
        if let Some(last) = page.last() {
            range.after = Some(last.position());
        }
        out.extend(page);
        if done {
            return out;
        }
    }
}

/// Asserts that a stored message is exactly the message that was inserted.
pub fn assert_same(stored: &StoredMessage, sent: &Msg) {
    assert_eq!(stored.topic, sent.topic);
    assert_eq!(stored.nsqd, sent.nsqd);
    assert_eq!(stored.msg_id, sent.msg_id);
    assert_eq!(stored.nsqd_ts_ns, sent.nsqd_ts_ns);
    assert_eq!(stored.attempts, sent.attempts);
    assert_eq!(stored.body, sent.body, "body of seq {}", stored.seq);
}
