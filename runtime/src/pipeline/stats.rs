//! The ingest figures of each checkpoint, to InfluxDB.

use std::collections::BTreeMap;

use super::Pipeline;
use crate::telemetry;

/// Ingest figures between two checkpoints.
#[derive(Default)]
pub(super) struct IngestStats {
    /// Records in, per source.
    pub(super) records: Vec<u64>,
    /// Dead letters per (source, reason).
    pub(super) dead: BTreeMap<(usize, &'static str), u64>,
    /// Newest event time applied, per source.
    pub(super) newest_ms: Vec<Option<i64>>,
    /// Flush durations, seconds.
    pub(super) flushes: Vec<f64>,
    /// Per source: the ages of its records when their online write completed, ms.
    pub(super) freshness: BTreeMap<usize, hdrhistogram::Histogram<u64>>,
}

impl Pipeline {
    /// Notes how old each record of a batch was when its online write completed: now − its
    /// transport time (`produced`: source, ms), as the Prometheus histogram
    /// `fathom_online_freshness_seconds` and, per checkpoint, `fathom_online_freshness` points. A
    /// producer clock ahead of ours counts as age 0.
    pub(super) fn note_freshness(&mut self, produced: &[(usize, i64)]) {
        let now = chrono::Utc::now().timestamp_millis();
        let mut at = 0;
        while at < produced.len() {
            let source = produced[at].0;
            let run = produced[at..].iter().take_while(|(s, _)| *s == source).count();
            let ages = produced[at..at + run].iter().map(|(_, t)| (now - t).max(0) as u64);
            let histogram = self.stats.freshness.entry(source).or_insert_with(|| {
                hdrhistogram::Histogram::new(3).expect("3 significant digits are within hdrhistogram's range")
            });
            telemetry::freshness(
                &self.project.sources[source].0,
                ages.inspect(|&age| histogram.saturating_record(age)),
            );
            at += run;
        }
    }
}

impl Pipeline {
    /// The checkpoint's ingest figures to InfluxDB (when configured): `fathom_ingest` per
    /// source, `fathom_dead_letters` per source and reason, `fathom_consumer_lag` per partition,
    /// `fathom_flush`, `fathom_online`, `fathom_online_freshness` per source and `fathom_freshness` per
    /// feature set.
    pub(super) async fn write_stats(&mut self, lags: &[(String, i32, i64)], keys: Option<u64>) {
        use fathom_monitor::influx::{Field, Point};
        let fresh = IngestStats {
            records: vec![0; self.project.sources.len()],
            newest_ms: self.stats.newest_ms.clone(),
            ..IngestStats::default()
        };
        let stats = std::mem::replace(&mut self.stats, fresh);
        let Some(out) = &mut self.influx else { return };
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
        for (source, ages) in &stats.freshness {
            let quantile = |q: f64| Field::Int(ages.value_at_quantile(q) as i64);
            points.push(point(
                "fathom_online_freshness",
                vec![("source", self.project.sources[*source].0.clone())],
                vec![
                    ("records", Field::Int(ages.len() as i64)),
                    ("p50_ms", quantile(0.5)),
                    ("p90_ms", quantile(0.9)),
                    ("p99_ms", quantile(0.99)),
                    ("max_ms", Field::Int(ages.max() as i64)),
                ],
            ));
        }
        for (plan, &source) in self.project.plans.iter().zip(&self.project.plan_sources) {
            if let Some(newest) = stats.newest_ms[source] {
                let fields = vec![("lag_ms", Field::Int(now - newest)), ("newest_ms", Field::Int(newest))];
                points.push(point("fathom_freshness", vec![("feature_set", plan.name.clone())], fields));
            }
        }
        if let Err(e) = out.push(&points) {
            tracing::warn!(error = format!("{e:#}"), "ingest points not queued");
        }
        if let Err(e) = out.persist(&self.health).await {
            tracing::warn!(error = format!("{e:#}"), "ingest points not spilled");
        }
    }
}
