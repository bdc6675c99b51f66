//! `fathom demo`: a realistic card-transaction stream through the embedded pipeline, with
//! lookups printed as the features move. No Kafka, no Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fathom_featurestore::lookup::{self, Status};
use fathom_featurestore::online;
use fathom_ingest::record::{Coordinates, Record};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::oneshot;

use fathom_api::serve;
use fathom_project::{self as config, Project};
use fathom_runtime::pipeline::{self, Push, PushSummary, Running};

/// The demo's project file; also what `fathom serve` runs without `-c`.
pub(crate) const CONFIG: &str = include_str!("../../examples/demo.fathom.yaml");

/// Options of the demo.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Cards in the stream.
    pub cards: usize,
    /// Transactions of history (spread over the last two hours).
    pub history: usize,
    /// Live rounds after the history.
    pub rounds: usize,
    /// Pause between rounds.
    pub pause: Duration,
    /// Keep serving the API afterwards.
    pub serve: bool,
    /// Address of the HTTP API with `serve` (default: the demo project's, 127.0.0.1:8080).
    pub listen: Option<std::net::SocketAddr>,
}

const CATEGORIES: [&str; 6] = ["grocery", "fuel", "travel", "restaurants", "electronics", "online"];

/// A transaction of `card` at `ts_ms`; every 997th record is deliberately broken to show the
/// dead letters at work.
fn transaction(rng: &mut SmallRng, card: usize, ts_ms: i64, n: usize) -> Vec<u8> {
    if n % 997 == 996 {
        return match n % 3 {
            0 => b"{\"card_id\": \"card-0001\", \"amount\": 12.5".to_vec(),
            1 => {
                json!({"card_id": format!("card-{card:04}"), "amount": "twelve", "ts": ts_ms}).to_string().into_bytes()
            }
            _ => json!({"amount": 3.0, "ts": ts_ms}).to_string().into_bytes(),
        };
    }
    let (category, amount) = purchase(rng, false);
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms).unwrap_or_default();
    json!({
        "card_id": format!("card-{card:04}"),
        "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "amount": amount,
        "merchant_id": format!("m-{:05}", rng.random_range(0..5_000)),
        "merchant_category": category,
    })
    .to_string()
    .into_bytes()
}

async fn push(running: &Running, source: usize, payloads: Vec<Vec<u8>>, first: usize) -> anyhow::Result<PushSummary> {
    let records = payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Record {
            source,
            at: Coordinates { partition: None, offset: (first + i) as i64 },
            transport_time_ms: None,
            key: None,
            payload,
        })
        .collect();
    let (done, answer) = oneshot::channel();
    running.push.send(Push { source, records, done }).await.context("pipeline stopped")?;
    answer.await.context("pipeline stopped")
}

async fn show(project: &Project, running: &Running, card: &str) -> anyhow::Result<()> {
    let plan = project.plan("card_activity").context("demo feature set")?;
    let stored = running.store.load(&[online::entity_key(&project.name, &plan.name, card)]).await?;
    let state = stored[0].as_deref().and_then(|b| online::decode(plan, b));
    let now = chrono::Utc::now().timestamp_millis();
    let values = lookup::feature_values(plan, state.as_ref(), now);
    let pick = [
        "amount_count_10m",
        "online_count_10m",
        "online_share_10m",
        "amount_count_1h",
        "amount_sum_1h",
        "amount_max_24h",
        "merchant_id_distinct_count_24h",
        "merchant_category",
    ];
    let cells: Vec<String> = pick
        .iter()
        .filter_map(|name| values.iter().find(|v| v.name == *name))
        .map(|v| match v.status {
            Status::Present => match v.value.as_f64().filter(|_| v.value.is_f64()) {
                Some(x) => format!("{}={x:.2}", short(&v.name)),
                None => format!("{}={}", short(&v.name), v.value),
            },
            other => format!("{}={other:?}", short(&v.name)),
        })
        .collect();
    println!("  {card}: {}", cells.join("  "));
    Ok(())
}

fn short(name: &str) -> String {
    name.replace("merchant_id_distinct_count", "merchants").replace("merchant_category", "last_category")
}

