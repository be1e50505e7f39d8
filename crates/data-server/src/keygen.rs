//! `data-server keygen`: a fresh shared HMAC key for heartbeats, written where only its owner can read it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use discovery::HmacKey;

/// Bytes of randomness in a generated key (256 bits, the HMAC-SHA256 block of security).
pub const KEY_BYTES: usize = 32;

/// What [`keygen`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keygen {
    /// A new key was written; its id (`kid`) is what signed heartbeats will carry.
    Written {
        /// The key id.
        kid: String,
    },
    /// The file existed and `if_missing` was set: it was left as it was.
    Kept,
}

/// Writes a new random key to `out` as 64 hex digits and a newline, with mode 0600 on Unix. Refuses to replace an
/// existing file (a key in use would be lost), unless `if_missing`, where an existing file is kept and `Kept`
/// returned: that is what a start script that runs on every start wants.
pub fn keygen(out: &Path, if_missing: bool) -> io::Result<Keygen> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = match options.open(out) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && if_missing => {
            return Ok(Keygen::Kept);
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "{} already exists: refusing to overwrite a key (remove it first, or pass --if-missing to keep it)",
                    out.display()
                ),
            ));
        }
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("cannot create {}: {err}", out.display()),
            ));
        }
    };
    // rand's thread RNG is a CSPRNG seeded from the operating system.
    let text = hex::encode(rand::random::<[u8; KEY_BYTES]>());
    let write_err = |err: io::Error| {
        io::Error::new(err.kind(), format!("cannot write {}: {err}", out.display()))
    };
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.write_all(b"\n").map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    let key = HmacKey::from_bytes(text.as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
    Ok(Keygen::Written {
        kid: key.kid().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_private_256_bit_key_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heartbeat.key");
        let Keygen::Written { kid } = keygen(&path, false).unwrap() else {
            panic!("a new key");
        };
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 2 * KEY_BYTES + 1);
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        let key = HmacKey::from_file(&path).unwrap();
        assert_eq!(key.kid(), kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let err = keygen(&path, false).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(keygen(&path, true).unwrap(), Keygen::Kept);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "the key is unchanged"
        );

        let other = dir.path().join("other.key");
        keygen(&other, true).unwrap();
        assert_ne!(
            std::fs::read_to_string(&other).unwrap(),
            text,
            "keys are random"
        );
    }
}
