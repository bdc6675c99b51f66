//! The processing loop: records from Kafka and HTTP push → decode → featurestore → online and
//! offline stores, with dead letters for everything refused.
//!
//! One task owns the processor and the writers, so batches are applied in order without locks.
//! Every batch ends with an online flush (state and applied offsets, atomically per entity);
//! every `checkpoint_interval` the Parquet files are committed, dead letters made durable, and
//! only then Kafka offsets committed. A crash between two checkpoints replays records the online
//! store already holds; each entity's applied offsets make those replays no-ops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::offline::{ColumnType, Layout, LoggedChange, OfflineWriter, SourceSchema};
use fathom_featurestore::online::{self, EmbeddedStore, OnlineStore, RedisStore};
use fathom_featurestore::processor::Processor;
use fathom_featurestore::table::{Join, RowChange, TableProcessor};
use fathom_ingest::config::{Format, KeyFrom, TruncatePolicy};
use fathom_ingest::deadletter::{DeadLetter, DeadLetters};
use fathom_ingest::debezium::{self, Change, ChangeOrder, Decoded, Op};
use fathom_ingest::decode::{Decoder, Reason};
use fathom_ingest::kafka::{self, Committer, KafkaSource, Offsets};
use fathom_ingest::record::Record;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::config::Project;

/// Records pushed over HTTP (or by replay), answered once applied and flushed online.
pub struct Push {
    /// Source index.
    pub source: usize,
    /// The records.
    pub records: Vec<Record>,
    /// Where the summary goes.
    pub done: oneshot::Sender<PushSummary>,
}

/// What happened to pushed records.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PushSummary {
    /// Records decoded and applied (or already applied).
    pub accepted: usize,
    /// Records sent to the dead letters (malformed, or late for a feature set).
    pub dead_lettered: usize,
    /// Why, for the first [`PushSummary::MAX_ERRORS`] dead-lettered records (all of them are in
    /// the dead letters with their bytes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PushError>,
}

/// One dead-lettered record of a push.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PushError {
    /// The record's place in the push: its index in a JSON array (from 0), or its line (from 1).
    pub index: i64,
    /// The dead-letter reason code (`malformed_json`, `missing_key`, `late`, …).
    pub reason: String,
    /// What was wrong, naming the field.
    pub message: String,
}

impl PushSummary {
    /// Reasons kept per answer.
    pub const MAX_ERRORS: usize = 10;

    /// Counts a dead-lettered record, keeping its reason while there is room.
    pub fn refused(&mut self, letter: &DeadLetter) {
        self.dead_lettered += 1;
        self.note(letter);
    }

    /// Keeps a dead-lettered record's reason while there is room (without counting it).
    pub fn note(&mut self, letter: &DeadLetter) {
        if self.errors.len() < Self::MAX_ERRORS {
            let (index, reason, message) = (letter.offset, letter.reason.as_str().to_string(), letter.message.clone());
            self.errors.push(PushError { index, reason, message });
        }
    }
}

/// Readiness as the HTTP layer reports it.
#[derive(Default)]
pub struct Health {
    /// The loop has started and its last store operation succeeded.
    pub ready: AtomicBool,
    /// Why it is not ready, if it says so.
    pub problem: Mutex<Option<String>>,
    /// Dependencies that are failing without stopping the work (InfluxDB: points wait on disk;
    /// `model:<name>`: its endpoint times out or fails), by name: reported by `/readyz`, which
    /// stays ready.
    pub warnings: Mutex<BTreeMap<String, String>>,
}

