//! `host:port` validation for announced addresses and for the api-server's own listen addresses.

use std::net::{IpAddr, SocketAddr};

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
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return ip_addr(sa.ip(), sa.port(), allow_unspecified);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "expected host:port, found {}",
            crate::reject::excerpt(text)
        ));
    };
    let port = parse_port(port)?;
    if host.contains(':') {
        return Err(format!(
            "expected an IPv6 host in brackets ([::1]:80), found {}",
            crate::reject::excerpt(text)
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip_addr(ip, port, allow_unspecified);
    }
    check_hostname(host)?;
    Ok(ServerAddr {
        host: Host::Name(host.to_ascii_lowercase()),
        port,
    })
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

/// Decimal digits only: `str::parse::<u16>` would also take a leading `+`.
fn parse_port(port: &str) -> Result<u16, String> {
    let valid = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(p) if valid && p != 0 => Ok(p),
        _ => Err(format!(
            "expected a port in 1..=65535, found {}",
            crate::reject::excerpt(port)
        )),
    }
}

/// RFC 1123 names, plus `_` (container and compose service names use it). The last label may not be all digits,
/// so a malformed IPv4 literal such as `999.1.1.1` is not mistaken for a name.
fn check_hostname(host: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "expected a host name or IP, found {} ({why})",
            crate::reject::excerpt(host)
        ))
    };
    if host.is_empty() {
        return bad("empty host");
    }
    if host.len() > 253 {
        return bad("longer than 253 bytes");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label must be 1..=63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, '-', '_' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with '-'");
        }
    }
    let last = host.rsplit('.').next().unwrap_or(host);
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
            "host:80x",
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
    fn listen_addresses_may_be_unspecified() {
        let any = ServerAddr::parse_listen("0.0.0.0:8080").unwrap();
        assert!(any.ip().unwrap().is_unspecified());
        assert!(ServerAddr::parse_listen("[::]:8080").is_ok());
        assert!(ServerAddr::parse_listen("0.0.0.0:0").is_err());
    }
}