/// Writes the demo model's reference profile (what its training set looked like) if missing.
pub(crate) fn prepare(project: &Project) -> anyhow::Result<()> {
    use fathom_monitor::profile::{CategoricalProfile, FeatureProfile, NumericProfile, Profile};
    let path = project.reference_path("fraud");
    if path.exists() {
        return Ok(());
    }
    let mut rng = SmallRng::seed_from_u64(3);
    let (mut amounts, mut categories) = (Vec::new(), std::collections::BTreeMap::<String, u64>::new());
    for _ in 0..20_000 {
        let (category, amount) = purchase(&mut rng, false);
        amounts.push(amount);
        *categories.entry(category.to_string()).or_insert(0) += 1;
    }
    let mut top: Vec<(String, u64)> = categories.into_iter().collect();
    top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let profile = Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: "fraud".into(),
        created: chrono::Utc::now().to_rfc3339(),
        source: "fathom demo".into(),
        rows: 20_000,
        features: [
            ("card_activity.amount".to_string(), FeatureProfile::Numeric(NumericProfile::build(amounts, 0))),
            (
                "card_activity.merchant_category".to_string(),
                FeatureProfile::Categorical(CategoricalProfile { count: 20_000, missing: 0, top, other: 0 }),
            ),
        ]
        .into(),
    };
    profile.save(&path)?;
    Ok(())
}

/// A purchase's category and amount; in a fraud wave, only electronics and travel, at eight times
/// the usual amounts.
fn purchase(rng: &mut SmallRng, wave: bool) -> (&'static str, f64) {
    let category = if wave {
        ["electronics", "travel"][rng.random_range(0..2)]
    } else {
        CATEGORIES[rng.random_range(0..CATEGORIES.len())]
    };
    let base = match category {
        "travel" | "electronics" => 250.0,
        "fuel" | "restaurants" => 45.0,
        _ => 30.0,
    };
    let factor = if wave { 8.0 } else { 1.0 };
    (category, (base * factor * (0.2 + rng.random::<f64>() * 1.6) * 100.0).round() / 100.0)
}

