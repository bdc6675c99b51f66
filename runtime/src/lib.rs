//! Fathom at run time: the ingest pipeline ([`pipeline`]: records → featurestore → online and
//! offline stores), the model monitor ([`monitoring`]: predictions and labels → windows → points,
//! alerts, retraining), model calls ([`models`]), readiness ([`health`]) and start/stop.
//!
//! It reads the project only through the plain [`fathom_project::Project`] value and knows
//! nothing of HTTP: the API crate drives it through the handles [`pipeline::start`] returns.

use std::time::Duration;

use anyhow::Context as _;

/// How long both loops wait before retrying a store, a broker or a dead-letter write that failed.
pub(crate) const RETRY: Duration = Duration::from_millis(500);

/// Evaluates `$op` (a `Result`) until it is `Ok`, reporting each failure as degraded health and
/// waiting [`RETRY`] between attempts: the stores may go away, the stream does not stop for it.
macro_rules! until_ok {
    ($health:expr, $what:literal, $op:expr) => {
        loop {
            match $op {
                Ok(value) => break value,
                Err(e) => $health.degraded($what, &e.into()),
            }
            tokio::time::sleep($crate::RETRY).await;
        }
    };
}

pub mod clock;
mod consumer;
pub mod health;
pub mod models;
pub mod monitoring;
pub mod pipeline;
mod points;
mod stage;
pub mod telemetry;

pub use health::{Health, Roles};

/// Stops the pipeline and the monitor after their final checkpoints.
pub async fn stop(running: pipeline::Running) -> anyhow::Result<()> {
    let _ = running.shutdown.send(true);
    if let Some(monitor) = running.monitor {
        let _ = monitor.shutdown.send(true);
        monitor.task.await.context("monitor task")?.context("monitor")?;
    }
    running.task.await.context("pipeline task")?.context("pipeline")
}
