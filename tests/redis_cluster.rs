//! The online store on a real 3-node Redis Cluster: hash-tagged keys, pipelined writes across
//! slots, reads back through the API.

mod common;

use std::sync::Arc;

use fathom_api::serve;
use fathom_featurestore::lookup::{self, Status};
use fathom_featurestore::online;
use fathom_ingest::record::{Coordinates, Record};
use fathom_project as config;
use fathom_runtime::pipeline;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_round_trip_through_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<String> = common::redis_cluster().iter().map(|n| format!("\"{n}\"")).collect();
    let project = common::unique("cluster");
    let yaml = format!(
        "project: {project}\nstores:\n  online: {{ redis: {{ cluster: [{}] }} }}\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  dead_letters: {{ path: \"{d}/dlq\" }}\nsources:\n  tx: {{ key: card_id, timestamp: ts }}\nentities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards:\n    entity: card\n    source: tx\n    ttl: 1d\n    aggregations:\n      - {{ column: amount, functions: [count, sum], windows: [1h], period: 1m }}\n",
        nodes.join(", "),
        d = dir.path().display()
    );
    let project = Arc::new(config::parse(&yaml).unwrap());
    let running = pipeline::start(project.clone()).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    // 500 cards spread over every slot, 3 events each
    let records: Vec<Record> = (0..1500)
        .map(|i| Record {
            source: 0,
            at: Coordinates { partition: None, offset: i },
            transport_time_ms: None,
            key: None,
            payload: json!({"card_id": format!("card-{}", i % 500), "ts": now - i, "amount": 2.0})
                .to_string()
                .into_bytes(),
        })
        .collect();
    let (done, answer) = tokio::sync::oneshot::channel();
    running.push.send(pipeline::Push { source: 0, records, done }).await.unwrap();
    assert_eq!(answer.await.unwrap().accepted, 1500);

    let plan = project.plan("cards").unwrap();
    let keys: Vec<String> =
        (0..500).map(|i| online::entity_key(&project.name, "cards", &format!("card-{i}"))).collect();
    let stored = running.store.load(&keys).await.unwrap();
    for (key, bytes) in keys.iter().zip(stored) {
        let state = online::decode(plan, &bytes.unwrap_or_else(|| panic!("{key} missing"))).unwrap();
        let values = lookup::feature_values(plan, Some(&state), now);
        assert_eq!(values[0].value, json!(3), "{key}");
        assert_eq!(values[1].value, json!(6.0), "{key}");
        assert!(values.iter().all(|v| v.status == Status::Present));
    }
    // keys spread over the cluster, each entity within one slot through its hash tag
    let client = redis::cluster::ClusterClient::new(common::redis_cluster()).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut con).await.unwrap();
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "TTL refreshed on write: {ttl}");
    // any single node answers CLUSTER KEYSLOT
    let node = redis::Client::open(common::redis_cluster()[0].as_str()).unwrap();
    let mut node = node.get_multiplexed_async_connection().await.unwrap();
    let mut slots = std::collections::BTreeSet::new();
    for key in &keys {
        let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut node).await.unwrap();
        slots.insert(slot);
    }
    assert!(slots.len() > 400, "hash tags must not pin every entity to one slot ({} slots)", slots.len());
    serve::stop(running).await.unwrap();
}
