//! `fathom serve` on the embedded store with a snapshot: features pushed before a restart are
//! served after it.

mod common;

use common::{free_port, Fathom};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_survive_a_restart_through_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            "project: snap\nstores:\n  online: {{ embedded: {{ snapshot: \"{d}/online.snapshot\" }} }}\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  dead_letters: {{ path: \"{d}/dlq\" }}\nsources:\n  tx: {{ key: card_id, timestamp: ts }}\nentities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards:\n    entity: card\n    source: tx\n    features: [merchant]\n    aggregations:\n      - {{ column: amount, functions: [sum], windows: [1h], period: 1m }}\nserver: {{ listen: \"127.0.0.1:{port}\" }}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let args = ["serve", "-c", config.to_str().unwrap()];
    let mut first = Fathom::start(&args, port, &dir.path().join("first.log"));
    first.wait_ready().await;
    let now = chrono::Utc::now().timestamp_millis();
    let body = json!([
        {"card_id": "c1", "ts": now - 1000, "amount": 4.5, "merchant": "m1"},
        {"card_id": "c1", "ts": now, "amount": 5.5, "merchant": "m2"}
    ]);
    let pushed: Value = fathom_monitor::https::default_client()
        .post(first.url("/v1/push/tx"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pushed["accepted"], 2);
    first.stop(); // SIGTERM: the final checkpoint saves the snapshot
    assert!(dir.path().join("online.snapshot").exists());

    let mut second = Fathom::start(&args, port, &dir.path().join("second.log"));
    second.wait_ready().await;
    let body: Value = common::get_json(second.url("/v1/features/cards/c1")).await;
    let features = body["features"].as_array().unwrap();
    let get = |name: &str| features.iter().find(|f| f["name"] == name).unwrap().clone();
    assert_eq!(
        (get("amount_sum_1h")["value"].clone(), get("amount_sum_1h")["status"].clone()),
        (json!(10.0), json!("PRESENT"))
    );
    assert_eq!(get("merchant")["value"], json!("m2"));
    second.stop();
}

/// `--roles`: a process without `api` serves health and metrics but not the API; with `api` it
/// serves the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_without_api_serve_only_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fathom.yaml");
    let write = |port: u16| {
        std::fs::write(
            &config,
            format!(
                "project: roles\nstores:\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  dead_letters: {{ path: \"{d}/dlq\" }}\nsources:\n  tx: {{ key: card_id, timestamp: ts }}\nentities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards: {{ entity: card, source: tx, features: [merchant] }}\nserver: {{ listen: \"127.0.0.1:{port}\" }}\n",
                d = dir.path().display()
            ),
        )
        .unwrap()
    };
    for (roles, api) in [("ingest,monitor", false), ("api", true)] {
        let port = free_port();
        write(port);
        let args = ["serve", "-c", config.to_str().unwrap(), "--roles", roles];
        let mut fathom = Fathom::start(&args, port, &dir.path().join(format!("{roles}.log")));
        fathom.wait_ready().await;
        let status = |path: &'static str| {
            let url = fathom.url(path);
            async move { fathom_monitor::https::default_client().get(url).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status("/healthz").await, 200, "{roles}");
        assert_eq!(status("/metrics").await, 200, "{roles}");
        assert_eq!(status("/v1/features/cards/c1").await, if api { 200 } else { 404 }, "{roles}");
        assert_eq!(status("/openapi.json").await, if api { 200 } else { 404 }, "{roles}");
        fathom.stop();
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(["serve", "-c", config.to_str().unwrap(), "--roles", "web"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown role \"web\""));
}
