//! Prints every message of a topic found through nsqlookupd; Ctrl-C stops gracefully.
//!
//! ```text
//! cargo run -p nsq --example consume -- events 127.0.0.1:4161
//! ```

use std::time::Duration;

use nsq::{Consumer, ConsumerConfig, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = args
        .next()
        .ok_or("usage: consume TOPIC LOOKUPD_HTTP_ADDR...")?;
    let cfg = ConsumerConfig {
        lookupd_http_addresses: args.collect(),
        lookupd_poll_interval: Duration::from_secs(5),
        max_in_flight: 64,
        concurrency: 4,
        ..Default::default()
    };
    let consumer = Consumer::start(&topic, "example#ephemeral", cfg, |m: Message| async move {
        println!("{}", String::from_utf8_lossy(m.body()));
        Ok(())
    })?;
    tokio::signal::ctrl_c().await?;
    let report = consumer.stop(Duration::from_secs(10)).await;
    eprintln!("stopped: {report:?}");
    Ok(())
}