impl Health {
    /// Reports a dependency failing without stopping the work.
    pub(crate) fn warn(&self, what: &str, message: String) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).insert(what.to_string(), message);
    }

    /// The dependency works again.
    pub(crate) fn clear(&self, what: &str) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).remove(what);
    }

    /// The current warnings.
    pub fn warnings(&self) -> BTreeMap<String, String> {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn degraded(&self, what: &str, error: &anyhow::Error) {
        tracing::warn!(error = format!("{error:#}"), "{what}; retrying");
        self.ready.store(false, Ordering::Relaxed);
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{what}: {error:#}"));
    }

    pub(crate) fn recovered(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Handles to a running pipeline.
pub struct Running {
    /// The online store the pipeline writes (and lookups read).
    pub store: OnlineStore,
    /// Push input.
    pub push: mpsc::Sender<Push>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Stops the loop after a final checkpoint.
    pub shutdown: watch::Sender<bool>,
    /// The loop.
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The model monitor, when a model has `monitoring`.
    pub monitor: Option<crate::monitoring::Running>,
}

/// What a process does: consume the sources (`ingest`), serve the HTTP API (`api`), monitor
/// models (`monitor`). One process does all three by default; in a cluster each role runs as its
/// own deployment and scales on its own (health and metrics are served by every role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Consume the Kafka sources into the stores.
    pub ingest: bool,
    /// Serve lookups, enrichment, predictions and push.
    pub api: bool,
    /// Run the model monitor.
    pub monitor: bool,
}

impl Roles {
    /// Every role.
    pub const ALL: Roles = Roles { ingest: true, api: true, monitor: true };

    /// Parses `ingest,api,monitor` (any subset, or `all`).
    pub fn parse(text: &str) -> Result<Roles, String> {
        let mut roles = Roles { ingest: false, api: false, monitor: false };
        for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "all" => roles = Roles::ALL,
                "ingest" => roles.ingest = true,
                "api" => roles.api = true,
                "monitor" => roles.monitor = true,
                other => return Err(format!("unknown role {other:?}: use ingest, api, monitor or all")),
            }
        }
        if roles == (Roles { ingest: false, api: false, monitor: false }) {
            return Err("no role given: use ingest, api, monitor or all".into());
        }
        Ok(roles)
    }
}

/// Connects the stores and starts the loop (and the Kafka consumer when configured).
pub async fn start(project: Arc<Project>) -> anyhow::Result<Running> {
    start_with(project, Roles::ALL).await
}

