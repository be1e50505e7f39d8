//! Who may register: `allowed_networks`, and never the api-server itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ipnet::IpNet;

use crate::error::ConfigError;
use crate::heartbeat::addr::{Host, ServerAddr};
use crate::reject::{RejectReason, Rejection, excerpt};

use super::names::{SelfNames, Spelling};

/// Address checks applied to every message after decoding.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    allowed_networks: Vec<IpNet>,
    self_addrs: Vec<ServerAddr>,
    local_ips: Vec<IpAddr>,
    names: SelfNames,
}

/// Whether a check may stop to ask for a host name to be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Names {
    /// A name with no cached answer is reported ([`Denied::Lookup`]), for the caller to resolve it.
    Ask,
    /// A name with no cached answer is taken as not this api-server.
    Assume,
}

/// Why a check did not pass.
#[derive(Debug)]
pub(crate) enum Denied {
    Rejected(Rejection),
    /// A name on one of this api-server's ports, not resolved yet.
    Lookup(String, u16),
}

impl Policy {
    pub(crate) fn new(
        allowed_networks: Vec<IpNet>,
        self_addrs: &[String],
        local_ips: Vec<IpAddr>,
    ) -> Result<Policy, ConfigError> {
        let self_addrs = self_addrs
            .iter()
            .map(|text| {
                ServerAddr::parse_listen(text).map_err(|detail| ConfigError::BadSelfAddr {
                    addr: text.clone(),
                    detail,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            allowed_networks,
            self_addrs,
            local_ips: local_ips.into_iter().map(|ip| ip.to_canonical()).collect(),
            names: SelfNames::default(),
        })
    }

    /// True when `allowed_networks` is set: only addresses inside it may register.
    pub(crate) fn restricts_networks(&self) -> bool {
        !self.allowed_networks.is_empty()
    }

    pub(crate) fn check(
        &self,
        text: &str,
        addr: &ServerAddr,
        names: Names,
        now: Instant,
    ) -> Result<(), Denied> {
        if !self.allowed(addr) {
            return Err(Denied::Rejected(Rejection::new(
                RejectReason::NotAllowed,
                format!(
                    "expected an address inside allowed_networks, found {}",
                    excerpt(text)
                ),
            )));
        }
        let mut unresolved = false;
        for me in &self.self_addrs {
            match self.is_self(me, addr, now) {
                Some(true) => {
                    return Err(Denied::Rejected(Rejection::new(
                        RejectReason::SelfAddress,
                        format!(
                            "{} is this api-server's own listen address: proxying there would loop",
                            excerpt(text)
                        ),
                    )));
                }
                Some(false) => {}
                None => unresolved = true,
            }
        }
        match (&addr.host, unresolved, names) {
            (Host::Name(name), true, Names::Ask) => Err(Denied::Lookup(name.clone(), addr.port)),
            _ => Ok(()),
        }
    }

    /// Records what `name:port` resolved to: whether any of `resolved` is one of this api-server's sockets.
    pub(crate) fn resolved(&self, name: String, port: u16, resolved: &[SocketAddr], now: Instant) {
        let is_self = resolved.iter().any(|sa| {
            let addr = ServerAddr {
                host: Host::Ip(sa.ip().to_canonical()),
                port: sa.port(),
            };
            self.self_addrs
                .iter()
                .any(|me| self.is_self(me, &addr, now) == Some(true))
        });
        self.names
            .remember(Spelling::Name(name, port), is_self, now);
    }

    /// Hostnames are allowed only when the list is empty: checking them would need DNS, whose answers can change
    /// after the check and which this pure logic does not do.
    fn allowed(&self, addr: &ServerAddr) -> bool {
        if self.allowed_networks.is_empty() {
            return true;
        }
        match addr.ip() {
            Some(ip) => self.allowed_networks.iter().any(|net| net.contains(&ip)),
            None => false,
        }
    }

    /// Same port, and a host that reaches `me`: the same IP; `localhost` for a loopback IP and the reverse; for an
    /// unspecified listen IP (`0.0.0.0`, `::`), any loopback, configured or actual local IP; and a name that
    /// resolved to one of these (`None`: a name not resolved yet). Other hosts' IPs with the same port are
    /// different servers (every container may listen on :8080).
    fn is_self(&self, me: &ServerAddr, addr: &ServerAddr, now: Instant) -> Option<bool> {
        if me.port != addr.port {
            return Some(false);
        }
        let wildcard = me.ip().is_some_and(|ip| ip.is_unspecified());
        match (&me.host, &addr.host) {
            (Host::Ip(_), Host::Ip(theirs)) if wildcard => Some(
                theirs.is_loopback()
                    || self.local_ips.contains(theirs)
                    || self.names.is_local_ip(*theirs, now),
            ),
            (Host::Ip(mine), Host::Ip(theirs)) => Some(mine == theirs),
            // localhost on one side, a loopback IP (or localhost) on the other.
            (_, Host::Name(theirs)) if theirs == "localhost" => Some(wildcard || me.is_loopback()),
            (Host::Name(_), Host::Ip(_)) => Some(me.is_loopback() && addr.is_loopback()),
            (Host::Name(mine), Host::Name(theirs)) if mine == theirs => Some(true),
            (_, Host::Name(theirs)) => self
                .names
                .cached(&Spelling::Name(theirs.clone(), addr.port), now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> ServerAddr {
        ServerAddr::parse_announced(text).unwrap()
    }

    fn reason(policy: &Policy, text: &str) -> Option<RejectReason> {
        match policy.check(text, &addr(text), Names::Assume, Instant::now()) {
            Ok(()) => None,
            Err(Denied::Rejected(r)) => Some(r.reason()),
            Err(Denied::Lookup(..)) => panic!("a lookup asked for though told to assume"),
        }
    }

    #[test]
    fn allowed_networks() {
        let nets = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let policy = Policy::new(nets, &[], vec![]).unwrap();
        assert_eq!(reason(&policy, "10.1.2.3:80"), None);
        assert_eq!(reason(&policy, "[fd00::1]:80"), None);
        assert_eq!(
            reason(&policy, "[::ffff:10.1.2.3]:80"),
            None,
            "IPv4-mapped is checked as IPv4"
        );
        assert_eq!(
            reason(&policy, "192.168.1.1:80"),
            Some(RejectReason::NotAllowed)
        );
        assert_eq!(
            reason(&policy, "data.example:80"),
            Some(RejectReason::NotAllowed)
        );

        let open = Policy::new(vec![], &[], vec![]).unwrap();
        assert_eq!(reason(&open, "data.example:80"), None);
        assert_eq!(reason(&open, "192.168.1.1:80"), None);
    }

    #[test]
    fn self_addresses() {
        let policy = Policy::new(
            vec![],
            &[
                "0.0.0.0:8080".into(),
                "10.0.0.9:9090".into(),
                "api.local:7070".into(),
            ],
            vec!["10.0.0.9".parse().unwrap()],
        )
        .unwrap();
        for me in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "10.0.0.9:8080",
            "10.0.0.9:9090",
            "API.local:7070",
        ] {
            assert_eq!(reason(&policy, me), Some(RejectReason::SelfAddress), "{me}");
        }
        for other in [
            "127.0.0.1:8081",
            "10.0.0.5:8080",
            "10.0.0.5:9090",
            "api.other:7070",
            "127.0.0.1:9090",
        ] {
            assert_eq!(reason(&policy, other), None, "{other}");
        }
        let loopback = Policy::new(vec![], &["127.0.0.1:80".into()], vec![]).unwrap();
        assert_eq!(
            reason(&loopback, "localhost:80"),
            Some(RejectReason::SelfAddress)
        );
        assert_eq!(reason(&loopback, "127.0.0.2:80"), None);
        let named = Policy::new(vec![], &["localhost:80".into()], vec![]).unwrap();
        assert_eq!(
            reason(&named, "127.0.0.1:80"),
            Some(RejectReason::SelfAddress)
        );
    }

    #[test]
    fn a_name_on_our_port_is_resolved_once_and_judged_by_what_it_resolves_to() {
        let policy = Policy::new(vec![], &["127.0.0.1:8080".into()], vec![]).unwrap();
        let now = Instant::now();
        let check = |text: &str| policy.check(text, &addr(text), Names::Ask, now);
        assert!(
            matches!(check("alias.example:8080"), Err(Denied::Lookup(ref n, 8080)) if n == "alias.example")
        );
        assert!(
            check("alias.example:9090").is_ok(),
            "another port needs no lookup"
        );
        policy.resolved(
            "alias.example".into(),
            8080,
            &["127.0.0.1:8080".parse().unwrap()],
            now,
        );
        assert!(matches!(
            check("ALIAS.example:8080"),
            Err(Denied::Rejected(r)) if r.reason() == RejectReason::SelfAddress
        ));
        policy.resolved(
            "other.example".into(),
            8080,
            &["203.0.113.7:8080".parse().unwrap()],
            now,
        );
        assert!(check("other.example:8080").is_ok());
    }

    #[test]
    fn a_wildcard_listener_is_reached_through_any_local_ip() {
        let policy = Policy::new(vec![], &["0.0.0.0:8080".into()], vec![]).unwrap();
        assert_eq!(
            reason(&policy, "127.0.0.3:8080"),
            Some(RejectReason::SelfAddress)
        );
        assert_eq!(reason(&policy, "203.0.113.7:8080"), None);
    }

    #[test]
    fn bad_self_address_is_a_config_error() {
        let err = Policy::new(vec![], &["nonsense".into()], vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::BadSelfAddr { .. }));
    }
}
