//! Where a PostgreSQL archive is and how to reach it: the URL, the password (never from the URL),
//! TLS, and connecting on the background runtime that drives every connection.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::StoreError;

/// How long connecting (TCP, TLS, authentication) may take before the server counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive idle time: a server that vanished without closing the connection (a network
/// partition, a power cut) is noticed within about this long plus the probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// A PostgreSQL archive database: connection settings parsed from `archive.database` (a
/// `postgres://` or `postgresql://` URL), with the password from a file or `PGPASSWORD`.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    name: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the config itself: it holds the password.
        f.debug_tuple("PgTarget").field(&self.name).finish()
    }
}

/// Whether `value` of `archive.database` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
}

impl PgTarget {
    /// Parses `url` (libpq's URL form; `sslmode` one of `disable` (the default), `prefer`,
    /// `require`, `verify-ca`, `verify-full`, and `sslrootcert=FILE`), reading the password from
    /// `password_file` or else the `PGPASSWORD` variable. A password inside the URL is refused:
    /// the URL shows in command lines, logs and `stats`. Errors are one line, for `Invalid`.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<PgTarget, String> {
        Self::parse_with_env(url, password_file, std::env::var("PGPASSWORD").ok())
    }

    fn parse_with_env(
        url: &str,
        password_file: Option<&Path>,
        env_password: Option<String>,
    ) -> Result<PgTarget, String> {
        let (base, params) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let (mut sslmode, mut rootcert) = (None, None);
        for param in params.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("sslmode", v)) => sslmode = Some(v.to_owned()),
                Some(("sslrootcert", v)) => rootcert = Some(v.to_owned()),
                Some(("password", _)) => return Err(IN_URL.to_owned()),
                _ => kept.push(param),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rebuilt)
            .map_err(|e| format!("a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE): {e}"))?;
        if config.get_password().is_some() {
            return Err(IN_URL.to_owned());
        }
        if config.get_user().is_none() {
            return Err("a PostgreSQL URL naming its user (postgres://USER@HOST/DATABASE)".into());
        }
        let name = redact(&rebuilt, sslmode.as_deref());
        let tls = match sslmode.as_deref() {
            None | Some("disable") => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            // libpq's `require` does not check the certificate; a checked one costs nothing
            // more and is what an archive of record deserves, so every TLS mode checks it.
            Some(mode @ ("prefer" | "require" | "verify-ca" | "verify-full")) => {
                config.ssl_mode(if mode == "prefer" {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                Some(tls_connector(rootcert.as_deref())?)
            }
            Some(other) => {
                return Err(format!(
                    "sslmode disable, prefer, require, verify-ca or verify-full, found {other:?}"
                ));
            }
        };
        let password = match password_file {
            Some(file) => Some(read_password(file)?),
            None => env_password,
        };
        if let Some(p) = password {
            config.password(p);
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .application_name("archiver");
        Ok(PgTarget { config, tls, name })
    }

    /// The URL as operators see it: without password (it never holds one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a connection, driven by the background runtime.
    pub(crate) fn connect(&self) -> Result<Client, StoreError> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let connecting = runtime().spawn(async move {
            match tls {
                None => {
                    let (client, conn) = config.connect(NoTls).await?;
                    tokio::spawn(drive(conn));
                    Ok(client)
                }
                Some(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(drive(conn));
                    Ok(client)
                }
            }
        });
        match wait(connecting) {
            Ok(result) => result.map_err(|e| classify(&self.name, &e)),
            Err(join) => Err(StoreError::Server {
                database: self.name.clone(),
                reason: format!("connecting failed: {join}"),
            }),
        }
    }
}

const IN_URL: &str = "a URL without password (put it in archive.database_password_file or the \
                      PGPASSWORD variable: a URL shows in command lines and logs)";

/// The URL with the TLS parameters we took out put back, for display.
fn redact(rebuilt: &str, sslmode: Option<&str>) -> String {
    match sslmode {
        Some(mode) if rebuilt.contains('?') => format!("{rebuilt}&sslmode={mode}"),
        Some(mode) => format!("{rebuilt}?sslmode={mode}"),
        None => rebuilt.to_owned(),
    }
}

