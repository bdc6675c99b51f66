//! `fathom bench e2e`: broker → decode → aggregate → Redis, timed from start until every record
//! is applied.

use std::time::Instant;

use fathom_featurestore::online;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::dataset::peak_rss;
use super::engine::{events, tempfile_dir, FEATURES};

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
    /// The events scenario's transactions with a currency and a status, through `bench
    /// engine`'s transformations: 3 selects, a filtered count and 2 derived features.
    Transform,
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
    let cards = card_features(FEATURES);
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
        Scenario::Transform => {
            let stream = events(options.events, options.keys);
            let records: Records = stream
                .iter()
                .enumerate()
                .map(|(i, (key, ts, amount))| {
                    let card = format!("card-{key:06}");
                    let (currency, status) = super::engine::currency_and_status(i);
                    let payload = format!(
                        r#"{{"card_id":"{card}","ts":{ts},"amount":{amount},"currency":"{currency}","status":"{status}"}}"#
                    );
                    (card, payload)
                })
                .collect();
            let secs = produce(&client, &tx, &records).await?;
            println!("produced {} events to {tx} ({} partitions) in {secs:.2}s", options.events, options.partitions);
            let selects: String =
                super::engine::SELECTS.iter().map(|(name, sql)| format!("      {name}: \"{sql}\"\n")).collect();
            let source = format!(
                "  tx:\n    kafka: {{ topic: \"{tx}\" }}\n    key: card_id\n    timestamp: ts\n    columns: {{ amount: double, currency: string, status: string }}\n    select:\n{selects}"
            );
            let cards = card_features(super::engine::TRANSFORMED);
            let yaml = format!("{header}sources:\n{source}feature_sets:\n{cards}");
            let secs = run_until_applied(&yaml, options, &run, &tx, options.events).await?;
            report(
                "broker → decode → 3 selects + a filtered count → 17 aggregated features → Redis",
                "events",
                options,
                secs,
            );
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
    // a record refused is dead-lettered and still counts as applied: a run that refused any
    // measured something else
    for dlq in &dlqs {
        let refused = dead_letters(&client, dlq)?;
        anyhow::ensure!(refused == 0, "{refused} records were dead-lettered to {dlq}: the run is not comparable");
    }
    Ok(())
}

/// The records in partition 0 of `topic`, read from its beginning to its end (tansu 0.6's high
/// watermark can lag the records a consumer reads: 8,351 of 10,000 in one run).
fn dead_letters(client: &rdkafka::ClientConfig, topic: &str) -> anyhow::Result<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;

    let mut config = client.clone();
    config.set("group.id", format!("{topic}-count")).set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&partitions)?;
    let mut records = 0;
    loop {
        match consumer.poll(std::time::Duration::from_secs(10)) {
            Some(Ok(_)) => records += 1,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(records),
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None => anyhow::bail!("reading {topic}: no record and no end within 10 s"),
        }
    }
}

/// The feature set `cards` of `definition` (`entity: card`, `source: tx`, then the rest), as
/// an entry of a project's `feature_sets`.
fn card_features(definition: &str) -> String {
    let rest: String = definition.lines().skip(2).map(|l| format!("    {l}\n")).collect();
    format!("  cards:\n    entity: card\n    source: tx\n{rest}")
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
