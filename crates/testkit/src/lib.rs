//! Test-only support: real `nsqlookupd`, `nsqd` and `nsqadmin` processes on free loopback ports,
//! a throwaway PostgreSQL server ([`Postgres`]),
//! a headless Chromium driven over the DevTools protocol ([`Browser`]),
//! the project's binaries ([`DataServer`], [`ApiServer`]), heartbeats from inside a test
//! ([`Announcer`]), NSQ's own command-line tools as peers, faults on demand, waiting with a
//! deadline ([`eventually`], [`try_eventually`], [`retry`]), short forms of HTTP requests
//! ([`http`]), and the check that ties each binary's example config and README row to its
//! config type ([`check_config_docs`]).
//!
//! Every process a test starts is killed when its handle drops (also while a test panics, when
//! its log is printed too) and, should the test process die without unwinding, by the kernel.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = testkit::NsqCluster::start(2).await?;
//! cluster.http_pub(0, "events", "hello").await?;
//! let stats = cluster.stats(0, "events", None).await?;
//! assert_eq!(stats.topic("events").unwrap().depth, 1);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod announcer;
mod api_server;
mod audit;
mod bins;
mod browser;
mod cluster;
mod config_docs;
mod data_server;
mod events;
mod fault_report;
mod faults;
pub mod http;
mod load;
mod peers;
mod poll;
mod postgres;
mod process;
mod project;
mod stack;
mod stats;

pub use announcer::Announcer;
pub use api_server::ApiServer;
pub use audit::{Archived, AuditReport, Ledger, PublishedRun, audit};
pub use bins::{
    NSQ_PROGRAMS, NSQ_VERSION, build_nsq, built_bin_dir, nsq_bin, nsq_bin_dir, target_dir,
    workspace_root,
};
pub use browser::Browser;
pub use cluster::{ClusterOptions, NsqCluster, Nsqd, RefusingPort, free_port};
pub use config_docs::check_config_docs;
pub use data_server::{DataServer, DataServerOptions};
pub use events::{RegistryEvent, RegistryEvents};
pub use fault_report::FaultReport;
pub use faults::{Fault, FaultRun, SeededRng, listed};
pub use load::{Failure, Load, LoadOptions, LoadReport};
pub use nix::sys::signal::Signal;
pub use peers::{NsqTail, to_nsq};
pub use poll::{POLL_INTERVAL, eventually, retry, try_eventually};
pub use postgres::{POSTGRES_PASSWORD, POSTGRES_USER, Postgres, bin_dir as postgres_bin_dir};
pub use process::ManagedProcess;
pub use project::project_bin;
pub use stack::{DURABLE_NSQD_ARGS, KEY_FILE, Stack, StackOptions};
pub use stats::{ChannelStats, ClientStats, LookupProducer, NsqdStats, TopicStats};
