//! Every Prometheus metric Fathom exports, in one place (after vector's `internal_events`): the
//! catalogue [`METRICS`] with each metric's type, labels and help text (served as `# HELP` by
//! `/metrics`), and one function per event that counts it — and logs it where the event deserves
//! a log line. The runtime and the binary record metrics only through these functions; the ingest
//! crate records the three of its own (dead letters, Kafka prefetch) and they are catalogued here.
//! A test compares the catalogue with the source tree and with `docs/deploy.md`.

use fathom_featurestore::processor::Outcome;
use fathom_featurestore::table::{JoinOutcome, TableOutcome};

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (Prometheus summary quantiles).
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The Prometheus name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it measures, with its unit.
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

/// Every metric `/metrics` may show.
pub const METRICS: &[Metric] = &[
    metric("fathom_records_in_total", Kind::Counter, &["source"], "Records read, from Kafka or pushed, per source."),
    metric(
        "fathom_dead_letters_total",
        Kind::Counter,
        &["source", "reason"],
        "Records sent to the dead letters, per source and reason (recorded by fathom-ingest).",
    ),
    metric(
        "fathom_replayed_records_skipped_total",
        Kind::Counter,
        &[],
        "Records and changes skipped because they were already applied (replays after a restart or a rebalance).",
    ),
    metric("fathom_events_applied_total", Kind::Counter, &[], "Events applied to feature sets."),
    metric(
        "fathom_events_without_key_total",
        Kind::Counter,
        &[],
        "Events whose entity key was missing for a feature set.",
    ),
    metric(
        "fathom_events_filtered_total",
        Kind::Counter,
        &[],
        "Events kept out of a feature set by its `where` (counted once per event and feature set).",
    ),
    metric("fathom_table_changes_applied_total", Kind::Counter, &[], "CDC changes applied to tables."),
    metric(
        "fathom_table_changes_stale_total",
        Kind::Counter,
        &[],
        "CDC changes older than the stored row version, not applied.",
    ),
    metric(
        "fathom_table_unavailable_without_stored_value_total",
        Kind::Counter,
        &[],
        "Unavailable CDC column values (TOAST) with no stored value to fill them in.",
    ),
    metric(
        "fathom_table_expression_errors_total",
        Kind::Counter,
        &[],
        "CDC changes applied with their `select` columns null because an expression failed on the row.",
    ),
    metric(
        "fathom_tombstones_total",
        Kind::Counter,
        &["source"],
        "Kafka tombstones of CDC sources, consumed without effect.",
    ),
    metric(
        "fathom_truncates_total",
        Kind::Counter,
        &["source"],
        "Truncate events of CDC sources (rows are not cleared).",
    ),
    metric("fathom_join_matched_total", Kind::Counter, &[], "Events joined to a CDC table row as of their time."),
    metric(
        "fathom_join_missed_total",
        Kind::Counter,
        &[],
        "Events whose joined CDC table row did not exist as of their time.",
    ),
    metric(
        "fathom_join_approximate_total",
        Kind::Counter,
        &[],
        "Events joined to a row version outside the kept history (the oldest kept).",
    ),
    metric(
        "fathom_flush_seconds",
        Kind::Histogram,
        &[],
        "Time to write one batch's changed states to the online store, seconds.",
    ),
    metric(
        "fathom_online_freshness_seconds",
        Kind::Histogram,
        &["source"],
        "Age of a record when the online write of its batch completed (from its Kafka timestamp or its push's arrival), seconds.",
    ),
    metric("fathom_entities_written_total", Kind::Counter, &[], "Entity states written to the online store."),
    metric("fathom_cached_entities", Kind::Gauge, &[], "Entity states cached in memory."),
    metric("fathom_offline_rows_total", Kind::Counter, &[], "Rows committed to the offline store (Parquet)."),
    metric("fathom_offline_files_total", Kind::Counter, &[], "Parquet files committed to the offline store."),
    metric(
        "fathom_offline_spill_rows",
        Kind::Gauge,
        &[],
        "Rows the offline store did not take, waiting in stores.offline.parquet.spill_dir.",
    ),
    metric(
        "fathom_offline_spill_bytes",
        Kind::Gauge,
        &[],
        "Bytes of Parquet waiting in stores.offline.parquet.spill_dir (bounded by max_spill_mb).",
    ),
    metric(
        "fathom_consumer_lag",
        Kind::Gauge,
        &["topic", "partition"],
        "Records behind the partition's high watermark at the last checkpoint.",
    ),
    metric("fathom_online_keys", Kind::Gauge, &[], "Keys in the online store at the last checkpoint."),
    metric(
        "fathom_online_near_cache_hits_total",
        Kind::Counter,
        &[],
        "Online-store keys read from the near cache (written by this process) instead of Redis.",
    ),
    metric(
        "fathom_online_near_cache_misses_total",
        Kind::Counter,
        &[],
        "Online-store keys the near cache did not hold, read from Redis.",
    ),
    metric(
        "fathom_kafka_prefetched_messages",
        Kind::Gauge,
        &[],
        "Messages librdkafka holds fetched but not yet consumed (recorded by fathom-ingest).",
    ),
    metric(
        "fathom_kafka_prefetched_bytes",
        Kind::Gauge,
        &[],
        "Bytes librdkafka holds fetched but not yet consumed (recorded by fathom-ingest).",
    ),
    metric("fathom_model_seconds", Kind::Histogram, &["model"], "Time a model endpoint took to answer, seconds."),
    metric("fathom_prediction_records_total", Kind::Counter, &["model"], "Prediction records published."),
    metric("fathom_prediction_records_failed_total", Kind::Counter, &["model"], "Prediction records the sink refused."),
    metric(
        "fathom_prediction_records_dropped_total",
        Kind::Counter,
        &["model"],
        "Prediction records dropped because the publishing queue was full.",
    ),
    metric("fathom_process_resident_bytes", Kind::Gauge, &[], "The process's resident memory (RSS), bytes."),
    metric("fathom_memory_heap_bytes", Kind::Gauge, &[], "Live heap allocations (jemalloc's stats.allocated, C libraries included), bytes."),
    metric(
        "fathom_memory_allocator_resident_bytes",
        Kind::Gauge,
        &[],
        "Memory the allocator holds (jemalloc's stats.resident): the live heap, its metadata and freed pages not given back, bytes.",
    ),
];

