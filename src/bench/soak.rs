//! `fathom bench soak`: a bounded soak of one `fathom serve` process (its own child, so its memory
//! is its own) with ingest, lookups and monitoring running together against a real broker and
//! Redis on 127.0.0.1. Transactions and prediction/label records are produced at fixed rates,
//! lookups are sent at a fixed rate over HTTP; every interval prints the applied ingest rate, the
//! lookup rate and latency percentiles, the server's RSS and live heap, and the end reports the
//! sustained rates, the p99 lookup latency during ingest and the memory growth after warm-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::online;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The soak's feature set: 15 features whose windows fill within five minutes, so every
/// entity's state stops growing after that and the server's memory must too.
pub(super) const FEATURES: &str = "entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [count, sum, mean, max, stddev], windows: [1m, 2m, 5m], period: 10s }\n";

/// Options of the soak.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SoakOptions {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Duration, seconds.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Transactions per second.
    #[arg(long, default_value_t = 5_000)]
    pub events_per_sec: u64,
    /// Lookups per second.
    #[arg(long, default_value_t = 500)]
    pub lookups_per_sec: u64,
    /// Send the lookups with the load generator [oha](https://github.com/hatoo/oha) (this
    /// binary) instead of the bench's own client: a process of its own, open loop at
    /// `--lookups-per-sec` with its correction for coordinated omission, random cards, from the
    /// end of the warm-up to the end of the run; the figures are oha's. The bench's own client
    /// shares a runtime with the producer and sends each 10 ms's lookups at once, and its
    /// latencies include both.
    #[arg(long)]
    pub oha: Option<std::path::PathBuf>,
    /// Prediction records per second (half of them get a label).
    #[arg(long, default_value_t = 200)]
    pub predictions_per_sec: u64,
    /// Cards.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Seconds between reports.
    #[arg(long, default_value_t = 15)]
    pub interval: u64,
    /// Seconds of warm-up (windows filling, caches growing) before memory must stay flat.
    #[arg(long, default_value_t = 360)]
    pub warmup: u64,
    /// The `fathom` binary to serve with (another build, for an A/B run); this one by default.
    #[arg(long)]
    pub serve_with: Option<std::path::PathBuf>,
    /// Serve with `stores.online.redis.near_cache: false` (an A/B of the near cache with one
    /// build).
    #[arg(long)]
    pub no_near_cache: bool,
    /// InfluxDB 1.x URL for the monitoring results (database `fathom_soak`, created if absent);
    /// without it they go to a file in the run's directory.
    #[arg(long)]
    pub influxdb: Option<String>,
}