/// [`start`] for some roles only: the Kafka consumer with `ingest`, the monitor with `monitor`.
pub async fn start_with(project: Arc<Project>, roles: Roles) -> anyhow::Result<Running> {
    let store = match project.redis()? {
        Some(topology) => OnlineStore::Redis(RedisStore::connect(&topology).await.context("connecting to Redis")?),
        None => match project.stores.online.embedded.as_ref().and_then(|e| e.snapshot.as_deref()) {
            Some(path) => OnlineStore::Embedded(Arc::new(EmbeddedStore::with_snapshot(path)?)),
            None => OnlineStore::Embedded(Arc::new(EmbeddedStore::new())),
        },
    };
    let offline = OfflineWriter::new(&project.stores.offline.parquet.path, schemas(&project))
        .context("opening the offline store")?;
    let kafka_sources: Vec<(String, usize)> = project
        .sources
        .iter()
        .enumerate()
        .filter_map(|(i, (_, s))| s.kafka.as_ref().map(|k| (k.topic.clone(), i)))
        .collect();
    let (dead, consumer) = match &project.stores.kafka {
        Some(config) => {
            let mut topics: Vec<String> =
                (0..project.sources.len()).map(|i| format!("{}.dlq", project.stream_name(i))).collect();
            topics.extend(project.models.keys().map(|m| project.predictions_topic(m)));
            if let Err(e) = kafka::ensure_topics(config, &topics).await {
                // ACLs may forbid it; the topics may exist anyway
                tracing::warn!(error = format!("{e:#}"), "dead-letter and prediction topics not ensured");
            }
            let dead = DeadLetters::kafka(kafka::producer(config)?);
            let consumer = if kafka_sources.is_empty() || !roles.ingest {
                None
            } else {
                Some(KafkaSource::new(config, &project.group_id(), &kafka_sources)?)
            };
            (dead, consumer)
        }
        None => (DeadLetters::files(project.stores.dead_letters.path.clone()), None),
    };
    let decoders = project
        .sources
        .iter()
        .enumerate()
        .map(|(i, (_, source))| {
            let numeric = project
                .plans
                .iter()
                .zip(&project.plan_sources)
                .filter(|(_, s)| **s == i)
                .flat_map(|(p, _)| p.numeric_columns().into_iter().filter(|c| !p.is_joined(c)))
                .collect();
            Decoder::new(source, numeric)
        })
        .collect();
    let processor = Processor::new(
        &project.name,
        project.plans.clone(),
        &project.plan_sources,
        &project.sources.iter().map(|(_, s)| s.key.clone()).collect::<Vec<_>>(),
        store.clone(),
        project.processing.max_cached_entities,
    );
    let tables = TableProcessor::new(
        &project.name,
        project.sources.iter().map(|(n, _)| n.clone()).collect(),
        project.table_history_ms(),
        project.table_plans.clone(),
        store.clone(),
        project.processing.max_cached_entities,
    );
    let health = Arc::new(Health::default());
    let (push_tx, push_rx) = mpsc::channel(16);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (kafka_rx, committer) = match consumer {
        Some(consumer) => {
            let (rx, committer) = spawn_consumer(consumer, &project, health.clone());
            (Some(rx), Some(committer))
        }
        None => (None, None),
    };
    let pipeline = Pipeline {
        project: project.clone(),
        decoders,
        joins: project.joins(),
        processor,
        tables,
        offline,
        dead,
        committer,
        processed: Offsets::new(),
        handled: BTreeMap::new(),
        last_checkpoint: Instant::now(),
        health: health.clone(),
        stats: IngestStats {
            records: vec![0; project.sources.len()],
            newest_ms: vec![None; project.sources.len()],
            ..IngestStats::default()
        },
        influx: match &project.stores.influxdb {
            Some(config) => {
                let mut config = config.clone();
                config.spill_dir = config.spill_dir.join("ingest");
                Some((fathom_monitor::influx::Writer::new(config).context("stores.influxdb")?, Instant::now()))
            }
            None => None,
        },
    };
    let task = tokio::spawn(pipeline.run(kafka_rx, push_rx, shutdown_rx));
    health.ready.store(true, Ordering::Relaxed);
    let monitor = if roles.monitor {
        crate::monitoring::start(project.clone(), store.clone()).await.context("starting the monitor")?
    } else {
        None
    };
    Ok(Running { store, push: push_tx, health, shutdown: shutdown_tx, task, monitor })
}

/// The offline schema of each source: a CDC table's change log, or the key plus every event
/// field its feature sets read (numeric when a numeric aggregation reads it; joined table
/// columns are not the event's and stay in the table's change log).
fn schemas(project: &Project) -> Vec<SourceSchema> {
    project
        .sources
        .iter()
        .enumerate()
        .map(|(i, (name, source))| {
            if source.format == Format::Debezium {
                return SourceSchema { name: name.clone(), key: source.key.clone(), layout: Layout::ChangeLog };
            }
            let mut columns: BTreeMap<String, ColumnType> = BTreeMap::new();
            for (plan, _) in project.plans.iter().zip(&project.plan_sources).filter(|(_, s)| **s == i) {
                let numeric = plan.numeric_columns();
                let read = plan.columns.iter().chain(&plan.latest).chain(std::iter::once(&plan.key_column));
                for column in read.filter(|c| !plan.is_joined(c)) {
                    let ty = if numeric.contains(column) { ColumnType::Float } else { ColumnType::Text };
                    let entry = columns.entry(column.clone()).or_insert(ty);
                    if ty == ColumnType::Float {
                        *entry = ColumnType::Float;
                    }
                }
            }
            columns.remove(&source.key);
            if let Some(ts) = &source.timestamp {
                columns.remove(ts);
            }
            SourceSchema {
                name: name.clone(),
                key: source.key.clone(),
                layout: Layout::Events(columns.into_iter().collect()),
            }
        })
        .collect()
}

