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

mod config;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::online::{OnlineStore, Write};
use fathom_ingest::deadletter::{DeadLetter, DeadLetters};
use fathom_ingest::decode::Reason;
use fathom_ingest::kafka::{self, Committer, KafkaSource, Offsets};
use fathom_ingest::record::Record;
use fathom_monitor::alerts::{signature, Transition};
use fathom_monitor::influx::{Field, Point, Writer};
use fathom_monitor::join::{Entry, Joined, Labelled, Predicted};
use fathom_monitor::profile::Profile;
use fathom_monitor::records::{Label, Prediction};
use fathom_monitor::window::{rule_name, Event, ModelMonitor, ModelState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use self::config::{
    check, idle_ms, settings, AlertConfig, Condition, DriftConfig, KubeflowConfig, LabelsConfig, MonitoringConfig,
    RetrainConfig, Thresholds, WebhookFormat, METRICS,
};
use crate::config::Project;
use crate::pipeline::{Health, PushSummary};

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

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Target {
    /// The model's alert rule of this index.
    Alert(usize),
    /// The model's retraining endpoint (Kubeflow or webhook).
    Retrain,
    /// A record on [`RETRAIN_TOPIC`].
    Topic,
}

/// A webhook, pipeline run or topic record waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Delivery {
    /// Stable id: `<model>:<alert|retrain>:<rule>:<window end>:<transition>`.
    id: String,
    model: String,
    target: Target,
    body: String,
    attempts: u32,
    /// Not before, ms (wall clock).
    due_ms: i64,
    /// Created by a committed checkpoint (only those are sent).
    committed: bool,
    /// For retraining: the trigger's reason and window, recorded with the outcome.
    context: Option<String>,
}

/// What the checkpoint holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    epoch: u64,
    /// Epochs of runs that crashed before committing them.
    aborted: BTreeSet<u64>,
    /// Next offset per (topic, partition).
    offsets: Vec<((String, i32), i64)>,
    models: BTreeMap<String, ModelState>,
    outbox: Vec<Delivery>,
}

struct Model {
    name: String,
    config: crate::serving::ModelConfig,
    monitor: ModelMonitor,
    idle_ms: i64,
    ttl_ms: i64,
}

/// Where points go.
enum Points {
    /// The writer, and when it may try again after a failure.
    Influx(Box<Writer>, Instant),
    /// Line protocol appended to a file (no InfluxDB configured).
    File(PathBuf, Vec<String>),
}

impl Points {
    fn push(&mut self, points: &[Point]) -> anyhow::Result<()> {
        match self {
            Points::Influx(w, _) => w.push(points)?,
            Points::File(_, lines) => lines.extend(points.iter().filter_map(Point::encode)),
        }
        Ok(())
    }

    /// Writes what it can; then makes the rest durable. An unreachable InfluxDB is a warning in
    /// `health` (the points wait on disk), cleared once a write succeeds.
    async fn persist(&mut self, health: &Health) -> anyhow::Result<()> {
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

fn lease_key(project: &str) -> String {
    format!("{}:lease", monitor_tag(project))
}

/// How long the active monitor's lease lasts unless renewed (every few seconds while active).
/// A monitor that dies without releasing it is replaced by a standby after at most this long.
const LEASE_MS: u64 = 10_000;
/// How often the active monitor renews its lease.
const RENEW: Duration = Duration::from_millis(2_000);

/// The monitor lost its lease to another process: it must stop writing at once.
#[derive(Debug, thiserror::Error)]
#[error("another process ({0}) holds the monitor lease")]
struct LeaseLost(String);

/// A monitored model's configuration, checked once at start.
struct Prepared {
    name: String,
    config: crate::serving::ModelConfig,
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
        None => Some(activate(&project, &store, &prepared, &holder, &health).await?),
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
                    activate(&project, &store, &prepared, &holder, &health).await?
                }
            };
            match monitor.run(kafka_rx, &mut push_rx, results_rx, &mut shutdown_rx).await {
                Ok(()) => {
                    if let Err(e) = store.release(&key, &holder).await {
                        tracing::warn!(error = format!("{e:#}"), "releasing the monitor lease");
                    }
                    return Ok(());
                }
                Err(e) if e.downcast_ref::<LeaseLost>().is_some() => {
                    tracing::warn!(error = format!("{e:#}"), "this process is no longer the active monitor");
                }
                Err(e) => return Err(e),
            }
        }
    });
    Ok(Some(Running { push: push_tx, health, shutdown: shutdown_tx, task }))
}

