//! A throwaway PostgreSQL server from Debian's `postgresql` package, for the archiver's tests
//! and benchmark: its own data directory and socket directory in a temporary directory, a free
//! loopback port, password authentication over TCP; killed and removed when the handle drops.
//!
//! `initdb` and `postgres` refuse to run as root: as root they run as `nobody`, who then owns
//! the temporary directory. `initdb` runs once per machine and PostgreSQL version, into a
//! template in the system's temporary directory; each server starts from a copy of it (a copy
//! takes a fraction of the seconds `initdb` does).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::free_port;
use crate::process::ManagedProcess;

/// The superuser of every test server.
pub const POSTGRES_USER: &str = "postgres";
/// Its password (a test server listens on loopback only).
pub const POSTGRES_PASSWORD: &str = "testkit-postgres";

/// A running PostgreSQL server owned by a test.
#[derive(Debug)]
pub struct Postgres {
    process: ManagedProcess,
    port: u16,
    // Last: removed after the process is killed.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a fresh server and waits until it accepts connections.
    pub async fn start() -> Result<Self> {
        Self::start_with_tls(None).await
    }

    /// Like [`Postgres::start`], also accepting TLS with this certificate chain and key (PEM),
    /// for clients that ask for it (`sslmode=require`, `verify-full`).
    pub async fn start_with_tls(tls: Option<(&str, &str)>) -> Result<Self> {
        Self::launch(tls, &[]).await
    }

    /// Like [`Postgres::start`], with server settings (`-c name=value`) that override the test defaults: e.g. a
    /// benchmark sizes `shared_buffers` and `max_wal_size` as a production server would be.
    pub async fn start_with_settings(settings: &[(&str, &str)]) -> Result<Self> {
        Self::launch(None, settings).await
    }

    async fn launch(tls: Option<(&str, &str)>, settings: &[(&str, &str)]) -> Result<Self> {
        let bin = bin_dir()?;
        let user = unprivileged_user();
        let template = template(&bin, user)?;
        let dir = tempfile::Builder::new().prefix("testkit-pg-").tempdir()?;
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid)?;
        }
        let data = dir.path().join("data");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .context("copying the PostgreSQL template")?;
        if !copied.success() {
            bail!("cp -a {} {} failed", template.display(), data.display());
        }
        std::fs::write(dir.path().join("password"), POSTGRES_PASSWORD)?;
        let port = free_port();
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.path().display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "max_connections=40".into(),
            "-c".into(),
            "shared_buffers=32MB".into(),
        ];
        for (name, value) in settings {
            args.extend(["-c".into(), format!("{name}={value}")]);
        }
        if let Some((cert, key)) = tls {
            let (cert_file, key_file) =
                (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert_file, cert)?;
            std::fs::write(&key_file, key)?;
            // PostgreSQL refuses a key that others can read, or that another user owns.
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            if let Some((uid, gid)) = user {
                chown(&key_file, uid, gid)?;
                chown(&cert_file, uid, gid)?;
            }
            args.extend([
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", cert_file.display()),
                "-c".into(),
                format!("ssl_key_file={}", key_file.display()),
            ]);
        }
        let program = bin.join("postgres");
        let log = dir.path().join("postgres.log");
        let process = match user {
            Some(user) => ManagedProcess::spawn_as("postgres", program, args, log, user)?,
            None => ManagedProcess::spawn("postgres", program, args, Vec::new(), log)?,
        };
        let mut server = Postgres { process, port, dir };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let ready = "database system is ready to accept connections";
        let runs = self.process.log().matches(ready).count();
        self.process
            .wait_log(
                Duration::from_secs(60),
                "PostgreSQL to accept connections",
                |log| (log.matches(ready).count() > runs).then_some(()),
            )
            .await
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: no password in it, as the archiver
    /// wants; give [`Postgres::password_file`] or `PGPASSWORD`.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://{POSTGRES_USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// A file holding [`POSTGRES_PASSWORD`].
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Stops the server the way an operator restarting it does (fast shutdown: open
    /// transactions roll back, connections are closed), and waits for it to exit.
    pub async fn stop(&mut self) -> Result<()> {
        self.process.signal(nix::sys::signal::Signal::SIGINT)?;
        self.process.wait_exit(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Starts the server again on the same data and port (after [`Postgres::stop`]), and waits
    /// until it accepts connections.
    pub async fn start_again(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready().await
    }
}

/// Where `initdb` and `postgres` are: `$POSTGRES_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout; `.ci/run` installs the package).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("POSTGRES_BIN_DIR") {
        return Ok(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL is not installed: expected /usr/lib/postgresql/<version>/bin/{{initdb,postgres}} \
             (apt-get install postgresql) or POSTGRES_BIN_DIR"
        ),
    }
}

/// `Some((uid, gid))` of `nobody` when we are root (PostgreSQL refuses to run as root).
fn unprivileged_user() -> Option<(u32, u32)> {
    if euid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let ids = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&"nobody") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    });
    Some(ids.unwrap_or((65534, 65534)))
}

/// Our effective uid: the owner of `/proc/self`.
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// The `initdb`-made data directory every server copies, made on first use.
fn template(bin: &Path, user: Option<(u32, u32)>) -> Result<PathBuf> {
    let version = bin
        .parent()
        .and_then(Path::file_name)
        .map_or_else(|| "pg".into(), |v| v.to_string_lossy().into_owned());
    let uid = euid();
    let template = std::env::temp_dir().join(format!("testkit-pg-template-{version}-{uid}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    // Built beside it and renamed into place, so that concurrent tests never see half of one.
    let build = tempfile::Builder::new()
        .prefix("testkit-pg-initdb-")
        .tempdir()?;
    if let Some((uid, gid)) = user {
        chown(build.path(), uid, gid)?;
    }
    let pwfile = build.path().join("pw");
    std::fs::write(&pwfile, POSTGRES_PASSWORD)?;
    if let Some((uid, gid)) = user {
        chown(&pwfile, uid, gid)?;
    }
    let data = build.path().join("data");
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-U", POSTGRES_USER, "-E", "UTF8", "--locale=C"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args([
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "--no-instructions",
        ]);
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
    }
    let out = cmd.output().context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    match std::fs::rename(&data, &template) {
        Ok(()) => {}
        // Another test finished its template first: use that one.
        Err(_) if template.join("PG_VERSION").exists() => {}
        Err(e) => return Err(e).context(format!("moving the template to {}", template.display())),
    }
    Ok(template)
}