/// Registers every metric's help text with the installed recorder (`# HELP` lines).
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Records read from one source in a batch.
pub(crate) fn records_in(source: &str, n: u64) {
    metrics::counter!("fathom_records_in_total", "source" => source.to_string()).increment(n);
}

/// Records of a batch this process had already handled (the broker re-delivered them).
pub(crate) fn redelivered(n: u64) {
    tracing::info!(records = n, "skipped records this process already handled");
    metrics::counter!("fathom_replayed_records_skipped_total").increment(n);
}

/// CDC changes applied to their tables.
pub(crate) fn table_changes(outcome: &TableOutcome) {
    metrics::counter!("fathom_table_changes_applied_total").increment(outcome.applied);
    metrics::counter!("fathom_table_changes_stale_total").increment(outcome.stale);
    metrics::counter!("fathom_replayed_records_skipped_total").increment(outcome.duplicates);
    metrics::counter!("fathom_table_unavailable_without_stored_value_total").increment(outcome.unavailable_unknown);
    if outcome.expression_errors > 0 {
        tracing::warn!(
            rows = outcome.expression_errors,
            "a CDC table's select failed on rows; their selected columns are null"
        );
        metrics::counter!("fathom_table_expression_errors_total").increment(outcome.expression_errors);
    }
}

/// A CDC source's tombstone.
pub(crate) fn tombstone(source: &str) {
    metrics::counter!("fathom_tombstones_total", "source" => source.to_string()).increment(1);
}

/// A CDC source's truncate.
pub(crate) fn truncate(source: &str, table: Option<&str>) {
    tracing::info!(source, table = ?table, "truncate: rows are not cleared");
    metrics::counter!("fathom_truncates_total", "source" => source.to_string()).increment(1);
}

/// Events joined to their CDC tables.
pub(crate) fn joins(outcome: &JoinOutcome) {
    metrics::counter!("fathom_join_matched_total").increment(outcome.matched);
    metrics::counter!("fathom_join_missed_total").increment(outcome.missed);
    metrics::counter!("fathom_join_approximate_total").increment(outcome.approximate);
}

/// Events applied to the feature sets.
pub(crate) fn events(outcome: &Outcome) {
    metrics::counter!("fathom_events_applied_total").increment(outcome.applied);
    metrics::counter!("fathom_replayed_records_skipped_total").increment(outcome.duplicates);
    metrics::counter!("fathom_events_without_key_total").increment(outcome.unkeyed);
    metrics::counter!("fathom_events_filtered_total").increment(outcome.filtered);
}

/// A batch flushed online: how long it took, entities written, entities cached.
pub(crate) fn flushed(seconds: f64, written: usize, cached: usize) {
    metrics::histogram!("fathom_flush_seconds").record(seconds);
    metrics::counter!("fathom_entities_written_total").increment(written as u64);
    metrics::gauge!("fathom_cached_entities").set(cached as f64);
}

