//! The processes behind the proxy benchmarks: NSQ, data servers, the api-server and nginx.
//!
//! Everything listens on 127.0.0.1. Every handle stops its process when dropped, so a scenario
//! that returns early with an error leaves nothing running.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::{ApiServer, DataServer, DataServerOptions, ManagedProcess, NsqCluster, Signal};
use tokio::net::TcpStream;

use super::client::{WHOAMI, get_request, http_request};

/// SIGTERM the api-server (which must exit cleanly: a benchmark that ends in a failed drain is not a result) and
/// the data servers, then the NSQ processes.
pub async fn stop_stack(
    mut api: ApiServer,
    mut data: Vec<DataServer>,
    cluster: NsqCluster,
) -> Result<()> {
    let status = api.process().terminate(Duration::from_secs(10)).await?;
    if !status.success() {
        bail!("api-server exited with {status} on SIGTERM");
    }
    for d in &mut data {
        d.terminate(Duration::from_secs(10)).await?;
    }
    drop(cluster);
    Ok(())
}

/// Data server `data-<i+1>` on the cluster's nsqd, on `port` (a free one when `None`).
pub async fn start_data_server(
    bins: &Path,
    cluster: &NsqCluster,
    i: usize,
    port: Option<u16>,
) -> Result<DataServer> {
    start_data_server_with(bins, cluster, i, port, &[]).await
}

/// [`start_data_server`] with more `--set` overrides (e.g. `server.added_latency=20ms`).
pub async fn start_data_server_with(
    bins: &Path,
    cluster: &NsqCluster,
    i: usize,
    port: Option<u16>,
    extra_sets: &[String],
) -> Result<DataServer> {
    let mut set = vec![format!("server.id=data-{}", i + 1)];
    set.extend_from_slice(extra_sets);
    if let Some(port) = port {
        set.push(format!("server.listen=127.0.0.1:{port}"));
    }
    DataServer::start_with(DataServerOptions {
        bin: Some(bins.join("data-server")),
        set,
        interval: "1s".into(),
        envs: vec![("RUST_LOG".into(), "warn".into())],
        ..DataServerOptions::new(cluster.nsqd_tcp_addresses())
    })
    .await
    .with_context(|| format!("starting data-{}", i + 1))
}

/// One data server per entry of `ports`, as [`start_data_server`].
pub async fn start_data_servers(
    bins: &Path,
    cluster: &NsqCluster,
    ports: &[Option<u16>],
) -> Result<Vec<DataServer>> {
    let mut data = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        data.push(start_data_server(bins, cluster, i, *port).await?);
    }
    Ok(data)
}

/// An api-server on the cluster's lookupd, once it lists all 3 data servers and proxies.
pub async fn start_api(bins: &Path, cluster: &NsqCluster) -> Result<ApiServer> {
    start_api_for(bins, cluster, 3).await
}

/// An api-server on the cluster's lookupd, once it lists `servers` data servers and proxies.
pub async fn start_api_for(bins: &Path, cluster: &NsqCluster, servers: usize) -> Result<ApiServer> {
    start_api_with(bins, cluster, servers, &[]).await
}

/// [`start_api_for`] with more `--set` overrides (e.g. `balancer.strategy=p2c_ewma`).
pub async fn start_api_with(
    bins: &Path,
    cluster: &NsqCluster,
    servers: usize,
    extra_sets: &[String],
) -> Result<ApiServer> {
    let mut sets = vec![
        format!(
            "discovery.lookupd_http_addresses={}",
            cluster.lookupd_http()
        ),
        "discovery.lookupd_poll_interval=1s".into(),
        "discovery.ttl=3s".into(),
        "discovery.prune_interval=500ms".into(),
        // nginx runs with `access_log off`: the same here, so both do the same work.
        "proxy.access_log=false".into(),
    ];
    sets.extend_from_slice(extra_sets);
    let api = ApiServer::start(&bins.join("api-server"), &sets).await?;
    let expected = format!("{servers} data servers");
    api.wait_registry(Duration::from_secs(30), &expected, |d| {
        testkit::listed(d).len() == servers
    })
    .await?;
    let mut conn = None;
    let mut buf = Vec::new();
    let status = http_request(
        api.proxy(),
        &mut conn,
        &get_request(api.proxy(), WHOAMI),
        &mut buf,
    )
    .await?;
    if status != 200 {
        bail!("GET {WHOAMI} through the api-server answered {status}");
    }
    Ok(api)
}

/// The `location /` directives of [`Nginx::start`]: HTTP/1.1 keep-alive to the upstreams.
const KEEPALIVE_LOCATION: &str = "proxy_http_version 1.1;\n\
                                  proxy_set_header Connection \"\";";

/// The `location /` directives of [`Nginx::start_upgrades`]: upgrades passed on (nginx then relays the bytes both
/// ways), with read and send timeouts far longer than any bench.
const UPGRADE_LOCATION: &str = "proxy_http_version 1.1;\n\
                                proxy_set_header Upgrade $http_upgrade;\n\
                                proxy_set_header Connection \"upgrade\";\n\
                                proxy_read_timeout 1h;\n\
                                proxy_send_timeout 1h;";

