//! `fathom bench lookup`: lookup throughput and latency of a `fathom serve`, measured by the load
//! generator [oha](https://github.com/hatoo/oha) (`cargo install oha`): a closed loop at a fixed
//! number of connections and an open loop at a fixed arrival rate with oha's correction for
//! coordinated omission (each latency counted from when its request was due, not from when a
//! free connection sent it), for single entities and batches. The statistics are oha's.
//!
//! Every request is Feast's `POST /get-online-features` (the same body `feast serve` takes),
//! each for random entities among `--keys` whose 10 features were ingested from Kafka first.
//! `--during-ingest R` keeps producing R events/s to the same topic through all runs;
//! `--feast-python` runs the same requests against `feast serve` over the same entities in
//! Redis (`bench/feast_lookup.py`), so both figures come from one run on one machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::online;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::server::{create_topics, free_port, Project, Server};
use super::soak::transactions;

/// The feature set looked up: 10 features per card.
const FEATURES: &str = "entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [count, sum, mean, max, stddev], windows: [1h, 24h], period: 1m }\n";

/// The 10 features' names, as Feast feature references (`cards:amount_count_1h`).
fn references() -> Vec<String> {
    let functions = ["count", "sum", "mean", "max", "stddev"];
    ["1h", "24h"].iter().flat_map(|w| functions.iter().map(move |f| format!("cards:amount_{f}_{w}"))).collect()
}

/// Options of the lookup benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LookupOptions {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Redis URL of the online store.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Cards with features; each request asks for random ones.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Connections of the closed-loop runs.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Requests/s of the open-loop single-entity run.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Entities per batch request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Requests/s of the open-loop batch run.
    #[arg(long, default_value_t = 1_000)]
    pub batch_rate: u64,
    /// Events/s produced to the feature set's topic through all runs (0: none).
    #[arg(long, default_value_t = 0)]
    pub during_ingest: u64,
    /// The oha binary.
    #[arg(long, default_value = "oha")]
    pub oha: PathBuf,
    /// The `fathom` binary to serve with (another build, for an A/B run); this one by default.
    #[arg(long)]
    pub serve_with: Option<PathBuf>,
    /// A Python with `feast[redis]`: run the same requests against `feast serve` too.
    #[arg(long)]
    pub feast_python: Option<PathBuf>,
}

/// One load-generator run's figures.
pub(super) struct Figures {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Requests not answered 200, and failed ones (a deadline's aborted requests excluded).
    pub failed: u64,
}

/// One run: which bodies, and closed (connections) or open (rate) loop.
struct Run {
    name: String,
    bodies: PathBuf,
    connections: usize,
    rate: Option<u64>,
}

/// Runs the benchmark and prints a table per target.
pub(crate) async fn lookup(options: &LookupOptions) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

