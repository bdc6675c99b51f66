//! `fathom bench engine`: the aggregation kernel's throughput on one core, its memory per
//! 100k keys, and — when a Python with storey is given — storey's `AggregateByKey` on the same
//! events and windows, side by side.

mod soak;

pub(crate) use soak::{soak, SoakOptions};

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
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

fn plan() -> FeatureSetPlan {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(FEATURES).expect("bench config");
    config.compile("bench", "card", "bench", &mut Vec::new()).expect("bench plan")
}

/// (key, event time ms, amount): two hours of events, 2% of them up to 5 minutes out of order.
fn events(n: usize, keys: usize) -> Vec<(u32, i64, f64)> {
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
    if let Some(python) = &options.storey_python {
        let n = options.storey_events.min(stream.len());
        let storey = storey(python, &stream[..n], &names)?;
        println!("storey AggregateByKey: {n} events of the same stream, same features: {storey:.0} events/s");
        println!("  fathom / storey = {:.0}×", rate / storey);
    }
    Ok(())
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

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fathom-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Options of the end-to-end benchmark.
#[derive(Debug, Clone)]
pub(crate) struct E2eOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Redis URL.
    pub redis: String,
    /// Events (or changes, for `cdc`).
    pub events: usize,
    /// Keys (cards; customers for `cdc` and `join`).
    pub keys: usize,
    /// Topic partitions.
    pub partitions: i32,
    /// What flows.
    pub scenario: Scenario,
}

/// End-to-end benchmark scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// JSON transactions → 15 windowed features per card.
    Events,
    /// Debezium changes → the current row per key plus a retracting sum/mean/count per branch.
    Cdc,
    /// Transactions joined with a CDC table as of their time (preloaded, not timed), aggregated
    /// per card and per joined country.
    Join,
}

type Records = Vec<(String, String)>;

/// A Debezium envelope as the PostgreSQL connector 2.x writes it (bare payload).
fn debezium(op: &str, after: &str, commit_ms: i64, lsn: i64) -> String {
    format!(
        r#"{{"before":null,"after":{after},"source":{{"version":"2.5.0.Final","connector":"postgresql","name":"pg","ts_ms":{commit_ms},"snapshot":"false","db":"shop","schema":"public","table":"accounts","txId":{tx},"lsn":{lsn}}},"op":"{op}","ts_ms":{commit_ms}}}"#,
        tx = lsn / 8
    )
}

/// A customer row: country and branch drawn from small sets, a balance.
fn account(rng: &mut SmallRng, id: usize) -> String {
    const COUNTRIES: [&str; 6] = ["NL", "DE", "FR", "PL", "ES", "IT"];
    format!(
        r#"{{"id":{id},"country":"{}","branch":"b{}","status":"{}","balance":{:.2}}}"#,
        COUNTRIES[rng.random_range(0..COUNTRIES.len())],
        rng.random_range(0..50),
        if rng.random_ratio(4, 5) { "active" } else { "closed" },
        rng.random::<f64>() * 10_000.0
    )
}

