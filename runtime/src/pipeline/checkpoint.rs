//! Durability: the online flush after every batch, dead letters, and the checkpoint (Parquet
//! files, then dead letters, then Kafka offsets, each only after the previous one is durable;
//! the files written off the pipeline's task).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;
use fathom_featurestore::offline::{Sealed, Spill};
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
    /// the sealed rows cover. One write at a time; when the rows buffered meanwhile reach
    /// `processing.max_buffered_rows`, the stream waits for it.
    pub(super) async fn checkpoint_step(&mut self) -> anyhow::Result<()> {
        let bound = self.project.processing.max_buffered_rows;
        match self.writing.take() {
            Some(writing) if writing.is_finished() || self.offline.buffered() >= bound => {
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
        let mut spill = self.spill.take().expect("the spill comes back with each write");
        let offsets = std::mem::take(&mut self.processed);
        let snapshot = self.snapshot();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let outcome = match store(&mut sealed, &mut spill, true) {
                Ok(spilled) => snapshot().map(|()| spilled).map_err(|e| ("saving the embedded store snapshot", e)),
                Err(e) => Err(("writing the offline store", e)),
            };
            Written { sealed, spill, outcome, offsets }
        }));
    }

    /// Finishes a checkpoint after its writer thread: dead letters, then Kafka offsets. When
    /// the rows went to the spill directory instead, the stream goes on and the offsets wait
    /// for a checkpoint that reaches the store. When neither took them (the spill directory
    /// full or failing too), its batches and offsets go back and the checkpoint is redone
    /// waiting, retried until the store takes it — the stream waits meanwhile, as for any store
    /// that does not take writes.
    async fn checkpoint_written(&mut self, written: Written) -> anyhow::Result<()> {
        let Written { sealed, spill, outcome, offsets } = written;
        self.spill = Some(spill);
        match outcome {
            Ok(None) => {
                self.spill_waiting(None);
                self.finish_checkpoint(Some(offsets)).await?;
            }
            Ok(Some(error)) => {
                self.hold(offsets);
                self.spill_waiting(Some(&error));
                self.finish_checkpoint(None).await?;
            }
            Err((what, e)) => {
                self.offline.unseal(sealed);
                self.hold(offsets);
                self.health.degraded(what, &e);
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// Offsets of rows not in the store yet go back, to be committed by a later checkpoint
    /// (what was processed since is newer).
    fn hold(&mut self, offsets: Offsets) {
        for (partition, next) in offsets {
            self.processed.entry(partition).or_insert(next);
        }
    }

    /// Reports what waits in the spill directory: its gauges, and while anything waits a
    /// `/readyz` warning `offline_store` (still ready: lookups and the stream go on) with the
    /// store's error, or saying an earlier run left it.
    pub(super) fn spill_waiting(&self, error: Option<&anyhow::Error>) {
        let Some(spill) = &self.spill else { return };
        telemetry::offline_spill(spill.rows(), spill.bytes());
        if spill.is_empty() {
            return self.health.clear("offline_store");
        }
        let parquet = &self.project.stores.offline.parquet;
        let waiting = format!(
            "{} rows in {} file(s) wait in {} ({:.1} MiB of at most {} MiB)",
            spill.rows(),
            spill.files(),
            spill.dir().display(),
            spill.bytes() as f64 / (1 << 20) as f64,
            parquet.max_spill_mb
        );
        let message = match error {
            Some(e) => {
                tracing::warn!(error = format!("{e:#}"), "writing the offline store; {waiting}");
                format!(
                    "{e:#}; {waiting}, moved to the store once it takes writes (the Kafka offsets they cover are \
                     committed then)"
                )
            }
            None => {
                format!("{waiting}: left by an earlier run, moved to {} at the next checkpoint", parquet.path.display())
            }
        };
        self.health.warn("offline_store", message);
    }

    /// A whole checkpoint, each step waited for: spilled files and buffered rows to the store,
    /// the embedded store's snapshot, dead letters, Kafka offsets — each only after the
    /// previous one is durable. After a failed write and at the end, once the write in flight
    /// is finished.
    pub(super) async fn checkpoint(&mut self) -> anyhow::Result<()> {
        if let Some(writing) = self.writing.take() {
            let written = writing.await.context("the checkpoint's writer thread failed")?;
            Box::pin(self.checkpoint_written(written)).await?;
        }
        loop {
            let spill = self.spill.as_mut().expect("back once the write in flight is");
            let stored = self.offline.seal().map_err(anyhow::Error::from).and_then(|mut sealed| {
                let stored = store(&mut sealed, spill, false);
                self.offline.unseal(sealed);
                stored
            });
            match stored {
                Ok(_) => break,
                Err(e) => self.health.degraded("writing the offline store", &e),
            }
            if self.stop_by.is_some_and(|by| Instant::now() >= by) {
                let error = self.spill();
                // the online state is kept all the same: pushed records are not sent again, and
                // an entity skips what it applied when its source replays it
                let snapshot = tokio::task::spawn_blocking(self.snapshot()).await.map_err(anyhow::Error::from);
                return Err(match snapshot.and_then(|saved| saved) {
                    Ok(()) => error,
                    Err(e) => error.context(format!("saving the embedded store snapshot failed too ({e:#})")),
                });
            }
            tokio::time::sleep(crate::RETRY).await;
        }
        self.spill_waiting(None);
        until_ok!(self.health, "saving the embedded store snapshot", {
            let snapshot = self.snapshot();
            tokio::task::spawn_blocking(snapshot).await?
        });
        let offsets = std::mem::take(&mut self.processed);
        self.finish_checkpoint(Some(offsets)).await?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// A stop that ran out of time: the rows the offline store did not take go to the spill
    /// directory; the error says how many, where, and that their offsets stay uncommitted.
    fn spill(&mut self) -> anyhow::Error {
        let store = self.project.stores.offline.parquet.path.display();
        let limit = self.project.processing.stop_timeout_ms;
        let spill = self.spill.as_mut().expect("back once the write in flight is");
        let dir = spill.dir().display().to_string();
        match self.offline.spill(spill) {
            Ok(_) => anyhow::anyhow!(
                "stopping: the offline store {store} did not take writes within {limit} ms; {} rows wait in {} \
                 file(s) under {dir} (the store's layout), moved to the store at the next start; the Kafka \
                 offsets they cover were not committed",
                spill.rows(),
                spill.files()
            ),
            Err(e) => anyhow::anyhow!(
                "stopping: the offline store {store} did not take writes within {limit} ms, and spilling the \
                 last {} rows to {dir} failed too ({e:#}): they are lost unless their source replays them \
                 (Kafka offsets were not committed); {} earlier rows wait in {dir}",
                self.offline.buffered(),
                spill.rows()
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

    /// Dead letters, then the offsets of the rows now durable (`None`: the rows only reached
    /// the spill directory, nothing is committed); then the checkpoint's figures.
    async fn finish_checkpoint(&mut self, offsets: Option<Offsets>) -> anyhow::Result<()> {
        self.flush_dead_letters().await;
        let mut lags = Vec::new();
        let durable = offsets.is_some();
        if let Some(committer) = &self.committer {
            let committer = committer.clone();
            let lag = tokio::task::spawn_blocking(move || match &offsets {
                Some(offsets) => committer.commit(offsets).map(|()| committer.lag()),
                None => Ok(committer.lag()),
            })
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
        if durable {
            // the stores took the checkpoint: ready again even if no record arrives to be flushed
            self.health.recovered();
        }
        Ok(())
    }
}

/// Moves the spilled files into the store, then writes `sealed` there; returns `None` once
/// everything is in the store. When the store fails and `may_spill` and the spill directory
/// has room, what is left of `sealed` goes to the spill directory instead and the store's
/// error is returned as `Some`; otherwise the error, with the rows not written still in
/// `sealed`. Counts what reached the store.
fn store(sealed: &mut Sealed, spill: &mut Spill, may_spill: bool) -> anyhow::Result<Option<anyhow::Error>> {
    let before = (spill.rows() + sealed.rows() as u64, spill.files() + sealed.files());
    let written = spill.upload(sealed.storage()).and_then(|()| sealed.write());
    let after = (spill.rows() + sealed.rows() as u64, spill.files() + sealed.files());
    telemetry::offline_committed((before.0 - after.0) as usize, before.1 - after.1);
    let Err(error) = written else { return Ok(None) };
    let error = anyhow::Error::from(error);
    if !may_spill || spill.full() {
        return Err(error);
    }
    match spill.take(sealed) {
        Ok(_) => Ok(Some(error)),
        Err(e) => Err(error.context(format!(
            "spilling to {} failed too ({:#})",
            spill.dir().display(),
            anyhow::Error::from(e)
        ))),
    }
}

/// A checkpoint's write, done on a blocking thread.
pub(super) struct Written {
    /// What was not written (everything after a failure).
    sealed: Sealed,
    spill: Spill,
    /// `None`: in the store; `Some`: spilled, with the store's error; or what failed and why.
    outcome: Result<Option<anyhow::Error>, (&'static str, anyhow::Error)>,
    /// The offsets the sealed rows cover, committed once they are durable.
    offsets: Offsets,
}
