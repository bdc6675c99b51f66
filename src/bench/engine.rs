//! `fathom bench engine`: the aggregation kernel's throughput on one core, its memory per
//! 100k keys, and — when a Python with storey is given — storey's `AggregateByKey` on the same
//! events and windows, side by side.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use compact_str::CompactString;
use fathom_featurestore::definition::{FeatureSetConfig, FeatureSetPlan};
use fathom_featurestore::engine::{self, EntityState};
use fathom_featurestore::online;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use serde_json::Value;

/// The benchmark's feature set: 5 functions × 3 windows over one column.
pub(crate) const FEATURES: &str = "entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [count, sum, mean, max, stddev], windows: [10m, 1h, 24h], period: 1m }\n";

/// Options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Events.
    pub events: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Python interpreter with storey installed; run storey on the first `storey_events`.
    pub storey_python: Option<PathBuf>,
    /// Events given to storey.
    pub storey_events: usize,
}

pub(super) fn plan() -> FeatureSetPlan {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(FEATURES).expect("bench config");
    config.compile("bench", "card", "bench", &mut Vec::new()).expect("bench plan")
}

/// (key, event time ms, amount): two hours of events, 2% of them up to 5 minutes out of order.
pub(super) fn events(n: usize, keys: usize) -> Vec<(u32, i64, f64)> {
    let mut rng = SmallRng::seed_from_u64(42);
    let start = 1_767_225_600_000i64;
    (0..n)
        .map(|i| {
            let mut ts = start + (i as i64 * 7_200_000) / n as i64;
            if rng.random_ratio(1, 50) {
                ts -= rng.random_range(0..300_000);
            }
            (rng.random_range(0..keys as u32), ts, (rng.random::<f64>() * 500.0 * 100.0).round() / 100.0)
        })
        .collect()
}

/// The resident set of a process (`"self"` or a pid), KiB; 0 where /proc does not say.
pub(crate) fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok());
    kib.unwrap_or(0)
}

fn rss_bytes() -> u64 {
    rss_kib("self") * 1024
}

