//! `fathom bench monitor`: prediction and label records through the monitor.

use std::sync::Arc;
use std::time::Instant;

use super::dataset::peak_rss;
use super::engine::tempfile_dir;
use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// `fathom bench monitor`: prediction records (50 numeric features by default) and labels for
/// half of them pushed through the monitor — parse, join in the (embedded) online store, bin
/// into windows, close windows, checkpoint — and the rate reported.
pub(crate) async fn monitor(predictions: usize, features: usize, batch: usize) -> anyhow::Result<()> {
    use fathom_featurestore::online::{EmbeddedStore, OnlineStore};
    use fathom_ingest::record::{Coordinates, Record};
    use fathom_monitor::profile::{FeatureProfile, NumericProfile, Profile};

    let dir = tempfile_dir()?;
    let mut rng = SmallRng::seed_from_u64(5);
    let names: Vec<String> = (0..features).map(|f| format!("f{f:02}")).collect();
    let profile = Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: "bench".into(),
        created: String::new(),
        source: "bench".into(),
        rows: 100_000,
        features: names
            .iter()
            .map(|n| {
                let values = (0..100_000).map(|_| rng.random::<f64>()).collect();
                (n.clone(), FeatureProfile::Numeric(NumericProfile::build(values, 0)))
            })
            .collect(),
    };
    profile.save(&dir.join("bench.json"))?;
    let yaml = format!(
        "project: bench\nstores:\n  dead_letters: {{ path: {d}/dlq }}\n  offline: {{ parquet: {{ path: {d}/offline }} }}\n\
         processing: {{ checkpoint_interval: 1h }}\nmodels:\n  bench:\n    features: []\n    reference: {d}/bench.json\n\
         \x20   labels: {{ max_delay: 30m }}\n    monitoring: {{ window: 10m, sliding: 1h, idle: 1h }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("fathom.yaml"), yaml)?;
    let project = Arc::new(fathom_project::load(&dir.join("fathom.yaml"))?);
    let store = OnlineStore::Embedded(Arc::new(EmbeddedStore::new()));
    let running = fathom_runtime::monitoring::start(project, store).await?.context("the model is monitored")?;
    // one prediction every 10 ms of event time; half labelled a minute later
    let t0 = 1_767_225_600_000i64;
    let record = |i: usize, payload: Vec<u8>| Record {
        source: 0,
        at: Coordinates { partition: None, offset: i as i64 },
        transport_time_ms: None,
        key: None,
        payload,
    };
    let mut encoded: Vec<(Vec<Record>, Vec<Record>)> = Vec::new();
    for start in (0..predictions).step_by(batch) {
        let (mut p, mut l) = (Vec::new(), Vec::new());
        for i in start..(start + batch).min(predictions) {
            let ts = t0 + i as i64 * 10;
            let shift = if i > predictions / 2 { 0.3 } else { 0.0 };
            let features: serde_json::Map<String, Value> =
                names.iter().map(|n| (n.clone(), Value::from(rng.random::<f64>() + shift))).collect();
            let score: f64 = rng.random();
            let prediction = serde_json::json!({
                "request_id": format!("r{i}"), "model": "bench", "timestamp": ts, "features": features,
                "prediction": {"class": if score > 0.5 { "1" } else { "0" }, "probabilities": {"0": 1.0 - score, "1": score}},
                "latency_ms": 3.0 + 10.0 * rng.random::<f64>(),
            });
            p.push(record(i, serde_json::to_vec(&prediction)?));
            if i % 2 == 0 {
                let label = serde_json::json!({"request_id": format!("r{i}"), "label": i64::from(rng.random::<f64>() < score), "timestamp": ts + 60_000});
                l.push(record(i, serde_json::to_vec(&label)?));
            }
        }
        encoded.push((p, l));
    }
    let started = Instant::now();
    for (p, l) in encoded {
        for (kind, records) in
            [(fathom_runtime::monitoring::Kind::Predictions, p), (fathom_runtime::monitoring::Kind::Labels, l)]
        {
            let (done, answer) = tokio::sync::oneshot::channel();
            let push = fathom_runtime::monitoring::MonitorPush { model: "bench".into(), kind, records, done };
            running.push.send(push).await.map_err(|_| anyhow::anyhow!("the monitor stopped"))?;
            answer.await?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = running.shutdown.send(true);
    running.task.await??;
    println!(
        "fathom monitor: {predictions} predictions × {features} features (+{} labels) parsed, joined, binned and checkpointed \
         in {secs:.2}s = {:.0} predictions/s, peak RSS {}",
        predictions.div_ceil(2),
        predictions as f64 / secs,
        peak_rss()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