/// Two hours of the fraud model's predictions — a fraud wave in the last 40 minutes — and most of
/// their labels, through the monitor; then each window's drift and accuracy.
async fn monitoring(project: &Project, running: &Running, now: i64) -> anyhow::Result<()> {
    use fathom_runtime::monitoring::{Kind, MonitorPush};
    let monitor = running.monitor.as_ref().context("the demo model is monitored")?;
    let points = fathom_runtime::monitoring::monitoring_dir(project).join("points.lp");
    let seen = std::fs::metadata(&points).map_or(0, |m| m.len());
    let mut rng = SmallRng::seed_from_u64(11);
    let (n, start) = (24_000usize, now - 7_200_000);
    let (mut predictions, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let ts = start + (i as i64 * 7_200_000 / n as i64);
        let wave = ts > now - 2_400_000;
        let (category, amount) = purchase(&mut rng, wave);
        let p = 1.0 / (1.0 + (-(amount - 400.0) / 80.0).exp());
        let id = format!("demo-{now}-{i}");
        predictions.push(json!({
            "request_id": id, "model": "fraud", "timestamp": ts,
            "features": {"card_activity.amount": amount, "card_activity.merchant_category": category},
            "prediction": {"class": if p >= 0.5 { "1" } else { "0" }, "probabilities": {"0": 1.0 - p, "1": p}},
            "latency_ms": 2.0 + 6.0 * rng.random::<f64>(),
        }));
        if rng.random::<f64>() < 0.7 {
            // the truth, known a few minutes later: fraud more likely in the wave
            let fraud = rng.random::<f64>() < if wave { 0.35 } else { 0.03 };
            labels.push(json!({"request_id": id, "label": i64::from(fraud), "timestamp": ts + 180_000}));
        }
    }
    println!(
        "\nmodel monitoring: {n} predictions of the `fraud` model over the same 2 hours (a fraud wave in the last 40 minutes), {} labels…",
        labels.len()
    );
    // as they would flow: each slice of predictions, then the labels known by then
    let mut batches = Vec::new();
    for (p, l) in predictions.chunks(2_000).zip(labels.chunks(labels.len().div_ceil(n.div_ceil(2_000)))) {
        batches.push((Kind::Predictions, p.to_vec()));
        batches.push((Kind::Labels, l.to_vec()));
    }
    for (kind, records) in batches {
        for chunk in records.chunks(5_000) {
            let records = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| Record {
                    source: 0,
                    at: Coordinates { partition: None, offset: i as i64 },
                    transport_time_ms: None,
                    key: None,
                    payload: r.to_string().into_bytes(),
                })
                .collect();
            let (done, answer) = oneshot::channel();
            monitor
                .push
                .send(MonitorPush { model: "fraud".into(), kind, records, done })
                .await
                .context("monitor stopped")?;
            answer.await.context("monitor stopped")?;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the idle close of the last window
    let (done, answer) = oneshot::channel();
    monitor.push.send(MonitorPush { model: "fraud".into(), kind: Kind::Labels, records: Vec::new(), done }).await?;
    answer.await?;
    let text = std::fs::read(&points).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(seen as usize).min(text.len())..]).to_string();
    let field = |line: &str, name: &str| -> Option<String> {
        let fields = line.split(' ').nth(1)?;
        fields.split(',').find_map(|f| {
            f.strip_prefix(&format!("{name}=")).map(|v| v.trim_matches('"').trim_end_matches('i').to_string())
        })
    };
    let time = |line: &str| line.rsplit(' ').next().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0) / 1_000_000;
    let mut accuracy = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("fathom_model_performance,")) {
        if let Some(a) = field(line, "accuracy") {
            accuracy.insert(time(line), a);
        }
    }
    println!("window end   predictions  drift score  status           accuracy");
    for line in text.lines().filter(|l| l.starts_with("fathom_model_drift,") && l.contains("window=tumbling")) {
        let end = chrono::DateTime::from_timestamp_millis(time(line)).unwrap_or_default().format("%H:%M");
        let score: f64 = field(line, "score").and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        let accuracy =
            accuracy.get(&time(line)).and_then(|a| a.parse::<f64>().ok()).map_or("-".into(), |a| format!("{a:.3}"));
        println!(
            "{end} UTC    {:>11}  {score:>11.3}  {:<16} {accuracy}",
            field(line, "predictions").unwrap_or_default(),
            field(line, "status").unwrap_or_default()
        );
    }
    println!("(every point: {}; with `stores.influxdb` they go to InfluxDB for Grafana)", points.display());
    Ok(())
}

/// Runs the demo.
pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let mut project = config::parse(CONFIG).map_err(|e| anyhow::anyhow!("demo config: {e:?}"))?;
    if let Some(listen) = options.listen {
        project.server.listen = listen;
    }
    let project = Arc::new(project);
    prepare(&project)?;
    let source = project.source_index("transactions").context("demo source")?;
    let running = pipeline::start(project.clone()).await?;
    let mut rng = SmallRng::seed_from_u64(7);
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    println!("fathom demo: {} card transactions over the last 2 hours for {} cards…", options.history, options.cards);
    let mut total = PushSummary::default();
    let mut n = 0;
    let chunk = 10_000;
    while n < options.history {
        let payloads: Vec<_> = (n..(n + chunk).min(options.history))
            .map(|i| {
                let ts = now - 7_200_000 + (i as i64 * 7_200_000 / options.history as i64);
                let card = rng.random_range(0..options.cards);
                transaction(&mut rng, card, ts, i)
            })
            .collect();
        let len = payloads.len();
        let s = push(&running, source, payloads, n).await?;
        total.accepted += s.accepted;
        total.dead_lettered += s.dead_lettered;
        n += len;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingested {} events ({} dead-lettered) in {secs:.2}s — {:.0} events/s through decode, aggregation and the embedded store\n",
        total.accepted + total.dead_lettered,
        total.dead_lettered,
        n as f64 / secs
    );
    println!("features now (GET /v1/features/card_activity/<card>):");
    for card in ["card-0001", "card-0002", "card-0042"] {
        show(&project, &running, card).await?;
    }
    for round in 1..=options.rounds {
        tokio::time::sleep(options.pause).await;
        let burst = 5 * round;
        let at = chrono::Utc::now().timestamp_millis();
        let payloads = (0..burst).map(|i| transaction(&mut rng, 42, at - i as i64, 1 + i)).collect();
        push(&running, source, payloads, n).await?;
        n += burst;
        println!("\nround {round}: card-0042 makes {burst} quick purchases — its 10-minute window reacts:");
        show(&project, &running, "card-0042").await?;
    }
    monitoring(&project, &running, now).await?;
    println!(
        "\ndead letters: {}/transactions.dlq · offline Parquet: {}/transactions/",
        project.stores.dead_letters.path.display(),
        project.stores.offline.parquet.path.display()
    );
    if options.serve {
        println!(
            "serving on http://{} — try: curl http://{}/v1/features/card_activity/card-0042",
            project.server.listen, project.server.listen
        );
        serve::serve_until_signal(project, running).await
    } else {
        serve::stop(running).await
    }
}

