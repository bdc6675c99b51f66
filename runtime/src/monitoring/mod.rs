//! The monitoring loop: prediction and label records from Kafka (or HTTP push) → the join by
//! `request_id` in the online store → each model's windows → points to InfluxDB, alert webhooks
//! and retraining triggers.
//!
//! One task owns everything, like the feature pipeline. Every `checkpoint_interval` (and at once
//! when a rule fired or a delivery finished) it makes its effects durable in this order: dead
//! letters flushed; points written to InfluxDB or spilled to disk; the join entries touched
//! since the last checkpoint written; then the checkpoint itself — windows, rule states, the
//! delivery outbox and the input offsets, one value under one key — and only then the Kafka
//! offsets committed. After a crash, records at or below the checkpoint's offsets are skipped and
//! entry parts written by the epoch that never committed are ignored (see
//! [`fathom_monitor::join`]), so each prediction, label, join, alert and trigger counts once.
//! Webhooks and pipeline runs leave the outbox only after the checkpoint that created them, so a
//! replay cannot send them twice; each carries a stable id (`X-Fathom-Delivery`,
//! `Idempotency-Key`) for receivers that deduplicate.

mod checkpoint;
mod handle;
mod lease;
mod outbox;
mod payloads;
mod transport;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::online::OnlineStore;
use fathom_ingest::deadletter::DeadLetters;
use fathom_ingest::kafka::{self, Committer, KafkaSource, Offsets};
use fathom_ingest::record::Record;
use fathom_monitor::join::Entry;
use fathom_monitor::profile::Profile;
use fathom_monitor::window::ModelMonitor;
use fathom_project::models::ModelConfig;
use fathom_project::monitoring::{idle_ms, settings};
use fathom_project::Project;
use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::checkpoint::{Checkpoint, CheckpointError};
use self::lease::{lease_key, standby, LeaseLost, LEASE_MS};
use self::outbox::{Delivery, DeliveryResult};
use crate::clock::{Clock, SystemClock};
use crate::health::Health;
use crate::pipeline::PushSummary;
use crate::points::Points;
use crate::stage::{self, Inputs, Stage};
use crate::RETRY;

/// The topic retraining triggers and their outcomes are published to.
pub const RETRAIN_TOPIC: &str = "fathom.retrain";

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Prediction records.
    Predictions,
    /// Label records.
    Labels,
}

/// Records pushed over HTTP for a model.
pub struct MonitorPush {
    /// Model name.
    pub model: String,
    /// Predictions or labels.
    pub kind: Kind,
    /// The records.
    pub records: Vec<Record>,
    /// Answered once the records' effects are checkpointed.
    pub done: oneshot::Sender<PushSummary>,
}

/// Handles to the running monitor.
pub struct Running {
    /// Push input.
    pub push: mpsc::Sender<MonitorPush>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Stops the loop after a final checkpoint.
    pub shutdown: watch::Sender<bool>,
    /// The loop.
    pub task: JoinHandle<anyhow::Result<()>>,
}

struct Model {
    name: String,
    config: ModelConfig,
    monitor: ModelMonitor,
    idle_ms: i64,
    ttl_ms: i64,
}

fn monitor_tag(project: &str) -> String {
    format!("fathom:{{{project}:__monitor}}")
}

/// Where the monitor writes without InfluxDB or Kafka: `monitoring/` beside the dead letters
/// (`data/monitoring` by default).
pub fn monitoring_dir(project: &Project) -> PathBuf {
    project.stores.dead_letters.path.with_file_name("monitoring")
}

/// The store key of a request's join entry.
pub fn entry_key(project: &str, model: &str, request_id: &str) -> String {
    format!("{}:{model}:{request_id}", monitor_tag(project))
}

/// The store key of a project's monitor checkpoint.
pub fn checkpoint_key(project: &str) -> String {
    format!("{}:checkpoint", monitor_tag(project))
}

/// The input offsets a stored monitor checkpoint holds: the next offset per (topic,
/// partition), i.e. how far the monitor's work is durable.
pub fn checkpointed_offsets(bytes: &[u8]) -> anyhow::Result<Vec<((String, i32), i64)>> {
    let checkpoint: Checkpoint = postcard::from_bytes(bytes).context("the monitor checkpoint is unreadable")?;
    Ok(checkpoint.offsets)
}

