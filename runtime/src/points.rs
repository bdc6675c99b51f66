//! Where monitoring and ingest points go: InfluxDB (spilled to disk while it is away) or a
//! line-protocol file.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use fathom_monitor::influx::{InfluxConfig, Point, Writer};

use crate::health::Health;

/// Where points go.
pub(crate) enum Points {
    /// The writer, and when it may try again after a failure.
    Influx(Box<Writer>, Instant),
    /// Line protocol appended to a file (no InfluxDB configured).
    File(PathBuf, Vec<String>),
}

impl Points {
    /// InfluxDB for one loop (`ingest`, `monitor`): points wait under `<spill_dir>/<role>` while
    /// it is away.
    pub(crate) fn influx(config: &InfluxConfig, role: &str) -> anyhow::Result<Points> {
        let mut config = config.clone();
        config.spill_dir = config.spill_dir.join(role);
        Ok(Points::Influx(Box::new(Writer::new(config)?), Instant::now()))
    }

    /// Queues points.
    pub(crate) fn push(&mut self, points: &[Point]) -> anyhow::Result<()> {
        match self {
            Points::Influx(w, _) => w.push(points)?,
            Points::File(_, lines) => lines.extend(points.iter().filter_map(Point::encode)),
        }
        Ok(())
    }

    /// Writes what it can; then makes the rest durable. An unreachable InfluxDB is a warning in
    /// `health` (the points wait on disk), cleared once a write succeeds.
    pub(crate) async fn persist(&mut self, health: &Health) -> anyhow::Result<()> {
        match self {
            Points::Influx(w, retry_at) => {
                if Instant::now() >= *retry_at {
                    match w.flush().await {
                        Ok(_) => health.clear("influxdb"),
                        Err(e) => {
                            *retry_at = Instant::now() + w.backoff();
                            tracing::warn!(error = %e, backlog = w.backlog(), retry_in = ?w.backoff(), "InfluxDB write failed; points kept");
                            health.warn("influxdb", format!("{e}; {} points waiting (spilled to disk)", w.backlog()));
                        }
                    }
                }
                w.persist()?;
            }
            Points::File(path, lines) if !lines.is_empty() => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&*path)?;
                for line in lines.drain(..) {
                    writeln!(file, "{line}")?;
                }
                file.sync_data()?;
            }
            Points::File(..) => {}
        }
        Ok(())
    }
}
