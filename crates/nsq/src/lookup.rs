//! nsqlookupd discovery: `GET /lookup?topic=` in either response format, over `http://` or `https://`
//! (rustls, certificates always verified, with the same CA and client certificate as the nsqd
//! connections), one hyper HTTP/1.1 request on a fresh connection each time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::rt::{Read, Write};
use serde::Deserialize;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
struct Producer {
    broadcast_address: String,
    tcp_port: u16,
}

#[derive(Debug, Default, Deserialize)]
struct LookupBody {
    #[serde(default)]
    producers: Vec<Producer>,
    #[serde(default)]
    channels: Vec<String>,
}

/// One topic as nsqlookupd lists it ([`Lookupd::lookup_topic`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicLookup {
    /// nsqd TCP addresses (`host:port`) that have the topic.
    pub producers: Vec<String>,
    /// The topic's channels, each name once.
    pub channels: Vec<String>,
}

/// Queries nsqlookupd's HTTP API.
#[derive(Debug, Clone)]
pub struct Lookupd {
    timeout: Duration,
    https: Arc<rustls::ClientConfig>,
}

impl Lookupd {
    /// A client whose queries time out after `timeout`; `https://` addresses are verified
    /// against the built-in web roots.
    pub fn new(timeout: Duration) -> Result<Self> {
        Self::with_tls(timeout, None)
    }

    /// A client whose `https://` queries use `tls` (CA file, client certificate; `server_name`
    /// does not apply: the URL's host is verified), or the built-in web roots without it.
    pub fn with_tls(timeout: Duration, tls: Option<&TlsConfig>) -> Result<Self> {
        let https = crate::tls::client_config(tls.unwrap_or(&TlsConfig::default()))?;
        Ok(Self { timeout, https })
    }

    /// The nsqd TCP addresses (`host:port`) that `lookupd` (an HTTP `host:port` or URL) lists
    /// for `topic`. An unknown topic is an empty list: it just has no producer yet.
    pub async fn lookup(&self, lookupd: &str, topic: &str) -> Result<Vec<String>> {
        let body = self.get(lookupd, &lookup_path(topic)).await?;
        parse_lookup(&body.unwrap_or_default()).map_err(|reason| Error::Lookup {
            addr: lookupd.to_string(),
            reason,
        })
    }

    /// What `lookupd` lists for `topic`: its nsqd, as [`lookup`](Self::lookup) returns them, and its channels (on
    /// any nsqd, each name once), in one query. An unknown topic has neither.
    pub async fn lookup_topic(&self, lookupd: &str, topic: &str) -> Result<TopicLookup> {
        let body = self.get(lookupd, &lookup_path(topic)).await?;
        let err = |reason| Error::Lookup {
            addr: lookupd.to_string(),
            reason,
        };
        let body = body.unwrap_or_default();
        Ok(TopicLookup {
            producers: parse_lookup(&body).map_err(err)?,
            channels: parse_body(&body).map_err(err)?.channels,
        })
    }

    /// The TCP address (`host:port`) of every nsqd registered with `lookupd` (`GET /nodes`).
    pub async fn nodes(&self, lookupd: &str) -> Result<Vec<String>> {
        let body = self.get(lookupd, "/nodes").await?;
        parse_lookup(&body.unwrap_or_default()).map_err(|reason| Error::Lookup {
            addr: lookupd.to_string(),
            reason,
        })
    }

    /// `GET path` of `lookupd`: the body of a 2xx answer, `None` for 404 (an unknown topic).
    async fn get(&self, lookupd: &str, path: &str) -> Result<Option<Bytes>> {
        let base = if lookupd.starts_with("http://") || lookupd.starts_with("https://") {
            lookupd.trim_end_matches('/').to_string()
        } else {
            format!("http://{lookupd}")
        };
        let err = |reason: String| Error::Lookup {
            addr: lookupd.to_string(),
            reason,
        };
        let url = format!("{base}{path}");
        let (status, body) = tokio::time::timeout(self.timeout, self.get_url(&url))
            .await
            .map_err(|_| err(format!("no answer within {:?}", self.timeout)))?
            .map_err(err)?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(Some(body))
    }

    /// One `GET` on a fresh connection, over TLS for `https://` (a poll every few seconds does
    /// not need a pool).
    async fn get_url(&self, url: &str) -> std::result::Result<(StatusCode, Bytes), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let authority = uri.authority().ok_or("URL without a host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::ACCEPT, ACCEPT)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if !https {
            return send(hyper_util::rt::TokioIo::new(tcp), request).await;
        }
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.https))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(hyper_util::rt::TokioIo::new(tls), request).await
    }
}

/// Sends `request` as the only one on `io` and reads the whole answer.
async fn send<T>(
    io: T,
    request: http::Request<Empty<Bytes>>,
) -> std::result::Result<(StatusCode, Bytes), String>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection; it ends with the response, when `sender` is dropped.
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// The `Accept` header that asks nsqlookupd for the v1 format.
const ACCEPT: &str = "application/vnd.nsq; version=1.0";

/// `/lookup?topic=…` with the topic percent-encoded: the `#` of `name#ephemeral` would otherwise
/// start a URL fragment and nsqlookupd would be asked about `name`.
fn lookup_path(topic: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", topic)
        .finish();
    format!("/lookup?{query}")
}

/// Parses a `/lookup` (or `/nodes`) body in the v1 format or the legacy `{status_code, data}`
/// wrapper: the producers' TCP addresses. An empty body (a 404) lists none.
pub(crate) fn parse_lookup(body: &[u8]) -> std::result::Result<Vec<String>, String> {
    let body = parse_body(body)?;
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

/// A `/lookup` or `/nodes` answer in either format; an empty body or a legacy 404 is an empty answer.
fn parse_body(body: &[u8]) -> std::result::Result<LookupBody, String> {
    if body.is_empty() {
        return Ok(LookupBody::default());
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let v = match v {
        serde_json::Value::Object(mut m) if m.contains_key("status_code") => {
            let code = m
                .get("status_code")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            if code == 404 {
                return Ok(LookupBody::default());
            }
            if code != 200 {
                return Err(format!("status_code {code}"));
            }
            m.remove("data").unwrap_or_default()
        }
        other => other,
    };
    serde_json::from_value(v).map_err(|e| format!("unexpected JSON: {e}"))
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
        assert_eq!(parse_body(v1).unwrap().channels, vec!["c"]);
        assert!(parse_body(missing).unwrap().channels.is_empty());
        assert!(parse_lookup(b"<html>").is_err());
        assert!(parse_lookup(br#"{"producers":[{"tcp_port":"x"}]}"#).is_err());
    }

    #[test]
    fn the_topic_is_percent_encoded() {
        assert_eq!(lookup_path("hb"), "/lookup?topic=hb");
        assert_eq!(lookup_path("hb#ephemeral"), "/lookup?topic=hb%23ephemeral");
    }
}
