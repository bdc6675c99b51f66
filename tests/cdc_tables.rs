//! Debezium change events through the real broker into entity tables: creates, updates with and
//! without `before`, redelivery, an out-of-order older change, delete + tombstone, snapshot
//! reads, truncate, schema-wrapped and bare payloads, and a malformed envelope dead-lettered.

mod common;

use std::time::Duration;

use common::{create_topics, free_port, produce, unique, Fathom};
use fathom_featurestore::online;
use serde_json::{json, Value};

fn source(ts_ms: i64, lsn: i64, snapshot: &str) -> Value {
    json!({"version": "2.5.0.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms, "ts_us": ts_ms * 1000,
           "snapshot": snapshot, "db": "shop", "schema": "public", "table": "customers", "txId": lsn / 8, "lsn": lsn})
}

fn envelope(op: &str, before: Value, after: Value, ts_ms: i64, lsn: i64) -> Value {
    json!({"before": before, "after": after, "source": source(ts_ms, lsn, "false"), "op": op, "ts_ms": ts_ms + 50})
}

fn key(id: i64) -> String {
    json!({"id": id}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changes_maintain_the_current_row_per_key() {
    let topic = unique("pg.public.customers");
    create_topics(&[&topic], 2).await;
    let t = 1_767_225_600_000i64;
    let gold = json!({"id": 1, "segment": "gold", "country": "NL"});
    let platinum = json!({"id": 1, "segment": "platinum", "country": "NL"});
    let mut snapshot =
        envelope("r", Value::Null, json!({"id": 3, "segment": "silver", "country": "DE"}), t - 10_000, 5);
    snapshot["source"]["snapshot"] = json!("last");
    let records: Vec<(String, Vec<u8>)> = vec![
        (key(3), snapshot.to_string()),
        (
            key(1),
            json!({"schema": {"type": "struct"}, "payload": envelope("c", Value::Null, gold.clone(), t, 10)})
                .to_string(),
        ),
        (
            key(2),
            envelope("c", Value::Null, json!({"id": 2, "segment": "basic", "country": "FR"}), t + 1, 11).to_string(),
        ),
        (key(1), envelope("u", gold.clone(), platinum.clone(), t + 2_000, 20).to_string()),
        // redelivered, then an older update arriving late: neither may win
        (key(1), envelope("u", gold.clone(), platinum.clone(), t + 2_000, 20).to_string()),
        (
            key(1),
            envelope("u", Value::Null, json!({"id": 1, "segment": "bronze", "country": "NL"}), t + 1_000, 15)
                .to_string(),
        ),
        (key(2), envelope("d", json!({"id": 2}), Value::Null, t + 3_000, 30).to_string()),
        (key(2), String::new()), // tombstone
        (
            key(9),
            json!({"before": null, "after": null, "source": source(t + 4_000, 40, "false"), "op": "t"}).to_string(),
        ),
        (key(4), json!({"after": {"id": 4}, "source": source(t, 41, "false")}).to_string()), // no op
    ]
    .into_iter()
    .map(|(k, v)| (k, v.into_bytes()))
    .collect();
    let last = produce(&topic, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let project = unique("cdc");
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            "project: {project}\nstores:\n  online: {{ redis: {{ url: \"{redis}\" }} }}\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  kafka: {{ bootstrap_servers: \"{kafka}\", group_id: \"{project}\" }}\nsources:\n  customers: {{ kafka: {{ topic: \"{topic}\" }}, format: debezium, key: id }}\nserver: {{ listen: \"127.0.0.1:{port}\" }}\n",
            redis = common::redis_url(),
            kafka = common::kafka(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut fathom = Fathom::start(&["serve", "-c", config.to_str().unwrap()], port, &dir.path().join("fathom.log"));
    fathom.wait_ready().await;
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = true;
        for (partition, offset) in &last {
            let applied: Option<i64> = redis::cmd("GET")
                .arg(online::offsets_key(&project, &topic, *partition))
                .query_async(&mut con)
                .await
                .unwrap();
            done &= applied == Some(*offset);
        }
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "changes not applied in time: {}",
            std::fs::read_to_string(&fathom.log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let row = |id: i64| {
        let url = fathom.url(&format!("/v1/features/customers/{id}"));
        async move {
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            body["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f["name"].as_str().unwrap().to_string(), f.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    let one = row(1).await;
    assert_eq!(
        (one["segment"]["value"].clone(), one["segment"]["status"].clone()),
        (json!("platinum"), json!("PRESENT"))
    );
    assert_eq!(
        one["segment"]["event_timestamp"],
        json!("2026-01-01T00:00:02.000Z"),
        "commit time of the newest change"
    );
    let two = row(2).await;
    assert_eq!(two["segment"]["status"], json!("NOT_FOUND"), "deleted rows are not served: {two:?}");
    assert_eq!(two["segment"]["value"], Value::Null);
    assert_eq!(row(3).await["country"]["value"], json!("DE"), "snapshot read");
    assert!(row(9).await.is_empty(), "truncate skipped, nothing invented");

    let letters = common::dead_letter_headers(&format!("{topic}.dlq"), 1).await;
    assert_eq!(letters[0]["fathom.reason"], "malformed_envelope");
    let metrics = reqwest::get(fathom.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("fathom_table_changes_stale_total 2"), "{metrics}");
    assert!(metrics.contains("fathom_tombstones_total{source=\"customers\"} 1"), "{metrics}");
    fathom.stop();
}
