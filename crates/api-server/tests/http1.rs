//! The proxy's HTTP/1.1 engine at the wire level: what a client writing raw bytes to `server.listen` sees.
//!
//! Upstreams are a real `data-server` process, or, for answers a data server cannot give (a chunked response to
//! an HTTP/1.0 client, a 503 once, connections closed while pooled, an early 413), a small upstream in this file
//! that answers scripted bytes and records the request heads it received. Both are announced to a real api-server
//! through heartbeats on a real nsqd.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::wire::*;
use common::*;
use sha2::{Digest, Sha256};
use testkit::NsqCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------------------------
// Against a real data server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_sent_in_pieces_is_echoed_intact() {
    let (Setup { api, .. }, id) = &with_data_server("ds-chunked").await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    // Split inside sizes, extensions, data and CRLFs; one chunk carries an extension.
    for piece in [
        &b"7;note=\"first piece\""[..],
        b"\r\nhello, \r",
        b"\n8\r\nchun",
        b"ked \r\n5\r\nworld\r\n",
        b"0\r",
        b"\n\r\n",
    ] {
        wire.send(piece).await;
    }
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response.chunked,
        "a chunked request is echoed chunked: {response:?}"
    );
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "hello, chunked world"
    );
    // The connection is still in step: the next request on it gets its own answer.
    wire.send(b"GET /whoami HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    let next = wire.response(false).await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.json()["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (Setup { api, .. }, id) = &with_data_server("ds-pipeline").await;
    let mut wire = Wire::connect(api.proxy()).await;
    // Each answer's length names its request.
    let requests: String = (1..=3)
        .map(|i| format!("GET /bytes/{i} HTTP/1.1\r\nHost: h1.test\r\n\r\n"))
        .collect();
    wire.send(requests.as_bytes()).await;
    for i in 1..=3 {
        let response = wire.response(false).await;
        assert_eq!(response.status, 200, "response {i}: {response:?}");
        assert_eq!(response.body.len(), i, "responses come in request order");
    }
    wire.send(b"GET /whoami HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    assert_eq!(wire.response(false).await.json()["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_close_or_keep_alive_as_they_ask() {
    let (Setup { api, .. }, id) = &with_data_server("ds-http10").await;
    // No keep-alive: one response, then the connection closes.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /whoami HTTP/1.0\r\n\r\n").await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["id"], id.as_str());
    wire.assert_closed("HTTP/1.0 without keep-alive").await;

    // Keep-alive asked for: granted and said so, and the connection carries a second request.
    let mut wire = Wire::connect(api.proxy()).await;
    for i in 1..=2 {
        wire.send(b"GET /whoami HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let response = wire.response(false).await;
        assert_eq!(response.status, 200, "request {i}: {response:?}");
        assert!(
            response
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "request {i}: {response:?}"
        );
        assert_eq!(response.json()["id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (Setup { api, .. }, _) = &with_data_server("ds-continue").await;
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8).collect();
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        format!(
            "PUT /upload HTTP/1.1\r\nHost: h1.test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // Nothing of the body is sent until the proxy says to go on.
    let interim = wire.response(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    wire.send(&body).await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    let json = response.json();
    assert_eq!(json["bytes"], body.len() as u64);
    assert_eq!(json["sha256"], hex::encode(Sha256::digest(&body)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_has_a_length_but_no_body() {
    let (Setup { api, .. }, _) = &with_data_server("ds-head").await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    let head = wire.response(true).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("1000"), "{head:?}");
    // Had any body followed the HEAD response, it would be read here as the next response.
    wire.send(b"GET /bytes/1000 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    let get = wire.response(false).await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.body.len(), 1000);
    assert!(
        get.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "the pattern bytes of /bytes/1000"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Against scripted upstreams.

/// A keep-alive upstream that answers every request with a chunked "hello world".
async fn chunked_hello() -> Scripted {
    Scripted::start(|_| Reply {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
        read_body: true,
        head_first: false,
        after: After::Next,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_gets_a_chunked_answer_dechunked_then_close() {
    let upstream = chunked_hello().await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    // Read with HTTP/1.0 rules: no chunked coding, so the body runs to the close.
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("transfer-encoding"),
        None,
        "HTTP/1.0 has no chunked coding: {response:?}"
    );
    assert_eq!(String::from_utf8_lossy(&response.body), "hello world");
    wire.assert_closed("HTTP/1.0 with a chunked upstream answer")
        .await;
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_reaches_the_upstream_in_origin_form() {
    let upstream = chunked_hello().await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET http://example.test/whoami HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(String::from_utf8_lossy(&response.body), "hello world");
    let head = upstream.last_head();
    assert!(
        head.starts_with("GET /whoami HTTP/1.1\r\n"),
        "the upstream got: {head}"
    );
    assert_eq!(
        head_header(&head, "x-forwarded-host").as_deref(),
        Some("example.test"),
        "the upstream got: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_and_malformed_heads_are_refused_before_the_upstream() {
    let upstream = chunked_hello().await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    // A well-formed request does reach the upstream: the count below can move.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(wire.response(false).await.status, 200);
    assert_eq!(upstream.requests(), 1);

    let cases: [(&str, &[u8], u16); 5] = [
        (
            "Content-Length with Transfer-Encoding: chunked",
            b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h1.test\r\n\r\n",
            400,
        ),
        (
            "two different Content-Length values",
            b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "HTTP/1.1 without Host",
            b"GET /whoami HTTP/1.1\r\nAccept: */*\r\n\r\n",
            400,
        ),
        (
            "a malformed chunk size",
            b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (what, request, status) in cases {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(request).await;
        let response = wire.response(false).await;
        assert_eq!(response.status, status, "{what}: {response:?}");
        wire.assert_closed(what).await;
        assert_eq!(
            upstream.requests(),
            1,
            "{what}: reached the upstream:\n{}",
            upstream.last_head()
        );
    }
    // The 501 is a refusal of something well-formed, counted apart.
    assert_eq!(
        closed(api, "malformed", 4.0).await,
        4.0,
        "{}",
        api.metrics().await.unwrap()
    );
    assert_eq!(
        closed(api, "unsupported", 1.0).await,
        1.0,
        "{}",
        api.metrics().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_for_a_get_but_not_for_a_post() {
    // Two upstreams sharing one switch: whichever gets the next request answers 503 to it and flips the switch.
    let fail_next = Arc::new(AtomicBool::new(false));
    let mut upstreams = Vec::new();
    for _ in 0..2 {
        let fail_next = Arc::clone(&fail_next);
        upstreams.push(
            Scripted::start(move |_| {
                if fail_next.swap(false, Ordering::SeqCst) {
                    Reply::ok("503 Service Unavailable", "", b"busy")
                } else {
                    Reply::ok("200 OK", "", b"done")
                }
            })
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let Setup { api, .. } = &with_upstreams(&addrs).await;
    let requests = |upstreams: &[Scripted]| upstreams.iter().map(Scripted::requests).sum::<usize>();

    fail_next.store(true, Ordering::SeqCst);
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /retry HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    let response = wire.response(false).await;
    assert_eq!(
        response.status, 200,
        "a GET goes to the other server: {response:?}"
    );
    assert_eq!(String::from_utf8_lossy(&response.body), "done");
    assert_eq!(
        upstreams.iter().map(Scripted::requests).collect::<Vec<_>>(),
        [1, 1],
        "one try on each server"
    );

    fail_next.store(true, Ordering::SeqCst);
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"POST /retry HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 4\r\n\r\ndata")
        .await;
    let response = wire.response(false).await;
    assert_eq!(
        response.status, 503,
        "a POST is not sent twice: {response:?}"
    );
    assert_eq!(String::from_utf8_lossy(&response.body), "busy");
    assert_eq!(requests(&upstreams), 3, "the POST was tried once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_the_upstream_are_replaced() {
    // One keep-alive answer per connection, then the connection idles 50 ms and closes.
    let mut upstream = Scripted::start(|_| Reply {
        after: After::CloseIdle(Duration::from_millis(50)),
        ..Reply::ok("200 OK", "", b"fresh")
    })
    .await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    // One client connection: its requests are served by one worker, from one pool.
    let mut wire = Wire::connect(api.proxy()).await;
    const REQUESTS: usize = 20;
    for i in 1..=REQUESTS {
        wire.send(b"GET /stale HTTP/1.1\r\nHost: h1.test\r\n\r\n")
            .await;
        let response = wire.response(false).await;
        assert_eq!(response.status, 200, "request {i}: {response:?}");
        assert_eq!(String::from_utf8_lossy(&response.body), "fresh");
        // The connection the proxy pooled is closed before the next request goes out.
        tokio::time::timeout(SOON, upstream.idle_closes.recv())
            .await
            .unwrap_or_else(|_| panic!("request {i}: the upstream did not close its connection"))
            .unwrap();
    }
    assert_eq!(upstream.requests(), REQUESTS, "each request sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_answered_while_the_body_streams_keeps_the_connection() {
    // The answer's head comes back before the client has sent the whole body; the rest of the answer comes once
    // the body is in. Nothing about it ends the connection.
    let upstream = Scripted::start(|_| Reply {
        head_first: true,
        ..Reply::ok("200 OK", "", b"done")
    })
    .await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let mut stream = TcpStream::connect(api.proxy()).await.unwrap();
    stream
        .write_all(b"PUT /stream HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 10\r\n\r\nfirst")
        .await
        .unwrap();
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(SOON, stream.read(&mut chunk))
            .await
            .expect("the response head before the rest of the body")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    stream.write_all(b"later").await.unwrap();
    let mut wire = Wire::new(stream);
    wire.buf.extend_from_slice(&got[head_end..]);
    let body = wire.take(4).await;
    assert_eq!(body, b"done");
    // The connection is still in step.
    wire.send(b"GET /again HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    let next = wire.response(false).await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_reaches_a_client_still_sending_its_body() {
    // Answers as soon as it has the head, then closes with the body unread.
    let upstream = Scripted::start(|_| Reply {
        read_body: false,
        after: After::Close,
        ..Reply::ok(
            "413 Payload Too Large",
            "content-type: application/json\r\nconnection: close\r\n",
            br#"{"error":"too large"}"#,
        )
    })
    .await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    const BODY: usize = 8 * 1024 * 1024;
    let stream = TcpStream::connect(api.proxy()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head =
            format!("PUT /upload HTTP/1.1\r\nHost: h1.test\r\nContent-Length: {BODY}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..BODY / chunk.len() {
            // After the answer the proxy may stop reading and close: the write then fails, which is fine.
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    let mut wire = Wire::new(read);
    let response = wire.response(false).await;
    assert_eq!(response.status, 413, "{response:?}");
    // The rest of the body cannot be told from a next request: the client is told the connection ends.
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert_eq!(response.json()["error"], "too large");
    // The rest of the body is not wanted: the proxy closes the connection rather than read it.
    wire.assert_closed("after the early 413").await;
    // Its writes end, one way or the other (socket buffers may have taken the whole body).
    let _ = tokio::time::timeout(SOON, writer)
        .await
        .expect("the client's writes end once the connection is closed");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_to_head_requests_have_no_body() {
    let cluster = NsqCluster::start(1).await.unwrap();
    // No data server: after its warm-up (one TTL) the proxy answers 503 itself.
    let api = api_server(&cluster, "500ms", &[]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        b"HEAD /x HTTP/1.1\r\nHost: h1.test\r\n\r\n\
          GET /y HTTP/1.1\r\nHost: h1.test\r\n\r\n",
    )
    .await;
    let head = wire.response(true).await;
    assert_eq!(head.status, 503, "{head:?}");
    assert!(
        head.header("content-length").is_some_and(|l| l != "0"),
        "{head:?}"
    );
    // Had the HEAD answer carried its JSON body, it would be read here as the GET's answer.
    let get = wire.response(false).await;
    assert_eq!(get.status, 503, "{get:?}");
    assert_eq!(
        get.json()["request_id"],
        get.header("x-request-id").unwrap()
    );
    assert_ne!(get.header("x-request-id"), head.header("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_request_targets_are_answered() {
    let upstream = chunked_hello().await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    // Not origin-form, not absolute-form, and not ASCII: refused, with an answer.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send("GET ééééé HTTP/1.1\r\nHost: h1.test\r\n\r\n".as_bytes())
        .await;
    let refused = wire.response(false).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    // An absolute-form target without a path keeps its query.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET http://example.test?id=1 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    assert_eq!(wire.response(false).await.status, 200);
    let head = upstream.last_head();
    assert!(head.starts_with("GET /?id=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_midway_is_cut_off_and_one_that_is_malformed_gets_502() {
    // 5 of 100 promised bytes, then silence on an open connection.
    let stalls = Scripted::start(|_| Reply {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec(),
        read_body: true,
        head_first: false,
        after: After::Next,
    })
    .await;
    let Setup { api, .. } = &with_upstreams_and(&[stalls.addr], &["proxy.try_timeout=1s"]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /stall HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    // The client sees the head and the 5 bytes, then the close (`fill` fails the test if it waits SOON).
    while wire.fill().await > 0 {}
    let got = String::from_utf8_lossy(&wire.buf).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");

    // A chunked body that is malformed from its first byte: nothing has gone to the client, so it gets a 502.
    let malformed = Scripted::start(|_| Reply {
        bytes: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        read_body: true,
        head_first: false,
        after: After::Close,
    })
    .await;
    let Setup { api, .. } = &with_upstreams(&[malformed.addr]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /bad HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 502, "{response:?}");
    assert!(
        response.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed chunked body")),
        "{response:?}"
    );
}
