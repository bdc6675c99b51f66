//! `fathom bench dataset`: point-in-time retrieval at scale, and pandas on the same files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Options of the training-set benchmark.
#[derive(Debug, Clone)]
pub(crate) struct DatasetOptions {
    /// Entity rows.
    pub rows: usize,
    /// Events in the offline store.
    pub events: usize,
    /// Cards (merchants are a tenth).
    pub keys: usize,
    /// Where the offline store, input and output go.
    pub dir: PathBuf,
    /// Python with pandas and pyarrow: run the same job with `merge_asof` + rolling windows.
    pub pandas_python: Option<PathBuf>,
}

/// The benchmark's project: three feature sets over one source, two keyed by card, one by
/// merchant.
pub(crate) const DATASET_PROJECT: &str = r#"project: bench
stores:
  offline: { parquet: { path: offline } }
sources:
  tx: { key: card_id, timestamp: ts }
entities:
  card: { key: card_id }
  merchant: { key: merchant_id }
feature_sets:
  cards:
    entity: card
    source: tx
    aggregations: [{ column: amount, functions: [count, sum, mean, max], windows: [1h, 1d], period: 5m }]
  cards_weekly:
    entity: card
    source: tx
    aggregations: [{ column: amount, functions: [sum, stddev], windows: [7d], period: 1h }]
  merchants:
    entity: merchant
    source: tx
    aggregations: [{ column: amount, functions: [count, mean], windows: [1h, 1d], period: 10m }]
"#;

/// Point-in-time retrieval at scale: writes `events` over seven days to the offline store (as
/// the pipeline would), `rows` entity rows, then times `fathom dataset` over all three feature
/// sets, and pandas on the same files when asked.
pub(crate) fn dataset(options: &DatasetOptions) -> anyhow::Result<()> {
    use fathom_featurestore::offline::{ColumnType, Layout, OfflineWriter, SourceSchema};
    use fathom_ingest::event::Event;
    use fathom_ingest::record::Coordinates;

    let dir = &options.dir;
    std::fs::create_dir_all(dir)?;
    let yaml = dir.join("fathom.yaml");
    std::fs::write(&yaml, DATASET_PROJECT)?;
    let start = 1_767_225_600_000i64;
    let span = 7 * 86_400_000i64;
    let merchants = (options.keys / 10).max(1);
    let offline = dir.join("offline");
    if !offline.exists() {
        let schema = SourceSchema {
            name: "tx".into(),
            key: "card_id".into(),
            layout: Layout::Events(vec![
                ("amount".into(), ColumnType::Float),
                ("merchant_id".into(), ColumnType::Text),
            ]),
        };
        let mut writer = OfflineWriter::new(fathom_featurestore::storage::Storage::local(&offline), vec![schema])?;
        let mut rng = SmallRng::seed_from_u64(3);
        let started = Instant::now();
        let chunk = 500_000;
        for first in (0..options.events).step_by(chunk) {
            let events: Vec<Event> = (first..(first + chunk).min(options.events))
                .map(|i| {
                    let card = format!("card-{:06}", rng.random_range(0..options.keys));
                    let merchant = format!("m-{:05}", rng.random_range(0..merchants));
                    let amount = (rng.random::<f64>() * 50_000.0).round() / 100.0;
                    let ts = start + (i as i64 * span) / options.events as i64;
                    let raw =
                        format!(r#"{{"card_id":"{card}","merchant_id":"{merchant}","ts":{ts},"amount":{amount}}}"#);
                    let mut fields = serde_json::Map::new();
                    fields.insert("amount".into(), Value::from(amount));
                    fields.insert("merchant_id".into(), Value::from(merchant));
                    Event {
                        source: 0,
                        key: card,
                        time_ms: ts,
                        fields,
                        at: Coordinates { partition: Some((i % 8) as i32), offset: (i / 8) as i64 },
                        raw: raw.into_bytes(),
                    }
                })
                .collect();
            writer.append(&events, &[]);
            writer.commit()?;
        }
        println!("wrote {} events to {} in {:.1}s", options.events, offline.display(), started.elapsed().as_secs_f64());
    }
    let input = dir.join("rows.parquet");
    {
        let mut rng = SmallRng::seed_from_u64(4);
        let cards: Vec<String> =
            (0..options.rows).map(|_| format!("card-{:06}", rng.random_range(0..options.keys))).collect();
        let merchant_ids: Vec<String> =
            (0..options.rows).map(|_| format!("m-{:05}", rng.random_range(0..merchants))).collect();
        let ts: Vec<i64> = (0..options.rows).map(|_| start + rng.random_range(0..span)).collect();
        let labels: Vec<i64> = (0..options.rows).map(|i| (i % 2) as i64).collect();
        let batch = arrow_array::RecordBatch::try_from_iter([
            ("card_id", std::sync::Arc::new(arrow_array::StringArray::from(cards)) as arrow_array::ArrayRef),
            ("merchant_id", std::sync::Arc::new(arrow_array::StringArray::from(merchant_ids)) as _),
            ("ts", std::sync::Arc::new(arrow_array::TimestampMillisecondArray::from(ts).with_timezone("UTC")) as _),
            ("label", std::sync::Arc::new(arrow_array::Int64Array::from(labels)) as _),
        ])?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&input)?, batch.schema(), None)?;
        writer.write(&batch)?;
        writer.close()?;
    }
    let project = fathom_project::load(&yaml)?;
    let output = dir.join("train.parquet");
    let cwd = std::env::current_dir()?;
    std::env::set_current_dir(dir)?; // the project's offline path is relative, as users write it
                                     // peak RSS of the dataset alone: reset the high-water mark first (Linux)
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let summary = crate::commands::dataset::dataset(
        &project,
        &crate::commands::dataset::DatasetOptions {
            input: input.clone(),
            timestamp: "ts".into(),
            features: crate::commands::dataset::Features::List(vec![
                "cards.*".into(),
                "cards_weekly.*".into(),
                "merchants.*".into(),
            ]),
            output: output.clone(),
            assume_utc: false,
            statuses: false,
            shards: 64,
            progress: false,
        },
    );
    std::env::set_current_dir(cwd)?;
    let summary = summary?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fathom dataset: {} rows × 14 features (3 feature sets) from {} events in {secs:.1}s = {:.0} rows/s, peak RSS {}",
        summary.rows,
        summary.events,
        summary.rows as f64 / secs,
        peak_rss()
    );
    if let Some(python) = &options.pandas_python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pandas_pit.py");
        let out = Command::new(python)
            .arg(&script)
            .arg(dir)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(out.status.success(), "pandas bench failed: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

pub(super) fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}