/// Reads batches (up to `processing.batch_size`, `processing.linger`) in a task of their own,
/// retrying errors every second; the monitor's consumer reads the same way. Another task asks
/// the broker every 2 s whether it answers and reports `kafka` in `health`'s warnings while it
/// does not (consuming simply waits; the records stay in the broker).
pub(crate) fn spawn_consumer(
    (source, committer): (KafkaSource, Committer),
    project: &Project,
    health: Arc<Health>,
) -> (mpsc::Receiver<Vec<Record>>, Committer) {
    let (tx, rx) = mpsc::channel(4);
    let max = project.processing.batch_size;
    let linger = Duration::from_millis(project.processing.linger_ms as u64);
    let watched = tx.clone();
    let probe = committer.clone();
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
            match source.batch(max, linger).await {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    if tx.send(batch).await.is_err() {
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

struct Pipeline {
    project: Arc<Project>,
    decoders: Vec<Decoder>,
    /// Per source: the tables its events join.
    joins: Vec<Vec<Join>>,
    processor: Processor,
    tables: TableProcessor,
    offline: OfflineWriter,
    dead: DeadLetters,
    committer: Option<Committer>,
    /// Next offsets of records processed since the last checkpoint.
    processed: Offsets,
    /// Highest offset this process handled per (source, partition): a re-delivery at or below
    /// it is skipped whole.
    handled: BTreeMap<(usize, i32), i64>,
    last_checkpoint: Instant,
    health: Arc<Health>,
    /// What happened since the last checkpoint, written to InfluxDB as `fathom_ingest` & co.
    stats: IngestStats,
    /// The InfluxDB writer, when `stores.influxdb` is configured.
    influx: Option<(fathom_monitor::influx::Writer, Instant)>,
}

/// Ingest figures between two checkpoints.
#[derive(Default)]
struct IngestStats {
    /// Records in, per source.
    records: Vec<u64>,
    /// Dead letters per (source, reason).
    dead: BTreeMap<(usize, &'static str), u64>,
    /// Newest event time applied, per source.
    newest_ms: Vec<Option<i64>>,
    /// Flush durations, seconds.
    flushes: Vec<f64>,
}

/// What a Debezium record comes to.
enum Cdc {
    /// A row change, with the decoded change for the change log.
    Change(Box<RowChange>, Box<Change>),
    /// A tombstone, or a truncate skipped: nothing to apply.
    Consumed,
    /// A truncate its source sends to the dead letters.
    Truncate,
}

const RETRY: Duration = Duration::from_millis(500);

/// Evaluates `$op` (a `Result`) until it is `Ok`, reporting each failure as degraded health and
/// waiting [`RETRY`] between attempts: the stores may go away, the stream does not stop for it.
macro_rules! until_ok {
    ($health:expr, $what:literal, $op:expr) => {
        loop {
            match $op {
                Ok(value) => break value,
                Err(e) => $health.degraded($what, &e.into()),
            }
            tokio::time::sleep(RETRY).await;
        }
    };
}

impl Pipeline {
    async fn run(
        mut self,
        mut kafka: Option<mpsc::Receiver<Vec<Record>>>,
        mut push: mpsc::Receiver<Push>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(batch) = async { kafka.as_mut()?.recv().await } => {
                    if self.committer.as_ref().is_some_and(Committer::take_rebalanced) {
                        // every batch ends flushed, so the cache is clean: drop it rather than
                        // serve entities another member may have changed
                        self.processor.forget();
                        self.tables.forget();
                    }
                    let span = tracing::debug_span!("batch", records = batch.len(), from = "kafka");
                    self.handle(batch).instrument(span).await;
                }
                Some(request) = push.recv() => {
                    let span = tracing::debug_span!("batch", records = request.records.len(), from = "push");
                    let summary = self.handle(request.records).instrument(span).await;
                    if summary.dead_lettered > 0 {
                        // the answer reports them: make them durable first
                        self.flush_dead_letters().await;
                    }
                    let _ = request.done.send(summary);
                }
                _ = tick.tick() => {}
            }
            let due = self.last_checkpoint.elapsed()
                >= Duration::from_millis(self.project.processing.checkpoint_ms as u64)
                || self.offline.buffered() >= self.project.processing.max_buffered_rows;
            if due {
                self.checkpoint().await?;
            }
        }
        self.checkpoint().await
    }

    /// Decodes, applies and flushes one batch; refused records become dead letters.
    async fn handle(&mut self, mut records: Vec<Record>) -> PushSummary {
        // the broker re-delivering what this process already handled (its connection was lost
        // before the offsets were committed): applied, written and dead-lettered once already
        let handled = &self.handled;
        let before = records.len();
        records.retain(|r| {
            r.at.partition.is_none_or(|p| handled.get(&(r.source, p)).is_none_or(|&through| r.at.offset > through))
        });
        if records.len() < before {
            tracing::info!(records = before - records.len(), "skipped records this process already handled");
            metrics::counter!("fathom_replayed_records_skipped_total").increment((before - records.len()) as u64);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut events = Vec::with_capacity(records.len());
        let mut summary = PushSummary::default();
        let mut per_source = vec![0u64; self.project.sources.len()];
        records.iter().for_each(|r| per_source[r.source] += 1);
        for (i, n) in per_source.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            metrics::counter!("fathom_records_in_total", "source" => self.project.sources[i].0.clone()).increment(n);
            self.stats.records[i] += n;
        }
        // highest offset per (source, partition) in this batch; topic names only once per batch
        let mut last: BTreeMap<(usize, i32), i64> = BTreeMap::new();
        let mut changes: Vec<(RowChange, Box<Change>)> = Vec::new();
        for record in records {
            let source = record.source;
            if let Some(partition) = record.at.partition {
                last.insert((source, partition), record.at.offset);
            }
            if self.project.sources[source].1.format == Format::Debezium {
                match self.change(&record) {
                    Ok(Cdc::Change(row, change)) => {
                        summary.accepted += 1;
                        changes.push((*row, change));
                    }
                    Ok(Cdc::Truncate) => {
                        let message = "truncate of a CDC table (rows are not cleared; on_truncate: dead_letter)".into();
                        let letter = self.letter(&record.payload, source, record.at, Reason::Truncate, message);
                        summary.refused(&letter);
                        self.dead_letter(letter).await;
                    }
                    Ok(Cdc::Consumed) => summary.accepted += 1,
                    Err(refusal) => {
                        let letter = self.letter(&record.payload, source, record.at, refusal.reason, refusal.message);
                        summary.refused(&letter);
                        self.dead_letter(letter).await;
                    }
                }
                continue;
            }
            match self.decoders[source].decode(record, now) {
                Ok(event) => {
                    let newest = &mut self.stats.newest_ms[source];
                    *newest = Some(newest.map_or(event.time_ms, |t| t.max(event.time_ms)));
                    events.push(event)
                }
                Err((record, refusal)) => {
                    let letter = self.letter(&record.payload, source, record.at, refusal.reason, refusal.message);
                    summary.refused(&letter);
                    self.dead_letter(letter).await;
                }
            }
        }
        if !changes.is_empty() {
            let mut rows: Vec<&mut RowChange> = changes.iter_mut().map(|(row, _)| row).collect();
            let outcome =
                until_ok!(self.health, "loading table rows from the online store", self.tables.apply(&mut rows).await);
            metrics::counter!("fathom_table_changes_applied_total").increment(outcome.applied);
            metrics::counter!("fathom_table_changes_stale_total").increment(outcome.stale);
            metrics::counter!("fathom_replayed_records_skipped_total").increment(outcome.duplicates);
            metrics::counter!("fathom_table_unavailable_without_stored_value_total")
                .increment(outcome.unavailable_unknown);
            // an applied change's row has its unavailable columns filled in; a skipped one's
            // keep Debezium's placeholder in the log, for readers to fill in from the change
            // before it in order (as `fathom dataset` does)
            for (row, _) in changes.iter_mut().filter(|(row, _)| !row.unavailable.is_empty()) {
                if let Some(after) = row.row.as_mut() {
                    for column in row.unavailable.drain(..) {
                        after.insert(column, Value::String(debezium::UNAVAILABLE_VALUE.into()));
                    }
                }
            }
            let logged: Vec<LoggedChange<'_>> = changes
                .iter()
                .map(|(row, change)| LoggedChange {
                    source: row.source,
                    at: row.at,
                    key: &row.key,
                    change,
                    after: row.row.as_ref(),
                })
                .collect();
            self.offline.append_changes(&logged);
        }
        if self.joins.iter().any(|j| !j.is_empty()) {
            let outcome = until_ok!(
                self.health,
                "loading joined table rows from the online store",
                self.tables.enrich(&self.joins, &mut events).await
            );
            metrics::counter!("fathom_join_matched_total").increment(outcome.matched);
            metrics::counter!("fathom_join_missed_total").increment(outcome.missed);
            metrics::counter!("fathom_join_approximate_total").increment(outcome.approximate);
        }
        let outcome =
            until_ok!(self.health, "loading state from the online store", self.processor.process(&events).await);
        metrics::counter!("fathom_events_applied_total").increment(outcome.applied);
        metrics::counter!("fathom_replayed_records_skipped_total").increment(outcome.duplicates);
        metrics::counter!("fathom_events_without_key_total").increment(outcome.unkeyed);
        // per event, the feature sets that refused it as late: the offline row says so, so
        // point-in-time retrieval leaves it out of exactly those
        let mut late_for: Vec<Option<String>> = vec![None; events.len()];
        for &(i, plan) in &outcome.late {
            let event = &events[i];
            let plan = &self.processor.plans()[plan];
            let message = format!(
                "event time {} is more than {} ms behind entity {:?}'s newest event in feature set {:?}",
                event.time_ms, plan.late_after_ms, event.key, plan.name
            );
            let first = late_for[i].is_none();
            match &mut late_for[i] {
                Some(names) => {
                    names.push(',');
                    names.push_str(&plan.name);
                }
                none => *none = Some(plan.name.clone()),
            }
            let letter = self.letter(&event.raw, event.source, event.at, Reason::Late, message);
            if first {
                summary.note(&letter); // counted once per event below
            }
            self.dead_letter(letter).await;
        }
        let late = late_for.iter().filter(|l| l.is_some()).count();
        summary.dead_lettered += late;
        summary.accepted += events.len() - late;
        self.offline.append(&events, &late_for);
        let mut applied = BTreeMap::new();
        for ((source, partition), offset) in last {
            self.handled.insert((source, partition), offset);
            let topic = self.project.stream_name(source).to_string();
            self.processed.insert((topic.clone(), partition), offset + 1);
            applied.insert((topic, partition), offset);
        }
        self.flush(&applied).await;
        summary
    }

    /// A Debezium record as a row change plus the decoded change for the change log.
    fn change(&self, record: &Record) -> Result<Cdc, fathom_ingest::decode::Refusal> {
        let (name, config) = &self.project.sources[record.source];
        let columns = match config.key_from {
            KeyFrom::Row => std::slice::from_ref(&config.key),
            KeyFrom::Record => &[],
        };
        let placeholder = config.unavailable_value_placeholder.as_deref().unwrap_or(debezium::UNAVAILABLE_VALUE);
        let change = match debezium::decode(record.key.as_deref(), &record.payload, columns, placeholder)? {
            Decoded::Tombstone => {
                metrics::counter!("fathom_tombstones_total", "source" => name.clone()).increment(1);
                return Ok(Cdc::Consumed);
            }
            Decoded::Change(change) if change.op == Op::Truncate => {
                tracing::info!(source = %name, table = ?change.table, "truncate: rows are not cleared");
                metrics::counter!("fathom_truncates_total", "source" => name.clone()).increment(1);
                return Ok(match config.on_truncate {
                    TruncatePolicy::Skip => Cdc::Consumed,
                    TruncatePolicy::DeadLetter => Cdc::Truncate,
                });
            }
            Decoded::Change(change) => change,
        };
        let mut change = change;
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => fathom_ingest::decode::number_key(n).unwrap_or_else(|_| n.to_string()),
            other => other.to_string(),
        };
        // a key envelope's columns come sorted by name (serde_json maps are ordered)
        let key = change.key.values().map(text).collect::<Vec<_>>().join(":");
        fathom_ingest::decode::check_key_length(&config.key, &key, config.max_key_bytes)?;
        // the row moves to the table; the change log reads it back from there
        let row = if change.op == Op::Delete { None } else { change.after.take() };
        let row_change = RowChange {
            source: record.source,
            key,
            row,
            unavailable: std::mem::take(&mut change.unavailable),
            order: ChangeOrder::of(&change, record.at),
            at: record.at,
            snapshot: change.op == Op::Read,
        };
        Ok(Cdc::Change(Box::new(row_change), change))
    }

    fn letter(
        &mut self,
        payload: &[u8],
        source: usize,
        at: fathom_ingest::record::Coordinates,
        reason: Reason,
        message: String,
    ) -> DeadLetter {
        *self.stats.dead.entry((source, reason.as_str())).or_insert(0) += 1;
        DeadLetter {
            source: self.project.sources[source].0.clone(),
            topic: self.project.stream_name(source).to_string(),
            partition: at.partition,
            offset: at.offset,
            reason,
            message,
            payload: payload.to_vec(),
        }
    }

    /// Writes changed states until the store takes them.
    async fn flush(&mut self, applied: &BTreeMap<(String, i32), i64>) {
        let group = self.project.group_id();
        let offsets: Vec<(String, i64)> = applied
            .iter()
            .map(|((topic, partition), offset)| (online::offsets_key(&group, topic, *partition), *offset))
            .collect();
        let started = Instant::now();
        until_ok!(self.health, "flushing table rows to the online store", self.tables.flush().await);
        let written = until_ok!(self.health, "flushing to the online store", self.processor.flush(&offsets).await);
        metrics::histogram!("fathom_flush_seconds").record(started.elapsed().as_secs_f64());
        self.stats.flushes.push(started.elapsed().as_secs_f64());
        metrics::counter!("fathom_entities_written_total").increment(written as u64);
        metrics::gauge!("fathom_cached_entities").set(self.processor.cached() as f64);
        self.health.recovered();
    }

    /// Queues a dead letter, waiting out a full queue or an unwritable file.
    async fn dead_letter(&mut self, letter: DeadLetter) {
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

    async fn flush_dead_letters(&mut self) {
        until_ok!(self.health, "flushing dead letters", self.dead.flush().await);
    }

    /// Parquet files, then dead letters, then Kafka offsets: each step only after the previous
    /// one is durable.
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let rows = self.offline.buffered();
        let files = until_ok!(self.health, "writing the offline store", self.offline.commit());
        metrics::counter!("fathom_offline_rows_total").increment(rows as u64);
        metrics::counter!("fathom_offline_files_total").increment(files.len() as u64);
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
                        metrics::gauge!("fathom_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                            .set(lag as f64);
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
            metrics::gauge!("fathom_online_keys").set(keys as f64);
        }
        self.write_stats(&lags, keys).await;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The checkpoint's ingest figures to InfluxDB (when configured): `fathom_ingest` per
    /// source, `fathom_dead_letters` per source and reason, `fathom_consumer_lag` per partition,
    /// `fathom_flush`, `fathom_online` and `fathom_freshness` per feature set.
    async fn write_stats(&mut self, lags: &[(String, i32, i64)], keys: Option<u64>) {
        use fathom_monitor::influx::{Field, Point};
        let fresh = IngestStats {
            records: vec![0; self.project.sources.len()],
            newest_ms: self.stats.newest_ms.clone(),
            ..IngestStats::default()
        };
        let stats = std::mem::replace(&mut self.stats, fresh);
        let Some((writer, retry_at)) = &mut self.influx else { return };
        let now = chrono::Utc::now().timestamp_millis();
        let time_ns = now * 1_000_000;
        let seconds = self.last_checkpoint.elapsed().as_secs_f64().max(1e-3);
        let point = |measurement: &str, tags: Vec<(&str, String)>, fields: Vec<(&str, Field)>| Point {
            measurement: measurement.into(),
            tags: tags.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            time_ns,
        };
        let mut points = Vec::new();
        for (i, (name, _)) in self.project.sources.iter().enumerate() {
            let dead: u64 = stats.dead.iter().filter(|((s, _), _)| *s == i).map(|(_, n)| n).sum();
            points.push(point(
                "fathom_ingest",
                vec![("source", name.clone())],
                vec![
                    ("records", Field::Int(stats.records[i] as i64)),
                    ("rate", Field::Float(stats.records[i] as f64 / seconds)),
                    ("dead_letters", Field::Int(dead as i64)),
                ],
            ));
        }
        for ((source, reason), n) in &stats.dead {
            let tags = vec![("source", self.project.sources[*source].0.clone()), ("reason", reason.to_string())];
            points.push(point("fathom_dead_letters", tags, vec![("count", Field::Int(*n as i64))]));
        }
        for (topic, partition, lag) in lags {
            let tags = vec![("topic", topic.clone()), ("partition", partition.to_string())];
            points.push(point("fathom_consumer_lag", tags, vec![("lag", Field::Int(*lag))]));
        }
        if !stats.flushes.is_empty() {
            let mean = stats.flushes.iter().sum::<f64>() / stats.flushes.len() as f64;
            let max = stats.flushes.iter().copied().fold(0.0, f64::max);
            points.push(point(
                "fathom_flush",
                vec![],
                vec![
                    ("flushes", Field::Int(stats.flushes.len() as i64)),
                    ("mean_ms", Field::Float(mean * 1000.0)),
                    ("max_ms", Field::Float(max * 1000.0)),
                ],
            ));
        }
        if let Some(keys) = keys {
            points.push(point("fathom_online", vec![], vec![("keys", Field::Int(keys as i64))]));
        }
        for (plan, &source) in self.project.plans.iter().zip(&self.project.plan_sources) {
            if let Some(newest) = stats.newest_ms[source] {
                let fields = vec![("lag_ms", Field::Int(now - newest)), ("newest_ms", Field::Int(newest))];
                points.push(point("fathom_freshness", vec![("feature_set", plan.name.clone())], fields));
            }
        }
        if let Err(e) = writer.push(&points) {
            tracing::warn!(error = %e, "ingest points not queued");
        }
        if Instant::now() >= *retry_at {
            match writer.flush().await {
                Ok(_) => self.health.clear("influxdb"),
                Err(e) => {
                    *retry_at = Instant::now() + writer.backoff();
                    tracing::warn!(error = %e, backlog = writer.backlog(), "InfluxDB write failed; ingest points kept");
                    let message = format!("{e}; {} points waiting (spilled to disk)", writer.backlog());
                    self.health.warn("influxdb", message);
                }
            }
        }
        if let Err(e) = writer.persist() {
            tracing::warn!(error = %e, "ingest points not spilled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Roles;

    #[test]
    fn roles_parse_subsets_and_refuse_unknown_ones() {
        assert_eq!(Roles::parse("all").unwrap(), Roles::ALL);
        assert_eq!(Roles::parse("ingest, monitor").unwrap(), Roles { ingest: true, api: false, monitor: true });
        assert!(Roles::parse("api,web").unwrap_err().contains("\"web\""));
        assert!(Roles::parse("").is_err());
    }
}
