//! `host:port` addresses as they appear in config and in heartbeats: IPv4, `[IPv6]` or a DNS
//! name, and a port from 1 to 65535.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const EXPECTED: &str = r#"host:port like "127.0.0.1:4150", "[::1]:4150" or "nsqd:4150""#;

/// The host half of a [`HostPort`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written in brackets in a `host:port`).
    Ipv6(Ipv6Addr),
    /// A DNS name, as written.
    Name(String),
}

impl fmt::Display for Host {
    /// IPv6 is written in brackets, so that the result can be followed by `:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ipv4(ip) => write!(f, "{ip}"),
            Host::Ipv6(ip) => write!(f, "[{ip}]"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A validated `host:port`: IPv4, `[IPv6]` or DNS name, port 1..=65535.
///
/// Unlike [`SocketAddr`] it allows names (`nsqd:4150`, as in docker-compose), and unlike a bare
/// string it is checked when the config is read, not when a connection is first tried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Host,
    port: u16,
}

impl HostPort {
    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, never 0.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address when the host is an IP address (no name lookup).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ipv4(ip) => Some(SocketAddr::new(IpAddr::V4(*ip), self.port)),
            Host::Ipv6(ip) => Some(SocketAddr::new(IpAddr::V6(*ip), self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a text (or socket address) is not a usable `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {EXPECTED}, found {found:?} ({reason})")]
pub struct ParseHostPortError {
    found: String,
    reason: String,
}

impl ParseHostPortError {
    /// What is wrong, without the text: for callers that quote untrusted input only in part.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl FromStr for HostPort {
    type Err = ParseHostPortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseHostPortError {
            found: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
            let (ip, port) = bracketed
                .split_once("]:")
                .ok_or_else(|| fail("an [IPv6] address needs \"]:port\" after it"))?;
            let ip = ip
                .parse::<Ipv6Addr>()
                .map_err(|_| fail("not a valid IPv6 address in the brackets"))?;
            (Host::Ipv6(ip), port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| fail("missing \":port\""))?;
            if host.contains(':') {
                return Err(fail("IPv6 addresses go in brackets, like [::1]:4150"));
            }
            (parse_host(host).map_err(fail)?, port)
        };
        let port = match port.parse::<u16>() {
            Ok(0) => return Err(fail("the port must be from 1 to 65535, not 0")),
            Ok(port) => port,
            Err(_) => return Err(fail("the port must be a number from 1 to 65535")),
        };
        Ok(HostPort { host, port })
    }
}

/// An IPv4 address or a DNS name.
fn parse_host(host: &str) -> Result<Host, &'static str> {
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ipv4(ip));
    }
    // No top-level domain is all digits, so "10.0.0.256" is a mistyped IP, not a name.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("not a valid IPv4 address");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err("a host name has at most 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated part of a host name has 1 to 63 characters");
        }
        // Underscores are not in the DNS host name rules, but Docker container names (which
        // its DNS resolves) may contain them.
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a host name has only letters, digits, '-', '_' and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part of a host name cannot start or end with '-'");
        }
    }
    Ok(Host::Name(host.to_owned()))
}

impl TryFrom<SocketAddr> for HostPort {
    type Error = ParseHostPortError;

    /// Fails only for port 0 (a listener's address before the OS picked a port).
    fn try_from(addr: SocketAddr) -> Result<Self, Self::Error> {
        if addr.port() == 0 {
            return Err(ParseHostPortError {
                found: addr.to_string(),
                reason: "the port must be from 1 to 65535, not 0".to_owned(),
            });
        }
        let host = match addr.ip() {
            IpAddr::V4(ip) => Host::Ipv4(ip),
            IpAddr::V6(ip) => Host::Ipv6(ip),
        };
        Ok(HostPort {
            host,
            port: addr.port(),
        })
    }
}

impl ToSocketAddrs for HostPort {
    type Iter = std::vec::IntoIter<SocketAddr>;

    /// IP addresses as they are; names through the system resolver (this blocks).
    fn to_socket_addrs(&self) -> std::io::Result<Self::Iter> {
        match (&self.host, self.socket_addr()) {
            (_, Some(addr)) => Ok(vec![addr].into_iter()),
            (Host::Name(name), None) => Ok((name.as_str(), self.port)
                .to_socket_addrs()?
                .collect::<Vec<_>>()
                .into_iter()),
            (_, None) => unreachable!("IP hosts always have a socket address"),
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through String rather than a borrowing visitor: config values are owned anyway.
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> HostPort {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    fn reason(text: &str) -> String {
        let err = text.parse::<HostPort>().unwrap_err().to_string();
        let prefix = format!("expected {EXPECTED}, found {text:?} (");
        assert!(err.starts_with(&prefix), "{err}");
        err[prefix.len()..err.len() - 1].to_owned()
    }

    #[test]
    fn accepts_ipv4_ipv6_and_names() {
        let v4 = ok("127.0.0.1:4150");
        assert_eq!(v4.host(), &Host::Ipv4(Ipv4Addr::LOCALHOST));
        assert_eq!(v4.port(), 4150);
        assert_eq!(v4.socket_addr(), Some("127.0.0.1:4150".parse().unwrap()));
        let v6 = ok("[::1]:4150");
        assert_eq!(v6.host(), &Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(v6.to_string(), "[::1]:4150");
        let name = ok("nsqd-1.example.com:65535");
        assert_eq!(name.host(), &Host::Name("nsqd-1.example.com".into()));
        assert_eq!(name.socket_addr(), None);
        assert_eq!(ok("data_server_1:80").to_string(), "data_server_1:80");
        assert_eq!(ok("localhost.:1").port(), 1);
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(reason("localhost"), "missing \":port\"");
        let err = "localhost".parse::<HostPort>().unwrap_err();
        assert_eq!(err.reason(), "missing \":port\"");
        assert_eq!(
            reason("localhost:0"),
            "the port must be from 1 to 65535, not 0"
        );
        assert_eq!(
            reason("localhost:65536"),
            "the port must be a number from 1 to 65535"
        );
        assert_eq!(
            reason("localhost:http"),
            "the port must be a number from 1 to 65535"
        );
        assert_eq!(reason(":4150"), "the host is empty");
        assert_eq!(
            reason("::1:4150"),
            "IPv6 addresses go in brackets, like [::1]:4150"
        );
        assert_eq!(
            reason("[::1]4150"),
            "an [IPv6] address needs \"]:port\" after it"
        );
        assert_eq!(reason("[zz]:1"), "not a valid IPv6 address in the brackets");
        assert_eq!(reason("10.0.0.256:1"), "not a valid IPv4 address");
        assert_eq!(
            reason("-bad.com:1"),
            "a part of a host name cannot start or end with '-'"
        );
        assert_eq!(
            reason("a..b:1"),
            "each dot-separated part of a host name has 1 to 63 characters"
        );
        assert_eq!(
            reason("a b:1"),
            "a host name has only letters, digits, '-', '_' and dots"
        );
    }

    #[test]
    fn socket_addrs_and_serde() {
        let addr: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(HostPort::try_from(addr).unwrap().to_string(), "[::1]:9");
        assert!(HostPort::try_from("127.0.0.1:0".parse::<SocketAddr>().unwrap()).is_err());
        let resolved: Vec<_> = ok("127.0.0.1:80").to_socket_addrs().unwrap().collect();
        assert_eq!(resolved, ["127.0.0.1:80".parse().unwrap()]);

        #[derive(Debug, Deserialize, Serialize)]
        struct Peers {
            peers: Vec<HostPort>,
        }
        let peers: Peers = toml::from_str(r#"peers = ["a:1", "[::1]:2"]"#).unwrap();
        assert_eq!(
            toml::to_string(&peers).unwrap(),
            "peers = [\"a:1\", \"[::1]:2\"]\n"
        );
        let err = toml::from_str::<Peers>(r#"peers = ["a"]"#).unwrap_err();
        assert!(
            err.message().ends_with(r#"found "a" (missing ":port")"#),
            "{err}"
        );
    }
}
