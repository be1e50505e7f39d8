//! Keeping a [`PgStore`]'s one connection: noticing its loss (logged once), reconnecting no
//! more often than a backoff allows (logged once when it is back), and the per-connection
//! session settings.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::PgStore;
use super::target::{classify, wait};
use crate::error::StoreError;

/// First wait before reconnecting after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A lost connection: when to try again.
#[derive(Debug)]
pub(super) struct Outage {
    since: Instant,
    next_try: Instant,
    backoff: Duration,
    attempts: u32,
}

impl PgStore {
    /// The connection, re-established when it was lost and the backoff allows.
    pub(super) fn client(&mut self) -> Result<&Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.lost();
        }
        if self.client.is_none() {
            self.reconnect()?;
        }
        Ok(self.client.as_ref().expect("connected"))
    }

    /// Notes a lost connection (logged once per outage).
    pub(super) fn lost(&mut self) {
        self.client = None;
        self.insert = None;
        if self.outage.is_none() {
            tracing::warn!(
                database = self.target.name(),
                "lost the connection to the archive database; batches are requeued until it is back"
            );
            let now = Instant::now();
            self.outage = Some(Outage {
                since: now,
                next_try: now,
                backoff: FIRST_BACKOFF,
                attempts: 0,
            });
        }
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        let name = self.target.name().to_owned();
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            next_try: Instant::now(),
            backoff: FIRST_BACKOFF,
            attempts: 0,
        });
        if Instant::now() < outage.next_try {
            return Err(StoreError::Unreachable {
                database: name,
                reason: format!(
                    "reconnecting (attempt {} failed, next in {:.1}s)",
                    outage.attempts,
                    outage
                        .next_try
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                ),
            });
        }
        outage.attempts += 1;
        let connected = self
            .target
            .connect()
            .and_then(|c| session_setup(&c, &name).map(|()| c));
        match connected {
            Ok(client) => {
                let outage = self.outage.take().expect("in an outage");
                tracing::info!(
                    database = %name,
                    attempts = outage.attempts,
                    down_ms = outage.since.elapsed().as_millis() as u64,
                    "reconnected to the archive database"
                );
                self.client = Some(client);
                Ok(())
            }
            Err(err) => {
                outage.next_try = Instant::now() + outage.backoff;
                outage.backoff = (outage.backoff * 2).min(MAX_BACKOFF);
                Err(err)
            }
        }
    }

    /// Maps a statement's error, noting a broken connection so the next call reconnects.
    pub(super) fn failed(&mut self, err: &tokio_postgres::Error) -> StoreError {
        let classified = classify(self.target.name(), err);
        if matches!(classified, StoreError::Unreachable { .. })
            || self.client.as_ref().is_some_and(Client::is_closed)
        {
            self.lost();
        }
        classified
    }

    /// A reading call: no reconnection (a command fails and says why).
    pub(super) fn read<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Unreachable {
                database: self.name_str().to_owned(),
                reason: "the connection was lost".to_owned(),
            })?;
        wait(f(client)).map_err(|e| classify(self.name_str(), &e))
    }
}

/// Per connection: commits must be durable when they return, whatever the server's default.
pub(super) fn session_setup(client: &Client, name: &str) -> Result<(), StoreError> {
    wait(async {
        let row = client.query_one("SHOW synchronous_commit", &[]).await?;
        if row.get::<_, String>(0) == "off" {
            client.batch_execute("SET synchronous_commit TO on").await?;
        }
        Ok(())
    })
    .map_err(|e| classify(name, &e))
}
