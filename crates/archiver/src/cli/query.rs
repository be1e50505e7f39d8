//! `archiver query` (JSON lines on stdout) and `archiver stats`.

use std::io::{self, BufWriter, Write};

use archiver::{Range, StoredMessage};
use serde_json::json;

use super::config::Config;
use super::{Setup, open_existing, retention::now_ns, time};

/// Messages read from the database at a time.
const PAGE: usize = 1000;

/// Arguments of `archiver query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Only this topic (default: every topic, merged in original order)
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Start of the range, inclusive (RFC 3339 with Z or an offset, nanoseconds since the epoch, "now", "-1h")
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the range, exclusive
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Print at most this many messages
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// Arguments of `archiver stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// One JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

/// One message as a JSON object. The body is a string when it is UTF-8, else `body_hex`.
pub fn to_json(m: &StoredMessage) -> serde_json::Value {
    let mut v = json!({
        "seq": m.seq,
        "topic": m.topic,
        "nsqd": m.nsqd,
        "id": String::from_utf8(m.msg_id.to_vec()).unwrap_or_else(|_| hex::encode(m.msg_id)),
        "nsqd_ts_ns": m.nsqd_ts_ns,
        "time": time::format(m.nsqd_ts_ns),
        "attempts": m.attempts,
        "archived_at_ms": m.archived_at_ms,
    });
    let obj = v.as_object_mut().expect("an object");
    match std::str::from_utf8(&m.body) {
        Ok(text) => obj.insert("body".into(), text.into()),
        Err(_) => obj.insert("body_hex".into(), hex::encode(&m.body).into()),
    };
    v
}

/// Prints the range as JSON lines. A closed stdout (`| head`) ends it quietly.
pub fn query(config: Config, args: QueryArgs) -> anyhow::Result<()> {
    let now = now_ns();
    let parse = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|t| time::parse(t, now).map_err(|e| Setup(format!("{flag}: {e}"))))
            .transpose()
    };
    let mut range = Range {
        topic: args.topic.clone(),
        from_ns: parse("--from", &args.from)?,
        to_ns: parse("--until", &args.until)?,
        after: None,
        limit: PAGE,
    };
    let store = open_existing(&config)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let mut left = args.limit.unwrap_or(u64::MAX);
    while left > 0 {
        let page = store.query(&range)?;
        for m in page
            .iter()
            .take(usize::try_from(left).unwrap_or(usize::MAX))
        {
            if let Err(err) = writeln!(out, "{}", to_json(m)) {
                return quiet_on_broken_pipe(err);
            }
            left -= 1;
        }
        match page.last() {
            Some(m) if page.len() == PAGE => range.after = Some(m.position()),
            _ => break,
        }
    }
    out.flush().or_else(quiet_on_broken_pipe)
}

fn quiet_on_broken_pipe(err: io::Error) -> anyhow::Result<()> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::anyhow!("writing to stdout: {err}"))
    }
}

/// Prints counts per topic, first and last time, and the database size.
pub fn stats(config: Config, args: StatsArgs) -> anyhow::Result<()> {
    let store = open_existing(&config)?;
    let stats = store.stats()?;
    let time = |ns: Option<i64>| ns.map(time::format);
    let text = if args.json {
        let topics: Vec<_> = stats
            .per_topic
            .iter()
            .map(|t| {
                json!({"topic": t.topic, "count": t.count, "first_ns": t.first_ns,
                       "last_ns": t.last_ns, "first": time(t.first_ns), "last": time(t.last_ns)})
            })
            .collect();
        let archivers: Vec<_> = stats
            .per_archiver
            .iter()
            .map(|a| json!({"archiver": a.archiver, "count": a.count}))
            .collect();
        let v = json!({"database": store.name(), "total": stats.total,
                       "db_bytes": stats.db_bytes, "topics": topics, "archivers": archivers});
        format!("{v}\n")
    } else {
        let mut s = format!(
            "database {}: {} messages, {} bytes\n",
            store.name(),
            stats.total,
            stats.db_bytes
        );
        s.push_str(&format!(
            "{:<32} {:>12}  {:<30}  {:<30}\n",
            "TOPIC", "MESSAGES", "FIRST", "LAST"
        ));
        for t in &stats.per_topic {
            let (first, last) = (time(t.first_ns), time(t.last_ns));
            s.push_str(&format!(
                "{:<32} {:>12}  {:<30}  {:<30}\n",
                t.topic,
                t.count,
                first.as_deref().unwrap_or("-"),
                last.as_deref().unwrap_or("-")
            ));
        }
        s.push_str(&format!(
            "\n{:<32} {:>12}\n",
            "STORED BY ARCHIVER", "MESSAGES"
        ));
        for a in &stats.per_archiver {
            let name = a.archiver.as_deref().unwrap_or("(not recorded)");
            s.push_str(&format!("{name:<32} {:>12}\n", a.count));
        }
        s
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .or_else(quiet_on_broken_pipe)
}

#[cfg(test)]
mod tests {
    use archiver::StoredMessage;

    fn stored(body: &[u8]) -> StoredMessage {
        StoredMessage {
            seq: 7,
            topic: "t".into(),
            nsqd: "n:4150".into(),
            msg_id: *b"0123456789abcdef",
            nsqd_ts_ns: 1_000_000_000,
            attempts: 2,
            archived_at_ms: 5,
            body: body.to_vec(),
        }
    }

    #[test]
    fn text_bodies_are_strings_and_binary_ones_hex() {
        let v = super::to_json(&stored(b"{\"a\":1}\n"));
        assert_eq!(v["body"], "{\"a\":1}\n");
        assert_eq!(v["id"], "0123456789abcdef");
        assert_eq!(v["time"], "1970-01-01T00:00:01.000000000Z");
        // One line whatever the body holds.
        assert!(!v.to_string().contains('\n'));
        let v = super::to_json(&stored(&[0xff, 0x00, 0x41]));
        assert_eq!(v["body_hex"], "ff0041");
        assert!(v.get("body").is_none());
    }
}
