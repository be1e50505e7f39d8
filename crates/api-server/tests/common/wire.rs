//! Raw HTTP/1.1 on the wire for the proxy tests: a client that writes bytes and parses responses by hand, and a
//! scripted upstream that answers as told and records the request heads it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::{ApiServer, NsqCluster};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;
/// A cluster, the upstreams announced through it, and an api-server routing to them.
pub struct Setup {
    pub _cluster: NsqCluster,
    pub _announcers: Vec<Announcer>,
    pub _data_server: Option<DataServer>,
    pub api: ApiServer,
}

/// An api-server in front of one real data-server process; also returns that server's id.
pub async fn with_data_server(id: &str) -> (Setup, String) {
    with_data_server_and(id, &[]).await
}

/// [`with_data_server`], the api-server with `extra` settings.
pub async fn with_data_server_and(id: &str, extra: &[&str]) -> (Setup, String) {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", extra).await;
    let server = data_server(&cluster, id, "250ms").await;
    wait_servers(&api, 1).await;
    let id = server.id().to_owned();
    let setup = Setup {
        _cluster: cluster,
        _announcers: Vec::new(),
        _data_server: Some(server),
        api,
    };
    (setup, id)
}

/// An api-server in front of the scripted upstreams at `addrs`, each announced by heartbeats from this test.
pub async fn with_upstreams(addrs: &[SocketAddr]) -> Setup {
    with_upstreams_and(addrs, &[]).await
}

/// [`with_upstreams`], the api-server with `extra` settings.
pub async fn with_upstreams_and(addrs: &[SocketAddr], extra: &[&str]) -> Setup {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", extra).await;
    let announcers = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            announcer(
                &cluster,
                &format!("scripted-{i}"),
                &addr.to_string(),
                Duration::from_millis(200),
            )
        })
        .collect();
    wait_servers(&api, addrs.len()).await;
    Setup {
        _cluster: cluster,
        _announcers: announcers,
        _data_server: None,
        api,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The client side: raw bytes out, responses parsed by hand.

/// One response as the client read it off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body's bytes, with any chunked coding removed.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}), found {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A raw client connection to the proxy (or the read half of one).
pub struct Wire<S> {
    pub stream: S,
    /// Bytes read but not yet parsed.
    pub buf: Vec<u8>,
}

impl Wire<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Wire<TcpStream> {
        let stream = TcpStream::connect(addr).await.unwrap();
        // Each write goes out as written: the proxy must cope with whatever segments arrive.
        stream.set_nodelay(true).unwrap();
        Wire::new(stream)
    }
}

impl<S> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }
}

