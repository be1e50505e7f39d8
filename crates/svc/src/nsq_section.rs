//! The `[nsq]` section every binary shares: TLS and AUTH towards nsqd (and nsqlookupd over `https://`).
//!
//! The settings, their checks, and the NSQ client's connection settings made from them ([`NsqSection::conn`]):
//! one piece for the three binaries.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// Largest auth secret file read: a secret is a short token.
pub const MAX_AUTH_SECRET_BYTES: u64 = 4096;

/// `[nsq]`: how to reach nsqd when it requires TLS (`--tls-required`) or AUTH (`--auth-http-address`).
///
/// The defaults connect in plain TCP without AUTH. Certificates are always verified (against `tls_ca_file`, else
/// the built-in web roots); there is no key to turn verification off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NsqSection {
    /// Upgrade every nsqd connection to TLS (IDENTIFY `tls_v1`).
    pub tls: bool,
    /// PEM file of the CA(s) that signed nsqd's (and an `https://` nsqlookupd's) certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for nsqd's `--tls-client-auth-policy`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Name nsqd's certificate must carry (default: the host part of each nsqd address).
    pub tls_server_name: Option<String>,
    /// File holding the secret sent in AUTH when nsqd requires it (never a flag value, so it stays out of `ps`).
    pub auth_secret_file: Option<PathBuf>,
}

impl NsqSection {
    /// Checks the section; `section` is its name in the binary's config (`"nsq"`), for the error's key. Every file
    /// named must be readable (a bad one is a config error, exit status 2, not a failure at the first connection).
    pub fn validate(&self, section: &str) -> Result<(), Invalid> {
        let key = |name: &str| format!("{section}.{name}");
        let tls_only = [
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("tls_cert_file", self.tls_cert_file.is_some()),
            ("tls_key_file", self.tls_key_file.is_some()),
            ("tls_server_name", self.tls_server_name.is_some()),
        ];
        if !self.tls
            && let Some((name, _)) = tls_only.iter().find(|(_, set)| *set)
        {
            return Err(Invalid::new(
                key(name),
                format!("{section}.tls = true when TLS settings are given"),
                format!("{section}.tls = false (connections would be plain TCP)"),
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(Invalid::new(
                    key("tls_key_file"),
                    "the private key of tls_cert_file",
                    "none",
                ));
            }
            (None, Some(_)) => {
                return Err(Invalid::new(
                    key("tls_cert_file"),
                    "the certificate of tls_key_file",
                    "none",
                ));
            }
            _ => {}
        }
        for (name, path) in [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(path) = path {
                read_file(path, 1024 * 1024)
                    .map_err(|err| Invalid::new(key(name), "a readable PEM file", err))?;
            }
        }
        if let Some(name) = &self.tls_server_name
            && (name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(Invalid::new(
                key("tls_server_name"),
                "a DNS name or IP address",
                format!("{name:?}"),
            ));
        }
        self.auth_secret().map_err(|err| {
            Invalid::new(
                key("auth_secret_file"),
                "a readable file holding the AUTH secret on one line",
                err,
            )
        })?;
        Ok(())
    }

    /// The NSQ client's TLS settings, when `tls` is on.
    fn tls_config(&self) -> Option<nsq::TlsConfig> {
        // A certificate and its key go together (validate refuses one without the other).
        let pair = self.tls_cert_file.clone().zip(self.tls_key_file.clone());
        self.tls.then(|| nsq::TlsConfig {
            ca_file: self.tls_ca_file.clone(),
            client_cert: pair.as_ref().map(|(cert, _)| cert.clone()),
            client_key: pair.map(|(_, key)| key),
            server_name: self.tls_server_name.clone(),
        })
    }

    /// The NSQ connection settings (TLS, AUTH) that every nsqd connection and `https://` lookup of a binary starts
    /// from; the files are read and the TLS settings checked by the client itself here (each binary's config
    /// validation calls it too, so that a file the client cannot use is a config error).
    pub fn conn(&self) -> Result<nsq::Config, String> {
        let tls = self.tls_config();
        if let Some(tls) = &tls {
            tls.check().map_err(|err| err.to_string())?;
        }
        Ok(nsq::Config {
            tls,
            auth_secret: self.auth_secret()?,
            ..nsq::Config::default()
        })
    }

    /// The AUTH secret from `auth_secret_file` (trailing newlines trimmed), if set.
    pub fn auth_secret(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.auth_secret_file else {
            return Ok(None);
        };
        let bytes = read_file(path, MAX_AUTH_SECRET_BYTES)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: expected UTF-8 text", path.display()))?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        if secret.contains(['\n', '\r']) {
            return Err(format!("{} holds more than one line", path.display()));
        }
        Ok(Some(secret.to_owned()))
    }
}

fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(section: &NsqSection) -> String {
        section.validate("nsq").unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_plain_and_valid() {
        let plain = NsqSection::default();
        assert_eq!(plain.validate("nsq"), Ok(()));
        assert!(plain.tls_config().is_none());
        assert_eq!(plain.auth_secret(), Ok(None));
    }

    #[test]
    fn tls_files_need_tls_on_and_go_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let off = NsqSection {
            tls_ca_file: Some(pem.clone()),
            ..NsqSection::default()
        };
        assert!(
            reason(&off).starts_with("nsq.tls_ca_file: expected nsq.tls = true"),
            "{}",
            reason(&off)
        );
        let half = NsqSection {
            tls: true,
            tls_cert_file: Some(pem.clone()),
            ..NsqSection::default()
        };
        assert!(
            reason(&half).starts_with("nsq.tls_key_file:"),
            "{}",
            reason(&half)
        );
        let missing = NsqSection {
            tls: true,
            tls_ca_file: Some(dir.path().join("nope.pem")),
            ..NsqSection::default()
        };
        assert!(
            reason(&missing).contains("nope.pem"),
            "{}",
            reason(&missing)
        );
        let good = NsqSection {
            tls: true,
            tls_ca_file: Some(pem.clone()),
            tls_cert_file: Some(pem.clone()),
            tls_key_file: Some(pem.clone()),
            tls_server_name: Some("nsqd.internal".into()),
            ..NsqSection::default()
        };
        assert_eq!(good.validate("nsq"), Ok(()));
        let tls = good.tls_config().unwrap();
        assert_eq!(tls.client_cert, Some(pem.clone()));
        assert_eq!(tls.client_key, Some(pem));
        assert_eq!(tls.server_name.as_deref(), Some("nsqd.internal"));
    }

    #[test]
    fn auth_secret_is_one_trimmed_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let with = |text: &str| {
            std::fs::write(&path, text).unwrap();
            NsqSection {
                auth_secret_file: Some(path.clone()),
                ..NsqSection::default()
            }
        };
        assert_eq!(with("s3cret\r\n").auth_secret(), Ok(Some("s3cret".into())));
        assert!(reason(&with("\n")).contains("is empty"));
        assert!(reason(&with("a\nb\n")).contains("more than one line"));
        let gone = NsqSection {
            auth_secret_file: Some(dir.path().join("gone")),
            ..NsqSection::default()
        };
        assert!(
            reason(&gone).starts_with("nsq.auth_secret_file:"),
            "{}",
            reason(&gone)
        );
    }
}
