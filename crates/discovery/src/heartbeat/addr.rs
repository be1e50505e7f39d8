//! The announced `host:port`, parsed once in [`decode`](super::decode) and handed to the registry, and the
//! api-server's own listen addresses it is compared with.
//!
//! The `host:port` syntax and the host-name rules are [`svc::HostPort`]'s, the same as in every config file. What
//! is added here is the policy for addresses that come from the network and are dialled by the proxy: bounded
//! length, a port in plain digits, no unspecified (announced), multicast or broadcast IP, IPv4-mapped IPv6 in its
//! IPv4 form, no root dot and no all-digit last label in names, names compared in lowercase.

use std::net::{IpAddr, SocketAddr};

use svc::HostPort;

use crate::reject::excerpt;

/// Longest accepted `host:port`: a 253-byte DNS name, a colon and five digits (bracketed IPv6 is shorter).
pub(crate) const MAX_ADDR_BYTES: usize = 253 + 1 + 5;

/// The host part of a validated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// An IP literal, canonical (IPv4-mapped IPv6 becomes IPv4) so that network checks see one form.
    Ip(IpAddr),
    /// A DNS name, lowercased for comparison (the announced text is kept as is elsewhere).
    Name(String),
}

/// A validated `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    pub(crate) host: Host,
    pub(crate) port: u16,
}

impl ServerAddr {
    /// Parses an address a server announced: unspecified IPs (`0.0.0.0`, `::`) are refused since nobody can
    /// connect to them.
    pub(crate) fn parse_announced(text: &str) -> Result<ServerAddr, String> {
        parse(text, false)
    }

    /// Parses a listen address, where `0.0.0.0:port` and `[::]:port` are normal.
    pub(crate) fn parse_listen(text: &str) -> Result<ServerAddr, String> {
        parse(text, true)
    }

    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    pub(crate) fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// True for loopback IPs and the name `localhost`, which resolves to loopback everywhere that matters here.
    pub(crate) fn is_loopback(&self) -> bool {
        match &self.host {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(name) => name == "localhost",
        }
    }
}

fn parse(text: &str, allow_unspecified: bool) -> Result<ServerAddr, String> {
    if text.len() > MAX_ADDR_BYTES {
        return Err(format!(
            "expected host:port of at most {MAX_ADDR_BYTES} bytes, found {} bytes",
            text.len()
        ));
    }
    // IP literals as the standard library reads them, which is also how they are dialled (it takes a numeric
    // IPv6 scope and zero-padded ports, which announcers have always been allowed to send).
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return ip_addr(addr.ip(), addr.port(), allow_unspecified);
    }
    let parsed = text.parse::<HostPort>().map_err(|err| {
        format!(
            "expected host:port, found {} ({})",
            excerpt(text),
            err.reason()
        )
    })?;
    // HostPort also takes `+80` and `000080`; an announced port is plain digits.
    let port_text = text.rsplit_once(':').map_or("", |(_, port)| port);
    if port_text.len() > 5 || !port_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected a port in 1..=65535, found {}",
            excerpt(port_text)
        ));
    }
    let port = parsed.port();
    match parsed.host() {
        svc::Host::Ipv4(ip) => ip_addr(IpAddr::V4(*ip), port, allow_unspecified),
        svc::Host::Ipv6(ip) => ip_addr(IpAddr::V6(*ip), port, allow_unspecified),
        svc::Host::Name(name) => {
            check_name(name)?;
            Ok(ServerAddr {
                host: Host::Name(name.to_ascii_lowercase()),
                port,
            })
        }
    }
}

fn ip_addr(ip: IpAddr, port: u16, allow_unspecified: bool) -> Result<ServerAddr, String> {
    let ip = ip.to_canonical();
    if port == 0 {
        return Err("expected a port in 1..=65535, found 0".to_owned());
    }
    if ip.is_multicast() {
        return Err(format!("expected a unicast IP, found multicast {ip}"));
    }
    if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Err(format!("expected a unicast IP, found broadcast {ip}"));
    }
    if ip.is_unspecified() && !allow_unspecified {
        return Err(format!("expected a reachable IP, found unspecified {ip}"));
    }
    Ok(ServerAddr {
        host: Host::Ip(ip),
        port,
    })
}

/// Stricter than a config file on two points: the announced text must name one server as written (no root dot,
/// which would make `a.example.` and `a.example` two servers), and a last label of digits only is a mistyped IPv4
/// address such as `10.0.0.256`, never a name.
fn check_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "expected a host name or IP, found {} ({why})",
            excerpt(name)
        ))
    };
    if name.ends_with('.') {
        return bad("a name may not end with '.'");
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return bad("not a valid IP, and a name's last label cannot be all digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ips_and_names() {
        for ok in [
            "10.0.0.5:8080",
            "127.0.0.1:1",
            "[::1]:65535",
            "[2001:db8::1]:80",
            "data-1.example.com:4151",
            "data_server_1:80",
            "localhost:8080",
        ] {
            assert!(ServerAddr::parse_announced(ok).is_ok(), "{ok}");
        }
        let mapped = ServerAddr::parse_announced("[::ffff:10.1.2.3]:80").unwrap();
        assert_eq!(mapped.ip(), Some("10.1.2.3".parse().unwrap()));
        let name = ServerAddr::parse_announced("Data-1.Example.COM:80").unwrap();
        assert_eq!(name.host, Host::Name("data-1.example.com".into()));
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:65536",
            "host:+80",
            "host:080x",
            "host:000080",
            "host:80x",
            "host.:80",
            "a.b.123:80",
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:0.0.0.0]:80",
            "224.0.0.1:80",
            "[ff02::1]:80",
            "255.255.255.255:80",
            "999.1.1.1:80",
            "1.2.3:80",
            "::1:80",
            "[::1:80",
            "-bad.example:80",
            "a..b:80",
            "sp ace:80",
            "host:80\n",
            "[fe80::1%eth0]:80",
        ] {
            assert!(ServerAddr::parse_announced(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}:80", "a".repeat(300));
        assert!(ServerAddr::parse_announced(&long).is_err());
    }

    #[test]
    fn details_quote_only_an_excerpt() {
        let long = format!("{}.example:80", "a".repeat(240));
        let detail = ServerAddr::parse_announced(&long).unwrap_err();
        assert!(detail.len() < 200, "{detail}");
        assert!(detail.contains("63"), "{detail}");
    }

    #[test]
    fn listen_addresses_may_be_unspecified() {
        let any = ServerAddr::parse_listen("0.0.0.0:8080").unwrap();
        assert!(any.ip().unwrap().is_unspecified());
        assert!(ServerAddr::parse_listen("[::]:8080").is_ok());
        assert!(ServerAddr::parse_listen("0.0.0.0:0").is_err());
    }
}
