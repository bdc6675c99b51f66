//! The monitor lease: one active monitor per project, the others on standby.

use std::time::Duration;

use fathom_featurestore::online::OnlineStore;
use tokio::sync::{mpsc, watch};

use super::{monitor_tag, Monitor, MonitorPush};
use crate::health::Health;

pub(super) fn lease_key(project: &str) -> String {
    format!("{}:lease", monitor_tag(project))
}

/// How long the active monitor's lease lasts unless renewed (every few seconds while active).
/// A monitor that dies without releasing it is replaced by a standby after at most this long.
pub(super) const LEASE_MS: u64 = 10_000;
/// How often the active monitor renews its lease.
pub(super) const RENEW: Duration = Duration::from_millis(2_000);

/// The monitor lost its lease to another process: it must stop writing at once.
#[derive(Debug, thiserror::Error)]
#[error("another process ({0}) holds the monitor lease")]
pub(super) struct LeaseLost(pub(super) String);

/// Waits until this process holds the lease (`true`) or is shut down (`false`). Pushed records
/// are refused meanwhile (their request answers 503): only the active monitor counts them.
pub(super) async fn standby(
    store: &OnlineStore,
    key: &str,
    holder: &str,
    health: &Health,
    push: &mut mpsc::Receiver<MonitorPush>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        match store.lease(key, holder, LEASE_MS).await {
            Ok(None) => {
                health.clear("monitor");
                return true;
            }
            Ok(Some(other)) => health.warn("monitor", format!("standby: {other} is the active monitor")),
            Err(e) => health.warn("monitor", format!("standby: {:#}", anyhow::Error::from(e))),
        }
        tokio::select! {
            _ = shutdown.changed() => return false,
            Some(request) = push.recv() => drop(request),
            _ = tokio::time::sleep(RENEW) => {}
        }
    }
}

impl Monitor {
    /// Renews the lease every [`RENEW`]; a store that does not answer is retried at the next
    /// tick (the lease outlasts a few misses).
    pub(super) async fn renew(&mut self) -> Result<(), LeaseLost> {
        if self.clock.since(self.last_renewed) < RENEW {
            return Ok(());
        }
        match self.store.lease(&lease_key(&self.project.name), &self.holder, LEASE_MS).await {
            Ok(None) => self.last_renewed = self.clock.instant(),
            Ok(Some(other)) => return Err(LeaseLost(other)),
            Err(e) => tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "renewing the monitor lease"),
        }
        Ok(())
    }
}
