//! The Kafka consumer task both loops read batches from.

use std::sync::Arc;
use std::time::Duration;

use fathom_ingest::kafka::{Committer, KafkaSource};
use fathom_ingest::record::Record;
use fathom_project::Project;
use tokio::sync::mpsc;

use crate::health::Health;

/// A batch as the consumer read it.
pub(crate) struct Fetched {
    /// Its records.
    pub(crate) records: Vec<Record>,
    /// The group's rebalance count before the batch was read: a rebalance after this may have
    /// taken its partitions away.
    pub(crate) rebalances: u64,
}

/// Reads batches (up to `processing.batch_size`, `processing.linger`) in a task of their own,
/// retrying errors every second; the monitor's consumer reads the same way. Another task asks
/// the broker every 2 s whether it answers and reports `kafka` in `health`'s warnings while it
/// does not (consuming simply waits; the records stay in the broker).
pub(crate) fn spawn_consumer(
    (source, committer): (KafkaSource, Committer),
    project: &Project,
    health: Arc<Health>,
) -> (mpsc::Receiver<Fetched>, Committer) {
    // one batch waits while one is processed: a deeper queue would only age the records in it
    // (librdkafka holds the rest, and the next batch takes everything it holds)
    let (tx, rx) = mpsc::channel(1);
    let max = project.processing.batch_size;
    let linger = Duration::from_millis(project.processing.linger_ms as u64);
    let watched = tx.clone();
    let probe = committer.clone();
    let rebalances = committer.rebalances();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = watched.closed() => return,
                _ = every.tick() => {}
            }
            let probe = probe.clone();
            match tokio::task::spawn_blocking(move || probe.probe(Duration::from_secs(2))).await {
                Ok(Ok(())) => health.clear("kafka"),
                Ok(Err(e)) => {
                    let message = format!("{:#}; consuming waits, records stay in the broker", anyhow::Error::from(e));
                    if !health.warnings().contains_key("kafka") {
                        tracing::warn!(error = %message, "the Kafka broker does not answer");
                    }
                    health.warn("kafka", message);
                }
                Err(_) => return,
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let before = rebalances.load(std::sync::atomic::Ordering::Acquire);
            match source.batch(max, linger).await {
                Ok(batch) if batch.is_empty() => {}
                Ok(records) => {
                    if tx.send(Fetched { records, rebalances: before }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "kafka consumer; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    (rx, committer)
}
