//! Durability: the online flush after every batch, dead letters, and the checkpoint (Parquet
//! files, then dead letters, then Kafka offsets, each only after the previous one is durable).

use std::collections::BTreeMap;
use std::time::Instant;

use fathom_featurestore::online::{self, OnlineStore};
use fathom_ingest::deadletter::DeadLetter;

use super::Pipeline;
use crate::telemetry;
use crate::RETRY;

impl Pipeline {
    /// Writes changed states until the store takes them.
    pub(super) async fn flush(&mut self, applied: &BTreeMap<(String, i32), i64>) {
        let group = self.project.group_id();
        let offsets: Vec<(String, i64)> = applied
            .iter()
            .map(|((topic, partition), offset)| (online::offsets_key(&group, topic, *partition), *offset))
            .collect();
        let started = Instant::now();
        until_ok!(self.health, "flushing table rows to the online store", self.tables.flush().await);
        let written = until_ok!(self.health, "flushing to the online store", self.processor.flush(&offsets).await);
        let written_in = started.elapsed().as_secs_f64();
        self.stats.flushes.push(written_in);
        telemetry::flushed(written_in, written, self.processor.cached());
        self.health.recovered();
    }

    /// Queues a dead letter, waiting out a full queue or an unwritable file.
    pub(super) async fn dead_letter(&mut self, letter: DeadLetter) {
        loop {
            match self.dead.send(&letter) {
                Ok(()) => return,
                Err(e) => self.health.degraded("writing a dead letter", &e.into()),
            }
            // a full producer queue drains while we wait for what is in flight
            self.flush_dead_letters().await;
            tokio::time::sleep(RETRY).await;
        }
    }

    pub(super) async fn flush_dead_letters(&mut self) {
        until_ok!(self.health, "flushing dead letters", self.dead.flush().await);
    }

    /// Parquet files, then dead letters, then Kafka offsets: each step only after the previous
    /// one is durable.
    pub(super) async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let rows = self.offline.buffered();
        let files = until_ok!(self.health, "writing the offline store", self.offline.commit());
        telemetry::offline_committed(rows, files.len());
        self.flush_dead_letters().await;
        if let OnlineStore::Embedded(store) = self.processor.store().clone() {
            until_ok!(self.health, "saving the embedded store snapshot", {
                let saving = store.clone();
                tokio::task::spawn_blocking(move || saving.save()).await?
            });
        }
        let mut lags = Vec::new();
        if let Some(committer) = &self.committer {
            let offsets = self.processed.clone();
            let committer = committer.clone();
            let lag = tokio::task::spawn_blocking(move || committer.commit(&offsets).map(|()| committer.lag())).await?;
            match lag {
                Ok(lag) => {
                    self.processed.clear();
                    for (topic, partition, lag) in lag {
                        telemetry::consumer_lag(&topic, partition, lag);
                        lags.push((topic, partition, lag));
                    }
                }
                // a failed commit only means a longer replay after a crash (applied records are
                // skipped); forget these offsets rather than retry partitions a rebalance may have
                // taken away — the next checkpoint commits newer ones
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "committing Kafka offsets");
                    self.processed.clear();
                }
            }
        }
        let keys = self.processor.store().key_count().await.ok().flatten();
        if let Some(keys) = keys {
            telemetry::online_keys(keys);
        }
        self.write_stats(&lags, keys).await;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}
