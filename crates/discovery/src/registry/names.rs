//! Spellings of the api-server's own address that only the system can recognise: a host name (from `/etc/hosts`
//! or DNS) that resolves to one of its listening sockets, and, for a wildcard listener, an IP of one of the
//! machine's interfaces. Each answer is cached for a minute, so a fleet's heartbeats cost a map lookup.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is kept. Names rarely change what they resolve to; a minute bounds the damage of one that
/// does, and the proxy's `Via` check catches a loop in between.
const ANSWER_TTL: Duration = Duration::from_secs(60);
/// Most answers kept; beyond it the cache starts afresh (a flood of random names cannot grow it without bound).
const CAPACITY: usize = 4096;
/// Longest wait for a name to resolve. A name that does not resolve in time is taken as not this api-server: the
/// proxy's connect to it fails or, if it does reach this api-server, its `Via` check answers 508.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// Cached answers to "is this spelling one of our own sockets?".
#[derive(Debug, Default)]
pub(crate) struct SelfNames {
    answers: Mutex<HashMap<Spelling, (bool, Instant)>>,
}

/// What an answer is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Spelling {
    /// A host name and port (the name lowercased).
    Name(String, u16),
    /// An IP: is it one of this machine's?
    LocalIp(IpAddr),
}

impl SelfNames {
    /// The cached answer for `spelling`, if fresh.
    pub(crate) fn cached(&self, spelling: &Spelling, now: Instant) -> Option<bool> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .get(spelling)
            .filter(|(_, at)| now.duration_since(*at) < ANSWER_TTL)
            .map(|(answer, _)| *answer)
    }

    /// Keeps `answer` for `spelling`.
    pub(crate) fn remember(&self, spelling: Spelling, answer: bool, now: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= CAPACITY {
            answers.clear();
        }
        answers.insert(spelling, (answer, now));
    }

    /// Whether `ip` is an address of this machine, cached. Binding a socket to it succeeds only if it is; the
    /// system call is made once a minute per IP at most.
    pub(crate) fn is_local_ip(&self, ip: IpAddr, now: Instant) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let spelling = Spelling::LocalIp(ip);
        if let Some(answer) = self.cached(&spelling, now) {
            return answer;
        }
        let answer = UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
        self.remember(spelling, answer, now);
        answer
    }
}

/// The socket addresses `name:port` resolves to, or none if it does not resolve within [`LOOKUP_TIMEOUT`].
pub(crate) async fn resolve(name: &str, port: u16) -> Vec<SocketAddr> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(err)) => {
            tracing::debug!(name, "announced name does not resolve: {err}");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(
                name,
                "announced name did not resolve within {LOOKUP_TIMEOUT:?}"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_for_a_minute() {
        let names = SelfNames::default();
        let now = Instant::now();
        let spelling = Spelling::Name("api.example".into(), 80);
        assert_eq!(names.cached(&spelling, now), None);
        names.remember(spelling.clone(), true, now);
        assert_eq!(
            names.cached(&spelling, now + Duration::from_secs(59)),
            Some(true)
        );
        assert_eq!(names.cached(&spelling, now + ANSWER_TTL), None);
    }

    #[test]
    fn local_ips_are_recognised_by_binding() {
        let names = SelfNames::default();
        let now = Instant::now();
        assert!(names.is_local_ip("127.0.0.1".parse().unwrap(), now));
        assert!(
            names.is_local_ip("127.0.0.2".parse().unwrap(), now),
            "all of 127/8 is loopback"
        );
        // TEST-NET-3: never assigned to a machine.
        assert!(!names.is_local_ip("203.0.113.7".parse().unwrap(), now));
    }

    #[tokio::test]
    async fn localhost_resolves_and_a_reserved_name_does_not() {
        let addrs = resolve("localhost", 80).await;
        assert!(
            addrs.iter().any(|a| a.ip().is_loopback() && a.port() == 80),
            "{addrs:?}"
        );
        // RFC 6761: `.invalid` never resolves.
        assert!(resolve("nothing.invalid", 80).await.is_empty());
    }
}
