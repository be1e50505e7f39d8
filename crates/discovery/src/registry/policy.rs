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

/// What a check leaves open: `Some((name, port))` when the address is a host name on one of this api-server's
/// ports with no fresh cached answer. Without any answer it is admitted as not this api-server; with a stale one
/// it is judged by that. Either way the caller may resolve it (off the heartbeat path) and remove the server if it
/// turns out to be this api-server after all.
pub(crate) type Unresolved = Option<(String, u16)>;

/// Whether an address reaches one of this api-server's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Known(bool),
    /// From a cached answer about a name that is due to be looked up again: judged by it meanwhile.
    Stale(bool),
    /// A name never resolved (or whose answer was dropped to make room).
    Unknown,
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
        now: Instant,
    ) -> (Result<(), Rejection>, Unresolved) {
        if !self.allowed(addr) {
            let rejection = Rejection::new(
                RejectReason::NotAllowed,
                format!(
                    "expected an address inside allowed_networks, found {}",
                    excerpt(text)
                ),
            );
            return (Err(rejection), None);
        }
        let (mut is_self, mut unresolved) = (false, false);
        for me in &self.self_addrs {
            match self.is_self(me, addr, now) {
                Verdict::Known(true) => return (Err(self_address(text)), None),
                Verdict::Known(false) => {}
                Verdict::Stale(answer) => (is_self, unresolved) = (is_self || answer, true),
                Verdict::Unknown => unresolved = true,
            }
        }
        let unresolved = match (&addr.host, unresolved) {
            (Host::Name(name), true) => Some((name.clone(), addr.port)),
            _ => None,
        };
        let verdict = if is_self {
            Err(self_address(text))
        } else {
            Ok(())
        };
        (verdict, unresolved)
    }

    /// Marks `name:port` as being resolved; false when it already is or too many lookups are running.
    pub(crate) fn begin_lookup(&self, name: &str, port: u16) -> bool {
        self.names.begin_lookup(name, port)
    }

    /// Ends what [`begin_lookup`](Policy::begin_lookup) started.
    pub(crate) fn end_lookup(&self, name: &str, port: u16) {
        self.names.end_lookup(name, port);
    }

    /// Records what `name:port` resolved to: whether any of `resolved` is one of this api-server's sockets, which it
    /// returns.
    pub(crate) fn resolved(
        &self,
        name: String,
        port: u16,
        resolved: &[SocketAddr],
        now: Instant,
    ) -> bool {
        let is_self = resolved.iter().any(|sa| {
            let addr = ServerAddr {
                host: Host::Ip(sa.ip().to_canonical()),
                port: sa.port(),
            };
            self.self_addrs
                .iter()
                .any(|me| self.is_self(me, &addr, now) == Verdict::Known(true))
        });
        self.names
            .remember(Spelling::Name(name, port), is_self, now);
        is_self
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
    /// resolved to one of these (by the cached answer, fresh or stale). Other hosts' IPs with the same port are
    /// different servers (every container may listen on :8080).
    fn is_self(&self, me: &ServerAddr, addr: &ServerAddr, now: Instant) -> Verdict {
        if me.port != addr.port {
            return Verdict::Known(false);
        }
        let wildcard = me.ip().is_some_and(|ip| ip.is_unspecified());
        let known = match (&me.host, &addr.host) {
            (Host::Ip(_), Host::Ip(theirs)) if wildcard => {
                theirs.is_loopback()
                    || self.local_ips.contains(theirs)
                    || self.names.is_local_ip(*theirs, now)
            }
            (Host::Ip(mine), Host::Ip(theirs)) => mine == theirs,
            // localhost on one side, a loopback IP (or localhost) on the other.
            (_, Host::Name(theirs)) if theirs == "localhost" => wildcard || me.is_loopback(),
            (Host::Name(_), Host::Ip(_)) => me.is_loopback() && addr.is_loopback(),
            (Host::Name(mine), Host::Name(theirs)) if mine == theirs => true,
            (_, Host::Name(theirs)) => {
                return match self
                    .names
                    .answer(&Spelling::Name(theirs.clone(), addr.port), now)
                {
                    Some((answer, true)) => Verdict::Known(answer),
                    Some((answer, false)) => Verdict::Stale(answer),
                    None => Verdict::Unknown,
                };
            }
        };
        Verdict::Known(known)
    }
}

/// The refusal of an address that reaches this api-server.
pub(crate) fn self_address(text: &str) -> Rejection {
    Rejection::new(
        RejectReason::SelfAddress,
        format!(
            "{} is this api-server's own listen address: proxying there would loop",
            excerpt(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> ServerAddr {
        ServerAddr::parse_announced(text).unwrap()
    }

    fn reason(policy: &Policy, text: &str) -> Option<RejectReason> {
        policy
            .check(text, &addr(text), Instant::now())
            .0
            .err()
            .map(|r| r.reason())
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
        let check = |text: &str| policy.check(text, &addr(text), now);
        assert_eq!(
            check("alias.example:8080"),
            (Ok(()), Some(("alias.example".to_owned(), 8080))),
            "admitted for now, to be resolved"
        );
        assert_eq!(
            check("alias.example:9090"),
            (Ok(()), None),
            "another port needs no lookup"
        );
        assert!(policy.resolved(
            "alias.example".into(),
            8080,
            &["127.0.0.1:8080".parse().unwrap()],
            now,
        ));
        let (verdict, unresolved) = check("ALIAS.example:8080");
        assert_eq!(verdict.unwrap_err().reason(), RejectReason::SelfAddress);
        assert_eq!(unresolved, None, "the answer is fresh");
        assert!(!policy.resolved(
            "other.example".into(),
            8080,
            &["203.0.113.7:8080".parse().unwrap()],
            now,
        ));
        assert_eq!(check("other.example:8080"), (Ok(()), None));
        let later = now + std::time::Duration::from_secs(61);
        let (verdict, unresolved) =
            policy.check("alias.example:8080", &addr("alias.example:8080"), later);
        assert_eq!(
            (verdict.unwrap_err().reason(), unresolved),
            (
                RejectReason::SelfAddress,
                Some(("alias.example".to_owned(), 8080))
            ),
            "a stale answer still judges, and asks for a new lookup"
        );
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