fn read_password(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "archive.database_password_file {}: a readable file, found {e}",
            file.display()
        )
    })?;
    // The file's trailing newline is not part of the password.
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// rustls, checking the server's certificate against `rootcert` (PEM) or the Mozilla roots.
fn tls_connector(rootcert: Option<&str>) -> Result<MakeRustlsConnect, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| {
                    format!("sslrootcert {path}: a PEM file of certificates, found {e}")
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {path}: no usable certificate in it"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Drives one connection until it closes; its end shows to the client as `is_closed`.
async fn drive<F: Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(err) = conn.await {
        tracing::debug!("archive database connection ended: {err}");
    }
}

/// The runtime whose one worker drives every PostgreSQL connection of the process. Callers
/// never run on it: they wait for their queries with [`wait`], from any thread.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("archive-postgres")
            .enable_all()
            .build()
            .expect("starting the PostgreSQL runtime")
    })
}

/// Waits for `fut` on the calling thread. A client's futures only exchange messages with the
/// connection task (on [`runtime`]), so this works inside or outside any async runtime; it
/// blocks the thread like a SQLite call does.
pub(crate) fn wait<F: Future>(fut: F) -> F::Output {
    futures::executor::block_on(fut)
}

/// Sorts a client error into the variant the writer and an operator act on.
pub(crate) fn classify(database: &str, err: &tokio_postgres::Error) -> StoreError {
    let database = database.to_owned();
    if let Some(db) = err.as_db_error() {
        let reason = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        let code = db.code();
        let class = &code.code()[..2];
        return if [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(code)
        {
            StoreError::Conflict { database, reason }
        } else if class == "08" || class == "57" || *code == SqlState::TOO_MANY_CONNECTIONS {
            // Connection exceptions, operator intervention (shutdown, restart).
            StoreError::Unreachable { database, reason }
        } else if class == "28" || class == "3D" || class == "42" && code.code() == "42501" {
            StoreError::Refused { database, reason }
        } else {
            StoreError::Server { database, reason }
        };
    }
    let reason = one_line(err);
    // A certificate that does not check out will not pass by itself (the handshake's error
    // comes wrapped in an I/O error, so this goes first).
    if reason.contains("TLS handshake") {
        return StoreError::Refused { database, reason };
    }
    let io = std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>());
    if err.is_closed() || io || reason.contains("timeout") || reason.starts_with("error connecting")
    {
        StoreError::Unreachable { database, reason }
    } else {
        StoreError::Refused { database, reason }
    }
}

/// The error and its causes on one line.
fn one_line(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, env: Option<&str>) -> Result<PgTarget, String> {
        PgTarget::parse_with_env(url, None, env.map(str::to_owned))
    }

    #[test]
    fn passwords_come_from_the_file_or_the_environment_never_the_url() {
        for url in [
            "postgres://u:secret@h/db",
            "postgres://u@h/db?password=secret",
        ] {
            let err = parse(url, None).unwrap_err();
            assert!(err.contains("archive.database_password_file"), "{err}");
        }
        let t = parse("postgres://u@h:5433/db", Some("from-env")).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(t.name(), "postgres://u@h:5433/db");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let t =
            PgTarget::parse_with_env("postgres://u@h/db", Some(&file), Some("env".into())).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-file"[..]));
        assert!(!format!("{t:?}").contains("from-file"));
    }

    #[test]
    fn tls_is_on_when_the_url_asks_for_it() {
        let plain = parse("postgres://u@h/db", None).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        for mode in ["require", "verify-full", "verify-ca"] {
            let t = parse(&format!("postgresql://u@h/db?sslmode={mode}"), None).unwrap();
            assert!(t.tls.is_some());
            assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
            assert!(
                t.name().ends_with(&format!("?sslmode={mode}")),
                "{}",
                t.name()
            );
        }
        let err = parse("postgres://u@h/db?sslmode=sometimes", None).unwrap_err();
        assert!(err.contains("\"sometimes\""), "{err}");
        let err = parse("postgres://u@h/db?sslmode=require&sslrootcert=/nope", None).unwrap_err();
        assert!(err.contains("sslrootcert /nope"), "{err}");
    }
}
