//! Headers an operator can trust: what a client may send through the proxy, and what a data server may answer.
//! Each rule checked at a scripted upstream that records the request heads it received, behind a real
//! api-server (heartbeats through a real nsqd).

mod common;

use common::wire::*;

const TRUSTING: [&str; 1] = ["proxy.trusted_proxies=[\"127.0.0.0/8\"]"];

async fn send(api: &testkit::ApiServer, request: &str) -> Response {
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(request.as_bytes()).await;
    wire.response(request.starts_with("HEAD")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_hosts_and_userinfo_are_refused_before_the_upstream() {
    let upstream = Scripted::start(|_| Reply::ok("200 OK", "", b"ok")).await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    for bad in [
        "GET / HTTP/1.1\r\nHost: user:pw@example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com:99999\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com/x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",
        "GET http://user:pw@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET http://[::1/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ] {
        let response = send(api, bad).await;
        assert_eq!(response.status, 400, "{bad:?}: {response:?}");
    }
    assert_eq!(upstream.requests(), 0, "nothing reached the upstream");
    for good in [
        "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        "GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n",
    ] {
        assert_eq!(send(api, good).await.status, 200, "{good:?}");
    }
    let head = upstream.last_head();
    assert_eq!(
        head_header(&head, "x-forwarded-host").as_deref(),
        Some("example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_underscores_are_dropped_and_counted() {
    let upstream = Scripted::start(|_| Reply::ok("200 OK", "", b"ok")).await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let response = send(
        api,
        "GET / HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\nX-Fine: yes\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let head = upstream.last_head().to_ascii_lowercase();
    assert!(!head.contains("_"), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert_eq!(head_header(&head, "x-fine").as_deref(), Some("yes"));
    let dropped = api
        .metric("api_proxy_headers_dropped_total{reason=\"underscore\"}")
        .await
        .unwrap();
    assert_eq!(dropped, 2.0);
}

/// A request carrying every header a client might forge.
const FORGED: &str = "GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: forged-id\r\nX-Real-IP: 6.6.6.6\r\n\
    True-Client-IP: 6.6.6.6\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Proto: https\r\n\
    X-Forwarded-Host: public.example\r\nVia: 1.1 evil-proxy, 1.1 api-0123456789abcdef\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_cannot_set_its_id_address_scheme_or_hops() {
    let upstream = Scripted::start(|_| Reply::ok("200 OK", "", b"ok")).await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let response = send(api, FORGED).await;
    assert_eq!(response.status, 200);
    let head = upstream.last_head();
    let id = head_header(&head, "x-request-id").unwrap();
    assert_ne!(id, "forged-id");
    assert_eq!(response.header("x-request-id"), Some(id.as_str()));
    for gone in ["x-real-ip", "true-client-ip", "x-forwarded-port"] {
        assert_eq!(head_header(&head, gone), None, "{gone}: {head}");
    }
    assert_eq!(
        head_header(&head, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(head_header(&head, "x-forwarded-host").as_deref(), Some("t"));
    // Another api-server's token stays (loop detection needs it); a foreign hop does not.
    let vias: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("via: "))
        .collect();
    assert_eq!(vias.len(), 2, "{head}");
    assert_eq!(vias[0], "1.1 api-0123456789abcdef");
    assert!(vias[1].starts_with("1.1 api-"), "ours: {vias:?}");
    assert!(!head.contains("evil-proxy"), "{head}");
    let dropped = api
        .metric("api_proxy_headers_dropped_total{reason=\"untrusted\"}")
        .await
        .unwrap();
    assert_eq!(
        dropped, 6.0,
        "x-real-ip, true-client-ip, x-forwarded-port/proto/host, a via element"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_keeps_its_id_address_scheme_and_hops() {
    let upstream = Scripted::start(|_| Reply::ok("200 OK", "", b"ok")).await;
    let Setup { api, .. } = &with_upstreams_and(&[upstream.addr], &TRUSTING).await;
    let response = send(api, FORGED).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-request-id"), Some("forged-id"));
    let head = upstream.last_head();
    for (name, value) in [
        ("x-request-id", "forged-id"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "public.example"),
    ] {
        assert_eq!(
            head_header(&head, name).as_deref(),
            Some(value),
            "{name}: {head}"
        );
    }
    assert!(
        head.contains("via: 1.1 evil-proxy, 1.1 api-0123456789abcdef"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_proxy_adds_count_against_the_limit() {
    let upstream = Scripted::start(|_| Reply::ok("200 OK", "", b"ok")).await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let many = |n: usize| {
        let headers: String = (0..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: t\r\n{headers}\r\n")
    };
    // 96 client headers fit the proxy's parser (100), but not once it adds its own seven or eight.
    let response = send(api, &many(95)).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(upstream.requests(), 0);
    assert_eq!(send(api, &many(50)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_a_client_could_misread_are_refused_and_coded_bodies_arrive_intact() {
    let big = "a".repeat(70 * 1024);
    let upstream = Scripted::start(move |head| {
        let path = String::from_utf8_lossy(head)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        let bytes = match path.as_str() {
            "/head-signed" => b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n".to_vec(),
            "/head-conflict" => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n".to_vec()
            }
            "/big-header" => {
                format!("HTTP/1.1 200 OK\r\nx-big: {big}\r\ncontent-length: 0\r\n\r\n").into_bytes()
            }
            _ => b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n"
                .to_vec(),
        };
        Reply {
            bytes,
            read_body: true,
            head_first: false,
            after: After::Next,
        }
    })
    .await;
    let Setup { api, .. } = &with_upstreams_and(&[upstream.addr], &["proxy.max_tries=1"]).await;
    for path in ["/head-signed", "/head-conflict"] {
        let response = send(api, &format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n")).await;
        assert_eq!(response.status, 502, "HEAD {path}: {response:?}");
    }
    let response = send(api, "GET /big-header HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 502, "a 70 KB header: {response:?}");
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /gzip HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("gzip, chunked"));
    assert_eq!(response.body, b"\x1f\x8b\x08\x00\x00");
}