/// Waits until this process holds the lease (`true`) or is shut down (`false`). Pushed records
/// are refused meanwhile (their request answers 503): only the active monitor counts them.
async fn standby(
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

/// The active monitor, its Kafka batches and its delivery results: the checkpoint loaded, the
/// interrupted epoch marked aborted and recorded, the consumer joined.
async fn activate(
    project: &Arc<Project>,
    store: &OnlineStore,
    prepared: &[Prepared],
    holder: &str,
    health: &Arc<Health>,
) -> anyhow::Result<(Monitor, Option<mpsc::Receiver<Vec<Record>>>, mpsc::Receiver<DeliveryResult>)> {
    let loaded = store.load(&[checkpoint_key(&project.name)]).await.context("reading the monitor checkpoint")?;
    let mut checkpoint: Checkpoint = match loaded.into_iter().next().flatten() {
        Some(bytes) => postcard::from_bytes(&bytes).context("the monitor checkpoint is unreadable")?,
        None => Checkpoint::default(),
    };
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
    let points = match &project.stores.influxdb {
        Some(influx) => {
            let mut config = influx.clone();
            config.spill_dir = config.spill_dir.join("monitor");
            Points::Influx(Box::new(Writer::new(config).context("stores.influxdb")?), Instant::now())
        }
        None => Points::File(monitoring_dir(project).join("points.lp"), Vec::new()),
    };
    let (dead, consumer, producer) = match &project.stores.kafka {
        Some(config) => {
            let mut topics: Vec<String> = streams.iter().map(|(t, _, _)| t.clone()).collect();
            topics.extend(streams.iter().map(|(t, _, _)| format!("{t}.dlq")));
            topics.push(RETRAIN_TOPIC.into());
            if let Err(e) = kafka::ensure_topics(config, &topics).await {
                tracing::warn!(error = format!("{e:#}"), "monitoring topics not ensured");
            }
            let subscribed: Vec<(String, usize)> =
                streams.iter().enumerate().map(|(i, (t, _, _))| (t.clone(), i)).collect();
            let consumer = KafkaSource::new(config, &format!("{}.monitor", project.group_id()), &subscribed)?;
            (DeadLetters::kafka(kafka::producer(config)?), Some(consumer), Some(kafka::producer(config)?))
        }
        None => (DeadLetters::files(project.stores.dead_letters.path.clone()), None, None),
    };
    // a crash left the epoch after the last checkpoint half-written: never count it
    checkpoint.epoch += 1;
    let aborted_epoch = checkpoint.epoch;
    checkpoint.aborted.insert(aborted_epoch);
    while checkpoint.aborted.len() > 10_000 {
        checkpoint.aborted.pop_first();
    }
    let (kafka_rx, committer) = match consumer {
        Some(consumer) => {
            let (rx, committer) = crate::pipeline::spawn_consumer(consumer, project, health.clone());
            (Some(rx), Some(committer))
        }
        None => (None, None),
    };
    let (results_tx, results_rx) = mpsc::channel(64);
    let mut monitor = Monitor {
        project: project.clone(),
        store: store.clone(),
        holder: holder.to_string(),
        last_renewed: Instant::now(),
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
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        last_record: Instant::now(),
        last_checkpoint: Instant::now(),
        urgent: false,
        in_flight: HashSet::new(),
        results_tx,
        health: health.clone(),
    };
    // record the aborted epoch before writing anything under a new one
    monitor.write_checkpoint().await.context("writing the monitor checkpoint")?;
    Ok((monitor, kafka_rx, results_rx))
}

/// A delivery's result: (id, Ok(HTTP status or 0 for a topic) | Err(why, permanent)).
type DeliveryResult = (String, Result<(u16, String), Failure>);

/// Why a delivery attempt failed.
#[derive(Debug, Clone)]
struct Failure {
    /// What went wrong.
    why: String,
    /// Whether trying again cannot help (a 4xx other than 408/425/429, a missing secret).
    permanent: bool,
    /// The HTTP status answered; 0 when there was no answer.
    status: u16,
}

impl Failure {
    /// A failure without an HTTP answer.
    fn unanswered(why: String, permanent: bool) -> Failure {
        Failure { why, permanent, status: 0 }
    }
}

struct Monitor {
    project: Arc<Project>,
    store: OnlineStore,
    /// Who this process is in the monitor lease.
    holder: String,
    last_renewed: Instant,
    models: Vec<Model>,
    /// (topic, model index, kind) per record source index.
    streams: Vec<(String, usize, Kind)>,
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
    producer: Option<rdkafka::producer::FutureProducer>,
    http: reqwest::Client,
    last_record: Instant,
    last_checkpoint: Instant,
    /// Checkpoint at the next chance (a rule fired, a delivery finished, a push waits).
    urgent: bool,
    in_flight: HashSet<String>,
    results_tx: mpsc::Sender<DeliveryResult>,
    health: Arc<Health>,
}

const RETRY: Duration = Duration::from_millis(500);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Monitor {
    async fn run(
        mut self,
        mut kafka: Option<mpsc::Receiver<Vec<Record>>>,
        push: &mut mpsc::Receiver<MonitorPush>,
        mut results: mpsc::Receiver<DeliveryResult>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some((id, result)) = results.recv() => self.delivered(&id, result),
                Some(batch) = async { kafka.as_mut()?.recv().await } => {
                    self.handle(batch).await;
                }
                Some(request) = push.recv() => {
                    let Some(index) = self.streams.iter().position(|(_, m, k)| self.models[*m].name == request.model && *k == request.kind) else {
                        let _ = request.done.send(PushSummary::default());
                        continue;
                    };
                    let records = request.records.into_iter().map(|mut r| { r.source = index; r }).collect();
                    let summary = self.handle(records).await;
                    self.checkpoint_until_done().await?;
                    let _ = request.done.send(summary);
                }
                _ = tick.tick() => {
                    self.idle();
                    self.renew().await?;
                }
            }
            self.deliver();
            let due = self.urgent
                || self.last_checkpoint.elapsed()
                    >= Duration::from_millis(self.project.processing.checkpoint_ms as u64);
            if due {
                if let Err(e) = self.checkpoint().await {
                    if e.downcast_ref::<LeaseLost>().is_some() {
                        return Err(e);
                    }
                    self.health.degraded("monitor checkpoint", &e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        self.checkpoint_until_done().await
    }

    /// Checkpoints, retrying store failures; only a lost lease ends it with an error.
    async fn checkpoint_until_done(&mut self) -> anyhow::Result<()> {
        while let Err(e) = self.checkpoint().await {
            if e.downcast_ref::<LeaseLost>().is_some() {
                return Err(e);
            }
            self.health.degraded("monitor checkpoint", &e);
            tokio::time::sleep(RETRY).await;
        }
        Ok(())
    }

    /// Renews the lease every [`RENEW`]; a store that does not answer is retried at the next
    /// tick (the lease outlasts a few misses).
    async fn renew(&mut self) -> anyhow::Result<()> {
        if self.last_renewed.elapsed() < RENEW {
            return Ok(());
        }
        match self.store.lease(&lease_key(&self.project.name), &self.holder, LEASE_MS).await {
            Ok(None) => self.last_renewed = Instant::now(),
            Ok(Some(other)) => return Err(LeaseLost(other).into()),
            Err(e) => tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "renewing the monitor lease"),
        }
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.committed + 1
    }

    /// Closes the open windows of models whose streams have been quiet for their `idle`.
    fn idle(&mut self) {
        let quiet = self.last_record.elapsed().as_millis() as i64;
        let mut outputs = Vec::new();
        for (i, model) in self.models.iter_mut().enumerate() {
            let open = model.monitor.state.windows.values().any(|w| !w.closed);
            if open && quiet >= model.idle_ms {
                outputs.push((i, model.monitor.advance(true)));
            }
        }
        for (i, (points, events)) in outputs {
            self.emit(i, points, events);
        }
    }

    fn letter(&self, record: &Record, reason: Reason, message: String) -> DeadLetter {
        let (topic, model, _) = &self.streams[record.source];
        DeadLetter {
            source: self.models[*model].name.clone(),
            topic: topic.clone(),
            partition: record.at.partition,
            offset: record.at.offset,
            reason,
            message,
            payload: record.payload.clone(),
        }
    }

    /// Applies records: parse, join, count; refused ones become dead letters.
    async fn handle(&mut self, records: Vec<Record>) -> PushSummary {
        self.last_record = Instant::now();
        let mut summary = PushSummary::default();
        let mut parsed = Vec::with_capacity(records.len());
        for record in records {
            let (topic, model, kind) = self.streams[record.source].clone();
            if let Some(partition) = record.at.partition {
                let next = self.offsets.entry((topic.clone(), partition)).or_insert(0);
                if record.at.offset < *next {
                    summary.accepted += 1; // already in the checkpoint
                    continue;
                }
                *next = record.at.offset + 1;
            }
            let result = match kind {
                Kind::Predictions => Prediction::parse(&record.payload).and_then(|p| {
                    let name = &self.models[model].name;
                    if !p.model.is_empty() && &p.model != name {
                        return Err(format!("field `model`: {:?} on the topic of model {name:?}", p.model));
                    }
                    Ok(Parsed::Prediction(p))
                }),
                Kind::Labels => Label::parse(&record.payload).map(Parsed::Label),
            };
            match result {
                Ok(p) => parsed.push((model, record.at.partition.unwrap_or(-1), p)),
                Err(message) => {
                    let reason =
                        if message.starts_with("not JSON") { Reason::MalformedJson } else { Reason::InvalidRecord };
                    let letter = self.letter(&record, reason, message);
                    while let Err(e) = self.dead.send(&letter) {
                        self.health.degraded("writing a dead letter", &e.into());
                        tokio::time::sleep(RETRY).await;
                    }
                    summary.refused(&letter);
                }
            }
        }
        // one round trip for the entries not touched since the last checkpoint
        let mut missing: Vec<String> = parsed
            .iter()
            .map(|(m, _, p)| entry_key(&self.project.name, &self.models[*m].name, p.request_id()))
            .filter(|k| !self.overlay.contains_key(k))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let loaded = loop {
                match self.store.load(&missing).await {
                    Ok(v) => break v,
                    Err(e) => self.health.degraded("reading join entries", &e.into()),
                }
                tokio::time::sleep(RETRY).await;
            };
            self.health.recovered();
            let (committed, aborted) = (self.committed, &self.aborted);
            for (key, bytes) in missing.into_iter().zip(loaded) {
                let entry = bytes
                    .and_then(|b| postcard::from_bytes::<Entry>(&b).ok())
                    .unwrap_or_default()
                    .as_of(|e| e <= committed && !aborted.contains(&e));
                self.overlay.insert(key, (0, entry));
            }
        }
        let epoch = self.epoch();
        for (m, partition, record) in parsed {
            summary.accepted += 1;
            let key = entry_key(&self.project.name, &self.models[m].name, record.request_id());
            let model = &mut self.models[m];
            let (ttl, entry) = self.overlay.get_mut(&key).expect("loaded above");
            *ttl = model.ttl_ms;
            let joined = match &record {
                Parsed::Prediction(p) => {
                    let joined = entry.predict(Predicted { ts_ms: p.ts_ms, outcome: p.outcome.clone() }, epoch);
                    match joined {
                        Joined::Duplicate => model.monitor.state.counters.duplicate_predictions += 1,
                        _ => model.monitor.prediction(p, partition),
                    }
                    joined
                }
                Parsed::Label(l) => {
                    model.monitor.state.counters.labels += 1;
                    model.monitor.label_seen(l.ts_ms, partition);
                    let labelled = Labelled { ts_ms: l.ts_ms, label: l.label.to_string() };
                    let joined = entry.label(labelled, epoch);
                    if joined == Joined::Duplicate {
                        model.monitor.state.counters.duplicate_labels += 1;
                    }
                    joined
                }
            };
            if let Joined::Pair(predicted, labelled) = joined {
                model.monitor.pair(&predicted, &labelled);
            }
        }
        for i in 0..self.models.len() {
            let (points, events) = self.models[i].monitor.advance(false);
            self.emit(i, points, events);
        }
        summary
    }

    /// Queues points; turns rule transitions into deliveries (sent after the next checkpoint).
    fn emit(&mut self, model: usize, mut points: Vec<Point>, events: Vec<Event>) {
        let now = now_ms();
        for event in events {
            let m = &self.models[model];
            let deliveries = match event.rule {
                Some(i) => vec![self.alert(m, i, &event)],
                None if event.transition == Transition::Fired => {
                    let (delivery, record, point) = self.retrain(m, &event);
                    points.push(point);
                    vec![delivery, record]
                }
                None => Vec::new(),
            };
            for mut d in deliveries {
                if !self.outbox.iter().any(|o| o.id == d.id) {
                    d.due_ms = now;
                    self.outbox.push(d);
                }
            }
            self.urgent = true;
        }
        if let Err(e) = self.points.push(&points) {
            tracing::warn!(error = format!("{e:#}"), "monitoring points not queued");
        }
    }

    fn alert(&self, m: &Model, i: usize, event: &Event) -> Delivery {
        let alert = &m.config.alerts[i];
        let rule = &m.monitor.settings.rules[i];
        let name = rule_name(rule);
        let state = match event.transition {
            Transition::Fired => "fired",
            Transition::Resolved => "resolved",
        };
        let id = format!("{}:alert:{i}:{}:{state}", m.name, event.end_ms);
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        let drifted: Vec<Value> = event.drifted.iter().map(|(f, s)| json!({"feature": f, "score": s})).collect();
        let body = match alert.format {
            WebhookFormat::Json => json!({
                "id": id,
                "project": self.project.name,
                "model": m.name,
                "alert": name,
                "state": state,
                "metric": rule.metric,
                "value": event.value,
                "threshold": rule.threshold,
                "window": {"start": time(event.start_ms), "end": time(event.end_ms)},
                "drifted_features": drifted,
            }),
            WebhookFormat::Slack => {
                let icon = if state == "fired" { ":rotating_light:" } else { ":white_check_mark:" };
                let features: Vec<String> =
                    event.drifted.iter().take(5).map(|(f, s)| format!("{f} ({s:.2})")).collect();
                let mut text = format!(
                    "{icon} *{}* — {name} {state}: {} = {:.4} (threshold {}) for the window {} – {}",
                    m.name,
                    rule.metric,
                    event.value,
                    rule.threshold,
                    time(event.start_ms),
                    time(event.end_ms)
                );
                if !features.is_empty() {
                    text.push_str(&format!("\nMost drifted: {}", features.join(", ")));
                }
                json!({"text": text})
            }
        };
        Delivery {
            id,
            model: m.name.clone(),
            target: Target::Alert(i),
            body: body.to_string(),
            attempts: 0,
            due_ms: 0,
            committed: false,
            context: None,
        }
    }

    fn retrain(&self, m: &Model, event: &Event) -> (Delivery, Delivery, Point) {
        let retrain = m.config.retrain.as_ref().expect("a retraining rule has its config");
        let rule = m.monitor.settings.retrain.as_ref().expect("rule");
        let id = format!("{}:retrain:{}", m.name, event.end_ms);
        let start_ms = event.end_ms - i64::from(rule.consecutive) * m.monitor.settings.window_ms;
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        let reason =
            format!("{} for {} window(s) in a row (last {:.4})", rule_name(rule), rule.consecutive, event.value);
        let drifted: Vec<&str> = event.drifted.iter().map(|(f, _)| f.as_str()).collect();
        let offline = retrain.offline_data.clone().unwrap_or_else(|| {
            let path = &self.project.stores.offline.parquet.path;
            std::path::absolute(path).unwrap_or_else(|_| path.clone()).display().to_string()
        });
        let parameters = json!({
            "model": m.name,
            "reason": reason,
            "drifted_features": drifted,
            "start": time(start_ms),
            "end": time(event.end_ms),
            "offline_data": offline,
        });
        let body = match &retrain.kubeflow {
            Some(k) => {
                let mut run = json!({
                    "display_name": format!("fathom-{}-{}", m.name, event.end_ms),
                    "description": format!("Triggered by Fathom: {reason}"),
                    "pipeline_version_reference": {"pipeline_id": k.pipeline_id},
                    "runtime_config": {"parameters": parameters},
                });
                if let Some(version) = &k.pipeline_version_id {
                    run["pipeline_version_reference"]["pipeline_version_id"] = json!(version);
                }
                if let Some(experiment) = &k.experiment_id {
                    run["experiment_id"] = json!(experiment);
                }
                run
            }
            None => json!({"id": id, "project": self.project.name, "event": "retrain", "parameters": parameters}),
        };
        let record =
            json!({"id": id, "model": m.name, "stage": "triggered", "reason": reason, "parameters": parameters});
        let context = json!({"reason": reason, "parameters": parameters}).to_string();
        let target = if retrain.kubeflow.is_some() { "kubeflow" } else { "webhook" };
        let point = Point {
            measurement: "fathom_retrain".into(),
            tags: vec![
                ("model".into(), m.name.clone()),
                ("target".into(), target.into()),
                ("outcome".into(), "triggered".into()),
            ],
            fields: vec![
                ("id".into(), Field::Str(id.clone())),
                ("reason".into(), Field::Str(reason.clone())),
                ("value".into(), Field::Float(event.value)),
            ],
            time_ns: event.end_ms * 1_000_000,
        };
        (
            Delivery {
                id: id.clone(),
                model: m.name.clone(),
                target: Target::Retrain,
                body: body.to_string(),
                attempts: 0,
                due_ms: 0,
                committed: false,
                context: Some(context),
            },
            Delivery {
                id: format!("{id}:triggered"),
                model: m.name.clone(),
                target: Target::Topic,
                body: record.to_string(),
                attempts: 0,
                due_ms: 0,
                committed: false,
                context: None,
            },
            point,
        )
    }

    /// Starts sending committed deliveries that are due.
    fn deliver(&mut self) {
        let now = now_ms();
        let due: Vec<Delivery> = self
            .outbox
            .iter()
            .filter(|d| d.committed && d.due_ms <= now && !self.in_flight.contains(&d.id))
            .cloned()
            .collect();
        for d in due {
            let Some(m) = self.models.iter().find(|m| m.name == d.model) else { continue };
            self.in_flight.insert(d.id.clone());
            let tx = self.results_tx.clone();
            let id = d.id.clone();
            match d.target {
                Target::Topic => {
                    let producer = self.producer.clone();
                    let dir = monitoring_dir(&self.project);
                    tokio::spawn(async move {
                        let result = publish(producer, &dir, &d.model, &d.body)
                            .await
                            .map(|()| (0, String::new()))
                            .map_err(|e| Failure::unanswered(e, false));
                        let _ = tx.send((id, result)).await;
                    });
                }
                Target::Alert(i) => {
                    let alert = &m.config.alerts[i];
                    let request = signed(&self.http, &alert.webhook, &d, alert.secret.as_deref(), "alert");
                    tokio::spawn(async move {
                        let _ = tx.send((id, send(request).await)).await;
                    });
                }
                Target::Retrain => {
                    let retrain = m.config.retrain.as_ref().expect("config");
                    let request = match &retrain.kubeflow {
                        Some(k) => {
                            let url = format!("{}/runs", k.url.trim_end_matches('/'));
                            let mut r = self
                                .http
                                .post(url)
                                .header("Content-Type", "application/json")
                                .header("Idempotency-Key", &d.id)
                                .header("X-Fathom-Delivery", &d.id)
                                .body(d.body.clone());
                            match k.token.as_deref().map(fathom_ingest::config::resolve_secret).transpose() {
                                Ok(Some(token)) => r = r.bearer_auth(token),
                                Ok(None) => {}
                                Err(e) => {
                                    let _ = self.results_tx.try_send((
                                        id,
                                        Err(Failure::unanswered(format!("retrain.kubeflow.token: {e}"), true)),
                                    ));
                                    continue;
                                }
                            }
                            Ok(r)
                        }
                        None => signed(
                            &self.http,
                            retrain.webhook.as_deref().unwrap_or_default(),
                            &d,
                            retrain.secret.as_deref(),
                            "retrain",
                        ),
                    };
                    tokio::spawn(async move {
                        let _ = tx.send((id, send(request).await)).await;
                    });
                }
            }
        }
    }

    /// A delivery finished: drop it, or schedule the next attempt.
    fn delivered(&mut self, id: &str, result: Result<(u16, String), Failure>) {
        self.in_flight.remove(id);
        let Some(index) = self.outbox.iter().position(|d| d.id == id) else { return };
        let mut d = self.outbox[index].clone();
        d.attempts += 1;
        let Some(m) = self.models.iter().position(|m| m.name == d.model) else { return };
        let max = match d.target {
            Target::Alert(i) => self.models[m].config.alerts[i].max_attempts,
            Target::Retrain => self.models[m].config.retrain.as_ref().and_then(|r| r.max_attempts),
            Target::Topic => Some(u32::MAX),
        }
        .unwrap_or(12);
        let finished = match &result {
            Ok(_) => true,
            Err(failure) => failure.permanent || d.attempts >= max,
        };
        if !finished {
            let why = result.as_ref().err().map(|f| f.why.clone()).unwrap_or_default();
            let backoff = 1000i64 * (1i64 << d.attempts.min(9)).min(300);
            tracing::warn!(delivery = %d.id, attempt = d.attempts, error = %why, retry_in_ms = backoff, "delivery failed; retrying");
            d.due_ms = now_ms() + backoff;
            self.outbox[index] = d;
            return;
        }
        self.outbox.remove(index);
        self.urgent = true;
        let (status, detail, ok) = match &result {
            Ok((status, body)) => (*status, body.clone(), true),
            Err(failure) => (failure.status, failure.why.clone(), false),
        };
        if !ok {
            tracing::error!(delivery = %d.id, attempts = d.attempts, error = %detail, "delivery failed for good");
        }
        let model = self.models[m].name.clone();
        let time_ns = now_ms() * 1_000_000;
        let mut points = Vec::new();
        match d.target {
            Target::Alert(i) => {
                let rule = rule_name(&self.models[m].monitor.settings.rules[i]);
                points.push(Point {
                    measurement: "fathom_alert_deliveries".into(),
                    tags: vec![
                        ("model".into(), model),
                        ("rule".into(), rule),
                        ("outcome".into(), if ok { "delivered" } else { "failed" }.into()),
                    ],
                    fields: vec![
                        ("id".into(), Field::Str(d.id.clone())),
                        ("attempts".into(), Field::Int(i64::from(d.attempts))),
                        ("status".into(), Field::Int(i64::from(status))),
                    ],
                    time_ns,
                });
            }
            Target::Retrain => {
                let target = if self.models[m].config.retrain.as_ref().is_some_and(|r| r.kubeflow.is_some()) {
                    "kubeflow"
                } else {
                    "webhook"
                };
                let run_id = serde_json::from_str::<Value>(&detail)
                    .ok()
                    .and_then(|v| v.get("run_id").and_then(Value::as_str).map(String::from))
                    .unwrap_or_default();
                let outcome = if ok { "started" } else { "failed" };
                points.push(Point {
                    measurement: "fathom_retrain".into(),
                    tags: vec![
                        ("model".into(), model.clone()),
                        ("target".into(), target.into()),
                        ("outcome".into(), outcome.into()),
                    ],
                    fields: vec![
                        ("id".into(), Field::Str(d.id.clone())),
                        ("run_id".into(), Field::Str(run_id.clone())),
                        ("attempts".into(), Field::Int(i64::from(d.attempts))),
                        ("status".into(), Field::Int(i64::from(status))),
                    ],
                    time_ns,
                });
                let context: Value =
                    d.context.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or(Value::Null);
                let mut record = json!({"id": d.id, "model": model, "stage": outcome, "target": target, "attempts": d.attempts, "status": status, "run_id": run_id});
                if !ok {
                    record["error"] = json!(detail);
                }
                if let Value::Object(c) = context {
                    for (k, v) in c {
                        record[k] = v;
                    }
                }
                self.outbox.push(Delivery {
                    id: format!("{}:{outcome}", d.id),
                    model: d.model.clone(),
                    target: Target::Topic,
                    body: record.to_string(),
                    attempts: 0,
                    due_ms: 0,
                    committed: false,
                    context: None,
                });
            }
            Target::Topic => {}
        }
        if let Err(e) = self.points.push(&points) {
            tracing::warn!(error = format!("{e:#}"), "delivery points not queued");
        }
    }

    /// Makes everything durable (see the module documentation for the order).
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.dead.flush().await.context("flushing dead letters")?;
        let now = now_ms();
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
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Writes the checkpoint as epoch `committed + 1` and moves on to the next epoch.
    async fn write_checkpoint(&mut self) -> anyhow::Result<()> {
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
        self.last_renewed = Instant::now();
        self.committed = epoch;
        for d in &mut self.outbox {
            d.committed = true;
        }
        Ok(())
    }
}

enum Parsed {
    Prediction(Prediction),
    Label(Label),
}

impl Parsed {
    fn request_id(&self) -> &str {
        match self {
            Parsed::Prediction(p) => &p.request_id,
            Parsed::Label(l) => &l.request_id,
        }
    }
}

/// A POST of the delivery's body with `X-Fathom-Signature` (when a secret is set),
/// `X-Fathom-Delivery` and `Idempotency-Key`.
fn signed(
    http: &reqwest::Client,
    url: &str,
    d: &Delivery,
    secret: Option<&str>,
    event: &str,
) -> Result<reqwest::RequestBuilder, Failure> {
    let mut request = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Fathom-Event", event)
        .header("X-Fathom-Delivery", &d.id)
        .header("Idempotency-Key", &d.id)
        .body(d.body.clone());
    if let Some(secret) = secret {
        let key = fathom_ingest::config::resolve_secret(secret)
            .map_err(|e| Failure::unanswered(format!("secret: {e}"), true))?;
        request = request.header("X-Fathom-Signature", signature(key.as_bytes(), d.body.as_bytes()));
    }
    Ok(request)
}

/// Sends; 2xx is done, 408/425/429/5xx and connection failures are retried, other 4xx are not.
async fn send(request: Result<reqwest::RequestBuilder, Failure>) -> Result<(u16, String), Failure> {
    let response = request?.send().await.map_err(|e| Failure::unanswered(e.without_url().to_string(), false))?;
    let status = response.status().as_u16();
    let body: String = response.text().await.unwrap_or_default().chars().take(2000).collect();
    if (200..300).contains(&status) {
        return Ok((status, body));
    }
    let retry = matches!(status, 408 | 425 | 429) || status >= 500;
    let why = format!("HTTP {status}: {}", body.chars().take(200).collect::<String>());
    Err(Failure { why, permanent: !retry, status })
}

/// A record on [`RETRAIN_TOPIC`] (Kafka), or a line in `<monitoring dir>/fathom.retrain.ndjson`.
async fn publish(
    producer: Option<rdkafka::producer::FutureProducer>,
    dir: &std::path::Path,
    model: &str,
    body: &str,
) -> Result<(), String> {
    match producer {
        Some(p) => {
            let record = rdkafka::producer::FutureRecord::to(RETRAIN_TOPIC).key(model).payload(body);
            p.send(record, Duration::from_secs(30)).await.map(drop).map_err(|(e, _)| e.to_string())
        }
        None => {
            let path = dir.join(format!("{RETRAIN_TOPIC}.ndjson"));
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(dir)?;
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                writeln!(file, "{body}")?;
                file.sync_data()
            };
            write().map_err(|e| e.to_string())
        }
    }
}
