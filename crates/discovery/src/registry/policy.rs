//! Who may register: `allowed_networks`, and never the api-server itself.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::ConfigError;
use crate::heartbeat::addr::{Host, ServerAddr};
use crate::reject::{RejectReason, Rejection, excerpt};

/// Address checks applied to every message after decoding.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    allowed_networks: Vec<IpNet>,
    self_addrs: Vec<ServerAddr>,
    local_ips: Vec<IpAddr>,
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
        })
    }

    /// True when `allowed_networks` is set: only addresses inside it may register.
    pub(crate) fn restricts_networks(&self) -> bool {
        !self.allowed_networks.is_empty()
    }

    pub(crate) fn check(&self, text: &str, addr: &ServerAddr) -> Result<(), Rejection> {
        if !self.allowed(addr) {
            return Err(Rejection::new(
                RejectReason::NotAllowed,
                format!(
                    "expected an address inside allowed_networks, found {}",
                    excerpt(text)
                ),
            ));
        }
        if self.self_addrs.iter().any(|me| self.is_self(me, addr)) {
            return Err(Rejection::new(
                RejectReason::SelfAddress,
                format!(
                    "{} is this api-server's own listen address: proxying there would loop",
                    excerpt(text)
                ),
            ));
        }
        Ok(())
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

    /// Same port, and a host that reaches `me`: the same IP; `localhost` for a loopback IP and the reverse; and for an
    /// unspecified listen IP (`0.0.0.0`, `::`), any loopback or configured local IP. Other hosts' IPs with the same
    /// port are different servers (every container may listen on :8080).
    fn is_self(&self, me: &ServerAddr, addr: &ServerAddr) -> bool {
        if me.port != addr.port {
            return false;
        }
        match (&me.host, &addr.host) {
            (Host::Ip(mine), _) if mine.is_unspecified() => {
                addr.is_loopback() || addr.ip().is_some_and(|ip| self.local_ips.contains(&ip))
            }
            (Host::Ip(mine), Host::Ip(theirs)) => mine == theirs,
            (Host::Name(mine), Host::Name(theirs)) => mine == theirs,
            // localhost on one side, a loopback IP on the other.
            _ => me.is_loopback() && addr.is_loopback(),
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
        policy.check(text, &addr(text)).err().map(|r| r.reason())
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
    fn bad_self_address_is_a_config_error() {
        let err = Policy::new(vec![], &["nonsense".into()], vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::BadSelfAddr { .. }));
    }
}