/// What a scenario changes in nginx's configuration.
#[derive(Debug, Clone)]
pub struct NginxTuning {
    /// The upstream's balancing method (`least_conn`); round robin when `None`.
    pub balancing: Option<&'static str>,
    /// `worker_connections` (client and upstream connections of one worker).
    pub worker_connections: usize,
    /// `keepalive_timeout` of client connections (`10m`); nginx's 75 s when `None`.
    pub keepalive_timeout: Option<&'static str>,
}

impl Default for NginxTuning {
    fn default() -> Self {
        NginxTuning {
            balancing: None,
            worker_connections: 4096,
            keepalive_timeout: None,
        }
    }
}

/// Debian's nginx as a child process, with everything in a temp dir.
pub struct Nginx {
    process: Option<ManagedProcess>,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx on a free port in front of `upstreams`, each `server` line ending with `server_params`
    /// (e.g. `max_fails=1 fail_timeout=1s`; nginx's defaults when empty).
    pub async fn start(upstreams: &[SocketAddr], server_params: &str) -> Result<Nginx> {
        Nginx::start_with(
            upstreams,
            server_params,
            KEEPALIVE_LOCATION,
            &NginxTuning::default(),
        )
        .await
    }

    /// nginx on a free port in front of `upstreams`, configured for WebSocket (`Upgrade` and `Connection:
    /// upgrade` set towards the upstream, 1 h read timeout).
    pub async fn start_upgrades(upstreams: &[SocketAddr]) -> Result<Nginx> {
        Nginx::start_with(upstreams, "", UPGRADE_LOCATION, &NginxTuning::default()).await
    }

    /// [`Nginx::start`] (nginx's default server parameters) with `tuning`.
    pub async fn start_tuned(upstreams: &[SocketAddr], tuning: &NginxTuning) -> Result<Nginx> {
        Nginx::start_with(upstreams, "", KEEPALIVE_LOCATION, tuning).await
    }

    async fn start_with(
        upstreams: &[SocketAddr],
        server_params: &str,
        location: &str,
        tuning: &NginxTuning,
    ) -> Result<Nginx> {
        let NginxTuning {
            balancing,
            worker_connections,
            keepalive_timeout,
        } = tuning;
        let balancing = match balancing {
            Some(method) => format!("        {method};\n"),
            None => String::new(),
        };
        let keepalive_timeout = match keepalive_timeout {
            Some(t) => format!("    keepalive_timeout {t};\n"),
            None => String::new(),
        };
        // A descriptor for every connection of a worker, and some for its files.
        let rlimit = worker_connections + 1024;
        let location: String = location
            .lines()
            .map(|l| format!("            {}\n", l.trim()))
            .collect();
        let dir = tempfile::Builder::new().prefix("bench-nginx-").tempdir()?;
        // Workers drop to `nobody` when the master runs as root; let them into the dir.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let d = dir.path().display();
        let port = testkit::free_port();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("        server {u} {server_params};\n"))
            .collect();
        let conf = format!(
            "worker_processes auto;\n\
             error_log {d}/error.log warn;\n\
             pid {d}/nginx.pid;\n\
             worker_rlimit_nofile {rlimit};\n\
             events {{ worker_connections {worker_connections}; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             {keepalive_timeout}\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   upstream data {{\n{balancing}{servers}        keepalive 64;\n    }}\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://data;\n\
             {location}\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, conf)?;
        let mut process = ManagedProcess::spawn(
            "nginx",
            "nginx",
            vec![
                "-e".into(),
                format!("{d}/error.log"),
                "-c".into(),
                file.display().to_string(),
                "-p".into(),
                format!("{d}/"),
                "-g".into(),
                "daemon off;".into(),
            ],
            Vec::new(),
            dir.path().join("nginx.out"),
        )
        .context("starting nginx (apt-get install -y nginx)")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = process.try_wait()? {
                let err = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited with {status}: {}{err}", process.log());
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut nginx = Nginx {
            process: Some(process),
            addr,
            dir,
        };
        let mut conn = None;
        let mut buf = Vec::new();
        let status = http_request(addr, &mut conn, &get_request(addr, WHOAMI), &mut buf).await?;
        if status != 200 {
            nginx.stop();
            bail!("GET {WHOAMI} through nginx answered {status}");
        }
        Ok(nginx)
    }

    /// The master's pid.
    pub fn pid(&mut self) -> Result<u32> {
        self.process
            .as_ref()
            .and_then(ManagedProcess::pid)
            .context("nginx is not running")
    }

    /// Its error log so far (`warn` and above).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// SIGTERM (the master stops its workers), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut p) = self.process.take() else {
            return;
        };
        if p.signal(Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = p.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        p.kill();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `data_server_requests_total{route="/whoami"}` of one data server.
pub async fn whoami_count(addr: SocketAddr) -> Result<f64> {
    let mut conn = None;
    let mut buf = Vec::new();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let status = tokio::time::timeout(
        Duration::from_secs(1),
        http_request(addr, &mut conn, req.as_bytes(), &mut buf),
    )
    .await??;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix("data_server_requests_total{route=\"/whoami\"} ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}
