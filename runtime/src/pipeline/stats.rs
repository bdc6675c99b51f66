//! The ingest figures of each checkpoint, to InfluxDB.

use std::collections::BTreeMap;

use super::Pipeline;

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
}

impl Pipeline {
    /// The checkpoint's ingest figures to InfluxDB (when configured): `fathom_ingest` per
    /// source, `fathom_dead_letters` per source and reason, `fathom_consumer_lag` per partition,
    /// `fathom_flush`, `fathom_online` and `fathom_freshness` per feature set.
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
