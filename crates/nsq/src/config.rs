//! Connection settings shared by producers and consumers, with go-nsq's defaults where they
//! are sound.

use std::path::PathBuf;
use std::time::Duration;

/// What nsqd should do with its output buffer for this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputBuffer {
    /// nsqd's defaults (16 KiB, flushed at least every 250 ms). Best throughput; a lone message
    /// may wait up to the timeout when RDY > 1.
    #[default]
    ServerDefault,
    /// Every message is written at once (`-1` for both). Lowest latency, for low-rate topics
    /// such as heartbeats.
    Unbuffered,
    /// Explicit size (64..65536 bytes) and flush timeout (nsqd accepts 1 ms..30 s, bounded by
    /// its `--min-output-buffer-timeout`, default 25 ms).
    Buffered {
        /// Buffer size in bytes.
        size: u32,
        /// Longest time a message may sit in the buffer.
        timeout: Duration,
    },
}

/// Compression to negotiate. Turned on only when nsqd's IDENTIFY reply agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// Snappy framing format.
    Snappy,
    /// Raw DEFLATE at this level (1..=9, capped by nsqd's `max_deflate_level`).
    Deflate(u32),
}

/// TLS settings. Certificates are always verified.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain to present (nsqd `--tls-client-auth-policy`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Name to verify the certificate against; default: the host part of the nsqd address.
    pub server_name: Option<String>,
}

/// Settings of one connection to nsqd, sent in IDENTIFY or used locally.
#[derive(Debug, Clone)]
pub struct Config {
    /// `client_id` in IDENTIFY (shown in nsqadmin). Default: the short hostname.
    pub client_id: String,
    /// `hostname` in IDENTIFY.
    pub hostname: String,
    /// `user_agent` in IDENTIFY.
    pub user_agent: String,
    /// How often nsqd sends a heartbeat (1 s..60 s); `None` turns heartbeats off.
    pub heartbeat_interval: Option<Duration>,
    /// Server-side timeout of a message before it is redelivered; `None`: nsqd's default (60 s).
    pub msg_timeout: Option<Duration>,
    /// nsqd's output buffering for this client.
    pub output_buffer: OutputBuffer,
    /// Deliver only this percentage (1..=99) of messages; 0 delivers all.
    pub sample_rate: u8,
    /// Bound on TCP connect plus the whole handshake (IDENTIFY, TLS, AUTH, SUB).
    pub dial_timeout: Duration,
    /// Bound on one write to the socket.
    pub write_timeout: Duration,
    /// Largest frame accepted from nsqd (protects memory against a hostile peer).
    pub max_frame_size: usize,
    /// TLS, when wanted. nsqd must have TLS configured.
    pub tls: Option<TlsConfig>,
    /// Compression to ask for.
    pub compression: Compression,
    /// Secret for AUTH, sent only when nsqd says `auth_required`.
    pub auth_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let hostname = hostname();
        Self {
            client_id: hostname.split('.').next().unwrap_or("client").to_string(),
            hostname,
            user_agent: concat!("nsq-discovery-rs/", env!("CARGO_PKG_VERSION")).to_string(),
            heartbeat_interval: Some(Duration::from_secs(30)),
            msg_timeout: None,
            output_buffer: OutputBuffer::ServerDefault,
            sample_rate: 0,
            dial_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_frame_size: 4 * 1024 * 1024,
            tls: None,
            compression: Compression::None,
            auth_secret: None,
        }
    }
}

impl Config {
    /// How long the connection may stay silent before it is considered dead: two heartbeat
    /// intervals (nsqd's own rule for clients) plus a margin; without heartbeats, never.
    pub(crate) fn read_timeout(&self) -> Option<Duration> {
        self.heartbeat_interval
            .map(|hb| hb * 2 + Duration::from_secs(1))
    }

