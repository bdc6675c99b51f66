//! `fathom consistency`: online values against the same values recomputed offline by the code
//! `fathom dataset` runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use fathom_featurestore::dataset;
use fathom_featurestore::online::{EmbeddedStore, OnlineStore, RedisStore};
use fathom_featurestore::vector::Vector;
use fathom_project::Project;
use serde_json::Value;

use super::dataset::{dataset as build, resolve, DatasetOptions, Features};

/// One feature's comparison.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FeatureReport {
    /// Entities compared.
    pub compared: u64,
    /// Entities whose online and offline values differ (beyond 1e-9 relative for numbers) or
    /// whose statuses differ.
    pub mismatches: u64,
    /// The worst: (entity key, online, offline).
    pub worst: Option<(String, String, String)>,
    worst_difference: f64,
}

/// Samples up to `sample` entities of each key field from the offline store, reads their values
/// online and recomputes them offline as of the same instant; per feature, the mismatches.
pub(crate) async fn consistency(
    project: Arc<Project>,
    features: &Features,
    sample: usize,
    at_ms: i64,
) -> anyhow::Result<BTreeMap<String, FeatureReport>> {
    let vector = resolve(&project, features)?;
    let store = match project.redis()? {
        Some(topology) => {
            OnlineStore::Redis(RedisStore::connect(&topology).await.context("connecting to Redis")?, None)
        }
        None => match project.stores.online.embedded.as_ref().and_then(|e| e.snapshot.as_deref()) {
            Some(path) => OnlineStore::Embedded(Arc::new(EmbeddedStore::with_snapshot(path)?)),
            None => anyhow::bail!(
                "the online store is embedded without a snapshot: nothing to compare outside the serving process"
            ),
        },
    };
    let scratch = std::env::temp_dir().join(format!("fathom-consistency-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let keys = sample_keys(&project, &vector, sample)?;
    let n = keys.values().map(Vec::len).max().unwrap_or(0);
    anyhow::ensure!(n > 0, "the offline store holds no entity of these features");
    // one input row per sampled entity (each key field sampled on its own), all at the instant
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    let mut rows: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); n];
    for (field, sampled) in &keys {
        let padded: Vec<String> = (0..n).map(|i| sampled.get(i % sampled.len()).cloned().unwrap_or_default()).collect();
        for (row, key) in rows.iter_mut().zip(&padded) {
            row.insert(field.clone(), key.clone());
        }
        columns.push((field.clone(), Arc::new(StringArray::from(padded)) as ArrayRef));
    }
    columns.push((
        "ts".into(),
        Arc::new(TimestampMillisecondArray::from(vec![at_ms; n]).with_timezone("UTC")) as ArrayRef,
    ));
    let input = scratch.join("entities.parquet");
    write_parquet(&input, RecordBatch::try_from_iter(columns)?)?;
    let output = scratch.join("offline.parquet");
    let options = DatasetOptions {
        input,
        timestamp: "ts".into(),
        features: features.clone(),
        output: output.clone(),
        assume_utc: false,
        statuses: true,
        shards: 4,
        progress: false,
    };
    build(&project, &options)?;
    let online = project.catalog().read(&store, &vector, &rows, &[], at_ms).await?;
    let offline = read_values(&output, &vector, n)?;
    let mut report: BTreeMap<String, FeatureReport> = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        for (f, name) in vector.names.iter().enumerate() {
            let entry = report.entry(name.clone()).or_default();
            entry.compared += 1;
            let on = &online[r][f];
            let (off_value, off_status) = &offline[r][f];
            // text columns of the dataset hold strings as is and other JSON as JSON text
            let on_value = match (&on.value, off_value) {
                (Value::Null, _) | (_, Value::Number(_)) => on.value.clone(),
                (Value::String(_), _) => on.value.clone(),
                (other, _) => Value::String(other.to_string()),
            };
            let status_on = serde_json::to_value(on.status)?.as_str().unwrap_or_default().to_string();
            let difference = match (&on_value, off_value) {
                (Value::Number(a), Value::Number(b)) => {
                    let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
                    let d = (a - b).abs();
                    if d <= 1e-9 * a.abs().max(b.abs()).max(1.0) {
                        0.0
                    } else {
                        d
                    }
                }
                (a, b) if a == b => 0.0,
                _ => f64::INFINITY,
            };
            if difference > 0.0 || status_on != *off_status {
                entry.mismatches += 1;
                let difference = if difference == 0.0 { f64::INFINITY } else { difference };
                if entry.worst.is_none() || difference > entry.worst_difference {
                    entry.worst_difference = difference;
                    let key = row.values().cloned().collect::<Vec<_>>().join("/");
                    entry.worst = Some((key, format!("{on_value} {status_on}"), format!("{off_value} {off_status}")));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(report)
}

/// Distinct keys per key field, from the offline store (first `sample` of each in file order).
fn sample_keys(project: &Project, vector: &Vector, sample: usize) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let offline = project.stores.offline.parquet.storage()?; // as the pipeline writes it
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in &vector.names {
        let (set, _) = name.split_once('.').expect("resolved names");
        let (source, column) = match (project.plan(set), project.table_index(set)) {
            (None, None) if project.table_plan(set).is_some() => {
                let plan = project.table_plan(set).expect("checked");
                (plan.source.clone(), (plan.key_column.clone(), plan.key_column.clone()))
            }
            (Some(plan), _) => {
                let source = &project.sources[project.source_index(&plan.source).expect("plan source")].1;
                let column = if plan.key_column == source.key { source.key.clone() } else { plan.key_column.clone() };
                (plan.source.clone(), (plan.key_column.clone(), column))
            }
            (None, Some(t)) => (set.to_string(), (project.sources[t].1.key.clone(), project.sources[t].1.key.clone())),
            (None, None) => anyhow::bail!("{name}: not a feature of this project"),
        };
        let (field, column) = column;
        let keys = out.entry(field.clone()).or_default();
        if keys.len() >= sample {
            continue;
        }
        let mut seen: std::collections::BTreeSet<String> = keys.iter().cloned().collect();
        // keyed by a joined column, or a table aggregation's group: the values are in a change log
        let from_log = match project.plan(set).and_then(|p| p.joins.iter().find(|j| j.columns.contains(&field))) {
            Some(join) => Some(join.table.clone()),
            None => project.table_plan(set).map(|p| p.source.clone()),
        };
        if let Some(table) = from_log {
            for file in dataset::source_files(&offline, &table)? {
                for batch in dataset::read_columns(&offline, &file, &["_after"])? {
                    let Some(after) = &batch[0] else { continue };
                    for row in after.as_string::<i32>().iter().flatten() {
                        let value: Value = serde_json::from_str(row).unwrap_or_default();
                        let key = match &value[field.as_str()] {
                            Value::Null => continue,
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        if seen.len() < sample && seen.insert(key.clone()) {
                            keys.push(key);
                        }
                    }
                }
            }
            continue;
        }
        for file in dataset::source_files(&offline, &source)? {
            for batch in dataset::read_columns(&offline, &file, &[column.as_str()])? {
                if let Some(array) = &batch[0] {
                    for key in array.as_string::<i32>().iter().flatten() {
                        if seen.len() < sample && seen.insert(key.to_string()) {
                            keys.push(key.to_string());
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<_, _>>()?)
}

fn write_parquet(path: &Path, batch: RecordBatch) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}

/// The dataset output's values and statuses per row and feature.
fn read_values(path: &Path, vector: &Vector, n: usize) -> anyhow::Result<Vec<Vec<(Value, String)>>> {
    let mut out = Vec::with_capacity(n);
    for batch in read_parquet(path)? {
        for i in 0..batch.num_rows() {
            let mut row = Vec::new();
            for name in &vector.names {
                let column_name = name.replace('.', "__");
                let column = batch.column_by_name(&column_name).context("dataset column")?;
                let value = if column.is_null(i) {
                    Value::Null
                } else {
                    match column.data_type() {
                        arrow_schema::DataType::Int64 => Value::from(column.as_primitive::<Int64Type>().value(i)),
                        arrow_schema::DataType::Float64 => Value::from(column.as_primitive::<Float64Type>().value(i)),
                        _ => Value::String(column.as_string::<i32>().value(i).to_string()),
                    }
                };
                let status = batch.column_by_name(&format!("{column_name}__status")).context("status column")?;
                row.push((value, status.as_string::<i32>().value(i).to_string()));
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// `fathom consistency`: prints each feature's comparison; an error when any value differs.
pub(crate) async fn run(config: &Path, features: &Features, sample: usize) -> anyhow::Result<()> {
    let project = super::load(Some(&config.to_path_buf()))?;
    let at = chrono::Utc::now().timestamp_millis();
    let report = consistency(project, features, sample, at).await?;
    let mut mismatches = 0;
    for (feature, r) in &report {
        mismatches += r.mismatches;
        println!("{feature}: {} compared, {} mismatches", r.compared, r.mismatches);
        if let Some((key, online, offline)) = &r.worst {
            println!("  worst: {key}: online {online}, offline {offline}");
        }
    }
    anyhow::ensure!(mismatches == 0, "{mismatches} mismatches between online and offline values");
    Ok(())
}
