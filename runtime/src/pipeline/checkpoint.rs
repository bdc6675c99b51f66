//! Durability: the online flush after every batch, dead letters, and the checkpoint (Parquet
//! files, then dead letters, then Kafka offsets, each only after the previous one is durable;
//! the files written off the pipeline's task).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;
use fathom_featurestore::offline::Sealed;
use fathom_featurestore::online::{self, OnlineStore};
use fathom_ingest::deadletter::DeadLetter;
use fathom_ingest::kafka::Offsets;

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

    /// Starts a checkpoint, or finishes the one whose files are written. The buffered rows are
    /// sealed and written to Parquet — then the embedded store's snapshot saved — on a blocking
    /// thread, so batches keep flowing to the online store meanwhile (encoding a checkpoint's
    /// rows takes long enough to hold every record behind it); once that is done,
    /// [`Pipeline::checkpoint_written`] makes the dead letters durable and commits the offsets
    /// the sealed rows cover. One write at a time.
    pub(super) async fn checkpoint_step(&mut self) -> anyhow::Result<()> {
        match self.writing.take() {
            Some(writing) if writing.is_finished() => {
                let written = writing.await.context("the checkpoint's writer thread failed")?;
                self.checkpoint_written(written).await?;
            }
            Some(writing) => self.writing = Some(writing),
            None => self.start_checkpoint(),
        }
        Ok(())
    }

    fn start_checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        let mut sealed = match self.offline.seal() {
            Ok(sealed) => sealed,
            Err(e) => return self.health.degraded("writing the offline store", &e.into()),
        };
        let offsets = std::mem::take(&mut self.processed);
        let snapshot = self.snapshot();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let rows = sealed.rows();
            let outcome = match sealed.write() {
                Err(e) => Err(("writing the offline store", e.into())),
                Ok(files) => snapshot().map(|()| files.len()).map_err(|e| ("saving the embedded store snapshot", e)),
            };
            Written { sealed, outcome, rows, offsets }
        }));
    }

    /// Finishes a checkpoint after its writer thread: dead letters, then Kafka offsets. When
    /// the write failed, its batches and offsets go back and the checkpoint is redone waiting,
    /// retried until the store takes it — the stream waits meanwhile, as for any store that
    /// does not take writes.
    async fn checkpoint_written(&mut self, written: Written) -> anyhow::Result<()> {
        let Written { sealed, outcome, rows, offsets } = written;
        match outcome {
            Ok(files) => {
                telemetry::offline_committed(rows, files);
                self.finish_checkpoint(offsets).await?;
            }
            Err((what, e)) => {
                self.offline.unseal(sealed);
                // what was processed since is newer
                for (partition, next) in offsets {
                    self.processed.entry(partition).or_insert(next);
                }
                self.health.degraded(what, &e);
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// A whole checkpoint, each step waited for: Parquet files, the embedded store's snapshot,
    /// dead letters, Kafka offsets — each only after the previous one is durable. After a
    /// failed write and at the end, once the write in flight is finished.
    pub(super) async fn checkpoint(&mut self) -> anyhow::Result<()> {
        if let Some(writing) = self.writing.take() {
            let written = writing.await.context("the checkpoint's writer thread failed")?;
            Box::pin(self.checkpoint_written(written)).await?;
        }
        let rows = self.offline.buffered();
        let files = loop {
            match self.offline.commit() {
                Ok(files) => break files,
                Err(e) => self.health.degraded("writing the offline store", &e.into()),
            }
            if self.stop_by.is_some_and(|by| Instant::now() >= by) {
                return Err(self.spill());
            }
            tokio::time::sleep(crate::RETRY).await;
        };
        telemetry::offline_committed(rows, files.len());
        until_ok!(self.health, "saving the embedded store snapshot", {
            let snapshot = self.snapshot();
            tokio::task::spawn_blocking(snapshot).await?
        });
        let offsets = std::mem::take(&mut self.processed);
        self.finish_checkpoint(offsets).await?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// A stop that ran out of time: the rows the offline store did not take go to the spill
    /// directory; the error says how many, where, and that their offsets stay uncommitted.
    fn spill(&mut self) -> anyhow::Error {
        let parquet = &self.project.stores.offline.parquet;
        let (dir, store) = (parquet.spill_dir.display(), parquet.path.display());
        let limit = self.project.processing.stop_timeout_ms;
        match self.offline.spill(&parquet.spill_dir) {
            Ok((files, rows)) => anyhow::anyhow!(
                "stopping: the offline store {store} did not take the last {rows} rows within {limit} ms; they \
                 are in {} file(s) under {dir} (the same layout: copy them into the store), and the Kafka \
                 offsets they cover were not committed",
                files.len()
            ),
            Err(e) => anyhow::anyhow!(
                "stopping: the offline store {store} did not take the last {} rows within {limit} ms, and \
                 spilling them to {dir} failed too ({e:#}): they are lost unless their source replays them \
                 (Kafka offsets were not committed)",
                self.offline.buffered()
            ),
        }
    }

    /// Saves the embedded store's snapshot when that is the online store (blocking; a no-op
    /// for Redis).
    fn snapshot(&self) -> impl FnOnce() -> anyhow::Result<()> + Send + 'static {
        let store = match self.processor.store() {
            OnlineStore::Embedded(store) => Some(store.clone()),
            _ => None,
        };
        move || store.map_or(Ok(()), |store| Ok(store.save()?))
    }

    /// Dead letters, then the offsets of the rows now durable; then the checkpoint's figures.
    async fn finish_checkpoint(&mut self, offsets: Offsets) -> anyhow::Result<()> {
        self.flush_dead_letters().await;
        let mut lags = Vec::new();
        if let Some(committer) = &self.committer {
            let committer = committer.clone();
            let lag = tokio::task::spawn_blocking(move || committer.commit(&offsets).map(|()| committer.lag()))
                .await
                .context("the offset committer's thread failed")?;
            match lag {
                Ok(lag) => {
                    for (topic, partition, lag) in lag {
                        telemetry::consumer_lag(&topic, partition, lag);
                        lags.push((topic, partition, lag));
                    }
                }
                // a failed commit only means a longer replay after a crash (applied records are
                // skipped); forget these offsets rather than retry partitions a rebalance may have
                // taken away — the next checkpoint commits newer ones
                Err(e) => tracing::warn!(error = format!("{e:#}"), "committing Kafka offsets"),
            }
        }
        let keys = self.processor.store().key_count().await.ok().flatten();
        if let Some(keys) = keys {
            telemetry::online_keys(keys);
        }
        self.write_stats(&lags, keys).await;
        // the stores took the checkpoint: ready again even if no record arrives to be flushed
        self.health.recovered();
        Ok(())
    }
}

/// A checkpoint's write, done on a blocking thread.
pub(super) struct Written {
    /// What was not written (everything after a failure).
    sealed: Sealed,
    /// Files written, or what failed and why.
    outcome: Result<usize, (&'static str, anyhow::Error)>,
    /// Rows sealed.
    rows: usize,
    /// The offsets the sealed rows cover, committed once they are durable.
    offsets: Offsets,
}
