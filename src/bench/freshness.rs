//! `fathom bench freshness`: how long after an event is produced to Kafka a lookup shows it, on a
//! `fathom serve` with the default processing settings while a steady stream is ingested.
//!
//! A producer sends `--rate` events/s over `--keys` cards (the load). Every 1/`--probes` s a
//! probe event for a key never seen before is produced (by a producer of its own that does not
//! linger, so what is measured is the broker and Fathom, not the bench's batching), and
//! `GET /v1/features/cards/<key>` is polled every 2 ms until the key's features are present:
//! the probe's freshness is that moment minus the moment before the produce call. The server's
//! own histogram (`fathom_online_freshness_seconds`, record age when its online write completed)
//! is printed beside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::server::{create_topics, free_port, Project, Server};
use super::soak::{paced, transactions};

/// Options of the freshness benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FreshnessOptions {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Redis URL of the online store.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Background events per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Probes per second.
    #[arg(long, default_value_t = 20)]
    pub probes: u64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Seconds of load before probes count.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Cards the background events are spread over.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Topic partitions.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The `fathom` binary to serve with (another build, for an A/B run); this one by default.
    #[arg(long)]
    pub serve_with: Option<std::path::PathBuf>,
}

/// Runs the benchmark and prints probe and server-side percentiles.
pub(crate) async fn freshness(options: &FreshnessOptions) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

    let run = format!("freshness-{}", chrono::Utc::now().timestamp_millis());
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let tx = format!("{run}-tx");
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &options.brokers);
    create_topics(&client, &[(&tx, options.partitions)]).await?;
    let port = free_port()?;
    // the project a new user writes: no processing section, every default
    let (redis, brokers) = (&options.redis, &options.brokers);
    let project = Project {
        run: &run,
        redis,
        near_cache: true,
        brokers,
        dir: &dir,
        port,
        topic: &tx,
        features: super::soak::FEATURES,
    };
    let yaml = project.yaml("", "");
    let http = fathom_monitor::https::default_client();
    let server = Server::start(options.serve_with.as_deref(), &dir, &yaml, port, &http).await?;
    println!(
        "freshness {run}: {} events/s over {} cards on {} partitions, {} probes/s, {} s warm-up + {} s measured; server pid {}",
        options.rate,
        options.keys,
        options.partitions,
        options.probes,
        options.warmup,
        options.seconds,
        server.pid()
    );

    let started = Instant::now();
    let measured_from = started + Duration::from_secs(options.warmup);
    let end = measured_from + Duration::from_secs(options.seconds);
    let load: FutureProducer =
        client.clone().set("linger.ms", "5").set("queue.buffering.max.messages", "1000000").create()?;
    let prober: FutureProducer = client.clone().set("linger.ms", "0").create()?;
    let produced = Arc::new(AtomicU64::new(0));
    let events = transactions(&load, &tx, options.rate, options.keys, end, &produced);
    let latencies = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let missed = Arc::new(AtomicU64::new(0));
    let probes = {
        let (latencies, missed, http, base) = (latencies.clone(), missed.clone(), http.clone(), server.base.clone());
        paced(options.probes, end, move |n| {
            let key = format!("probe-{n:08}");
            let counted = Instant::now() >= measured_from;
            let (prober, tx, latencies, missed, http) =
                (prober.clone(), tx.clone(), latencies.clone(), missed.clone(), http.clone());
            let url = format!("{base}/v1/features/cards/{key}");
            tokio::spawn(async move {
                let sent = Instant::now();
                let ts = chrono::Utc::now().timestamp_millis();
                let payload = format!(r#"{{"card_id":"{key}","ts":{ts},"amount":1.0}}"#);
                if prober.send_result(FutureRecord::to(&tx).key(&key).payload(&payload)).is_err() {
                    missed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                while sent.elapsed() < Duration::from_secs(30) {
                    if visible(&http, &url).await {
                        if counted {
                            let us = sent.elapsed().as_micros() as u64;
                            let _ = latencies.lock().unwrap_or_else(|e| e.into_inner()).record(us.max(1));
                        }
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                missed.fetch_add(1, Ordering::Relaxed);
            });
        })
    };
    tokio::join!(events, probes);
    let rate = produced.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    // the last probes' polls
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.flush(Duration::from_secs(30))?;
    let metrics = http.get(format!("{}/metrics", server.base)).send().await?.text().await?;
    let h = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "produced {rate:.0} events/s; probes: {} measured, {} missed; produce → visible in GET: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.len(),
        missed.load(Ordering::Relaxed),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1e3
    );
    let server_side: Vec<String> = ["0.5", "0.9", "0.99", "1"]
        .iter()
        .filter_map(|q| {
            let line = format!("fathom_online_freshness_seconds{{source=\"tx\",quantile=\"{q}\"}} ");
            let seconds: f64 = metrics.lines().find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())?;
            Some(format!("q{q} {:.1} ms", seconds * 1e3))
        })
        .collect();
    println!(
        "server-side record age when written online (whole run, fathom_online_freshness_seconds): {}",
        server_side.join(", ")
    );
    server.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Whether the probe key's features are present.
async fn visible(http: &reqwest::Client, url: &str) -> bool {
    let Ok(answer) = http.get(url).send().await else { return false };
    let Ok(body) = answer.json::<serde_json::Value>().await else { return false };
    body["features"].as_array().is_some_and(|f| f.iter().any(|f| f["status"] == "PRESENT"))
}
