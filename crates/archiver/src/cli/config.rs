//! The archiver's configuration: `[archive]` and `[shutdown]`, loaded by `svc` from `-c FILE`,
//! `ARCHIVER__SECTION__KEY` variables and `--set section.key=value` flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use archiver::Database;
use serde::{Deserialize, Serialize};
use svc::{HostPort, HumanDuration, Invalid, LookupdAddr, NsqSection, Validate};

/// Prefix of the environment variables that override keys (`ARCHIVER__ARCHIVE__DATABASE`).
pub const ENV_PREFIX: &str = "ARCHIVER";
/// The durable channel the archiver reads each topic on.
pub const DEFAULT_CHANNEL: &str = "archive";
/// Messages per transaction at most.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Longest a received message waits for its batch to be committed.
pub const DEFAULT_BATCH_LATENCY: HumanDuration = HumanDuration::from_millis(50);
/// Messages in flight per topic: five batches, so the next ones fill while one commits and another
/// waits for its fsync (with 1,000, `bench archive`'s writer waited for messages a sixth of its time).
/// nsqd's default `--max-rdy-count` is 2,500 per connection.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 2500;
/// How long nsqd waits before redelivering a message whose batch could not be stored.
pub const DEFAULT_REQUEUE_DELAY: HumanDuration = HumanDuration::from_secs(5);
/// How often retention runs, when on.
pub const DEFAULT_RETENTION_INTERVAL: HumanDuration = HumanDuration::from_secs(60);
/// How often nsqlookupd is asked for the nsqd of each topic.
pub const DEFAULT_LOOKUPD_POLL_INTERVAL: HumanDuration = HumanDuration::from_secs(10);
/// Bound on a graceful shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
/// Largest max_in_flight accepted (nsqd allows a RDY of 2500 per connection by default).
pub const MAX_IN_FLIGHT: u64 = 100_000;
/// Largest batch accepted: a transaction of this many 1 MiB bodies is already a lot.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[archive]`
    pub archive: Archive,
    /// `[shutdown]`
    pub shutdown: ShutdownSection,
    /// `[nsq]`: TLS and AUTH towards nsqd (`run`, `replay`) and `https://` nsqlookupd.
    pub nsq: NsqSection,
}

/// `[archive]`: what to archive, where, and how.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Archive {
    /// The SQLite file, or a `postgres://` URL without password (required).
    pub database: Option<String>,
    /// File holding the PostgreSQL password (absent: `PGPASSWORD`, or none).
    pub database_password_file: Option<PathBuf>,
    /// The name this archiver's rows are attributed to in `stats` (absent: the host name).
    pub archiver_name: Option<String>,
    /// Topics to archive (required by `run`).
    pub topics: Vec<String>,
    /// Durable channel to read them on.
    pub channel: String,
    /// nsqlookupd HTTP addresses to discover nsqd through: `host:port`, or `https://host:port`.
    pub lookupd_http_addresses: Vec<LookupdAddr>,
    /// nsqd TCP addresses to read from directly (and the default destination of `replay`).
    pub nsqd_tcp_addresses: Vec<HostPort>,
    /// How often nsqlookupd is polled.
    pub lookupd_poll_interval: HumanDuration,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// Longest a message waits for its batch to commit.
    pub batch_latency: HumanDuration,
    /// Messages in flight per topic (RDY, summed over nsqd).
    pub max_in_flight: u64,
    /// Delay before nsqd redelivers a message whose batch failed to store.
    pub requeue_delay: HumanDuration,
    /// How long nsqd waits for a message's FIN before redelivering it (also after a crash of
    /// the archiver); absent: nsqd's `--msg-timeout` (60s by default).
    pub msg_timeout: Option<HumanDuration>,
    /// Delete messages older than this (by nsqd timestamp); absent or `"0s"`: keep everything.
    pub retention: Option<HumanDuration>,
    /// How often retention runs.
    pub retention_interval: HumanDuration,
    /// Where `run` (and `replay`) serve `/metrics` and `/healthz`; absent: no listener.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for Archive {
    fn default() -> Self {
        Archive {
            database: None,
            database_password_file: None,
            archiver_name: None,
            topics: Vec::new(),
            channel: DEFAULT_CHANNEL.to_owned(),
            lookupd_http_addresses: Vec::new(),
            nsqd_tcp_addresses: Vec::new(),
            lookupd_poll_interval: DEFAULT_LOOKUPD_POLL_INTERVAL,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_latency: DEFAULT_BATCH_LATENCY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            requeue_delay: DEFAULT_REQUEUE_DELAY,
            msg_timeout: None,
            retention: None,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            metrics_listen: None,
        }
    }
}

impl Config {}

impl Archive {
    /// The database `archive.database` names (validated already).
    pub fn database(&self) -> Database {
        let value = self.database.as_deref().expect("validated");
        Database::parse(value, self.database_password_file.as_deref()).expect("validated")
    }

