//! Secrets never reach the logs: a bearer token, an InfluxDB password, a webhook signing key, a
//! Kubeflow token and a Redis ACL user's password come from the environment and files while the
//! process logs at `debug` through authentication failures, an unreachable InfluxDB, failing
//! webhook and pipeline deliveries — and none of their values appears in what it wrote.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Fathom, Guarded};
use fathom_monitor::profile::{FeatureProfile, NumericProfile, Profile};
use serde_json::json;

const TOKEN: &str = "tok-sekrit-5f1c2a";
const INFLUX_PASSWORD: &str = "pw-sekrit-77b0e4";
const WEBHOOK_KEY: &str = "wh-sekrit-c93d11";
const KFP_TOKEN: &str = "kfp-sekrit-0a4e9b";
const REDIS_PASSWORD: &str = "redis-acl-sekrit-3b8f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("webhook.key"), WEBHOOK_KEY).unwrap();
    std::fs::write(dir.path().join("kfp.token"), KFP_TOKEN).unwrap();
    std::fs::write(dir.path().join("redis.password"), REDIS_PASSWORD).unwrap();
    // a Redis whose only user is the ACL user `fathom`
    let redis_port = free_port();
    let redis = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"])
        .args([
            "--user",
            "default",
            "off",
            "--user",
            "fathom",
            "on",
            &format!(">{REDIS_PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let _redis = Guarded(redis);
    let profile = Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: "m".into(),
        created: String::new(),
        source: String::new(),
        rows: 1000,
        features: [(
            "x".to_string(),
            FeatureProfile::Numeric(NumericProfile::build((0..1000).map(f64::from).collect(), 0)),
        )]
        .into(),
    };
    profile.save(&dir.path().join("m.json")).unwrap();
    let (port, nothing) = (free_port(), free_port()); // nothing listens on `nothing`
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
project: secrets
stores:
  online: {{ redis: {{ url: "redis://127.0.0.1:{redis_port}", username: fathom, password: "file:{d}/redis.password" }} }}
  offline: {{ parquet: {{ path: {d}/offline }} }}
  dead_letters: {{ path: {d}/dlq }}
  influxdb: {{ url: "http://127.0.0.1:{nothing}", database: db, user: fathom, password: "env:FATHOM_TEST_INFLUX_PASSWORD", spill_dir: {d}/spill }}
server:
  listen: "127.0.0.1:{port}"
  auth: {{ tokens: [ {{ name: ops, token: "env:FATHOM_TEST_TOKEN", scopes: [admin] }} ] }}
processing: {{ checkpoint_interval: 200ms }}
models:
  m:
    features: []
    reference: {d}/m.json
    monitoring: {{ window: 1m, sliding: none, lateness: 1s, idle: 1s }}
    alerts: [ {{ metric: throughput, op: ">=", threshold: 0, webhook: "http://127.0.0.1:{nothing}/hook", secret: "file:{d}/webhook.key" }} ]
    retrain:
      metric: throughput
      op: ">="
      threshold: 0
      kubeflow: {{ url: "http://127.0.0.1:{nothing}/apis/v2beta1", pipeline_id: p, token: "file:{d}/kfp.token" }}
"#
        ),
    )
    .unwrap();
    let log = dir.path().join("fathom.log");
    let env = [("FATHOM_LOG", "debug"), ("FATHOM_TEST_TOKEN", TOKEN), ("FATHOM_TEST_INFLUX_PASSWORD", INFLUX_PASSWORD)];
    let mut fathom = Fathom::start_with(&["serve", "-c", config.to_str().unwrap()], port, &log, &env);
    fathom.wait_ready().await;
    let client = fathom_monitor::https::default_client();
    // a wrong token, a near miss of the right one, and the right one
    for token in ["nope", &TOKEN[..TOKEN.len() - 1], TOKEN] {
        let _ = client.get(fathom.url("/metrics")).bearer_auth(token).send().await.unwrap();
    }
    // predictions in two windows: the first closes, the rules fire, deliveries fail and retry
    let now = chrono::Utc::now().timestamp_millis();
    let records: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"request_id": format!("r{i}"), "timestamp": now - 120_000 + i * 6_000, "features": {"x": i}, "prediction": 1.0}))
        .collect();
    let pushed =
        client.post(fathom.url("/v1/models/m/predictions")).bearer_auth(TOKEN).json(&records).send().await.unwrap();
    assert_eq!(pushed.status(), 200);
    // wait until the failing deliveries and InfluxDB writes were logged
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("delivery failed") && text.contains("InfluxDB write failed") {
            break;
        }
        assert!(Instant::now() < deadline, "the failures were not logged: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fathom.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("authorized"), "the debug log covers authentication: {text}");
    for secret in [TOKEN, INFLUX_PASSWORD, WEBHOOK_KEY, KFP_TOKEN, REDIS_PASSWORD] {
        assert!(!text.contains(secret), "{secret} leaked into the log");
    }
}