    /// The rustls client settings for `tls`, built once per client and shared by its
    /// connections; `None` without TLS.
    pub(crate) fn tls_client_config(
        &self,
    ) -> crate::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        self.tls.as_ref().map(crate::tls::client_config).transpose()
    }

    /// Checks the ranges nsqd would refuse in IDENTIFY, before connecting.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
        if let Some(hb) = self.heartbeat_interval
            && !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&hb)
        {
            return bad(format!("heartbeat_interval must be 1s..60s, got {hb:?}"));
        }
        if let Some(t) = self.msg_timeout
            && !(Duration::from_secs(1)..=Duration::from_secs(15 * 60)).contains(&t)
        {
            return bad(format!("msg_timeout must be 1s..15m, got {t:?}"));
        }
        if let OutputBuffer::Buffered { size, timeout } = self.output_buffer {
            if !(64..=65536).contains(&size) {
                return bad(format!("output buffer size must be 64..65536, got {size}"));
            }
            if !(Duration::from_millis(1)..=Duration::from_secs(30)).contains(&timeout) {
                return bad(format!(
                    "output buffer timeout must be 1ms..30s, got {timeout:?}"
                ));
            }
        }
        if self.sample_rate > 99 {
            return bad(format!(
                "sample_rate must be 0..99, got {}",
                self.sample_rate
            ));
        }
        if let Compression::Deflate(level) = self.compression
            && !(1..=9).contains(&level)
        {
            return bad(format!("deflate level must be 1..9, got {level}"));
        }
        if self.max_frame_size < 1024 {
            return bad(format!(
                "max_frame_size must be at least 1024, got {}",
                self.max_frame_size
            ));
        }
        Ok(())
    }

    /// The IDENTIFY body.
    pub(crate) fn identify_json(&self) -> Vec<u8> {
        let ms = |d: Duration| d.as_millis() as i64;
        let (obs, obt) = match self.output_buffer {
            OutputBuffer::ServerDefault => (None, None),
            OutputBuffer::Unbuffered => (Some(-1), Some(-1)),
            OutputBuffer::Buffered { size, timeout } => (Some(i64::from(size)), Some(ms(timeout))),
        };
        let mut v = serde_json::json!({
            "client_id": self.client_id,
            "hostname": self.hostname,
            "user_agent": self.user_agent,
            "feature_negotiation": true,
            "heartbeat_interval": self.heartbeat_interval.map_or(-1, ms),
            "tls_v1": self.tls.is_some(),
            "snappy": self.compression == Compression::Snappy,
            "deflate": matches!(self.compression, Compression::Deflate(_)),
            "sample_rate": self.sample_rate,
        });
        let m = v.as_object_mut().expect("object");
        if let Compression::Deflate(level) = self.compression {
            m.insert("deflate_level".into(), level.into());
        }
        if let Some(t) = self.msg_timeout {
            m.insert("msg_timeout".into(), ms(t).into());
        }
        if let Some(s) = obs {
            m.insert("output_buffer_size".into(), s.into());
        }
        if let Some(t) = obt {
            m.insert("output_buffer_timeout".into(), t.into());
        }
        serde_json::to_vec(&v).expect("serialisable")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// nsqd's reply to IDENTIFY with feature negotiation (fields the client uses).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct IdentifyReply {
    /// Largest RDY this nsqd accepts.
    #[serde(default = "default_max_rdy")]
    pub max_rdy_count: u64,
    /// nsqd version.
    #[serde(default)]
    pub version: String,
    /// Longest msg_timeout allowed (ms).
    #[serde(default)]
    pub max_msg_timeout: u64,
    /// Effective msg_timeout (ms).
    #[serde(default)]
    pub msg_timeout: u64,
    /// TLS agreed.
    #[serde(default)]
    pub tls_v1: bool,
    /// Deflate agreed.
    #[serde(default)]
    pub deflate: bool,
    /// Deflate level agreed.
    #[serde(default)]
    pub deflate_level: u32,
    /// Snappy agreed.
    #[serde(default)]
    pub snappy: bool,
    /// AUTH must follow.
    #[serde(default)]
    pub auth_required: bool,
}

fn default_max_rdy() -> u64 {
    2500
}

impl IdentifyReply {
    /// What to assume when nsqd answers a plain `OK` (no feature negotiation).
    pub(crate) fn legacy() -> Self {
        Self {
            max_rdy_count: default_max_rdy(),
            ..Default::default()
        }
    }
}
