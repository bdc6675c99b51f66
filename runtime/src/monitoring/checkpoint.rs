//! What the monitor makes durable, in order, and the checkpoint value itself.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use fathom_featurestore::online::Write;
use fathom_monitor::influx::Point;
use fathom_monitor::window::ModelState;
use serde::{Deserialize, Serialize};

use super::lease::{lease_key, LeaseLost, LEASE_MS};
use super::outbox::Delivery;
use super::{checkpoint_key, Monitor};
use crate::RETRY;

/// What the checkpoint holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    pub(super) epoch: u64,
    /// Epochs of runs that crashed before committing them.
    pub(super) aborted: BTreeSet<u64>,
    /// Next offset per (topic, partition).
    pub(super) offsets: Vec<((String, i32), i64)>,
    pub(super) models: BTreeMap<String, ModelState>,
    pub(super) outbox: Vec<Delivery>,
}

/// Why a checkpoint was not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum CheckpointError {
    /// Another process is the active monitor: stop at once, write nothing more.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    /// A store, InfluxDB, the spill directory or Kafka failed: retry.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Monitor {
    /// Checkpoints, retrying store failures; only a lost lease ends it with an error.
    pub(super) async fn checkpoint_until_done(&mut self) -> Result<(), LeaseLost> {
        loop {
            match self.checkpoint().await {
                Ok(()) => return Ok(()),
                Err(CheckpointError::LeaseLost(lost)) => return Err(lost),
                Err(CheckpointError::Failed(e)) => self.health.degraded("monitor checkpoint", &e),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Makes everything durable (see the module documentation for the order).
    pub(super) async fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        self.dead.flush().await.context("flushing dead letters")?;
        let now = self.clock.now_ms();
        let points: Vec<Point> = self.models.iter().map(|m| m.monitor.counters_point(now)).collect();
        self.points.push(&points)?;
        self.points.persist(&self.health).await.context("writing monitoring points")?;
        let writes: Vec<Write> = self
            .overlay
            .iter()
            .map(|(key, (ttl, entry))| Write {
                key: key.clone(),
                state: postcard::to_allocvec(entry).expect("an entry encodes"),
                ttl_ms: Some(*ttl),
            })
            .collect();
        self.store.write(&writes, &[]).await.context("writing join entries")?;
        self.write_checkpoint().await?;
        self.overlay.clear();
        if let Some(committer) = &self.committer {
            committer.commit(&self.offsets).context("committing monitor offsets")?;
        }
        self.health.recovered();
        self.urgent = false;
        self.last_checkpoint = self.clock.instant();
        Ok(())
    }

    /// Writes the checkpoint as epoch `committed + 1` and moves on to the next epoch.
    pub(super) async fn write_checkpoint(&mut self) -> Result<(), CheckpointError> {
        let epoch = self.epoch();
        let outbox: Vec<Delivery> = self
            .outbox
            .iter()
            .cloned()
            .map(|mut d| {
                d.committed = true;
                d
            })
            .collect();
        let checkpoint = Checkpoint {
            epoch,
            aborted: self.aborted.clone(),
            offsets: self.offsets.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            models: self.models.iter().map(|m| (m.name.clone(), m.monitor.state.clone())).collect(),
            outbox,
        };
        let bytes = postcard::to_allocvec(&checkpoint).context("encoding the monitor checkpoint")?;
        let write = Write { key: checkpoint_key(&self.project.name), state: bytes, ttl_ms: None };
        let key = lease_key(&self.project.name);
        let fenced = self.store.write_fenced(&key, &self.holder, LEASE_MS, &write).await;
        if let Some(other) = fenced.context("writing the monitor checkpoint")? {
            return Err(LeaseLost(other).into());
        }
        self.last_renewed = self.clock.instant();
        self.committed = epoch;
        for d in &mut self.outbox {
            d.committed = true;
        }
        Ok(())
    }
}