/// Calls `tick(n)` `per_sec` times a second (in bursts every 10 ms) until `end`.
pub(super) async fn paced(per_sec: u64, end: Instant, mut tick: impl FnMut(u64)) {
    if per_sec == 0 {
        return;
    }
    let started = Instant::now();
    let mut sent = 0u64;
    let mut every = tokio::time::interval(Duration::from_millis(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < end {
        every.tick().await;
        let due = (started.elapsed().as_secs_f64() * per_sec as f64) as u64;
        while sent < due {
            tick(sent);
            sent += 1;
        }
    }
}

/// Produces transactions — `card_id` one of `keys` cards (`card-000042`), `ts` now, a random
/// `amount` — to `topic` at `per_sec` until `end`, counting those queued in `produced`.
pub(super) fn transactions(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    per_sec: u64,
    keys: usize,
    end: Instant,
    produced: &Arc<AtomicU64>,
) -> impl std::future::Future<Output = ()> {
    let (producer, topic, produced) = (producer.clone(), topic.to_string(), produced.clone());
    let mut rng = SmallRng::seed_from_u64(9);
    paced(per_sec, end, move |_| {
        let card = format!("card-{:06}", rng.random_range(0..keys));
        let ts = chrono::Utc::now().timestamp_millis();
        let payload = format!(r#"{{"card_id":"{card}","ts":{ts},"amount":{:.2}}}"#, rng.random::<f64>() * 300.0);
        let record = rdkafka::producer::FutureRecord::to(&topic).key(&card).payload(&payload);
        if producer.send_result(record).is_ok() {
            produced.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Runs the soak and prints its figures.
pub(crate) async fn soak(options: &SoakOptions) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

    anyhow::ensure!(
        options.oha.is_none() || options.keys == 100_000,
        "--oha draws its cards from card-000000..card-099999: use --keys 100000"
    );
    let run = format!("soak-{}", chrono::Utc::now().timestamp_millis());
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let (tx, predictions, labels) = (format!("{run}-tx"), format!("{run}-predictions"), format!("{run}-labels"));
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &options.brokers);
    super::server::create_topics(&client, &[(&tx, 4), (&predictions, 2), (&labels, 2)]).await?;
    // the model's reference: 10 numeric features, uniform on [0, 1)
    let mut rng = SmallRng::seed_from_u64(3);
    let names: Vec<String> = (0..10).map(|f| format!("f{f}")).collect();
    let profile = fathom_monitor::profile::Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: "soak".into(),
        created: String::new(),
        source: "soak".into(),
        rows: 10_000,
        features: names
            .iter()
            .map(|n| {
                let values = (0..10_000).map(|_| rng.random::<f64>()).collect();
                (
                    n.clone(),
                    fathom_monitor::profile::FeatureProfile::Numeric(fathom_monitor::profile::NumericProfile::build(
                        values, 0,
                    )),
                )
            })
            .collect(),
    };
    profile.save(&dir.join("soak.json"))?;
    let http = fathom_monitor::https::default_client();
    let influxdb = match &options.influxdb {
        Some(url) => {
            influxql(&http, url, "CREATE DATABASE fathom_soak")
                .await
                .with_context(|| format!("creating fathom_soak in {url}"))?;
            format!("  influxdb: {{ url: \"{url}\", database: fathom_soak }}\n")
        }
        None => String::new(),
    };
    let port = super::server::free_port()?;
    let project = super::server::Project {
        run: &run,
        redis: &options.redis,
        near_cache: !options.no_near_cache,
        brokers: &options.brokers,
        dir: &dir,
        port,
        topic: &tx,
        features: FEATURES,
    };
    let models = format!(
        "models:\n  soak:\n    features: []\n    reference: {d}/soak.json\n    predictions_topic: {predictions}\n\
         \x20   labels: {{ topic: {labels}, max_delay: 2m }}\n    monitoring: {{ window: 1m, sliding: 10m, lateness: 5s, idle: 10s }}\n",
        d = dir.display(),
    );
    let yaml = project.yaml(&influxdb, &models);
    let server = super::server::Server::start(options.serve_with.as_deref(), &dir, &yaml, port, &http).await?;
    let (pid, base) = (server.pid(), server.base.clone());
    println!(
        "soak {run}: {} s, {} events/s over {} cards, {} lookups/s, {} predictions/s (+ labels for half); server pid {pid}",
        options.seconds, options.events_per_sec, options.keys, options.lookups_per_sec, options.predictions_per_sec
    );

    let end = Instant::now() + Duration::from_secs(options.seconds);
    let producer: FutureProducer =
        client.clone().set("linger.ms", "10").set("queue.buffering.max.messages", "1000000").create()?;
    let produced = Arc::new(AtomicU64::new(0));
    let keys = options.keys;
    let events = transactions(&producer, &tx, options.events_per_sec, keys, end, &produced);
    let monitored = {
        let (producer, predictions, labels) = (producer.clone(), predictions.clone(), labels.clone());
        let mut rng = SmallRng::seed_from_u64(10);
        let names = names.clone();
        paced(options.predictions_per_sec, end, move |i| {
            let ts = chrono::Utc::now().timestamp_millis();
            let features: serde_json::Map<String, serde_json::Value> =
                names.iter().map(|n| (n.clone(), rng.random::<f64>().into())).collect();
            let score: f64 = rng.random();
            let id = format!("r{i}");
            let record = serde_json::json!({"request_id": id, "model": "soak", "timestamp": ts, "features": features,
                "prediction": {"class": if score > 0.5 { "1" } else { "0" }, "probabilities": {"0": 1.0 - score, "1": score}},
                "latency_ms": 2.0 + 5.0 * rng.random::<f64>()})
            .to_string();
            let _ = producer.send_result(FutureRecord::to(&predictions).key(&id).payload(&record));
            if i % 2 == 0 {
                let label = serde_json::json!({"request_id": id, "label": i64::from(rng.random::<f64>() < score), "timestamp": ts}).to_string();
                let _ = producer.send_result(FutureRecord::to(&labels).key(&id).payload(&label));
            }
        })
    };
    // lookups: each tick spawns one GET of a random card's features, timed end to end
    let latencies = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let interval_latencies = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let failed = Arc::new(AtomicU64::new(0));
    let own_lookups = if options.oha.is_some() { 0 } else { options.lookups_per_sec };
    let oha = oha_lookups(options, &base);
    let lookups = {
        let (http, base) = (http.clone(), base.clone());
        let (all, recent, failed) = (latencies.clone(), interval_latencies.clone(), failed.clone());
        let mut rng = SmallRng::seed_from_u64(11);
        paced(own_lookups, end, move |_| {
            let url = format!("{base}/v1/features/cards/card-{:06}", rng.random_range(0..keys));
            let (http, all, recent, failed) = (http.clone(), all.clone(), recent.clone(), failed.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let answered = match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                match answered {
                    true => {
                        let us = started.elapsed().as_micros() as u64;
                        let _ = all.lock().unwrap().record(us.max(1));
                        let _ = recent.lock().unwrap().record(us.max(1));
                    }
                    false => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        })
    };
    let redis = redis::Client::open(options.redis.as_str())?;
    let mut con = redis.get_multiplexed_async_connection().await?;
    let offsets: Vec<String> = (0..4).map(|p| online::offsets_key(&run, &tx, p)).collect();
    let applied = |con: &mut redis::aio::MultiplexedConnection| {
        let cmd = redis::cmd("MGET").arg(&offsets).clone();
        let mut con = con.clone();
        async move {
            let v: Vec<Option<i64>> = cmd.query_async(&mut con).await.unwrap_or_default();
            v.iter().map(|o| o.map_or(0, |o| o + 1) as u64).sum::<u64>()
        }
    };
    let reporter = async {
        let started = Instant::now();
        let (mut last_applied, mut last_at) = (0u64, Instant::now());
        let mut samples: Vec<Sample> = Vec::new();
        println!(
            "{:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14}",
            "s", "applied/s", "lag", "lookups/s", "p50 ms", "p99 ms", "RSS MiB", "heap MiB", "cached", "prefetched MiB"
        );
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(options.interval)).await;
            let now_applied = applied(&mut con).await;
            let secs = last_at.elapsed().as_secs_f64();
            let rate = (now_applied - last_applied) as f64 / secs;
            let (lookups, p50, p99) = {
                let mut h = interval_latencies.lock().unwrap();
                let r = (
                    h.len() as f64 / secs,
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                );
                h.reset();
                r
            };
            let rss = super::rss_kib(&pid.to_string());
            let lag = produced.load(Ordering::Relaxed).saturating_sub(now_applied);
            let metrics = http.get(format!("{base}/metrics")).send().await;
            let metrics = match metrics {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let heap_kib = (gauge(&metrics, "fathom_memory_heap_bytes") / 1024.0) as u64;
            println!(
                "{:>6.0} {rate:>12.0} {lag:>12} {lookups:>10.0} {p50:>10.2} {p99:>10.2} {:>10.1} {:>10.1} {:>10.0} {:>14.1}",
                started.elapsed().as_secs_f64(),
                rss as f64 / 1024.0,
                heap_kib as f64 / 1024.0,
                gauge(&metrics, "fathom_cached_entities"),
                gauge(&metrics, "fathom_kafka_prefetched_bytes") / 1048576.0,
            );
            samples.push(Sample {
                secs: started.elapsed().as_secs_f64(),
                applied: rate as u64,
                rss_kib: rss,
                heap_kib,
            });
            (last_applied, last_at) = (now_applied, Instant::now());
        }
        samples
    };
    let ((), (), (), samples, oha) = tokio::join!(events, monitored, lookups, reporter, oha);
    producer.flush(Duration::from_secs(30))?;
    let total = produced.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while applied(&mut con).await < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = applied(&mut con).await;
    let h = latencies.lock().unwrap().clone();
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.secs >= options.warmup as f64).collect();
    let sustained = samples.iter().map(|s| s.applied).sum::<u64>() as f64 / samples.len().max(1) as f64;
    let own = match own_lookups {
        0 => String::new(),
        _ => format!(
            ", {:.0} lookups/s ({} failed), lookup latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            h.len() as f64 / options.seconds as f64,
            failed.load(Ordering::Relaxed),
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3,
        ),
    };
    println!("\nsustained: {sustained:.0} events/s applied ({caught_up} of {total} produced applied at the end){own}");
    if let Some(oha) = oha? {
        println!(
            "lookups by oha (open loop, latency-corrected, after the warm-up): {:.0} lookups/s ({} failed), \
             p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            oha.requests_per_sec, oha.failed, oha.p50_ms, oha.p99_ms, oha.p999_ms
        );
    }
    for (what, kib) in [("RSS", (|s: &Sample| s.rss_kib) as fn(&Sample) -> u64), ("heap", |s: &Sample| s.heap_kib)] {
        let (first, last) = (warm.first().map_or(0, |s| kib(s)), warm.last().map_or(0, |s| kib(s)));
        let slope = slope_mib_per_min(&warm.iter().map(|s| (s.secs, kib(s))).collect::<Vec<_>>());
        println!(
            "server {what} after the {} s warm-up {:.1} MiB, at the end {:.1} MiB: {:+.1} MiB ({:+.1}%), trend {slope:+.2} MiB/min",
            options.warmup,
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            (last as f64 - first as f64) / 1024.0,
            if first > 0 { (last as f64 / first as f64 - 1.0) * 100.0 } else { 0.0 }
        );
    }
    if let Some(url) = &options.influxdb {
        let q = "SELECT count(score) FROM fathom_model_drift WHERE model = 'soak' AND \"window\" = 'tumbling'";
        let answer = influxql(&http, url, q).await?;
        let windows = answer["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0);
        println!("monitoring: {windows} one-minute windows of model drift in InfluxDB ({url}, database fathom_soak)");
    }
    server.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// With `--oha`: after the warm-up, oha sends `--lookups-per-sec` GETs of random cards
/// (`card-000000`…`card-099999`) until the run's end; its figures. `None` without `--oha`.
async fn oha_lookups(options: &SoakOptions, base: &str) -> anyhow::Result<Option<super::lookup::Figures>> {
    let Some(oha) = &options.oha else { return Ok(None) };
    tokio::time::sleep(Duration::from_secs(options.warmup)).await;
    let mut command = std::process::Command::new(oha);
    command
        .args(["--no-tui", "--output-format", "json", "--latency-correction", "-c", "16", "-q"])
        .arg(options.lookups_per_sec.to_string())
        .arg("-z")
        .arg(format!("{}s", options.seconds.saturating_sub(options.warmup).max(1)))
        .arg("--rand-regex-url")
        .arg(format!("{base}/v1/features/cards/card-0[0-9]{{5}}"));
    super::lookup::run_oha(command).await.map(Some)
}

/// Runs an InfluxQL statement in the soak's database (InfluxDB 1.x `/query`).
async fn influxql(http: &reqwest::Client, url: &str, q: &str) -> anyhow::Result<serde_json::Value> {
    let response = http
        .post(format!("{url}/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("db=fathom_soak&q={}", fathom_monitor::influx::urlencode(q)))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

/// One report line's figures.
struct Sample {
    secs: f64,
    applied: u64,
    rss_kib: u64,
    /// Live heap (`fathom_memory_heap_bytes`), KiB.
    heap_kib: u64,
}

/// A gauge's value in a Prometheus text exposition (0 when absent).
fn gauge(exposition: &str, name: &str) -> f64 {
    exposition.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// The least-squares slope of (seconds, RSS KiB) samples, in MiB per minute.
fn slope_mib_per_min(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_m = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let covariance: f64 = samples.iter().map(|s| (s.0 - mean_t) * (s.1 as f64 - mean_m)).sum();
    let variance: f64 = samples.iter().map(|s| (s.0 - mean_t).powi(2)).sum();
    covariance / variance * 60.0 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_climb_has_its_slope_and_a_flat_line_none() {
        // 2 MiB (2048 KiB) more every 60 s
        let climbing: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 60.0, 100_000 + i * 2048)).collect();
        assert!((slope_mib_per_min(&climbing) - 2.0).abs() < 1e-9);
        let flat: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 60.0, 100_000 + (i % 2) * 512)).collect();
        assert!(slope_mib_per_min(&flat).abs() < 0.1, "{}", slope_mib_per_min(&flat));
    }

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let text = "# TYPE fathom_cached_entities gauge\nfathom_cached_entities_x 9\nfathom_cached_entities 1234\n";
        assert_eq!(gauge(text, "fathom_cached_entities"), 1234.0);
        assert_eq!(gauge(text, "fathom_missing"), 0.0);
    }
}