/// Runs the benchmark and prints a report.
pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    let plan = plan();
    let stream = events(options.events, options.keys);
    let names: Vec<String> = (0..options.keys).map(|k| format!("card-{k:06}")).collect();
    // what a decoded batch holds: each event's key and value next to it, as the processor sees them
    let decoded: Vec<(CompactString, Value)> =
        stream.iter().map(|e| (CompactString::from(&names[e.0 as usize]), Value::from(e.2))).collect();
    let before = rss_bytes();
    let mut states: FxHashMap<CompactString, EntityState> = FxHashMap::default();
    let started = Instant::now();
    for ((_, ts, _), (name, amount)) in stream.iter().zip(&decoded) {
        let state = match states.get_mut(name.as_str()) {
            Some(s) => s,
            None => states.entry(name.clone()).or_insert_with(|| EntityState::new(&plan)),
        };
        engine::apply(&plan, state, *ts, &[Some(amount)], &[], None);
    }
    let apply_secs = started.elapsed().as_secs_f64();
    let state_bytes = rss_bytes().saturating_sub(before);
    let read_at = stream.iter().map(|e| e.1).max().unwrap_or(0);
    let started = Instant::now();
    let mut checksum = 0.0;
    for state in states.values() {
        for v in engine::read(&plan, state, read_at) {
            if let engine::AggValue::Float(x) = v {
                checksum += x;
            }
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    let encoded: usize = states.values().map(|s| online::encode(&plan, s).len()).sum();
    let rate = options.events as f64 / apply_secs;
    println!(
        "fathom engine: {} events, {} keys, {} features (5 functions × 3 windows, 1m buckets), one core",
        options.events,
        states.len(),
        plan.aggregations.len()
    );
    println!("  apply: {apply_secs:.3}s = {:.2}M events/s", rate / 1e6);
    println!(
        "  read all features of every key: {read_secs:.3}s = {:.0} keys/s (checksum {checksum:.1})",
        states.len() as f64 / read_secs
    );
    println!(
        "  memory: {:.1} MiB resident for {} keys = {:.1} MiB per 100k keys; encoded state {:.0} bytes/key",
        state_bytes as f64 / 1048576.0,
        states.len(),
        state_bytes as f64 / 1048576.0 * 100_000.0 / states.len() as f64,
        encoded as f64 / states.len() as f64
    );
    transformed(options, &stream, &names)?;
    if let Some(python) = &options.storey_python {
        let n = options.storey_events.min(stream.len());
        let storey = storey(python, &stream[..n], &names)?;
        println!("storey AggregateByKey: {n} events of the same stream, same features: {storey:.0} events/s");
        println!("  fathom / storey = {:.0}×", rate / storey);
    }
    Ok(())
}

/// Records per batch in the transformed runs (`processing.batch_size` caps a batch at 10,000;
/// the consumer's batches under a steady stream are smaller).
const BATCH: usize = 1_000;

/// The same stream with transformations: 3 row expressions and 1 filter evaluated per batch of
/// 1,000 records (as the pipeline does, by `fathom_transform`), the engine fed the selected and
/// filtered columns, and 2 derived features read back with the rest.
pub(crate) const TRANSFORMED: &str = "entity: card\nsource: tx\naggregations:\n  - { column: amount_eur, functions: [count, sum, mean, max, stddev], windows: [10m, 1h, 24h], period: 1m }\n  - { column: amount, name: declined, where: \"status = 'declined'\", functions: [count], windows: [10m, 1h], period: 1m }\nderived:\n  declined_share_1h: declined_count_1h / amount_eur_count_1h\n  max_vs_mean_24h: amount_eur_max_24h - amount_eur_mean_24h\n";

/// The source's selects of the transformed runs (`bench e2e --scenario transform` too).
pub(crate) const SELECTS: [(&str, &str); 3] = [
    ("amount_eur", "CASE WHEN currency = 'USD' THEN amount * 0.92 ELSE amount END"),
    ("is_big", "amount > 400"),
    ("status_upper", "upper(status)"),
];

/// Record `i`'s currency and status in the transformed runs: every other one in USD, one in
/// 4 declined.
pub(crate) fn currency_and_status(i: usize) -> (&'static str, &'static str) {
    (["EUR", "USD"][i % 2], ["ok", "ok", "ok", "declined"][i % 4])
}

fn transformed(options: &Options, stream: &[(u32, i64, f64)], names: &[String]) -> anyhow::Result<()> {
    use arrow_schema::{DataType, Field, Schema};
    use fathom_featurestore::definition::filtered_field;

    let config: FeatureSetConfig = serde_yaml_ng::from_str(TRANSFORMED)?;
    let mut problems = Vec::new();
    let plan = config.compile("bench", "card", "bench", &mut problems).with_context(|| format!("{problems:?}"))?;
    let mut transform = fathom_transform::Transform::new(Schema::new(vec![
        Field::new("amount", DataType::Float64, true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
    ]));
    for (name, sql) in SELECTS {
        transform.select(name, sql)?;
    }
    transform.condition("bench", &filtered_field("bench", 1), "status = 'declined'", Some("amount"))?;
    // as the project does: only what the feature set reads is written back into the records
    transform.write_only(|name| plan.columns.iter().any(|c| c == name));
    // a batch's records are built just before its transform, outside the clock: in the
    // pipeline a batch is decoded just before it is transformed, so its records are in cache
    // each with its key, as a decoded `Event` has it
    let records = |from: usize, to: usize| -> Vec<(String, i64, serde_json::Map<String, Value>)> {
        (from..to)
            .map(|i| {
                let (key, ts, amount) = stream[i];
                let mut fields = serde_json::Map::new();
                fields.insert("amount".into(), Value::from(amount));
                let (currency, status) = currency_and_status(i);
                fields.insert("currency".into(), Value::from(currency));
                fields.insert("status".into(), Value::from(status));
                (names[key as usize].clone(), ts, fields)
            })
            .collect()
    };
    let mut states: FxHashMap<CompactString, EntityState> = FxHashMap::default();
    let mut apply_secs = 0.0;
    let mut transform_secs = 0.0;
    for from in (0..stream.len()).step_by(BATCH) {
        let mut batch = records(from, (from + BATCH).min(stream.len()));
        let started = Instant::now();
        let mut rows: Vec<&mut serde_json::Map<String, Value>> = batch.iter_mut().map(|(_, _, f)| f).collect();
        let transform_started = Instant::now();
        let failed = transform.apply(&mut rows);
        transform_secs += transform_started.elapsed().as_secs_f64();
        anyhow::ensure!(failed.is_empty(), "{failed:?}");
        let mut columns: Vec<Option<&Value>> = Vec::with_capacity(plan.columns.len());
        for (key, ts, fields) in batch.iter() {
            let state = match states.get_mut(key.as_str()) {
                Some(s) => s,
                None => states.entry(CompactString::from(key)).or_insert_with(|| EntityState::new(&plan)),
            };
            columns.clear();
            columns.extend(plan.columns.iter().map(|c| fields.get(c).filter(|v| !v.is_null())));
            engine::apply(&plan, state, *ts, &columns, &[], None);
        }
        apply_secs += started.elapsed().as_secs_f64();
    }
    let (columns_secs, fed) = fed_columns(&transform, &plan, stream.len(), records)?;
    let same = fed.len() == states.len()
        && states.iter().all(|(k, s)| fed.get(k).is_some_and(|f| online::encode(&plan, f) == online::encode(&plan, s)));
    anyhow::ensure!(same, "the engine fed the evaluated columns ended with other states than fed the records");
    let read_at = stream.iter().map(|e| e.1).max().unwrap_or(0);
    let started = Instant::now();
    let mut present = 0usize;
    for state in states.values() {
        let values = fathom_featurestore::lookup::feature_values(&plan, Some(state), read_at);
        present += values.iter().filter(|v| !v.value.is_null()).count();
    }
    let read_secs = started.elapsed().as_secs_f64();
    println!(
        "with transformations (3 selects, 1 filtered aggregation, 2 derived features; {} features):",
        plan.feature_names().count()
    );
    println!(
        "  transform + apply: {apply_secs:.3}s = {:.2}M events/s (the transform alone: {transform_secs:.3}s = {:.2}M records/s)",
        options.events as f64 / apply_secs / 1e6,
        options.events as f64 / transform_secs / 1e6
    );
    println!(
        "  transform + apply, the engine fed the evaluated columns instead of the records' fields: {columns_secs:.3}s = {:.2}M events/s",
        options.events as f64 / columns_secs / 1e6
    );
    println!(
        "  read all features, derived included, of every key: {read_secs:.3}s = {:.0} keys/s ({present} values present)",
        states.len() as f64 / read_secs
    );
    Ok(())
}

/// The transformed run again on fresh states, the engine given each record's values straight
/// from [`fathom_transform::Transform::evaluate`]'s columns — nothing written back into the
/// records or read out of them: the most that handing the engine the transform's columns
/// would gain. Returns its seconds and the states.
fn fed_columns(
    transform: &fathom_transform::Transform,
    plan: &FeatureSetPlan,
    events: usize,
    records: impl Fn(usize, usize) -> Vec<(String, i64, serde_json::Map<String, Value>)>,
) -> anyhow::Result<(f64, FxHashMap<CompactString, EntityState>)> {
    use fathom_featurestore::definition::filtered_field;
    use fathom_transform::{holds, json};

    /// Where a plan column's value comes from: a batch column, or a condition's result keeping
    /// a batch column.
    enum Input {
        Column(usize),
        Kept(usize, usize),
    }
    let schema = transform.selected_schema();
    let filtered = filtered_field("bench", 1);
    let inputs = plan
        .columns
        .iter()
        .map(|c| match *c == filtered {
            true => Ok(Input::Kept(0, schema.index_of("amount")?)),
            false => Ok(Input::Column(schema.index_of(c)?)),
        })
        .collect::<Result<Vec<Input>, arrow_schema::ArrowError>>()?;
    let mut states: FxHashMap<CompactString, EntityState> = FxHashMap::default();
    let mut secs = 0.0;
    for from in (0..events).step_by(BATCH) {
        let mut batch = records(from, (from + BATCH).min(events));
        let started = Instant::now();
        let evaluation = {
            let rows: Vec<&mut serde_json::Map<String, Value>> = batch.iter_mut().map(|(_, _, f)| f).collect();
            transform.evaluate(&rows)
        };
        anyhow::ensure!(evaluation.failed.is_empty(), "{:?}", evaluation.failed);
        // the batch's values, row by row (numbers: no allocation)
        let evaluation = &evaluation;
        let values: Vec<Value> = (0..batch.len())
            .flat_map(|i| {
                inputs.iter().map(move |input| match *input {
                    Input::Column(c) => json(evaluation.columns.column(c), i),
                    Input::Kept(k, c) if holds(&evaluation.conditions[k], i) => json(evaluation.columns.column(c), i),
                    Input::Kept(..) => Value::Null,
                })
            })
            .collect();
        let mut columns: Vec<Option<&Value>> = Vec::with_capacity(inputs.len());
        for ((key, ts, _), row) in batch.iter().zip(values.chunks(inputs.len())) {
            let state = match states.get_mut(key.as_str()) {
                Some(s) => s,
                None => states.entry(CompactString::from(key)).or_insert_with(|| EntityState::new(plan)),
            };
            columns.clear();
            columns.extend(row.iter().map(|v| Some(v).filter(|v| !v.is_null())));
            engine::apply(plan, state, *ts, &columns, &[], None);
        }
        secs += started.elapsed().as_secs_f64();
    }
    Ok((secs, states))
}

/// Writes the events as NDJSON and runs `bench/storey_bench.py` on them; returns its events/s.
fn storey(python: &Path, stream: &[(u32, i64, f64)], names: &[String]) -> anyhow::Result<f64> {
    let dir = tempfile_dir()?;
    let path = dir.join("events.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for (key, ts, amount) in stream {
        writeln!(file, "{{\"card\":\"{}\",\"ts\":{ts},\"amount\":{amount}}}", names[*key as usize])?;
    }
    file.flush()?;
    drop(file);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/storey_bench.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(&path)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    anyhow::ensure!(output.status.success(), "storey bench failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .find_map(|l| l.strip_prefix("events_per_second="))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("storey bench printed no rate: {text}"))
}

pub(super) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fathom-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