    let mut version = Command::new(&options.oha);
    version.arg("--version");
    let version = output(version).await;
    let version = version.with_context(|| {
        format!("running {} (install the load generator: cargo install oha --locked)", options.oha.display())
    })?;
    let run = format!("lookup-{}", chrono::Utc::now().timestamp_millis());
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let tx = format!("{run}-tx");
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &options.brokers);
    let partitions = 4;
    create_topics(&client, &[(&tx, partitions)]).await?;
    let port = free_port()?;
    let (redis, brokers) = (&options.redis, &options.brokers);
    let yaml = Project { run: &run, redis, near_cache: true, brokers, dir: &dir, port, topic: &tx, features: FEATURES }
        .yaml("", "");
    let http = fathom_monitor::https::default_client();
    let server = Server::start(options.serve_with.as_deref(), &dir, &yaml, port, &http).await?;
    println!(
        "lookup {run}: {} cards × 10 features, {} s per run, {}; server pid {}",
        options.keys,
        options.seconds,
        String::from_utf8_lossy(&version.stdout).trim(),
        server.pid()
    );

    // every card gets 3 events, then the server must have applied them all
    let producer: FutureProducer =
        client.clone().set("linger.ms", "5").set("queue.buffering.max.messages", "1000000").create()?;
    let mut rng = SmallRng::seed_from_u64(5);
    for k in 0..options.keys * 3 {
        let card = format!("card-{:06}", k % options.keys);
        let ts = chrono::Utc::now().timestamp_millis();
        let payload = format!(r#"{{"card_id":"{card}","ts":{ts},"amount":{:.2}}}"#, rng.random::<f64>() * 300.0);
        producer.send_result(FutureRecord::to(&tx).key(&card).payload(&payload)).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let total = options.keys as u64 * 3;
    applied_all(&options.redis, &run, &tx, partitions, total).await?;
    let references = references();
    let single = bodies(&dir.join("single.jsonl"), &references, options.keys, 1, 10_000)?;
    let single_body = std::fs::read_to_string(&single)?.lines().next().unwrap_or_default().to_string();
    let batch = bodies(&dir.join("batch.jsonl"), &references, options.keys, options.batch, 1_000)?;
    let runs = [
        Run {
            name: format!("1 entity, closed loop, {} connections", options.connections),
            bodies: single.clone(),
            connections: options.connections,
            rate: None,
        },
        Run {
            name: format!("1 entity, open loop, {} req/s", options.rate),
            bodies: single,
            connections: 256,
            rate: Some(options.rate),
        },
        Run {
            name: format!("{} entities, closed loop, {} connections", options.batch, options.connections),
            bodies: batch.clone(),
            connections: options.connections,
            rate: None,
        },
        Run {
            name: format!("{} entities, open loop, {} req/s", options.batch, options.batch_rate),
            bodies: batch,
            connections: 256,
            rate: Some(options.batch_rate),
        },
    ];
    let targets = if options.feast_python.is_some() { 2 } else { 1 };
    let ingest_end = Instant::now() + Duration::from_secs((options.seconds + 15) * runs.len() as u64 * targets + 120);
    let (ingested, ingest_started) = (Arc::new(AtomicU64::new(0)), Instant::now());
    let ingest = tokio::spawn(transactions(&producer, &tx, options.during_ingest, options.keys, ingest_end, &ingested));
    if options.during_ingest > 0 {
        println!("producing {} events/s to {tx} through the runs", options.during_ingest);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let url = format!("{}/get-online-features", server.base);
    answers_all(&http, &url, &single_body).await?;
    let mut table = Vec::new();
    for r in &runs {
        table.push(("fathom", r.name.clone(), oha(options, r, &url).await?));
    }
    if let Some(python) = &options.feast_python {
        let feast = Feast::start(python, &dir, &options.redis, options.keys).await?;
        answers_all(&http, &feast.url, &single_body).await?;
        for r in &runs {
            table.push(("feast", r.name.clone(), oha(options, r, &feast.url).await?));
        }
    }
    ingest.abort();
    if options.during_ingest > 0 {
        let rate = ingested.load(std::sync::atomic::Ordering::Relaxed) as f64 / ingest_started.elapsed().as_secs_f64();
        println!("produced {rate:.0} events/s during the runs");
    }
    println!(
        "\n{:<8} {:<44} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "server", "run", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "failed"
    );
    for (target, name, f) in &table {
        println!(
            "{target:<8} {name:<44} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            f.requests_per_sec, f.p50_ms, f.p99_ms, f.p999_ms, f.failed
        );
    }
    server.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs a command to its end on a blocking thread (the producer goes on meanwhile).
async fn output(mut command: Command) -> std::io::Result<Output> {
    tokio::task::spawn_blocking(move || command.output()).await?
}

/// Waits until the applied offsets the server keeps in Redis cover `total` records.
async fn applied_all(redis: &str, group: &str, topic: &str, partitions: i32, total: u64) -> anyhow::Result<()> {
    let mut con = redis::Client::open(redis)?.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = (0..partitions).map(|p| online::offsets_key(group, topic, p)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let offsets: Vec<Option<i64>> = redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
        let applied: u64 = offsets.iter().map(|o| o.map_or(0, |o| o as u64 + 1)).sum();
        if applied >= total {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {applied} of {total} loading events applied after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that a server answers `body` with every feature present, so that what is measured
/// is lookups that found their values.
async fn answers_all(http: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<()> {
    let answer = http.post(url).header("content-type", "application/json").body(body.to_string()).send().await?;
    let answer: serde_json::Value = answer.error_for_status()?.json().await?;
    let results = answer["results"].as_array().with_context(|| format!("{url} answered {answer}"))?;
    // the first result is the entity column; Feast marks a missing feature PRESENT with a null
    let features = &results[1.min(results.len())..];
    let found = features.iter().all(|r| r["statuses"][0] == "PRESENT" && !r["values"][0].is_null());
    anyhow::ensure!(found && features.len() == 10, "{url} did not find every feature of {body}: {answer}");
    Ok(())
}

/// Writes `lines` request bodies of `entities` random cards each; oha sends a random line per
/// request.
fn bodies(path: &Path, references: &[String], keys: usize, entities: usize, lines: usize) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    let mut rng = SmallRng::seed_from_u64(entities as u64);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..lines {
        let cards: Vec<String> = (0..entities).map(|_| format!("card-{:06}", rng.random_range(0..keys))).collect();
        let body = serde_json::json!({"features": references, "entities": {"card_id": cards}});
        writeln!(file, "{body}")?;
    }
    file.flush()?;
    Ok(path.to_path_buf())
}

/// Runs oha for `run` against `url` and reads its JSON summary.
async fn oha(options: &LookupOptions, run: &Run, url: &str) -> anyhow::Result<Figures> {
    let mut command = Command::new(&options.oha);
    command
        .args(["--no-tui", "--output-format", "json", "-m", "POST", "-T", "application/json", "-Z"])
        .arg(&run.bodies)
        .arg("-c")
        .arg(run.connections.to_string())
        .arg("-z")
        .arg(format!("{}s", options.seconds));
    if let Some(rate) = run.rate {
        command.arg("-q").arg(rate.to_string()).arg("--latency-correction");
    }
    command.arg(url);
    run_oha(command).await
}

/// Runs an oha `command` (with `--output-format json`) to its end and reads its summary.
pub(super) async fn run_oha(command: Command) -> anyhow::Result<Figures> {
    let output = output(command).await.context("running oha")?;
    anyhow::ensure!(output.status.success(), "oha failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("oha's JSON summary")?;
    figures(&report)
}

/// The figures of an oha JSON summary (latencies in seconds there).
fn figures(report: &serde_json::Value) -> anyhow::Result<Figures> {
    let number = |pointer: &str| report.pointer(pointer).and_then(|v| v.as_f64());
    let seconds = |p: &str| number(&format!("/latencyPercentiles/{p}")).with_context(|| format!("no {p} in {report}"));
    let statuses = report["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
    let not_ok: u64 = statuses.iter().filter(|(code, _)| *code != "200").filter_map(|(_, n)| n.as_u64()).sum();
    let errors = report["errorDistribution"].as_object().cloned().unwrap_or_default();
    let failed: u64 =
        errors.iter().filter(|(what, _)| !what.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum();
    Ok(Figures {
        requests_per_sec: number("/summary/requestsPerSec").context("no requestsPerSec")?,
        p50_ms: seconds("p50")? * 1e3,
        p99_ms: seconds("p99")? * 1e3,
        p999_ms: seconds("p99.9")? * 1e3,
        failed: not_ok + failed,
    })
}

/// A `feast serve` over the same cards in the same Redis, set up by `bench/feast_lookup.py`.
struct Feast {
    child: std::process::Child,
    url: String,
}

impl Feast {
    async fn start(python: &Path, dir: &Path, redis: &str, keys: usize) -> anyhow::Result<Feast> {
        let repo = dir.join("feast");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/feast_lookup.py");
        let address = redis.trim_start_matches("redis://").trim_end_matches('/');
        let mut setup = Command::new(python);
        setup.arg(&script).arg(&repo).arg(address).arg(keys.to_string());
        let setup =
            output(setup).await.with_context(|| format!("running {} {}", python.display(), script.display()))?;
        anyhow::ensure!(setup.status.success(), "feast setup failed: {}", String::from_utf8_lossy(&setup.stderr));
        let port = free_port()?;
        let feast = python.with_file_name("feast");
        let log = std::fs::File::create(dir.join("feast.log"))?;
        let child = Command::new(&feast)
            .arg("-c")
            .arg(&repo)
            .args(["serve", "-h", "127.0.0.1", "-p", &port.to_string(), "--no-access-log"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", feast.display()))?;
        let server = Feast { child, url: format!("http://127.0.0.1:{port}/get-online-features") };
        let http = fathom_monitor::https::default_client();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !http.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(Instant::now() < deadline, "feast serve did not answer; see {}/feast.log", dir.display());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(server)
    }
}

impl Drop for Feast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of oha 1.16's `--output-format json` (trimmed from a real run).
    #[test]
    fn oha_figures_are_read_in_milliseconds_without_deadline_aborts() {
        let report = serde_json::json!({
            "summary": {"successRate": 1.0, "total": 20.0, "requestsPerSec": 18123.5},
            "latencyPercentiles": {"p50": 0.00041, "p99": 0.0039, "p99.9": 0.0121},
            "statusCodeDistribution": {"200": 362000, "500": 3},
            "errorDistribution": {"aborted due to deadline": 31, "connection closed": 2}
        });
        let f = figures(&report).unwrap();
        assert_eq!(f.requests_per_sec, 18123.5);
        assert!((f.p50_ms - 0.41).abs() < 1e-9 && (f.p99_ms - 3.9).abs() < 1e-9 && (f.p999_ms - 12.1).abs() < 1e-9);
        assert_eq!(f.failed, 5);
        assert!(figures(&serde_json::json!({"summary": {}})).is_err());
    }
}
