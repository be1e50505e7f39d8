//! Spellings of the api-server's own address that only the system can recognise: a host name (from `/etc/hosts`
//! or DNS) that resolves to one of its listening sockets, and, for a wildcard listener, an IP of one of the
//! machine's interfaces. Each answer is cached for about a minute, so a fleet's heartbeats cost a map lookup.
//! Names are resolved off the heartbeat path (`Registry::observe_resolving`), at most [`MAX_LOOKUPS`] at a time.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is kept, at most; each is kept between three quarters of it and all of it, at random, so
/// that names first resolved together (at a start) are not all looked up again in the same second. Names rarely
/// change what they resolve to; a minute bounds the damage of one that does, and the proxy's `Via` check catches
/// a loop in between.
const ANSWER_TTL: Duration = Duration::from_secs(60);
/// Most answers kept; beyond it the oldest are dropped (a flood of random names cannot grow it without bound, nor
/// push out every answer at once).
const CAPACITY: usize = 4096;
/// How many answers make room at once when the cache is full: one scan per this many new names.
const EVICT_BATCH: usize = CAPACITY / 16;
/// Most lookups running at once. A name that finds them all busy is taken as not this api-server until one of its
/// later heartbeats finds a free slot: slow DNS costs lookups, never heartbeat handling.
pub(crate) const MAX_LOOKUPS: usize = 8;

/// Cached answers to "is this spelling one of our own sockets?".
#[derive(Debug, Default)]
pub(crate) struct SelfNames {
    /// Answer and the instant it stops being fresh.
    answers: Mutex<HashMap<Spelling, (bool, Instant)>>,
    /// Names being resolved right now.
    lookups: Mutex<HashSet<(String, u16)>>,
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
        self.answer(spelling, now)
            .filter(|(_, fresh)| *fresh)
            .map(|(answer, _)| answer)
    }

    /// The cached answer for `spelling` and whether it is still fresh. A stale answer is kept (until replaced, or
    /// dropped to make room) so that a name can be judged by it while it is looked up again.
    pub(crate) fn answer(&self, spelling: &Spelling, now: Instant) -> Option<(bool, bool)> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .get(spelling)
            .map(|(answer, until)| (*answer, now < *until))
    }

    /// Keeps `answer` for `spelling`, for a random share of [`ANSWER_TTL`] between three quarters and all of it.
    pub(crate) fn remember(&self, spelling: Spelling, answer: bool, now: Instant) {
        let kept = ANSWER_TTL.mul_f64(rand::random_range(0.75..=1.0));
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= CAPACITY && !answers.contains_key(&spelling) {
            evict_oldest(&mut answers, now);
        }
        answers.insert(spelling, (answer, now + kept));
    }

    /// Marks `name:port` as being resolved; false when it already is, or when [`MAX_LOOKUPS`] are running.
    pub(crate) fn begin_lookup(&self, name: &str, port: u16) -> bool {
        let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if lookups.len() >= MAX_LOOKUPS {
            return false;
        }
        lookups.insert((name.to_owned(), port))
    }

    /// Ends what [`begin_lookup`](SelfNames::begin_lookup) started.
    pub(crate) fn end_lookup(&self, name: &str, port: u16) {
        let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        lookups.remove(&(name.to_owned(), port));
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

/// Makes room in a full cache: drops the answers no longer fresh, and if that is not enough, the
/// [`EVICT_BATCH`] that go stale soonest (the oldest, give or take the spread).
fn evict_oldest(answers: &mut HashMap<Spelling, (bool, Instant)>, now: Instant) {
    answers.retain(|_, (_, until)| now < *until);
    if answers.len() < CAPACITY {
        return;
    }
    let mut untils: Vec<Instant> = answers.values().map(|(_, until)| *until).collect();
    let (_, cut, _) = untils.select_nth_unstable(EVICT_BATCH - 1);
    let cut = *cut;
    answers.retain(|_, (_, until)| *until > cut);
}

/// The socket addresses `name:port` resolves to, or none if it does not resolve.
///
/// Not bounded by a timeout on purpose: the system's resolver runs on a blocking thread that a timeout would not
/// stop, so a timed-out lookup would free its slot (at most [`MAX_LOOKUPS`] at once) while its thread went on, and
/// a hanging DNS server would pile threads up. Held until the resolver answers (its own retries bound that), the
/// slot bounds the threads. Nobody waits for the answer: heartbeats are applied meanwhile.
pub(crate) async fn resolve(name: &str, port: u16) -> Vec<SocketAddr> {
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(err) => {
            tracing::debug!(name, "announced name does not resolve: {err}");
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
            names.cached(&spelling, now + Duration::from_secs(44)),
            Some(true),
            "kept at least three quarters of a minute"
        );
        assert_eq!(names.cached(&spelling, now + ANSWER_TTL), None);
    }

    #[test]
    fn answers_given_together_do_not_all_go_stale_together() {
        let names = SelfNames::default();
        let now = Instant::now();
        for i in 0..100 {
            names.remember(Spelling::Name(format!("n{i}.example"), 80), false, now);
        }
        let fresh_at = |at: Instant| {
            (0..100)
                .filter(|i| {
                    names
                        .cached(&Spelling::Name(format!("n{i}.example"), 80), at)
                        .is_some()
                })
                .count()
        };
        assert_eq!(
            fresh_at(now + ANSWER_TTL.mul_f64(0.75) - Duration::from_millis(1)),
            100
        );
        let halfway = fresh_at(now + ANSWER_TTL.mul_f64(0.875));
        assert!((10..=90).contains(&halfway), "{halfway} of 100 still fresh");
        assert_eq!(fresh_at(now + ANSWER_TTL + Duration::from_millis(1)), 0);
    }

    #[test]
    fn a_full_cache_drops_its_oldest_answers_not_all() {
        let names = SelfNames::default();
        let start = Instant::now();
        let name = |i: usize| Spelling::Name(format!("n{i}.example"), 80);
        // The first answer is 20 s older than the rest: the oldest whatever the spread (15 s wide).
        for i in 0..CAPACITY {
            let at = if i == 0 {
                start
            } else {
                start + Duration::from_secs(20)
            };
            names.remember(name(i), true, at);
        }
        let now = start + Duration::from_secs(21);
        names.remember(name(CAPACITY), true, now);
        assert_eq!(names.cached(&name(CAPACITY), now), Some(true));
        assert_eq!(names.cached(&name(0), now), None, "the oldest made room");
        let kept = (1..CAPACITY)
            .filter(|&i| names.cached(&name(i), now).is_some())
            .count();
        assert!(
            kept >= CAPACITY - EVICT_BATCH,
            "only a batch dropped: {kept} kept"
        );
    }

    #[test]
    fn lookups_are_bounded_and_not_repeated() {
        let names = SelfNames::default();
        assert!(names.begin_lookup("a.example", 80));
        assert!(!names.begin_lookup("a.example", 80), "already running");
        for i in 1..MAX_LOOKUPS {
            assert!(names.begin_lookup(&format!("n{i}.example"), 80));
        }
        assert!(
            !names.begin_lookup("one.more.example", 80),
            "all slots busy"
        );
        names.end_lookup("a.example", 80);
        assert!(names.begin_lookup("one.more.example", 80));
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