/// A monitored model's configuration, checked once at start.
struct Prepared {
    name: String,
    config: ModelConfig,
    profile: Profile,
    settings: fathom_monitor::window::Settings,
}

/// Starts the monitor when any model has `monitoring`.
///
/// One process per project is the active monitor: it holds a lease in the online store (renewed
/// every 2 s, lasting 10 s) and writes its checkpoint only while it holds it (one atomic check
/// and write). Any other process with the `monitor` role stands by — ready, reporting
/// `warnings.monitor` — and takes over from the checkpoint when the lease lapses, so several
/// processes may run every role without double counting.
pub async fn start(project: Arc<Project>, store: OnlineStore) -> anyhow::Result<Option<Running>> {
    let mut prepared = Vec::new();
    for (name, config) in project.models.iter().filter(|(_, m)| m.monitoring.is_some()) {
        let path = project.reference_path(name);
        let profile = Profile::load(&path).with_context(|| {
            format!(
                "models.{name}: monitoring needs the reference profile {} (build it with `fathom profile`)",
                path.display()
            )
        })?;
        let settings = settings(name, config).map_err(|(f, m)| anyhow::anyhow!("models.{name}.{f}: {m}"))?;
        prepared.push(Prepared { name: name.clone(), config: config.clone(), profile, settings });
    }
    if prepared.is_empty() {
        return Ok(None);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let holder = {
        use rand::Rng as _;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}-{:08x}", host.trim(), std::process::id(), rand::rng().random::<u32>())
    };
    let health = Arc::new(Health::default());
    let (push_tx, mut push_rx) = mpsc::channel(16);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let key = lease_key(&project.name);
    // the usual case, one process: active at once, and a bad checkpoint or Kafka setting stops
    // the start like any other configuration error
    let mut active = match store.lease(&key, &holder, LEASE_MS).await.context("taking the monitor lease")? {
        None => Some(activate(&project, &store, &prepared, &holder, &health, &clock).await?),
        Some(other) => {
            tracing::info!(active = other, "monitor on standby: another process is the active monitor");
            None
        }
    };
    health.ready.store(true, Ordering::Relaxed);
    let supervised = health.clone();
    let task = tokio::spawn(async move {
        let health = supervised;
        loop {
            let (monitor, kafka_rx, results_rx) = match active.take() {
                Some(active) => active,
                None => {
                    if !standby(&store, &key, &holder, &health, &mut push_rx, &mut shutdown_rx).await {
                        return Ok(());
                    }
                    tracing::info!(holder, "taking over as the active monitor");
                    activate(&project, &store, &prepared, &holder, &health, &clock).await?
                }
            };
            match monitor.run(kafka_rx, &mut push_rx, results_rx, &mut shutdown_rx).await {
                Ok(()) => {
                    if let Err(e) = store.release(&key, &holder).await {
                        tracing::warn!(error = format!("{e:#}"), "releasing the monitor lease");
                    }
                    return Ok(());
                }
                Err(lost) => {
                    tracing::warn!(error = %lost, "this process is no longer the active monitor");
                }
            }
        }
    });
    Ok(Some(Running { push: push_tx, health, shutdown: shutdown_tx, task }))
}

/// The active monitor, its Kafka batches and its delivery results: the checkpoint loaded, the
/// (topic, model index, kind) of each stream the monitor reads, by record source index.
type Streams = Vec<(String, usize, Kind)>;

/// The monitored models, their state taken from the checkpoint, and the streams they read.
fn models(project: &Project, prepared: &[Prepared], checkpoint: &mut Checkpoint) -> (Vec<Model>, Streams) {
    let mut models = Vec::new();
    let mut streams = Vec::new();
    for Prepared { name, config, profile, settings } in prepared {
        let state = checkpoint.models.remove(name.as_str()).unwrap_or_default();
        let ttl_ms = settings.max_delay_ms + settings.lateness_ms + settings.window_ms;
        streams.push((project.predictions_topic(name), models.len(), Kind::Predictions));
        let labels = config.labels.as_ref().and_then(|l| l.topic.clone()).unwrap_or_else(|| format!("{name}.labels"));
        streams.push((labels, models.len(), Kind::Labels));
        models.push(Model {
            name: name.clone(),
            config: config.clone(),
            monitor: ModelMonitor::new(settings.clone(), profile, state),
            idle_ms: idle_ms(config),
            ttl_ms,
        });
    }
    (models, streams)
}

