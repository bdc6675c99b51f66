//! The processing loop: records from Kafka and HTTP push → decode → featurestore → online and
//! offline stores, with dead letters for everything refused.
//!
//! One task owns the processor and the writers, so batches are applied in order without locks.
//! Every batch ends with an online flush (state and applied offsets, atomically per entity);
//! every `checkpoint_interval` the Parquet files are committed (written on a blocking thread while
//! batches go on), dead letters made durable, and only then Kafka offsets committed. A crash between two checkpoints replays records the online
//! store already holds; each entity's applied offsets make those replays no-ops.

mod checkpoint;
mod handle;
mod schema;
mod stats;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::offline::{OfflineWriter, Spill};
use fathom_featurestore::online::{EmbeddedStore, NearCache, OnlineStore, RedisStore};
use fathom_featurestore::processor::Processor;
use fathom_featurestore::table::{Join, RowChange, TableProcessor};
use fathom_ingest::deadletter::{DeadLetter, DeadLetters};
use fathom_ingest::debezium::Change;
use fathom_ingest::decode::Decoder;
use fathom_ingest::kafka::{self, Committer, KafkaSource, Offsets};
use fathom_ingest::record::Record;
use fathom_project::Project;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use self::schema::schemas;
use self::stats::IngestStats;
use crate::consumer::spawn_consumer;
use crate::health::{Health, Roles};
use crate::points::Points;
use crate::stage::{self, Inputs, NoResults, Stage};
use crate::telemetry;

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

/// Connects the stores and starts the loop (and the Kafka consumer when configured).
pub async fn start(project: Arc<Project>) -> anyhow::Result<Running> {
    start_with(project, Roles::ALL).await
}

/// [`start`] for some roles only: the Kafka consumer with `ingest`, the monitor with `monitor`.
pub async fn start_with(project: Arc<Project>, roles: Roles) -> anyhow::Result<Running> {
    let store = connect_online(&project).await?;
    let storage = project.stores.offline.parquet.storage().context("stores.offline.parquet")?;
    let offline = OfflineWriter::new(storage, schemas(&project)).context("opening the offline store")?;
    let parquet = &project.stores.offline.parquet;
    let spill = Spill::open(&parquet.spill_dir, parquet.max_spill_mb.saturating_mul(1 << 20))
        .context("stores.offline.parquet.spill_dir")?;
    let (dead, consumer) = dead_letters_and_consumer(&project, roles).await?;
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
    )
    .with_selects(project.table_selects());
    let health = Arc::new(Health::default());
    let (push_tx, push_rx) = mpsc::channel(16);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (kafka_rx, committer) = match consumer {
        Some(consumer) => {
            let (rx, committer) = spawn_consumer(consumer, &project, health.clone());
            if let Some(near) = store.near_cache() {
                near.follow(committer.rebalances());
            }
            (Some(rx), Some(committer))
        }
        None => (None, None),
    };
    let pipeline = Pipeline {
        project: project.clone(),
        decoders: decoders(&project),
        joins: project.joins(),
        processor,
        tables,
        offline,
        spill: Some(spill),
        dead,
        committer,
        processed: Offsets::new(),
        handled: BTreeMap::new(),
        last_checkpoint: Instant::now(),
        stop_by: None,
        writing: None,
        health: health.clone(),
        stats: IngestStats {
            records: vec![0; project.sources.len()],
            newest_ms: vec![None; project.sources.len()],
            ..IngestStats::default()
        },
        influx: match &project.stores.influxdb {
            Some(config) => Some(Points::influx(config, "ingest").context("stores.influxdb")?),
            None => None,
        },
    };
    pipeline.spill_waiting(None);
    let task = tokio::spawn(pipeline.run(kafka_rx, push_rx, shutdown_rx));
    health.ready.store(true, Ordering::Relaxed);
    let monitor = if roles.monitor {
        crate::monitoring::start(project.clone(), store.clone()).await.context("starting the monitor")?
    } else {
        None
    };
    Ok(Running { store, push: push_tx, health, shutdown: shutdown_tx, task, monitor })
}

/// The online store: Redis when configured, else a new embedded store (loaded from its
/// snapshot).
pub async fn connect_online(project: &Project) -> anyhow::Result<OnlineStore> {
    Ok(match project.redis()? {
        Some(topology) => {
            let redis = RedisStore::connect(&topology).await.context("connecting to Redis")?;
            let near = project.stores.online.redis.as_ref().is_some_and(|r| r.near_cache);
            let near = near.then(|| Arc::new(NearCache::new(project.processing.max_cached_entities)));
            OnlineStore::Redis(redis, near)
        }
        None => match project.stores.online.embedded.as_ref().and_then(|e| e.snapshot.as_deref()) {
            Some(path) => OnlineStore::Embedded(Arc::new(EmbeddedStore::with_snapshot(path)?)),
            None => OnlineStore::Embedded(Arc::new(EmbeddedStore::new())),
        },
    })
}

