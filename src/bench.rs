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
pub const FEATURES: &str = "entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [count, sum, mean, max, stddev], windows: [10m, 1h, 24h], period: 1m }\n";

/// Options.
#[derive(Debug, Clone)]
pub struct Options {
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

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs the benchmark and prints a report.
pub fn run(options: &Options) -> anyhow::Result<()> {
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
pub struct E2eOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Redis URL.
    pub redis: String,
    /// Events.
    pub events: usize,
    /// Keys.
    pub keys: usize,
    /// Topic partitions.
    pub partitions: i32,
}

/// Broker → decode → aggregate → Redis: produces `events` to a fresh topic, then times the
/// pipeline from start until every record is applied in Redis.
pub async fn e2e(options: &E2eOptions) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let run = format!("bench-{}", chrono::Utc::now().timestamp_millis());
    let topic = format!("{run}-tx");
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &options.brokers);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client.create()?;
    let dlq = format!("{topic}.dlq");
    let topics = [
        NewTopic::new(&topic, options.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let producer: FutureProducer = client.clone().set("linger.ms", "20").set("batch.num.messages", "10000").create()?;
    let stream = events(options.events, options.keys);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (key, ts, amount) in &stream {
        let card = format!("card-{key:06}");
        let payload = format!(r#"{{"card_id":"{card}","ts":{ts},"amount":{amount}}}"#);
        let delivery = loop {
            match producer.send_result(FutureRecord::to(&topic).key(&card).payload(&payload)) {
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
    let produce_secs = started.elapsed().as_secs_f64();
    println!("produced {} events to {topic} ({} partitions) in {produce_secs:.2}s", options.events, options.partitions);

    let yaml = format!(
        "project: {run}\nstores:\n  online: {{ redis: {{ url: \"{redis}\" }} }}\n  offline: {{ parquet: {{ path: \"{dir}/offline\" }} }}\n  kafka: {{ bootstrap_servers: \"{brokers}\", group_id: {run} }}\nsources:\n  tx: {{ kafka: {{ topic: \"{topic}\" }}, key: card_id, timestamp: ts }}\nentities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards:\n    entity: card\n    source: tx\n{features}server: {{ listen: \"127.0.0.1:0\" }}\n",
        redis = options.redis,
        brokers = options.brokers,
        dir = tempfile_dir()?.display(),
        features = FEATURES.lines().skip(2).map(|l| format!("    {l}\n")).collect::<String>(),
    );
    let project = std::sync::Arc::new(crate::config::parse(&yaml).map_err(|e| anyhow::anyhow!("bench config: {e:?}"))?);
    let redis = redis::Client::open(options.redis.as_str())?;
    let mut con = redis.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let running = crate::pipeline::start(project.clone()).await?;
    let offsets: Vec<String> = (0..options.partitions).map(|p| online::offsets_key(&run, &topic, p)).collect();
    loop {
        let applied: Vec<Option<i64>> = redis::cmd("MGET").arg(&offsets).query_async(&mut con).await?;
        let done: i64 = applied.iter().map(|o| o.map_or(0, |o| o + 1)).sum();
        if done as usize >= options.events {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    crate::serve::stop(running).await?;
    let peak = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    println!(
        "broker → decode → 15 features → Redis: {} events, {} keys in {secs:.2}s = {:.0} events/s (process peak RSS {peak}, events held by the bench included)",
        options.events,
        options.keys,
        options.events as f64 / secs
    );
    Ok(())
}