/// `fathom demo-producer`: the demo's streams into Kafka, live — card transactions on
/// `transactions`, the fraud model's prediction records on `fraud.predictions` and most of their
/// labels on `fraud.labels` a few seconds later — with a fraud wave for `wave` out of every
/// `period` (wall clock). For the compose stack; runs until stopped.
pub(crate) async fn produce(brokers: &str, rate: u64, period: Duration, wave: Duration) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .create()
        .context("creating the Kafka producer")?;
    let mut rng = SmallRng::seed_from_u64(chrono::Utc::now().timestamp_millis() as u64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate / 10).max(1);
    let mut pending_labels: Vec<(Instant, String, Vec<u8>)> = Vec::new();
    let (mut sent, mut n) = (0u64, 0usize);
    println!("producing {rate} transactions/s (and predictions, labels) to {brokers}; a fraud wave for {wave:?} every {period:?}");
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        let in_wave =
            started.elapsed().as_millis() % period.as_millis().max(1) >= (period - wave.min(period)).as_millis();
        for _ in 0..per_tick {
            n += 1;
            let card = rng.random_range(0..1000);
            let key = format!("card-{card:04}");
            let payload = transaction(&mut rng, card, now, n);
            let _ = producer.send_result(FutureRecord::to("transactions").key(&key).payload(&payload));
            let (category, amount) = purchase(&mut rng, in_wave);
            let p = 1.0 / (1.0 + (-(amount - 400.0) / 80.0).exp());
            let id = format!("req-{now}-{n}");
            let prediction = json!({
                "request_id": id, "model": "fraud", "model_version": "1", "timestamp": now,
                "features": {"card_activity.amount": amount, "card_activity.merchant_category": category},
                "prediction": {"class": if p >= 0.5 { "1" } else { "0" }, "probabilities": {"0": 1.0 - p, "1": p}},
                "latency_ms": 2.0 + 6.0 * rng.random::<f64>(),
            })
            .to_string();
            let _ = producer.send_result(FutureRecord::to("fraud.predictions").key(&id).payload(&prediction));
            if rng.random::<f64>() < 0.7 {
                let fraud = rng.random::<f64>() < if in_wave { 0.35 } else { 0.03 };
                let label = json!({"request_id": id, "label": i64::from(fraud), "timestamp": now + 5_000}).to_string();
                pending_labels.push((Instant::now() + Duration::from_secs(5), id, label.into_bytes()));
            }
            sent += 1;
        }
        let due = pending_labels.iter().take_while(|(at, _, _)| *at <= Instant::now()).count();
        for (_, id, label) in pending_labels.drain(..due) {
            let _ = producer.send_result(FutureRecord::to("fraud.labels").key(&id).payload(&label));
        }
        if sent % (rate * 60).max(1) < per_tick {
            tracing::info!(sent, in_wave, "demo producer");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_demo_config_parses() {
        fathom_project::parse(super::CONFIG).expect("the embedded demo config parses");
    }
}
