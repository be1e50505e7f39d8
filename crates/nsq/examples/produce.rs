//! Publishes lines from stdin to a topic, failing over between nsqd.
//!
//! ```text
//! cargo run -p nsq --example produce -- events 127.0.0.1:4150 127.0.0.1:4250 < lines.txt
//! ```

use std::io::BufRead;
use std::time::Duration;

use nsq::{ProducerConfig, Publisher};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = args.next().ok_or("usage: produce TOPIC NSQD_TCP_ADDR...")?;
    let nsqd: Vec<String> = args.collect();
    let publisher = Publisher::new(&nsqd, ProducerConfig::default())?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let took = publisher.publish(&topic, line.as_bytes()).await?;
        eprintln!("published to {took}");
    }
    publisher.close(Duration::from_secs(5)).await;
    Ok(())
}