    /// The archiver's name in the archive: `archive.archiver_name`, else the host name.
    pub fn archiver_name(&self) -> String {
        self.archiver_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "archiver".to_owned())
        })
    }

    /// The retention period, `None` when off.
    pub fn retention(&self) -> Option<std::time::Duration> {
        self.retention
            .map(HumanDuration::get)
            .filter(|d| !d.is_zero())
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Bound on draining at SIGTERM / SIGINT.
    pub timeout: HumanDuration,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

const TOPIC_NAME: &str = "a topic name NSQ accepts (1-64 characters of [.a-zA-Z0-9_-])";

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        self.nsq.validate("nsq")?;
        self.nsq
            .conn()
            .map_err(|err| Invalid::new("nsq", "TLS files the NSQ client can use", err))?;
        let a = &self.archive;
        const DATABASE: &str = "the path of the SQLite archive file, or a postgres:// URL";
        match &a.database {
            None => return Err(Invalid::new("archive.database", DATABASE, "nothing")),
            Some(p) if p.is_empty() => {
                return Err(Invalid::new("archive.database", DATABASE, "\"\""));
            }
            Some(value) => {
                if let Err(expected) = Database::parse(value, a.database_password_file.as_deref()) {
                    return Err(Invalid::new(
                        "archive.database",
                        expected,
                        format!("{:?}", without_password(value)),
                    ));
                }
            }
        }
        if let Some(name) = &a.archiver_name
            && (name.is_empty() || name.len() > 200 || name.chars().any(char::is_control))
        {
            return Err(Invalid::new(
                "archive.archiver_name",
                "1-200 printable characters",
                format!("{name:?}"),
            ));
        }
        for (i, topic) in a.topics.iter().enumerate() {
            if a.topics[..i].contains(topic) {
                return Err(Invalid::new(
                    format!("archive.topics[{i}]"),
                    "each topic once",
                    format!("{topic:?} again"),
                ));
            }
            if nsq::validate_topic(topic).is_err() || nsq::is_ephemeral(topic) {
                let found = format!("{topic:?}");
                return Err(Invalid::new(
                    format!("archive.topics[{i}]"),
                    TOPIC_NAME,
                    found,
                ));
            }
        }
        if nsq::validate_channel(&a.channel).is_err() || nsq::is_ephemeral(&a.channel) {
            return Err(Invalid::new(
                "archive.channel",
                "a durable channel name (1-64 characters of [.a-zA-Z0-9_-], not #ephemeral, \
                 so that nsqd keeps messages while the archiver is down)",
                format!("{:?}", a.channel),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&a.batch_size) {
            return Err(Invalid::new(
                "archive.batch_size",
                format!("1..={MAX_BATCH_SIZE}"),
                a.batch_size,
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&a.max_in_flight) {
            // One handler task per message in flight: bounded so a typo cannot spawn millions.
            return Err(Invalid::new(
                "archive.max_in_flight",
                format!("1..={MAX_IN_FLIGHT}"),
                a.max_in_flight,
            ));
        }
        a.batch_latency.require_positive("archive.batch_latency")?;
        if let Some(t) = a.msg_timeout {
            let range = std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(900);
            if !range.contains(&t.get()) || t.get() <= a.batch_latency.get() {
                return Err(Invalid::new(
                    "archive.msg_timeout",
                    "a duration of 1s..15m, longer than archive.batch_latency",
                    format!("\"{t}\""),
                ));
            }
        }
        a.lookupd_poll_interval
            .require_positive("archive.lookupd_poll_interval")?;
        a.retention_interval
            .require_positive("archive.retention_interval")?;
        self.shutdown.timeout.require_positive("shutdown.timeout")
    }
}

/// `value` with the password of a `scheme://user:password@host` URL masked, for error messages.
fn without_password(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc::ConfigLoader;

    fn load(sets: &[&str]) -> Result<Config, String> {
        ConfigLoader::new("ARCHIVER")
            .with_env(Vec::<(String, String)>::new())
            .set(sets.iter().copied())
            .load::<Config>()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = load(&[
            "archive.database=a.db",
            "archive.topics=a,b",
            "archive.retention=1h",
        ])
        .unwrap();
        assert_eq!(c.archive.channel, "archive");
        assert_eq!(c.archive.topics, ["a", "b"]);
        assert_eq!(
            c.archive.retention(),
            Some(std::time::Duration::from_secs(3600))
        );
        let off = load(&["archive.database=a.db", "archive.retention=0s"]).unwrap();
        assert_eq!(off.archive.retention(), None);
    }

    #[test]
    fn bad_values_are_one_line_naming_the_key() {
        let err = load(&["archive.database=a.db", "archive.topics=ok,bad topic"]).unwrap_err();
        assert!(
            err.contains("archive.topics[1]") && err.contains("\"bad topic\""),
            "{err}"
        );
        let err = load(&["archive.database=a.db", "archive.topics=a,b,a"]).unwrap_err();
        assert!(err.contains("archive.topics[2]"), "{err}");
        let err = load(&["archive.database=a.db", "archive.channel=x#ephemeral"]).unwrap_err();
        assert!(err.contains("archive.channel"), "{err}");
        let err = load(&[]).unwrap_err();
        assert!(err.contains("archive.database"), "{err}");
        let err = load(&["archive.database=a.db", "archive.batch_size=0"]).unwrap_err();
        assert!(err.contains("archive.batch_size"), "{err}");
        let err = load(&["archive.database=postgres://u:hunter2@h/db"]).unwrap_err();
        assert!(
            err.contains("archive.database_password_file") && !err.contains("hunter2"),
            "{err}"
        );
        let err = load(&[
            "archive.database=a.db",
            "archive.database_password_file=/run/secrets/pg",
        ])
        .unwrap_err();
        assert!(err.contains("postgres://"), "{err}");
    }

    /// `config/archiver.toml` and the README's config table name exactly the keys of
    /// [`Config`], and every value the file sets is the default, but for what the archiver
    /// needs to run at all (there is no default database, topic or nsqd).
    #[test]
    fn the_example_file_and_the_readme_match_the_defaults() {
        testkit::check_config_docs::<Config>(
            "archiver",
            &[
                "archive.database",
                "archive.topics",
                "archive.lookupd_http_addresses",
            ],
        );
    }
}
