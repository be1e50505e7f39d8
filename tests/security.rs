//! Secure by default (ARCHITECTURE.md §4.1, §4.3 `[nsq]`): what an operator of the shipped stack sees when someone
//! publishes heartbeats by hand, when the HMAC key is rotated under traffic, and when NSQ runs with TLS and AUTH.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use testkit::{
    ApiServer, Archived, ClusterOptions, DataServer, DataServerOptions, Load, LoadOptions,
    ManagedProcess, NsqCluster, Stack, StackOptions, project_bin, to_nsq, try_eventually,
    workspace_root,
};

const TOPIC: &str = "data_server_addr";
const SOON: Duration = Duration::from_secs(20);

/// Sum of `api_heartbeats_total{outcome="rejected",…}`, optionally of one reason only.
async fn rejected(api: &ApiServer, reason: Option<&str>) -> Result<f64> {
    let text = api.metrics().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("api_heartbeats_total{") && l.contains(r#"outcome="rejected""#))
        .filter(|l| reason.is_none_or(|r| l.contains(&format!(r#"reason="{r}""#))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `data-server keygen --out path`.
fn keygen(path: &Path) -> Result<()> {
    let out = std::process::Command::new(project_bin("data-server")?)
        .args(["keygen", "--out"])
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_stack_refuses_unsigned_heartbeats_and_rotates_its_key_without_a_failed_request()
-> Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let registry = stack.api.registry().await?;
    assert_eq!(registry["unauthenticated"], false, "{registry}");
    assert_eq!(
        stack.api.metric("api_unauthenticated_heartbeats").await?,
        0.0
    );

    // Anyone who can reach nsqd publishes by hand: a JSON heartbeat without a signature and a plain host:port.
    let forged = r#"{"v":1,"id":"intruder","addr":"127.0.0.1:9","epoch":1,"seq":1,"state":"up"}"#;
    to_nsq(stack.cluster.nsqd_tcp(0), TOPIC, &[forged, "127.0.0.1:9"]).await?;
    let api = &stack.api;
    try_eventually(
        SOON,
        "both forged heartbeats rejected as unsigned",
        || async move { Ok((rejected(api, Some("unsigned")).await? >= 2.0).then_some(())) },
    )
    .await?;
    let ids = stack.api.server_ids().await?;
    assert!(
        !ids.iter().any(|id| id == "intruder" || id == "127.0.0.1:9"),
        "{ids:?}"
    );

    // Rotation under traffic, as the README says: api-servers take both keys, data servers move to the new one,
    // api-servers drop the old one.
    let load = Load::start(
        &stack.proxy_url(),
        LoadOptions {
            retry_refused: Some(Duration::from_secs(15)),
            ..LoadOptions::default()
        },
    )?;
    load.wait_more_ok(20, SOON).await?;
    let old = stack.key_file().clone();
    let new = old.with_file_name("next.key");
    keygen(&new)?;
    let mut rejected_during_rotation = rejected(&stack.api, None).await? - 2.0;

    stack.api.push_set(format!(
        "discovery.hmac_key_files={},{}",
        old.display(),
        new.display()
    ));
    stack.api.restart(Duration::from_secs(15)).await?;
    wait_servers(&stack.api, 3).await?;
    for i in 0..stack.data.len() {
        let ds = &mut stack.data[i];
        ds.push_set(format!("announce.hmac_key_file={}", new.display()));
        ds.restart(Duration::from_secs(15)).await?;
        let id = ds.id().to_owned();
        let api = &stack.api;
        try_eventually(
            SOON,
            "the restarted data server back in the registry",
            || {
                let id = id.clone();
                async move { Ok(api.server_ids().await?.contains(&id).then_some(())) }
            },
        )
        .await?;
    }
    rejected_during_rotation += rejected(&stack.api, None).await?;
    stack
        .api
        .push_set(format!("discovery.hmac_key_files={}", new.display()));
    stack.api.restart(Duration::from_secs(15)).await?;
    wait_servers(&stack.api, 3).await?;
    load.wait_more_ok(50, SOON).await?;
    rejected_during_rotation += rejected(&stack.api, None).await?;
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during the rotation:\n{}",
        report.failures.len(),
        report.requests(),
        report.describe_failures()
    );
    assert_eq!(
        rejected_during_rotation, 0.0,
        "heartbeats rejected during the rotation"
    );

    // A data server left on the retired key is refused, and counted.
    let mut opts = DataServerOptions::new(stack.cluster.nsqd_tcp_addresses());
    opts.set.push("server.id=forgotten".into());
    opts.set
        .push(format!("announce.hmac_key_file={}", old.display()));
    let _forgotten = DataServer::start_with(opts).await?;
    let api = &stack.api;
    try_eventually(
        SOON,
        "the retired key's heartbeats rejected",
        || async move { Ok((rejected(api, Some("unknown_key")).await? >= 2.0).then_some(())) },
    )
    .await?;
    let ids = stack.api.server_ids().await?;
    assert!(!ids.contains(&"forgotten".to_owned()), "{ids:?}");
    assert_eq!(ids.len(), 3, "{ids:?}");
    stack.shutdown().await
}

async fn wait_servers(api: &ApiServer, n: usize) -> Result<()> {
    api.wait_registry(SOON, "every data server listed", |doc| {
        doc["servers"].as_array().is_some_and(|s| s.len() == n)
    })
    .await
    .map(drop)
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = |name: &str| -> Result<CertifiedIssuer<'static, KeyPair>> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
            std::fs::write(dir.path().join(name), ca.pem())?;
            Ok(ca)
        };
        let trusted = ca("ca.pem")?;
        ca("other-ca.pem")?;
        for (names, name) in [
            (vec!["127.0.0.1".to_owned()], "server"),
            (vec!["client.test".to_owned()], "client"),
        ] {
            let key = KeyPair::generate()?;
            let cert = CertificateParams::new(names)?.signed_by(&key, &trusted)?;
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem())?;
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())?;
        }
        std::fs::write(dir.path().join("secret"), "letmein\n")?;
        std::fs::write(dir.path().join("wrong-secret"), "guess\n")?;
        Ok(Pki { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--set` overrides of `[nsq]` for a client with the client certificate, trusting `ca`, sending `secret`.
    fn client_sets(&self, ca: &str, with_cert: bool, secret: &str) -> Vec<String> {
        let mut sets = vec![
            "nsq.tls=true".to_owned(),
            format!("nsq.tls_ca_file={}", self.path(ca).display()),
            format!("nsq.auth_secret_file={}", self.path(secret).display()),
        ];
        if with_cert {
            sets.push(format!(
                "nsq.tls_cert_file={}",
                self.path("client.pem").display()
            ));
            sets.push(format!(
                "nsq.tls_key_file={}",
                self.path("client.key").display()
            ));
        }
        sets
    }
}

/// nsqd's auth protocol (`--auth-http-address`): `GET /auth?secret=…` answers the permissions of that secret;
/// `letmein` may publish and subscribe everywhere, anything else is refused.
async fn auth_server() -> Result<std::net::SocketAddr> {
    use axum::extract::Query;
    use axum::http::StatusCode;
    use std::collections::HashMap;
    let app = axum::Router::new().route(
        "/auth",
        axum::routing::get(|Query(q): Query<HashMap<String, String>>| async move {
            if q.get("secret").map(String::as_str) != Some("letmein") {
                return Err(StatusCode::FORBIDDEN);
            }
            Ok(axum::Json(serde_json::json!({
                "ttl": 3600,
                "identity": "stack",
                "identity_url": "",
                "authorizations": [{"permissions": ["subscribe", "publish"], "topic": ".*", "channels": [".*"]}]
            })))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// One nsqd that takes TLS only (`--tls-required=true`), with a client certificate from the CA, and AUTH.
async fn secure_nsqd(pki: &Pki) -> Result<NsqCluster> {
    let auth = auth_server().await?;
    let p = |name: &str| pki.path(name).display().to_string();
    NsqCluster::start_with(ClusterOptions {
        nsqd: 1,
        https: true,
        nsqd_args: vec![
            format!("--tls-cert={}", p("server.pem")),
            format!("--tls-key={}", p("server.key")),
            format!("--tls-root-ca-file={}", p("ca.pem")),
            "--tls-client-auth-policy=require-verify".into(),
            "--tls-required=true".into(),
            format!("--auth-http-address={auth}"),
        ],
        ..ClusterOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stack_runs_against_nsqd_with_tls_client_certificates_and_auth() -> Result<()> {
    let pki = Pki::new()?;
    let cluster = secure_nsqd(&pki).await?;
    let nsqd = cluster.nsqd_tcp(0).to_string();
    let key = pki.path("heartbeat.key");
    keygen(&key)?;
    let secure = pki.client_sets("ca.pem", true, "secret");

    let db = pki.path("archive.db");
    let mut archiver_args: Vec<String> = vec![
        "run".into(),
        "-c".into(),
        workspace_root()
            .join("config/archiver.toml")
            .display()
            .to_string(),
    ];
    for set in [
        format!("archive.database={}", db.display()),
        format!("archive.lookupd_http_addresses={}", cluster.lookupd_http()),
        format!("archive.nsqd_tcp_addresses={nsqd}"),
        "archive.lookupd_poll_interval=1s".into(),
    ]
    .into_iter()
    .chain(secure.iter().cloned())
    {
        archiver_args.extend(["--set".to_owned(), set]);
    }
    let _archiver = ManagedProcess::spawn(
        "archiver",
        project_bin("archiver")?,
        archiver_args,
        vec![],
        pki.path("archiver.log"),
    )?;

    let mut api_sets = vec![
        format!(
            "discovery.lookupd_http_addresses={}",
            cluster.lookupd_http()
        ),
        "discovery.lookupd_poll_interval=1s".to_owned(),
        "discovery.ttl=5s".to_owned(),
        format!("discovery.hmac_key_files={}", key.display()),
    ];
    api_sets.extend(secure.iter().cloned());
    let api = ApiServer::start(&project_bin("api-server")?, &api_sets).await?;

    let mut data = Vec::new();
    for n in 1..=2 {
        let mut opts = DataServerOptions::new([nsqd.clone()]);
        opts.set.push(format!("server.id=data-{n}"));
        opts.set
            .push(format!("announce.hmac_key_file={}", key.display()));
        opts.set.extend(secure.iter().cloned());
        data.push(DataServer::start_with(opts).await?);
    }
    wait_servers(&api, 2).await?;

    // Requests flow through the proxy to both data servers.
    let http = reqwest::Client::new();
    let proxy = format!("http://{}/whoami", api.proxy());
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let whoami: serde_json::Value = http
            .get(&proxy)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        answered_by.insert(whoami["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(answered_by.len(), 2, "{answered_by:?}");
    assert_eq!(
        api.metric("api_bus_alive").await?,
        1.0,
        "the canary goes through TLS and AUTH too"
    );

    // The archive fills.
    let db = &db;
    try_eventually(SOON, "heartbeats in the archive", || async move {
        Ok((Archived::read(db, TOPIC).await?.rows >= 4).then_some(()))
    })
    .await?;
    Ok(())
}

/// `data_server_heartbeats_failed_total` of a data server.
async fn failed_heartbeats(ds: &DataServer) -> Result<f64> {
    let text = reqwest::get(ds.url("/metrics")).await?.text().await?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("data_server_heartbeats_failed_total ")?
                .parse()
                .ok()
        })
        .context("no data_server_heartbeats_failed_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_a_missing_client_certificate_or_a_wrong_secret_is_a_logged_counted_retry()
-> Result<()> {
    let pki = Pki::new()?;
    let cluster = secure_nsqd(&pki).await?;
    let nsqd = cluster.nsqd_tcp(0).to_string();
    let cases = [
        (
            "wrong CA",
            pki.client_sets("other-ca.pem", true, "secret"),
            "certificate",
        ),
        (
            "no client certificate",
            pki.client_sets("ca.pem", false, "secret"),
            "CertificateRequired",
        ),
        (
            "wrong auth secret",
            pki.client_sets("ca.pem", true, "wrong-secret"),
            "AUTH",
        ),
    ];
    for (case, sets, logged) in cases {
        let mut opts = DataServerOptions::new([nsqd.clone()]);
        opts.interval = "300ms".into();
        opts.set.extend(sets);
        let ds = DataServer::start_with(opts).await?;
        let ds = &ds;
        try_eventually(
            SOON,
            &format!("{case}: failed heartbeats counted"),
            || async move { Ok((failed_heartbeats(ds).await? >= 2.0).then_some(())) },
        )
        .await?;
        let log = ds.log();
        let failure = log
            .lines()
            .find(|l| l.contains("no nsqd took the heartbeat; retrying"))
            .unwrap_or_default();
        assert!(
            failure.contains(logged),
            "{case}: the log names the failure:\n{log}"
        );
        // Logged once per change of state, not once per try.
        assert_eq!(
            log.matches("no nsqd took the heartbeat; retrying").count(),
            1,
            "{case}:\n{log}"
        );
    }
    Ok(())
}

#[test]
fn unreadable_tls_or_auth_files_exit_2_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n")?;
    let cases = [
        (
            vec![format!("nsq.tls_ca_file={}", not_pem.display())],
            "nsq.tls_ca_file",
        ),
        (
            vec![
                "nsq.tls=true".to_owned(),
                format!("nsq.tls_ca_file={}", not_pem.display()),
            ],
            "nsq",
        ),
        (
            vec![
                "nsq.tls=true".to_owned(),
                "nsq.tls_cert_file=/no/such/cert.pem".to_owned(),
            ],
            "nsq.tls_key_file",
        ),
        (
            vec!["nsq.auth_secret_file=/no/such/secret".to_owned()],
            "nsq.auth_secret_file",
        ),
    ];
    for binary in ["data-server", "api-server", "archiver"] {
        for (sets, key) in &cases {
            let mut cmd = std::process::Command::new(project_bin(binary)?);
            if binary == "archiver" {
                cmd.args(["stats", "--set", "archive.database=/tmp/unused.db"]);
            }
            if binary == "api-server" {
                cmd.args(["--set", "discovery.nsqd_tcp_addresses=127.0.0.1:4150"]);
            }
            for set in sets {
                cmd.args(["--set", set]);
            }
            let out = cmd.env_remove("RUST_LOG").output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{binary} {sets:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{binary} {sets:?}: {stderr}");
            assert!(
                stderr.contains(&format!("{key}:")),
                "{binary} {sets:?}: {stderr}"
            );
        }
    }
    Ok(())
}
