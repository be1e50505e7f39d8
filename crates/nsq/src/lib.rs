//! An NSQ client on tokio: [`Producer`] and [`Publisher`] (several nsqd with failover),
//! [`Consumer`] with concurrent handlers, RDY control, nsqlookupd discovery, backoff and a
//! graceful stop. Written to nsqd's protocol and the behaviour of the official Go client.
//!
//! ```no_run
//! use std::time::Duration;
//! use nsq::{Consumer, ConsumerConfig, Message, Producer, ProducerConfig};
//!
//! # async fn demo() -> nsq::Result<()> {
//! let producer = Producer::new("127.0.0.1:4150", ProducerConfig::default())?;
//! producer.publish("events", b"hello").await?;
//!
//! let cfg = ConsumerConfig {
//!     lookupd_http_addresses: vec!["127.0.0.1:4161".into()],
//!     max_in_flight: 100,
//!     concurrency: 4,
//!     ..Default::default()
//! };
//! let consumer = Consumer::start("events", "worker", cfg, |msg: Message| async move {
//!     println!("{} bytes", msg.body().len());
//!     Ok(()) // finished; an Err requeues with backoff
//! })?;
//! // ... later: CLS, drain what is in flight, close.
//! let report = consumer.stop(Duration::from_secs(30)).await;
//! assert!(report.clean);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod command;
mod compress;
mod config;
mod conn;
mod consumer;
mod error;
pub mod frame;
mod lookup;
mod message;
mod names;
mod producer;
mod publisher;
mod tls;

pub use config::{Compression, Config, IdentifyReply, OutputBuffer, TlsConfig};
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerStats, Handler, HandlerError, Message, StopReport,
};
pub use error::{Error, Result, is_fatal_code};
pub use lookup::{Lookupd, TopicLookup};
pub use message::{MESSAGE_ID_LEN, MessageId, RawMessage};
pub use names::{is_ephemeral, validate_channel, validate_topic};
pub use producer::{Producer, ProducerConfig};
pub use publisher::{PublishReport, Publisher};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