/// `n` changes over `keys` rows: each key's first change creates it, later ones update it, one in
/// twenty deletes it (the next recreates it).
fn changes(n: usize, keys: usize, start_ms: i64) -> Records {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut exists = vec![false; keys];
    (0..n)
        .map(|i| {
            let id = rng.random_range(0..keys);
            let at = start_ms + i as i64;
            let lsn = 1_000 + i as i64 * 8;
            let payload = match (exists[id], rng.random_ratio(1, 20)) {
                (true, true) => {
                    exists[id] = false;
                    debezium("d", "null", at, lsn).replace(r#""before":null"#, &format!(r#""before":{{"id":{id}}}"#))
                }
                (was, _) => {
                    exists[id] = true;
                    debezium(if was { "u" } else { "c" }, &account(&mut rng, id), at, lsn)
                }
            };
            (format!(r#"{{"id":{id}}}"#), payload)
        })
        .collect()
}

/// Produces records to `topic`, waiting out a full queue; returns the seconds it took.
async fn produce(client: &rdkafka::ClientConfig, topic: &str, records: &Records) -> anyhow::Result<f64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = client.clone().set("linger.ms", "20").set("batch.num.messages", "10000").create()?;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (key, payload) in records {
        let delivery = loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(d) => break d,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    if let Some(d) = pending.pop_front() {
                        let _ = d.await;
                    }
                }
                Err((e, _)) => anyhow::bail!("producing: {e}"),
            }
        };
        pending.push_back(delivery);
    }
    for d in pending {
        d.await?.map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Starts the pipeline on `yaml` and returns the seconds until `records` records of `topic`
/// are applied (per the offsets stored with each flush), then stops it.
async fn run_until_applied(
    yaml: &str,
    options: &E2eOptions,
    group: &str,
    topic: &str,
    records: usize,
) -> anyhow::Result<f64> {
    let project = std::sync::Arc::new(fathom_project::parse(yaml).map_err(|e| anyhow::anyhow!("bench config: {e:?}"))?);
    let redis = redis::Client::open(options.redis.as_str())?;
    let mut con = redis.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let running = fathom_runtime::pipeline::start(project).await?;
    let offsets: Vec<String> = (0..options.partitions).map(|p| online::offsets_key(group, topic, p)).collect();
    loop {
        let applied: Vec<Option<i64>> = redis::cmd("MGET").arg(&offsets).query_async(&mut con).await?;
        let done: i64 = applied.iter().map(|o| o.map_or(0, |o| o + 1)).sum();
        if done as usize >= records {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    fathom_runtime::stop(running).await?;
    Ok(secs)
}

/// Broker → decode → aggregate → Redis: produces to fresh topics, then times the pipeline from
/// start until every record is applied in Redis.
pub(crate) async fn e2e(options: &E2eOptions) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

    let run = format!("bench-{}", chrono::Utc::now().timestamp_millis());
    let (tx, table) = (format!("{run}-tx"), format!("{run}-accounts"));
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &options.brokers);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client.create()?;
    let mut topics = Vec::new();
    for name in [&tx, &table] {
        topics.push(NewTopic::new(name, options.partitions, TopicReplication::Fixed(1)));
    }
    let dlqs = [format!("{tx}.dlq"), format!("{table}.dlq")];
    topics.extend(dlqs.iter().map(|d| NewTopic::new(d, 1, TopicReplication::Fixed(1))));
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let header = format!(
        "project: {run}\nstores:\n  online: {{ redis: {{ url: \"{redis}\" }} }}\n  offline: {{ parquet: {{ path: \"{dir}/offline\" }} }}\n  kafka: {{ bootstrap_servers: \"{brokers}\", group_id: {run} }}\nserver: {{ listen: \"127.0.0.1:0\" }}\nentities:\n  card: {{ key: card_id }}\n  country: {{ key: country }}\n  branch: {{ key: branch }}\n",
        redis = options.redis,
        brokers = options.brokers,
        dir = tempfile_dir()?.display(),
    );
    let cards = format!(
        "  cards:\n    entity: card\n    source: tx\n{}",
        FEATURES.lines().skip(2).map(|l| format!("    {l}\n")).collect::<String>()
    );
    let tx_source = format!("  tx: {{ kafka: {{ topic: \"{tx}\" }}, key: card_id, timestamp: ts }}\n");
    let table_source = format!("  accounts: {{ kafka: {{ topic: \"{table}\" }}, format: debezium, key: id }}\n");
    let start_ms = chrono::Utc::now().timestamp_millis() - 7_200_000;
    match options.scenario {
        Scenario::Events => {
            let stream = events(options.events, options.keys);
            let records: Records = stream
                .iter()
                .map(|(key, ts, amount)| {
                    let card = format!("card-{key:06}");
                    let payload = format!(r#"{{"card_id":"{card}","ts":{ts},"amount":{amount}}}"#);
                    (card, payload)
                })
                .collect();
            let secs = produce(&client, &tx, &records).await?;
            println!("produced {} events to {tx} ({} partitions) in {secs:.2}s", options.events, options.partitions);
            let yaml = format!("{header}sources:\n{tx_source}feature_sets:\n{cards}");
            let secs = run_until_applied(&yaml, options, &run, &tx, options.events).await?;
            report("broker → decode → 15 features → Redis", "events", options, secs);
        }
        Scenario::Cdc => {
            let records = changes(options.events, options.keys, start_ms);
            let secs = produce(&client, &table, &records).await?;
            println!(
                "produced {} changes to {table} ({} partitions) in {secs:.2}s",
                options.events, options.partitions
            );
            let yaml = format!(
                "{header}sources:\n{table_source}feature_sets:\n  by_branch:\n    entity: branch\n    source: accounts\n    filter: {{ status: active }}\n    aggregations: [{{ column: balance, functions: [count, sum, mean] }}]\n"
            );
            let secs = run_until_applied(&yaml, options, &run, &table, options.events).await?;
            report(
                "broker → Debezium decode → current row + retracting sum per branch → Redis",
                "changes",
                options,
                secs,
            );
        }
        Scenario::Join => {
            let mut rng = SmallRng::seed_from_u64(11);
            let rows: Records = (0..options.keys)
                .map(|id| (format!(r#"{{"id":{id}}}"#), debezium("r", &account(&mut rng, id), start_ms - 1, id as i64)))
                .collect();
            produce(&client, &table, &rows).await?;
            let yaml = format!("{header}sources:\n{table_source}");
            let secs = run_until_applied(&yaml, options, &run, &table, rows.len()).await?;
            println!("preloaded {} customer rows in {secs:.2}s (not timed below)", rows.len());
            let stream = events(options.events, options.keys);
            let records: Records = stream
                .iter()
                .map(|(key, ts, amount)| {
                    let card = format!("card-{key:06}");
                    let customer = (*key as usize * 7919) % options.keys;
                    let ts = ts - 1_767_225_600_000 + start_ms;
                    (
                        card.clone(),
                        format!(r#"{{"card_id":"{card}","customer":{customer},"ts":{ts},"amount":{amount}}}"#),
                    )
                })
                .collect();
            produce(&client, &tx, &records).await?;
            let yaml = format!(
                "{header}sources:\n{tx_source}{table_source}feature_sets:\n{cards}    join: [{{ table: accounts, on: customer, columns: [country, branch] }}]\n  by_country:\n    entity: country\n    source: tx\n    join: [{{ table: accounts, on: customer, columns: [country] }}]\n    aggregations: [{{ column: amount, functions: [count, sum], windows: [1h, 1d], period: 10m }}]\n"
            );
            let secs = run_until_applied(&yaml, options, &run, &tx, options.events).await?;
            report(
                "broker → decode → join (as of event time) → 15 card features + per-country features → Redis",
                "enriched events",
                options,
                secs,
            );
        }
    }
    Ok(())
}

fn report(what: &str, unit: &str, options: &E2eOptions, secs: f64) {
    let peak = peak_rss();
    println!(
        "{what}: {} {unit}, {} keys in {secs:.2}s = {:.0} {unit}/s (process peak RSS {peak}, records held by the bench included)",
        options.events,
        options.keys,
        options.events as f64 / secs
    );
}

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
        let mut writer = OfflineWriter::new(&offline, vec![schema])?;
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

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Drift over a window: `rows` live values of each of `features` numeric features binned on the
/// reference edges, then every statistic per feature and the model status; optionally numpy/scipy
/// doing the same on data of the same shape in the same run.
pub(crate) fn drift(rows: usize, features: usize, numpy_python: Option<&Path>) -> anyhow::Result<()> {
    use fathom_monitor::drift;
    use fathom_monitor::profile::NumericProfile;

    let mut rng = SmallRng::seed_from_u64(9);
    let normal = |rng: &mut SmallRng, mean: f64| -> f64 {
        // Box–Muller: enough for a benchmark's data
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        mean + (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let references: Vec<NumericProfile> = (0..features)
        .map(|_| NumericProfile::build((0..100_000).map(|_| normal(&mut rng, 0.0)).collect(), 0))
        .collect();
    let live: Vec<Vec<f64>> = (0..features)
        .map(|f| (0..rows).map(|_| normal(&mut rng, if f % 5 == 0 { 0.5 } else { 0.0 })).collect())
        .collect();
    let started = Instant::now();
    let mut drifts = Vec::with_capacity(features);
    for (reference, values) in references.iter().zip(&live) {
        let mut counts = vec![0u64; reference.counts.len()];
        for &x in values {
            counts[reference.bin(x)] += 1;
        }
        drifts.push(drift::numeric(&reference.counts, &counts, &reference.edges));
    }
    let (score, status) = drift::status(&drifts, 0.5, 0.7);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fathom drift: {rows} rows × {features} features binned on the reference edges + 8 statistics each + status in {:.3}s = {:.1} M values/s, one core (score {score:.3}, {status:?})",
        secs,
        (rows * features) as f64 / secs / 1e6
    );
    if let Some(python) = numpy_python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/drift_numpy.py");
        let out = Command::new(python)
            .arg(&script)
            .arg(rows.to_string())
            .arg(features.to_string())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(out.status.success(), "numpy bench failed: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

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
