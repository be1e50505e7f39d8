//! TLS client configuration (rustls 0.23, ring provider). Certificates are always verified:
//! against `ca_file` when given, else the Mozilla roots. Used for nsqd connections and for
//! `https://` nsqlookupd queries alike.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// Builds the rustls client configuration once per client.
pub(crate) fn client_config(cfg: &TlsConfig) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Tls(format!("reading CA file {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert
                    .map_err(|e| Error::Tls(format!("parsing CA file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("CA file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::Tls(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Tls(format!("client certificate {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Config(
                "tls: client_cert and client_key go together".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

impl TlsConfig {
    /// Reads and checks every file and the server name now, as a connection would, so that a
    /// bad setting is found when a program starts rather than at its first connection.
    pub fn check(&self) -> Result<()> {
        client_config(self)?;
        if let Some(name) = &self.server_name {
            rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| Error::Tls(format!("{name:?} is not a valid TLS server name: {e}")))?;
        }
        Ok(())
    }
}
