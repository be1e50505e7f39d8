//! Host names announced on one of the api-server's own ports, resolved off the heartbeat path.
//!
//! A heartbeat naming such a host is applied at once, the name taken as not this api-server; its lookup runs in a
//! task of its own (at most [`MAX_LOOKUPS`](super::names::MAX_LOOKUPS) at a time, one per name). If the name turns
//! out to reach this api-server, the servers announcing it are removed (a `leave` event, counted as
//! `self_address`) and the cached answer refuses its later heartbeats. Slow DNS thus delays only the removal of a
//! self-alias, never the handling of other heartbeats.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use super::policy::self_address;
use super::table::Changes;
use super::{Outcome, Registry, names};
use crate::event::EventKind;
use crate::heartbeat::addr::{Host, ServerAddr};

/// What a lookup gives: the socket addresses the name resolved to, none if it did not (in time).
pub(crate) type LookupFuture = Pin<Box<dyn Future<Output = Vec<SocketAddr>> + Send>>;

/// How names are resolved: the system's resolver, or a stand-in in tests.
#[derive(Clone)]
pub(crate) struct Resolver(Arc<dyn Fn(String, u16) -> LookupFuture + Send + Sync>);

impl Resolver {
    /// The system's resolver (each lookup holds its slot until the resolver answers: [`names::resolve`]).
    pub(crate) fn system() -> Resolver {
        Resolver(Arc::new(|name, port| {
            Box::pin(async move { names::resolve(&name, port).await })
        }))
    }

    /// A resolver made of `lookup`.
    #[cfg(test)]
    pub(crate) fn new(
        lookup: impl Fn(String, u16) -> LookupFuture + Send + Sync + 'static,
    ) -> Resolver {
        Resolver(Arc::new(lookup))
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// A lookup in progress; ends it however its task ends (a panic, a runtime shutting down), so the name can be
/// looked up again.
struct Pending {
    registry: Registry,
    name: String,
    port: u16,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.registry.inner.policy.end_lookup(&self.name, self.port);
    }
}

impl Registry {
    /// Starts looking up `name:port` unless it is being looked up already or every lookup slot is busy (a later
    /// heartbeat of the name will try again).
    pub(super) fn resolve_in_background(&self, name: String, port: u16) {
        if !self.inner.policy.begin_lookup(&name, port) {
            return;
        }
        let lookup = (self.inner.resolver.0)(name.clone(), port);
        let pending = Pending {
            registry: self.clone(),
            name,
            port,
        };
        tokio::spawn(async move {
            let resolved = lookup.await;
            let registry = &pending.registry;
            let is_self = registry.inner.policy.resolved(
                pending.name.clone(),
                port,
                &resolved,
                Instant::now().into_std(),
            );
            if is_self {
                registry.remove_self_name(&pending.name, port);
            }
        });
    }

    /// Removes the servers announced at `name:port`, which turned out to reach this api-server.
    fn remove_self_name(&self, name: &str, port: u16) {
        let mut guard = self.lock();
        let table = &mut *guard;
        let now = table.judge_at(Instant::now());
        let mut ids: Vec<String> = table
            .entries
            .iter()
            .filter(|(_, entry)| announces(entry.backend.addr(), name, port))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        let mut changes = Changes::default();
        for id in ids {
            let Some(entry) = table.entries.remove(&id) else {
                continue;
            };
            let refused = self_address(entry.backend.addr());
            tracing::warn!(id, "server removed: {}", refused.detail());
            self.inner.counters.record(&Outcome::Rejected(refused));
            changes.push(EventKind::Leave, &id, entry.backend.addr(), now);
        }
        self.commit(table, changes);
    }
}

/// `addr` (as announced) is `name:port`, the name compared in lowercase.
fn announces(addr: &str, name: &str, port: u16) -> bool {
    matches!(
        ServerAddr::parse_announced(addr),
        Ok(ServerAddr { host: Host::Name(announced), port: p }) if announced == name && p == port
    )
}