/// Dead letters to Kafka (their topics and the prediction topics ensured) or to files, and the
/// Kafka consumer of the sources when this process ingests.
async fn dead_letters_and_consumer(
    project: &Project,
    roles: Roles,
) -> anyhow::Result<(DeadLetters, Option<(KafkaSource, Committer)>)> {
    let Some(config) = &project.stores.kafka else {
        return Ok((DeadLetters::files(project.stores.dead_letters.path.clone()), None));
    };
    let kafka_sources: Vec<(String, usize)> = project
        .sources
        .iter()
        .enumerate()
        .filter_map(|(i, (_, s))| s.kafka.as_ref().map(|k| (k.topic.clone(), i)))
        .collect();
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
    Ok((dead, consumer))
}

/// One decoder per source, told which fields its feature sets aggregate as numbers.
fn decoders(project: &Project) -> Vec<Decoder> {
    project
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
                .filter(|c| !source.select.contains_key(c))
                .collect();
            Decoder::new(source, numeric)
        })
        .collect()
}

struct Pipeline {
    project: Arc<Project>,
    decoders: Vec<Decoder>,
    /// Per source: the tables its events join.
    joins: Vec<Vec<Join>>,
    processor: Processor,
    tables: TableProcessor,
    offline: OfflineWriter,
    /// Rows the offline store did not take, waiting on local disk (`None` only while the
    /// checkpoint's writer thread holds it).
    spill: Option<Spill>,
    /// When stopping: the time the last checkpoint is given up at.
    stop_by: Option<Instant>,
    dead: DeadLetters,
    committer: Option<Committer>,
    /// Next offsets of records processed since the last checkpoint.
    processed: Offsets,
    /// Highest offset this process handled per (source, partition): a re-delivery at or below
    /// it is skipped whole.
    handled: BTreeMap<(usize, i32), i64>,
    last_checkpoint: Instant,
    /// The checkpoint being written on a blocking thread.
    writing: Option<JoinHandle<checkpoint::Written>>,
    health: Arc<Health>,
    /// What happened since the last checkpoint, written to InfluxDB as `fathom_ingest` & co.
    stats: IngestStats,
    /// The InfluxDB writer, when `stores.influxdb` is configured.
    influx: Option<Points>,
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

impl Pipeline {
    async fn run(
        mut self,
        kafka: Option<mpsc::Receiver<crate::consumer::Fetched>>,
        mut push: mpsc::Receiver<Push>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let inputs = Inputs { kafka, push: &mut push, results: NoResults::None, shutdown: &mut shutdown };
        stage::run(&mut self, inputs).await
    }
}

impl Stage for Pipeline {
    type Push = Push;
    type Result = Infallible;
    type Error = anyhow::Error;

    fn fetched(&mut self, rebalances: u64) {
        // its records may be from partitions a rebalance since took away: what it writes is
        // served only while no rebalance followed the read
        if let Some(near) = self.processor.store().near_cache() {
            near.begin_batch(rebalances);
        }
    }

    async fn process_batch(&mut self, batch: Vec<Record>) -> anyhow::Result<()> {
        if self.committer.as_ref().is_some_and(Committer::take_rebalanced) {
            // every batch ends flushed, so the cache is clean: drop it rather than
            // serve entities another member may have changed (the near cache stops serving by
            // itself: it follows the rebalance count)
            self.processor.forget();
            self.tables.forget();
        }
        let span = tracing::debug_span!("batch", records = batch.len(), from = "kafka");
        self.handle(batch).instrument(span).await;
        telemetry::near_cache(self.processor.store());
        Ok(())
    }

    async fn handle_push(&mut self, request: Push) -> anyhow::Result<()> {
        if let Some(near) = self.processor.store().near_cache() {
            near.begin_batch(near.generation());
        }
        let span = tracing::debug_span!("batch", records = request.records.len(), from = "push");
        let summary = self.handle(request.records).instrument(span).await;
        if summary.dead_lettered > 0 {
            // the answer reports them: make them durable first
            self.flush_dead_letters().await;
        }
        let _ = request.done.send(summary);
        Ok(())
    }

    fn handle_result(&mut self, result: Infallible) {
        match result {}
    }

    async fn handle_tick(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Due by time or buffered rows; while a checkpoint is being written, after every event, to
    /// see whether it is done.
    fn checkpoint_due(&self) -> bool {
        self.writing.is_some()
            || self.last_checkpoint.elapsed() >= Duration::from_millis(self.project.processing.checkpoint_ms as u64)
            || self.offline.buffered() >= self.project.processing.max_buffered_rows
    }

    async fn handle_checkpoint(&mut self) -> anyhow::Result<()> {
        self.checkpoint_step().await
    }

    /// The last checkpoint, given up after `processing.stop_timeout` with the rows spilled.
    async fn finish(&mut self) -> anyhow::Result<()> {
        self.stop_by = Some(Instant::now() + Duration::from_millis(self.project.processing.stop_timeout_ms as u64));
        self.checkpoint().await
    }
}