/// The ages of a batch's records of one source when their online write completed, ms.
pub(crate) fn freshness(source: &str, ages_ms: impl Iterator<Item = u64>) {
    let histogram = metrics::histogram!("fathom_online_freshness_seconds", "source" => source.to_string());
    ages_ms.for_each(|age| histogram.record(age as f64 / 1000.0));
}

/// Parquet committed at a checkpoint.
pub(crate) fn offline_committed(rows: usize, files: usize) {
    metrics::counter!("fathom_offline_rows_total").increment(rows as u64);
    metrics::counter!("fathom_offline_files_total").increment(files as u64);
}

/// What waits in the offline store's spill directory.
pub(crate) fn offline_spill(rows: u64, bytes: u64) {
    metrics::gauge!("fathom_offline_spill_rows").set(rows as f64);
    metrics::gauge!("fathom_offline_spill_bytes").set(bytes as f64);
}

/// A partition's lag at a checkpoint.
pub(crate) fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    metrics::gauge!("fathom_consumer_lag", "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// Keys in the online store at a checkpoint.
pub(crate) fn online_keys(keys: u64) {
    metrics::gauge!("fathom_online_keys").set(keys as f64);
}

/// Counts the near cache's hits and misses since the last call (any reader's: lookups, the
/// pipeline's own loads, enrichment).
pub fn near_cache(store: &fathom_featurestore::online::OnlineStore) {
    if let Some(near) = store.near_cache() {
        let (hits, misses) = near.take_counts();
        metrics::counter!("fathom_online_near_cache_hits_total").increment(hits);
        metrics::counter!("fathom_online_near_cache_misses_total").increment(misses);
    }
}

/// A model endpoint answered.
pub(crate) fn model_answered(model: &str, seconds: f64) {
    metrics::histogram!("fathom_model_seconds", "model" => model.to_string()).record(seconds);
}

/// What became of a prediction record.
pub(crate) enum Published {
    /// The sink took it.
    Done,
    /// The sink refused it.
    Failed,
    /// The publishing queue was full.
    Dropped,
}

/// A prediction record published, refused or dropped.
pub(crate) fn prediction_record(model: String, outcome: Published) {
    match outcome {
        Published::Done => metrics::counter!("fathom_prediction_records_total", "model" => model).increment(1),
        Published::Failed => metrics::counter!("fathom_prediction_records_failed_total", "model" => model).increment(1),
        Published::Dropped => {
            metrics::counter!("fathom_prediction_records_dropped_total", "model" => model).increment(1)
        }
    }
}

/// The process's memory: live heap and what the allocator holds (when known), and its RSS.
pub fn memory(heap: Option<(u64, u64)>, resident_bytes: u64) {
    if let Some((heap, held)) = heap {
        metrics::gauge!("fathom_memory_heap_bytes").set(heap as f64);
        metrics::gauge!("fathom_memory_allocator_resident_bytes").set(held as f64);
    }
    metrics::gauge!("fathom_process_resident_bytes").set(resident_bytes as f64);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::METRICS;

    /// `"fathom_…"` names in metric macros of the `.rs` files under `dir`, per file.
    fn recorded(dir: &Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                recorded(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text
                    .lines()
                    .filter(|l| l.contains("counter!(") || l.contains("gauge!(") || l.contains("histogram!("))
                {
                    if let Some(start) = line.find("\"fathom_") {
                        let name: String = line[start + 1..].chars().take_while(|c| *c != '"').collect();
                        found.push((path.display().to_string(), name));
                    }
                }
            }
        }
    }

    #[test]
    fn every_recorded_metric_is_catalogued_recorded_here_or_by_ingest_and_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut found = Vec::new();
        for crate_dir in
            ["src", "api/src", "runtime/src", "project/src", "ingest/src", "featurestore/src", "monitor/src"]
        {
            recorded(&root.join(crate_dir), &mut found);
        }
        let catalogued: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(catalogued.len(), METRICS.len(), "a metric is catalogued twice");
        for (file, name) in &found {
            assert!(catalogued.contains(name.as_str()), "{file} records {name}, which is not in METRICS");
            let allowed = file.ends_with("runtime/src/telemetry.rs") || file.contains("/ingest/src/");
            assert!(allowed, "{file} records {name}: record metrics through fathom_runtime::telemetry");
        }
        let seen: BTreeSet<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
        for name in &catalogued {
            assert!(seen.contains(name), "{name} is catalogued but nothing records it");
        }
        let docs = std::fs::read_to_string(root.join("docs/deploy.md")).unwrap();
        for m in METRICS {
            assert!(docs.contains(&format!("`{}`", m.name)), "docs/deploy.md does not list {}", m.name);
        }
    }
}
