//! TLS (certificates made in the test), snappy, deflate and AUTH against nsqd started with
//! those options.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{collect, consumer_config, eventually, producer_to, recv_within};
use nsq::{Compression, Config, ConsumerConfig, Error, Producer, ProducerConfig, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use testkit::{ClusterOptions, NsqCluster};

/// A CA and a server certificate for 127.0.0.1 / localhost, written as PEM into `dir`; plus a
/// client certificate from the same CA.
fn make_certs(dir: &Path, prefix: &str) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let issue = |names: Vec<String>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{prefix}{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{prefix}{name}.key")), key.serialize_pem()).unwrap();
    };
    issue(vec!["127.0.0.1".into(), "localhost".into()], "server");
    issue(vec!["client.test".into()], "client");
    std::fs::write(dir.join(format!("{prefix}ca.pem")), ca.pem()).unwrap();
}

/// A producer to the cluster's one nsqd with the connection settings `conn`.
fn producer(cluster: &NsqCluster, conn: Config) -> Producer {
    let cfg = ProducerConfig {
        conn,
        ..Default::default()
    };
    Producer::new(cluster.nsqd_tcp(0).to_string(), cfg).unwrap()
}

/// Connection settings with TLS on, trusting the CA in the PEM file `ca` (no client certificate).
fn trusting(ca: PathBuf) -> Config {
    Config {
        tls: Some(TlsConfig {
            ca_file: Some(ca),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One nsqd with HTTPS on, serving the server certificate that [`make_certs`] wrote into `dir`,
/// plus `more_args`.
async fn tls_cluster(dir: &Path, more_args: &[&str]) -> NsqCluster {
    let p = |n: &str| dir.join(n).display().to_string();
    let mut nsqd_args = vec![
        format!("--tls-cert={}", p("server.pem")),
        format!("--tls-key={}", p("server.key")),
    ];
    nsqd_args.extend(more_args.iter().map(|a| a.to_string()));
    NsqCluster::start_with(ClusterOptions {
        nsqd: 1,
        https: true,
        nsqd_args,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Publishes `bodies` and consumes them back with the same connection settings; returns the
/// consumer's client entry in nsqd's /stats.
async fn round_trip(
    cluster: &NsqCluster,
    topic: &str,
    conn: Config,
    bodies: &[Vec<u8>],
) -> testkit::ClientStats {
    let producer = producer(cluster, conn.clone());
    producer.multi_publish(topic, bodies).await.unwrap();
    let cfg = ConsumerConfig {
        conn,
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        max_in_flight: 50,
        ..consumer_config()
    };
    let (consumer, mut rx) = collect(topic, cfg);
    let mut got = Vec::new();
    for _ in bodies {
        let m = recv_within(&mut rx, Duration::from_secs(10)).await;
        got.push(m.body().to_vec());
    }
    got.sort();
    let mut want = bodies.to_vec();
    want.sort();
    assert_eq!(got, want, "bodies survive the codec byte for byte");
    let stats = cluster.stats(0, topic, Some("test")).await.unwrap();
    let client = stats.channel(topic, "test").unwrap().clients[0].clone();
    consumer.stop(Duration::from_secs(5)).await;
    client
}

fn bodies() -> Vec<Vec<u8>> {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    vec![b"small".to_vec(), vec![b'z'; 70_000], big]
}

#[tokio::test]
async fn tls_with_a_custom_ca_and_verification_on() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "");
    let cluster = tls_cluster(dir.path(), &[]).await;
    let conn = trusting(dir.path().join("ca.pem"));
    let client = round_trip(&cluster, "tls", conn, &bodies()).await;
    assert!(client.tls, "nsqd reports the consumer on TLS");

    // A certificate from another CA is refused: verification is on by default.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path(), "");
    let producer = producer(&cluster, trusting(other.path().join("ca.pem")));
    let err = producer.publish("tls", b"x").await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err}");
}

#[tokio::test]
async fn tls_with_a_client_certificate_required_by_nsqd() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "");
    let root_ca = format!("--tls-root-ca-file={}", dir.path().join("ca.pem").display());
    let cluster = tls_cluster(
        dir.path(),
        &[
            &root_ca,
            "--tls-client-auth-policy=require-verify",
            // TLS on TCP only, so the harness can still check plain HTTP /ping.
            "--tls-required=tcp-https",
        ],
    )
    .await;
    let with_cert = Config {
        tls: Some(TlsConfig {
            ca_file: Some(dir.path().join("ca.pem")),
            client_cert: Some(dir.path().join("client.pem")),
            client_key: Some(dir.path().join("client.key")),
            server_name: None,
        }),
        ..Default::default()
    };
    let client = round_trip(&cluster, "mtls", with_cert, &[b"hello".to_vec()]).await;
    assert!(client.tls);
    let producer = producer(&cluster, trusting(dir.path().join("ca.pem")));
    assert!(
        producer.publish("mtls", b"x").await.is_err(),
        "no client certificate, no entry"
    );
}

#[tokio::test]
async fn snappy_and_deflate_when_nsqd_agrees() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let snappy = Config {
        compression: Compression::Snappy,
        ..Default::default()
    };
    let client = round_trip(&cluster, "snappy", snappy, &bodies()).await;
    assert!(client.snappy && !client.deflate);
    let deflate = Config {
        compression: Compression::Deflate(6),
        ..Default::default()
    };
    let client = round_trip(&cluster, "deflate", deflate, &bodies()).await;
    assert!(client.deflate && !client.snappy);
}

#[tokio::test]
async fn compression_is_skipped_when_nsqd_declines() {
    let cluster = NsqCluster::start_with(ClusterOptions {
        nsqd: 1,
        nsqd_args: vec!["--snappy=false".into(), "--deflate=false".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let snappy = Config {
        compression: Compression::Snappy,
        ..Default::default()
    };
    let client = round_trip(&cluster, "plain", snappy, &[b"ok".to_vec()]).await;
    assert!(!client.snappy && !client.deflate);
}

/// A tiny nsqd auth server: the secret `letmein` may publish and subscribe everywhere.
async fn auth_server() -> std::net::SocketAddr {
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::routing::get;
    use std::collections::HashMap;
    let app = axum::Router::new().route(
        "/auth",
        get(|Query(q): Query<HashMap<String, String>>| async move {
            if q.get("secret").map(String::as_str) == Some("letmein") {
                Ok(axum::Json(serde_json::json!({
                    "ttl": 3600,
                    "identity": "test-user",
                    "identity_url": "",
                    "authorizations": [{"permissions": ["subscribe", "publish"], "topic": ".*", "channels": [".*"]}]
                })))
            } else {
                Err(StatusCode::FORBIDDEN)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn auth_when_nsqd_requires_it() {
    let auth = auth_server().await;
    let cluster = NsqCluster::start_with(ClusterOptions {
        nsqd: 1,
        nsqd_args: vec![format!("--auth-http-address={auth}")],
        ..Default::default()
    })
    .await
    .unwrap();
    let good = Config {
        auth_secret: Some("letmein".into()),
        ..Default::default()
    };
    let client = round_trip(&cluster, "authed", good, &[b"secret stuff".to_vec()]).await;
    assert!(client.authed);

    let none = producer_to(&cluster, 0);
    let err = none.publish("authed", b"x").await.unwrap_err();
    assert!(
        matches!(err, Error::Auth(ref m) if m.contains("no secret")),
        "{err}"
    );
    let bad = producer(
        &cluster,
        Config {
            auth_secret: Some("wrong".into()),
            ..Default::default()
        },
    );
    assert!(matches!(
        bad.publish("authed", b"x").await,
        Err(Error::Auth(_))
    ));
    eventually(
        Duration::from_secs(1),
        "nothing published without auth",
        || async {
            let s = cluster.stats(0, "authed", None).await.ok()?;
            (s.topic("authed")?.message_count == 1).then_some(())
        },
    )
    .await;
}

/// nsqlookupd has no TLS of its own; behind a TLS proxy it is `https://host:port`. This stands in for that proxy: an
/// HTTPS server with the test's server certificate answering `/lookup` and `/nodes` as nsqlookupd does.
async fn https_lookupd(dir: &Path) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/lookup",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"channels": [], "producers": [
                    {"broadcast_address": "10.0.0.7", "tcp_port": 4150, "http_port": 4151}]}))
            }),
        )
        .route(
            "/nodes",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"producers": [
                    {"broadcast_address": "10.0.0.7", "tcp_port": 4150, "http_port": 4151},
                    {"broadcast_address": "10.0.0.8", "tcp_port": 4150, "http_port": 4151}]}))
            }),
        );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    tower::ServiceExt::oneshot(app.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_lookupd_is_verified_with_the_tls_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "");
    make_certs(dir.path(), "other-");
    let addr = https_lookupd(dir.path()).await;
    let url = format!("https://{addr}");
    let trusting = TlsConfig {
        ca_file: Some(dir.path().join("ca.pem")),
        ..Default::default()
    };
    let lookupd = nsq::Lookupd::with_tls(Duration::from_secs(5), Some(&trusting)).unwrap();
    assert_eq!(
        lookupd.lookup(&url, "t").await.unwrap(),
        vec!["10.0.0.7:4150"]
    );
    assert_eq!(
        lookupd.nodes(&url).await.unwrap(),
        vec!["10.0.0.7:4150", "10.0.0.8:4150"]
    );

    // Another CA, or the web roots (no CA given): the certificate is refused, nothing is listed.
    let other = TlsConfig {
        ca_file: Some(dir.path().join("other-ca.pem")),
        ..Default::default()
    };
    for tls in [Some(&other), None] {
        let lookupd = nsq::Lookupd::with_tls(Duration::from_secs(5), tls).unwrap();
        let err = lookupd.lookup(&url, "t").await.unwrap_err().to_string();
        assert!(err.contains("certificate"), "{err}");
    }
}
