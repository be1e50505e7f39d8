//! The registry file (`discovery.registry_file`): loaded at start so a restarted api-server routes at once, and
//! written again whenever membership changed (ARCHITECTURE.md §4.2 "Cold start"). The rules of what it holds and
//! how unconfirmed servers are routed are the `discovery` crate's (`SavedRegistry`, `Registry::restore`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use discovery::{Registry, SavedRegistry};
use svc::Shutdown;
use tokio::time::Instant;

/// Loads `path` into `registry` as unconfirmed servers and returns how many the file held (the start-up
/// solicitation sizes its spread by it). A missing file loads nothing; an unreadable or malformed one is logged and
/// ignored: the api-server then waits for heartbeats (or solicits them), as without the file.
pub(crate) fn load(path: &Path, registry: &Registry) -> usize {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot read the saved registry; starting empty");
            return 0;
        }
    };
    let saved: SavedRegistry = match serde_json::from_slice(&text) {
        Ok(saved) => saved,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "malformed saved registry; starting empty");
            return 0;
        }
    };
    let (saved_servers, saved_at_ms) = (saved.servers.len(), saved.saved_at_ms);
    let loaded = registry.restore(saved, Instant::now(), SystemTime::now());
    tracing::info!(
        path = %path.display(),
        saved_servers,
        saved_at_ms,
        loaded,
        "saved registry loaded; its servers stay unconfirmed until heard from"
    );
    saved_servers
}

/// Writes the registry to `path` every `interval` when membership changed since the last write, and once more at
/// shutdown. Writes go to a temporary file renamed over `path`, so a crash leaves the old file or the new one.
pub(crate) async fn keep_saved(
    path: PathBuf,
    registry: Registry,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved_generation = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.wait() => true,
        };
        let generation = registry.generation();
        if saved_generation != Some(generation) {
            let snapshot = registry.saved(Instant::now(), SystemTime::now());
            let target = path.clone();
            // Serialising 100,000 servers takes tens of milliseconds: off the runtime's threads.
            let written = tokio::task::spawn_blocking(move || write(&target, &snapshot)).await;
            match written {
                Ok(Ok(())) => saved_generation = Some(generation),
                Ok(Err(err)) => {
                    tracing::warn!(path = %path.display(), %err, "cannot save the registry")
                }
                Err(err) => tracing::warn!(%err, "saving the registry failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

fn write(path: &Path, saved: &SavedRegistry) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    serde_json::to_writer(&mut file, saved)?;
    file.flush()?;
    file.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::{Heartbeat, RegistryConfig};

    fn registry() -> Registry {
        Registry::new(RegistryConfig::new(Duration::from_secs(10))).unwrap()
    }

    #[tokio::test]
    async fn saved_at_shutdown_and_loaded_as_unconfirmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let before = registry();
        let hb = Heartbeat::new("a", "10.0.0.1:80", 1, 1).encode();
        before.observe(&hb, 0, Instant::now(), SystemTime::now());
        let shutdown = Shutdown::new();
        let saver = tokio::spawn(keep_saved(
            path.clone(),
            before,
            Duration::from_secs(3600),
            shutdown.clone(),
        ));
        shutdown.trigger();
        saver.await.unwrap();

        let after = registry();
        load(&path, &after);
        let servers = after.servers(Instant::now());
        assert_eq!(servers.len(), 1);
        assert_eq!(
            (servers[0].id.as_str(), servers[0].state),
            ("a", "unconfirmed")
        );
    }

    #[test]
    fn a_missing_or_malformed_file_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry();
        load(&dir.path().join("absent.json"), &reg);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{not json").unwrap();
        load(&bad, &reg);
        assert!(reg.servers(Instant::now()).is_empty());
    }
}