/// With Kafka: dead letters to `<topic>.dlq`, the consumer of the streams (group
/// `<group>.monitor`) and a producer for the retraining topic, the topics ensured first. Without:
/// dead-letter files.
async fn kafka_io(
    project: &Project,
    streams: &Streams,
) -> anyhow::Result<(DeadLetters, Option<(KafkaSource, Committer)>, Option<FutureProducer>)> {
    let Some(config) = &project.stores.kafka else {
        return Ok((DeadLetters::files(project.stores.dead_letters.path.clone()), None, None));
    };
    let mut topics: Vec<String> = streams.iter().map(|(t, _, _)| t.clone()).collect();
    topics.extend(streams.iter().map(|(t, _, _)| format!("{t}.dlq")));
    topics.push(RETRAIN_TOPIC.into());
    if let Err(e) = kafka::ensure_topics(config, &topics).await {
        tracing::warn!(error = format!("{e:#}"), "monitoring topics not ensured");
    }
    let subscribed: Vec<(String, usize)> = streams.iter().enumerate().map(|(i, (t, _, _))| (t.clone(), i)).collect();
    let consumer = KafkaSource::new(config, &format!("{}.monitor", project.group_id()), &subscribed)?;
    Ok((DeadLetters::kafka(kafka::producer(config)?), Some(consumer), Some(kafka::producer(config)?)))
}

