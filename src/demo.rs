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

use crate::config::{self, Project};
use crate::pipeline::{self, Push, PushSummary, Running};
use crate::serve;

/// The demo's project file; also what `fathom serve` runs without `-c`.
pub const CONFIG: &str = include_str!("../examples/demo.fathom.yaml");

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct Options {
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
    let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
    let base = match category {
        "travel" | "electronics" => 250.0,
        "fuel" | "restaurants" => 45.0,
        _ => 30.0,
    };
    let amount = (base * (0.2 + rng.random::<f64>() * 1.6) * 100.0).round() / 100.0;
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

/// Runs the demo.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let project = Arc::new(config::parse(CONFIG).map_err(|e| anyhow::anyhow!("demo config: {e:?}"))?);
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
