//! nsqlookupd discovery: `GET /lookup?topic=` in either response format.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
struct Producer {
    broadcast_address: String,
    tcp_port: u16,
}

#[derive(Debug, Deserialize)]
struct LookupBody {
    #[serde(default)]
    producers: Vec<Producer>,
}

/// Queries nsqlookupd's HTTP API.
#[derive(Debug, Clone)]
pub struct Lookupd {
    http: reqwest::Client,
}

impl Lookupd {
    /// A client whose queries time out after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self { http })
    }

    /// The nsqd TCP addresses (`host:port`) that `lookupd` (an HTTP `host:port` or URL) lists
    /// for `topic`. An unknown topic is an empty list: it just has no producer yet.
    pub async fn lookup(&self, lookupd: &str, topic: &str) -> Result<Vec<String>> {
        let base = if lookupd.starts_with("http://") || lookupd.starts_with("https://") {
            lookupd.trim_end_matches('/').to_string()
        } else {
            format!("http://{lookupd}")
        };
        let err = |reason: String| Error::Lookup {
            addr: lookupd.to_string(),
            reason,
        };
        let resp = self
            .http
            .get(format!("{base}/lookup?topic={topic}"))
            .header("Accept", "application/vnd.nsq; version=1.0")
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        parse_lookup(&body).map_err(err)
    }
}

/// Parses a `/lookup` body in the v1 format or the legacy `{status_code, data}` wrapper.
pub(crate) fn parse_lookup(body: &[u8]) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let v = match v {
        serde_json::Value::Object(mut m) if m.contains_key("status_code") => {
            let code = m
                .get("status_code")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            if code == 404 {
                return Ok(Vec::new());
            }
            if code != 200 {
                return Err(format!("status_code {code}"));
            }
            m.remove("data").unwrap_or_default()
        }
        other => other,
    };
    let body: LookupBody =
        serde_json::from_value(v).map_err(|e| format!("unexpected JSON: {e}"))?;
    Ok(body
        .producers
        .into_iter()
        .map(|p| {
            if p.broadcast_address.contains(':') {
                format!("[{}]:{}", p.broadcast_address, p.tcp_port)
            } else {
                format!("{}:{}", p.broadcast_address, p.tcp_port)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let v1 = br#"{"channels":["c"],"producers":[{"broadcast_address":"127.0.0.1","tcp_port":4150,"http_port":4151,"hostname":"h","version":"1.3.0"},{"broadcast_address":"::1","tcp_port":5150}]}"#;
        assert_eq!(
            parse_lookup(v1).unwrap(),
            vec!["127.0.0.1:4150", "[::1]:5150"]
        );
        let legacy = br#"{"status_code":200,"status_txt":"OK","data":{"producers":[{"broadcast_address":"h","tcp_port":1}]}}"#;
        assert_eq!(parse_lookup(legacy).unwrap(), vec!["h:1"]);
        let missing = br#"{"status_code":404,"status_txt":"TOPIC_NOT_FOUND","data":null}"#;
        assert!(parse_lookup(missing).unwrap().is_empty());
        assert!(parse_lookup(b"<html>").is_err());
        assert!(parse_lookup(br#"{"producers":[{"tcp_port":"x"}]}"#).is_err());
    }
}