impl<S: AsyncRead + Unpin> Wire<S> {
    /// Reads more bytes into the buffer; 0 at EOF (a reset counts as EOF). Fails if nothing comes within `SOON`.
    pub async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(SOON, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing from the proxy within {SOON:?}; unparsed so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            });
        let n = read.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next `n` bytes.
    pub async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await > 0,
                "connection closed with {} of {n} expected bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// The next line, without its CRLF.
    pub async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill().await > 0,
                "connection closed inside a line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads one response; `head_request` when it answers a HEAD (no body whatever the headers say).
    pub async fn response(&mut self, head_request: bool) -> Response {
        let (status, headers) = loop {
            let mut parsed = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut parsed);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = r.code.unwrap();
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.buf.drain(..n);
                    break (status, headers);
                }
                Ok(httparse::Status::Partial) => {
                    assert!(
                        self.fill().await > 0,
                        "connection closed before a whole response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
                Err(e) => panic!(
                    "not an HTTP response ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        };
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return response;
        }
        let chunked = response
            .header("transfer-encoding")
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        if chunked {
            response.chunked = true;
            response.body = self.dechunk().await;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            response.body = self.take(length).await;
        } else {
            // Delimited by the close.
            while self.fill().await > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// Decodes a chunked body (RFC 9112 section 7.1), trailers skipped.
    pub async fn dechunk(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = line.split(|&b| b == b';').next().unwrap();
            let size = std::str::from_utf8(size).unwrap().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|e| panic!("bad chunk size line {line:?}: {e}"));
            if size == 0 {
                while !self.line().await.is_empty() {}
                return body;
            }
            body.extend_from_slice(&self.take(size).await);
            assert_eq!(self.take(2).await, b"\r\n", "chunk data not ended by CRLF");
        }
    }

    /// Asserts the proxy closes the connection (EOF or reset) with nothing more to read.
    pub async fn assert_closed(&mut self, what: &str) {
        assert!(
            self.buf.is_empty(),
            "{what}: unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut byte = [0u8; 1];
        match tokio::time::timeout(SOON, self.stream.read(&mut byte)).await {
            Err(_) => panic!("{what}: the connection was still open after {SOON:?}"),
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(_)) => panic!("{what}: a byte arrived where the connection should have closed"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The scripted upstream.

/// What the scripted upstream does with one request.
pub struct Reply {
    /// The raw answer.
    pub bytes: Vec<u8>,
    /// Whether the request body is read before answering; false answers early and leaves it unread.
    pub read_body: bool,
    /// Whether the response head goes out as soon as the request head is in, and the rest of the answer only once
    /// the body is read (a server that streams its answer while it reads, like an echo).
    pub head_first: bool,
    pub after: After,
}

/// What becomes of the connection after an answer.
pub enum After {
    /// It waits for the next request.
    Next,
    /// It closes at once.
    Close,
    /// It sits idle this long, then closes and reports the close.
    CloseIdle(Duration),
}

impl Reply {
    /// A keep-alive answer with a `content-length` body, sent after reading the request body.
    pub fn ok(status_line: &str, extra_headers: &str, body: &[u8]) -> Reply {
        let mut bytes = format!(
            "HTTP/1.1 {status_line}\r\ncontent-length: {}\r\n{extra_headers}\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Reply {
            bytes,
            read_body: true,
            head_first: false,
            after: After::Next,
        }
    }
}

/// A TCP upstream on loopback that answers each request as its script says and records every request head.
pub struct Scripted {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<Vec<u8>>>>,
    /// One message each time a connection is closed by [`After::CloseIdle`].
    pub idle_closes: mpsc::UnboundedReceiver<()>,
}

impl Scripted {
    pub async fn start(script: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (closed_tx, idle_closes) = mpsc::unbounded_channel();
        let script = Arc::new(script);
        let seen = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, seen, closed) =
                    (Arc::clone(&script), Arc::clone(&seen), closed_tx.clone());
                tokio::spawn(async move {
                    let mut conn = Wire::new(stream);
                    loop {
                        let Some(head) = conn.request_head().await else {
                            return;
                        };
                        seen.lock().unwrap().push(head.clone());
                        let reply = script(&head);
                        let mut bytes = &reply.bytes[..];
                        if reply.head_first {
                            let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                            if conn.stream.write_all(&bytes[..end]).await.is_err() {
                                return;
                            }
                            bytes = &bytes[end..];
                        }
                        if reply.read_body && !conn.skip_body(&head).await {
                            return;
                        }
                        if conn.stream.write_all(bytes).await.is_err() {
                            return;
                        }
                        match reply.after {
                            After::Next => {}
                            After::Close => return,
                            After::CloseIdle(idle) => {
                                tokio::time::sleep(idle).await;
                                drop(conn);
                                let _ = closed.send(());
                                return;
                            }
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            heads,
            idle_closes,
        }
    }

    /// How many requests it has received.
    pub fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    /// The last request head it received, as text.
    pub fn last_head(&self) -> String {
        let heads = self.heads.lock().unwrap();
        String::from_utf8_lossy(heads.last().expect("a request reached the upstream")).into_owned()
    }
}

impl Wire<TcpStream> {
    /// The upstream side: the next request head, or `None` when the proxy closed the connection.
    pub async fn request_head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(self.buf.drain(..i + 4).collect());
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The upstream side: reads and drops a `content-length` request body; false when the connection closed first.
    pub async fn skip_body(&mut self, head: &[u8]) -> bool {
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut parsed);
        r.parse(head).unwrap();
        let length: usize = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        while self.buf.len() < length {
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.buf.drain(..length);
        true
    }
}

/// The value of header `name` in a raw request head (first one).
pub fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// `api_http_connections_closed_total` for `reason`, once it reached `at_least` (or after `SOON`).
pub async fn closed(api: &ApiServer, reason: &str, at_least: f64) -> f64 {
    let sample = format!("api_http_connections_closed_total{{reason=\"{reason}\"}}");
    wait_metric(api, &sample, at_least).await
}