/// interrupted epoch marked aborted and recorded, the consumer joined.
async fn activate(
    project: &Arc<Project>,
    store: &OnlineStore,
    prepared: &[Prepared],
    holder: &str,
    health: &Arc<Health>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(Monitor, Option<mpsc::Receiver<crate::consumer::Fetched>>, mpsc::Receiver<DeliveryResult>)> {
    let loaded = store.load(&[checkpoint_key(&project.name)]).await.context("reading the monitor checkpoint")?;
    let mut checkpoint: Checkpoint = match loaded.into_iter().next().flatten() {
        Some(bytes) => postcard::from_bytes(&bytes).context("the monitor checkpoint is unreadable")?,
        None => Checkpoint::default(),
    };
    let (models, streams) = models(project, prepared, &mut checkpoint);
    let points = match &project.stores.influxdb {
        Some(influx) => Points::influx(influx, "monitor").context("stores.influxdb")?,
        None => Points::File(monitoring_dir(project).join("points.lp"), Vec::new()),
    };
    let (dead, consumer, producer) = kafka_io(project, &streams).await?;
    // a crash left the epoch after the last checkpoint half-written: never count it
    checkpoint.epoch += 1;
    let aborted_epoch = checkpoint.epoch;
    checkpoint.aborted.insert(aborted_epoch);
    while checkpoint.aborted.len() > 10_000 {
        checkpoint.aborted.pop_first();
    }
    let (kafka_rx, committer) = match consumer {
        Some(consumer) => {
            let (rx, committer) = crate::consumer::spawn_consumer(consumer, project, health.clone());
            (Some(rx), Some(committer))
        }
        None => (None, None),
    };
    let (results_tx, results_rx) = mpsc::channel(64);
    let http = transport::Clients::new(models.iter().map(|m| (m.name.as_str(), &m.config)))?;
    let mut monitor = Monitor {
        project: project.clone(),
        store: store.clone(),
        holder: holder.to_string(),
        last_renewed: clock.instant(),
        clock: clock.clone(),
        models,
        streams,
        committed: checkpoint.epoch,
        aborted: checkpoint.aborted,
        offsets: checkpoint.offsets.into_iter().collect(),
        overlay: HashMap::new(),
        outbox: checkpoint.outbox,
        points,
        dead,
        committer,
        producer,
        http,
        last_record: clock.instant(),
        last_checkpoint: clock.instant(),
        urgent: false,
        in_flight: HashSet::new(),
        results_tx,
        health: health.clone(),
    };
    // record the aborted epoch before writing anything under a new one
    monitor.write_checkpoint().await.context("writing the monitor checkpoint")?;
    Ok((monitor, kafka_rx, results_rx))
}

struct Monitor {
    project: Arc<Project>,
    store: OnlineStore,
    /// Who this process is in the monitor lease.
    holder: String,
    last_renewed: Instant,
    /// What the monitor reads the time from.
    clock: Arc<dyn Clock>,
    models: Vec<Model>,
    /// (topic, model index, kind) per record source index.
    streams: Streams,
    /// The last committed epoch (the next writes belong to `committed + 1`).
    committed: u64,
    aborted: BTreeSet<u64>,
    offsets: Offsets,
    /// Join entries touched since the last checkpoint, by store key.
    overlay: HashMap<String, (i64, Entry)>,
    outbox: Vec<Delivery>,
    points: Points,
    dead: DeadLetters,
    committer: Option<Committer>,
    producer: Option<FutureProducer>,
    http: transport::Clients,
    last_record: Instant,
    last_checkpoint: Instant,
    /// Checkpoint at the next chance (a rule fired, a delivery finished, a push waits).
    urgent: bool,
    in_flight: HashSet<String>,
    results_tx: mpsc::Sender<DeliveryResult>,
    health: Arc<Health>,
}

impl Monitor {
    /// Runs as the active monitor until shutdown (`Ok`, after a final checkpoint) or until
    /// another process holds the lease.
    async fn run(
        mut self,
        kafka: Option<mpsc::Receiver<crate::consumer::Fetched>>,
        push: &mut mpsc::Receiver<MonitorPush>,
        results: mpsc::Receiver<DeliveryResult>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), LeaseLost> {
        stage::run(&mut self, Inputs { kafka, push, results: Some(results), shutdown }).await
    }

    fn epoch(&self) -> u64 {
        self.committed + 1
    }
}

impl Stage for Monitor {
    type Push = MonitorPush;
    type Result = DeliveryResult;
    type Error = LeaseLost;

    async fn process_batch(&mut self, batch: Vec<Record>) -> Result<(), LeaseLost> {
        self.handle(batch).await;
        Ok(())
    }

    /// Answers once the records' effects are checkpointed.
    async fn handle_push(&mut self, request: MonitorPush) -> Result<(), LeaseLost> {
        let stream =
            self.streams.iter().position(|(_, m, k)| self.models[*m].name == request.model && *k == request.kind);
        let Some(index) = stream else {
            let _ = request.done.send(PushSummary::default());
            return Ok(());
        };
        let records = request
            .records
            .into_iter()
            .map(|mut r| {
                r.source = index;
                r
            })
            .collect();
        let summary = self.handle(records).await;
        self.checkpoint_until_done().await?;
        let _ = request.done.send(summary);
        Ok(())
    }

    fn handle_result(&mut self, (id, result): DeliveryResult) {
        self.delivered(&id, result);
    }

    async fn handle_tick(&mut self) -> Result<(), LeaseLost> {
        self.idle();
        self.renew().await
    }

    fn after_event(&mut self) {
        self.deliver();
    }

    fn checkpoint_due(&self) -> bool {
        self.urgent
            || self.clock.since(self.last_checkpoint)
                >= Duration::from_millis(self.project.processing.checkpoint_ms as u64)
    }

    /// One attempt: a store failure is reported and retried at the next event.
    async fn handle_checkpoint(&mut self) -> Result<(), LeaseLost> {
        match self.checkpoint().await {
            Ok(()) => Ok(()),
            Err(CheckpointError::LeaseLost(lost)) => Err(lost),
            Err(CheckpointError::Failed(e)) => {
                self.health.degraded("monitor checkpoint", &e);
                tokio::time::sleep(RETRY).await;
                Ok(())
            }
        }
    }

    async fn finish(&mut self) -> Result<(), LeaseLost> {
        self.checkpoint_until_done().await
    }
}

#[cfg(test)]
mod tests;
