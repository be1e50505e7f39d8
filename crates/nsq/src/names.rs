//! Topic and channel names as nsqd accepts them: `^[.a-zA-Z0-9_-]+(#ephemeral)?$`, 1-64 bytes
//! including the suffix.

use crate::error::{Error, Result};

const EPHEMERAL: &str = "#ephemeral";
const MAX_LEN: usize = 64;

fn valid(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_LEN {
        return false;
    }
    let stem = name.strip_suffix(EPHEMERAL).unwrap_or(name);
    !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a topic name.
pub fn validate_topic(name: &str) -> Result<()> {
    if valid(name) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind: "topic",
            name: name.to_string(),
        })
    }
}

/// Checks a channel name.
pub fn validate_channel(name: &str) -> Result<()> {
    if valid(name) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind: "channel",
            name: name.to_string(),
        })
    }
}

/// Whether the name ends in `#ephemeral` (nsqd drops such a topic or channel with its last client).
pub fn is_ephemeral(name: &str) -> bool {
    name.ends_with(EPHEMERAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_nsqd_accepts() {
        for ok in [
            "a",
            "data_server_addr",
            "x.y-z_1",
            "api-server-1#ephemeral",
            &"a".repeat(64),
        ] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
            assert!(validate_channel(ok).is_ok(), "{ok}");
        }
        let long_ephemeral = format!("{}#ephemeral", "a".repeat(54));
        assert!(validate_channel(&long_ephemeral).is_ok());
    }

    #[test]
    fn rejects_what_nsqd_rejects() {
        let too_long_ephemeral = format!("{}#ephemeral", "a".repeat(55));
        for bad in [
            "",
            "#ephemeral",
            "a b",
            "a/b",
            "tøpic",
            "a#ephemeral#ephemeral",
            "a#other",
            &"a".repeat(65),
            &too_long_ephemeral,
            "a\n",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(is_ephemeral("c#ephemeral"));
        assert!(!is_ephemeral("c"));
    }
}
