//! nsqlookupd HTTP addresses in config: `host:port` (plain HTTP, as before) or `https://host:port`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{HostPort, ParseHostPortError};

/// An nsqlookupd HTTP address: `host:port` or `http://host:port` for plain HTTP, `https://host:port` for HTTPS
/// (verified with the `[nsq]` section's CA). Displays as the NSQ client takes it: `host:port` or
/// `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupdAddr {
    https: bool,
    addr: HostPort,
}

impl LookupdAddr {
    /// True for `https://`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The `host:port`.
    pub fn host_port(&self) -> &HostPort {
        &self.addr
    }
}

impl fmt::Display for LookupdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.https {
            f.write_str("https://")?;
        }
        write!(f, "{}", self.addr)
    }
}

impl FromStr for LookupdAddr {
    type Err = ParseHostPortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (https, rest) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            // Anything else is left to the host:port parser, which names the problem.
            _ => (false, text),
        };
        Ok(LookupdAddr {
            https,
            addr: rest.trim_end_matches('/').parse()?,
        })
    }
}

impl Serialize for LookupdAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LookupdAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_and_https_forms() {
        let parse = |t: &str| {
            t.parse::<LookupdAddr>()
                .map(|a| (a.is_https(), a.to_string()))
        };
        assert_eq!(
            parse("127.0.0.1:4161"),
            Ok((false, "127.0.0.1:4161".into()))
        );
        assert_eq!(
            parse("http://lookupd:4161/"),
            Ok((false, "lookupd:4161".into()))
        );
        assert_eq!(
            parse("https://[::1]:4161"),
            Ok((true, "https://[::1]:4161".into()))
        );
        assert!(parse("ftp://lookupd:4161").is_err());
        assert!(parse("https://lookupd").is_err());
    }
}
