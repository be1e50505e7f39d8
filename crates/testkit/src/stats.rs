//! Typed views of nsqd's `/stats` and nsqlookupd's `/lookup` and `/nodes` (the parts tests use).

use serde::Deserialize;

/// nsqd `/stats?format=json` (only the fields tests read).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct NsqdStats {
    /// nsqd version string.
    #[serde(default)]
    pub version: String,
    /// One entry per topic (filtered when `topic=` was given).
    #[serde(default)]
    pub topics: Vec<TopicStats>,
}

/// One topic of nsqd `/stats`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct TopicStats {
    /// Topic name.
    pub topic_name: String,
    /// Messages waiting in the topic (not yet copied to channels).
    #[serde(default)]
    pub depth: i64,
    /// Messages published to the topic since nsqd started.
    #[serde(default)]
    pub message_count: u64,
    /// Channels of the topic.
    #[serde(default)]
    pub channels: Vec<ChannelStats>,
}

/// One channel of nsqd `/stats`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ChannelStats {
    /// Channel name.
    pub channel_name: String,
    /// Messages waiting (memory + disk).
    #[serde(default)]
    pub depth: i64,
    /// Messages sent to a client and not yet finished.
    #[serde(default)]
    pub in_flight_count: i64,
    /// Deferred (DPUB or REQ with delay) messages.
    #[serde(default)]
    pub deferred_count: i64,
    /// Messages that passed through the channel.
    #[serde(default)]
    pub message_count: u64,
    /// REQ count.
    #[serde(default)]
    pub requeue_count: u64,
    /// Messages that hit msg_timeout.
    #[serde(default)]
    pub timeout_count: u64,
    /// Subscribed clients.
    #[serde(default)]
    pub client_count: u64,
    /// Per-client details.
    #[serde(default)]
    pub clients: Vec<ClientStats>,
}

/// One subscribed client of a channel.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ClientStats {
    /// `client_id` from IDENTIFY.
    #[serde(default)]
    pub client_id: String,
    /// `user_agent` from IDENTIFY.
    #[serde(default)]
    pub user_agent: String,
    /// Current RDY count.
    #[serde(default)]
    pub ready_count: i64,
    /// Messages in flight to this client.
    #[serde(default)]
    pub in_flight_count: i64,
    /// Messages delivered to this client.
    #[serde(default)]
    pub message_count: u64,
    /// FINs received from this client.
    #[serde(default)]
    pub finish_count: u64,
    /// REQs received from this client.
    #[serde(default)]
    pub requeue_count: u64,
    /// Whether the connection is TLS.
    #[serde(default)]
    pub tls: bool,
    /// Whether snappy is on.
    #[serde(default)]
    pub snappy: bool,
    /// Whether deflate is on.
    #[serde(default)]
    pub deflate: bool,
    /// Whether AUTH succeeded.
    #[serde(default)]
    pub authed: bool,
}

impl NsqdStats {
    /// The topic's stats, if it exists.
    pub fn topic(&self, topic: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|t| t.topic_name == topic)
    }

    /// The channel's stats, if topic and channel exist.
    pub fn channel(&self, topic: &str, channel: &str) -> Option<&ChannelStats> {
        self.topic(topic)?
            .channels
            .iter()
            .find(|c| c.channel_name == channel)
    }
}

/// One nsqd as nsqlookupd lists it (`/lookup` producers and `/nodes`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
pub struct LookupProducer {
    /// Address clients should dial.
    #[serde(default)]
    pub broadcast_address: String,
    /// nsqd TCP port.
    #[serde(default)]
    pub tcp_port: u16,
    /// nsqd HTTP port.
    #[serde(default)]
    pub http_port: u16,
    /// nsqd version.
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Producers {
    #[serde(default)]
    pub producers: Vec<LookupProducer>,
}

/// nsqd writes `null` for an empty list (`"topics": null` when the topic does not exist yet);
/// the typed views read it as an empty list.
pub(crate) fn null_lists_to_empty(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if child.is_null()
                    && matches!(k.as_str(), "topics" | "channels" | "clients" | "producers")
                {
                    *child = serde_json::Value::Array(Vec::new());
                }
                null_lists_to_empty(child);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(null_lists_to_empty),
        _ => {}
    }
}

/// Accepts both response formats: the plain v1 body and the legacy
/// `{"status_code":…,"status_txt":…,"data":…}` wrapper.
pub(crate) fn unwrap_legacy(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(mut m)
            if m.contains_key("status_code") && m.contains_key("data") =>
        {
            m.remove("data").unwrap_or_default()
        }
        other => other,
    }
}
