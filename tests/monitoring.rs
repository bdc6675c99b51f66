//! Model monitoring end to end through the real broker, Redis and InfluxDB: prediction and label
//! records on their topics, a distribution that shifts mid-stream, the model's drift status going
//! no drift → possible → detected in InfluxDB, one signed alert webhook (after a failed first
//! attempt), one Kubeflow run request, the trigger and its outcome on `fathom.retrain`; labels
//! that arrive before their predictions and after expiry; and a SIGKILL mid-stream after which
//! nothing is counted twice and no alert is sent again.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use common::{create_topics, free_port, influx_rows, influxql, produce, unique, Fathom};
use fathom_monitor::profile::{CategoricalProfile, FeatureProfile, NumericProfile, Profile};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const WINDOW: i64 = 600_000;
const PER_WINDOW: usize = 400;
const SECRET: &str = "whsec-test";

/// Requests the receiver got: (path, headers, body).
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<(String, HeaderMap, String)>>>,
    hook_calls: Arc<AtomicUsize>,
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let path = uri.path().to_string();
    r.requests.lock().unwrap().push((path.clone(), headers, String::from_utf8_lossy(&body).to_string()));
    if path == "/hook" && r.hook_calls.fetch_add(1, Ordering::SeqCst) == 0 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "try again".into()); // the first attempt fails
    }
    if path.ends_with("/runs") {
        return (StatusCode::OK, json!({"run_id": "run-42", "state": "PENDING"}).to_string());
    }
    (StatusCode::OK, "ok".into())
}

/// A deterministic uniform number in [0, 1) from an index.
fn uniform(i: u64) -> f64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn country(u: f64) -> &'static str {
    if u < 0.5 {
        "DE"
    } else if u < 0.8 {
        "FR"
    } else {
        "IT"
    }
}

/// Share of shifted records per window: none, then 55 % (possible drift), then all (detected).
fn shifted_share(window: usize) -> f64 {
    match window {
        0..=3 => 0.0,
        4..=5 => 0.55,
        _ => 1.0,
    }
}

type Records = Vec<(String, Vec<u8>)>;

#[derive(Clone)]
struct Stream {
    predictions: Vec<(String, Vec<u8>)>,
    labels: Vec<(String, Vec<u8>)>,
    /// Per window: (labels sent before the window's predictions, predictions, labels after).
    batches: Vec<(Records, Records, Records)>,
    /// Predicted class == label, per window, among labelled.
    correct: Vec<usize>,
    /// Request ids of window 0 left without a label.
    unlabelled_0: Vec<String>,
}

/// Windows `from..to`: 400 predictions each; 60 % get a label, half of those before the
/// prediction on the label topic.
fn stream(model: &str, from: usize, to: usize) -> Stream {
    let mut s =
        Stream { predictions: vec![], labels: vec![], batches: vec![], correct: vec![0; 12], unlabelled_0: vec![] };
    for w in from..to {
        let (labels_before, predictions_before) = (s.labels.len(), s.predictions.len());
        for i in 0..PER_WINDOW {
            let n = (w * PER_WINDOW + i) as u64;
            let id = format!("{model}-{w}-{i}");
            let ts = T0 + w as i64 * WINDOW + (i as i64 * WINDOW / PER_WINDOW as i64);
            let shifted = uniform(n * 7 + 1) < shifted_share(w);
            let (amount, country) = if shifted {
                (500.0 + 100.0 * uniform(n * 7 + 2), "BR")
            } else {
                (100.0 * uniform(n * 7 + 2), country(uniform(n * 7 + 3)))
            };
            let p1 = if shifted { 0.8 } else { 0.1 + 0.3 * uniform(n * 7 + 4) };
            let class = if p1 >= 0.5 { "1" } else { "0" };
            let prediction = json!({
                "request_id": id, "model": model, "model_version": "3",
                "timestamp": chrono::DateTime::from_timestamp_millis(ts).unwrap().to_rfc3339(),
                "features": {"amount": amount, "country": country},
                "prediction": {"class": class, "probabilities": {"0": 1.0 - p1, "1": p1}},
                "latency_ms": 5.0 + (i % 10) as f64,
            });
            let labelled = uniform(n * 7 + 5) < 0.6;
            let label_class = if uniform(n * 7 + 6) < p1 { "1" } else { "0" };
            let label = (
                id.clone(),
                json!({"request_id": id, "label": label_class.parse::<i64>().unwrap(), "timestamp": ts + 300_000})
                    .to_string()
                    .into_bytes(),
            );
            if labelled {
                s.labels.push(label);
                s.correct[w] += usize::from(label_class == class);
            } else if w == 0 {
                s.unlabelled_0.push(id.clone());
            }
            s.predictions.push((id, prediction.to_string().into_bytes()));
        }
        // half of the window's labels go first: they wait for their predictions
        let labels = &s.labels[labels_before..];
        let (early, late) = labels.split_at(labels.len() / 2);
        s.batches.push((early.to_vec(), s.predictions[predictions_before..].to_vec(), late.to_vec()));
    }
    s
}

/// Window by window: early labels, predictions, late labels.
async fn send(s: &Stream, predictions: &str, labels: &str) {
    for (early, batch, late) in &s.batches {
        produce(labels, early).await;
        produce(predictions, batch).await;
        produce(labels, late).await;
    }
}

fn labelled_per_window(model: &str) -> Vec<usize> {
    let all = stream(model, 0, 12);
    let mut counts = vec![0; 12];
    for (id, _) in &all.labels {
        let w: usize = id.split('-').nth(1).unwrap().parse().unwrap();
        counts[w] += 1;
    }
    counts
}

fn profile(model: &str) -> Profile {
    let amounts: Vec<f64> = (0..20_000u64).map(|i| 100.0 * uniform(1_000_000 + i)).collect();
    let mut countries = BTreeMap::new();
    for i in 0..20_000u64 {
        *countries.entry(country(uniform(2_000_000 + i)).to_string()).or_insert(0u64) += 1;
    }
    let mut top: Vec<(String, u64)> = countries.into_iter().collect();
    top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: model.into(),
        created: "2026-01-01T00:00:00Z".into(),
        source: "test".into(),
        rows: 20_000,
        features: [
            ("amount".to_string(), FeatureProfile::Numeric(NumericProfile::build(amounts, 0))),
            (
                "country".to_string(),
                FeatureProfile::Categorical(CategoricalProfile { count: 20_000, missing: 0, top, other: 0 }),
            ),
            (
                "prediction".to_string(),
                FeatureProfile::Categorical(CategoricalProfile {
                    count: 20_000,
                    missing: 0,
                    top: vec![("0".into(), 18_000), ("1".into(), 2_000)],
                    other: 0,
                }),
            ),
        ]
        .into(),
    }
}

/// Records of `topics` the project's monitor checkpoint holds as done (the sum of its next
/// offsets), read from Redis.
async fn checkpointed(project: &str, topics: &[String]) -> i64 {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = fathom_runtime::monitoring::checkpoint_key(project);
    let bytes: Option<Vec<u8>> = redis::cmd("HGET").arg(key).arg("state").query_async(&mut con).await.unwrap();
    let offsets = bytes.map(|b| fathom_runtime::monitoring::checkpointed_offsets(&b).unwrap()).unwrap_or_default();
    offsets.iter().filter(|((topic, _), _)| topics.contains(topic)).map(|(_, next)| next).sum()
}

async fn wait_for<F, Fut>(what: &str, log: &std::path::Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in time: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The records of `model` on `fathom.retrain` (waiting until `n` arrived).
async fn retrain_records(model: &str, n: usize) -> Vec<Value> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .set("group.id", unique("retrain-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["fathom.retrain"]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {out:?} on fathom.retrain");
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else { continue };
        if m.key() == Some(model.as_bytes()) {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    // anything more would be a duplicate
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        if m.key() == Some(model.as_bytes()) {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_alerts_retraining_and_performance_through_kafka_redis_and_influxdb() {
    let dir = tempfile::tempdir().unwrap();
    let run = unique("m").replace('-', "_");
    let model = format!("fraud_{}", &run[2..]);
    let (predictions_topic, labels_topic) = (format!("{run}.predictions"), format!("{run}.labels"));
    let tx_topic = format!("{run}.tx");
    create_topics(&[&predictions_topic, &labels_topic, &tx_topic], 2).await;
    let db = format!("mon_{}", &run[2..]);
    influxql(&db, &format!("CREATE DATABASE {db}")).await;
    profile(&model).save(&dir.path().join("profile.json")).unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("kfp-token"), "kfp-token-1").unwrap();

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks = listener.local_addr().unwrap().port();
    let app = Router::new().fallback(post(receive)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let port = free_port();
    let d = dir.path().display();
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
project: {run}
stores:
  online: {{ redis: {{ url: "{redis}" }} }}
  offline: {{ parquet: {{ path: {d}/offline }} }}
  kafka: {{ bootstrap_servers: "{kafka}", group_id: {run}, options: {{ session.timeout.ms: "6000", heartbeat.interval.ms: "1000" }} }}
  dead_letters: {{ path: {d}/dlq }}
  influxdb: {{ url: "http://127.0.0.1:8086", database: {db}, spill_dir: {d}/spill, batch_size: 500 }}
server: {{ listen: "127.0.0.1:{port}" }}
processing: {{ checkpoint_interval: 300ms }}
sources:
  tx: {{ kafka: {{ topic: {tx_topic} }}, key: card_id, timestamp: ts }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards:
    entity: card
    source: tx
    features: [amount]
    aggregations: [ {{ column: amount, functions: [count, sum], windows: [1h] }} ]
models:
  {model}:
    features: []
    predictions_topic: {predictions_topic}
    labels: {{ topic: {labels_topic}, max_delay: 30m }}
    reference: {d}/profile.json
    monitoring: {{ window: 10m, sliding: 30m, lateness: 1m, idle: 3s }}
    alerts:
      - {{ when: drift_detected, consecutive: 2, cooldown: 1d, webhook: "http://127.0.0.1:{hooks}/hook", secret: "file:{d}/secret" }}
      - {{ name: drift for Slack, when: drift_detected, consecutive: 2, cooldown: 1d, webhook: "http://127.0.0.1:{hooks}/slack", format: slack }}
    retrain:
      when: drift_detected
      consecutive: 3
      cooldown: 1d
      kubeflow: {{ url: "http://127.0.0.1:{hooks}/apis/v2beta1", pipeline_id: fraud-training, pipeline_version_id: v7, token: "file:{d}/kfp-token" }}
"#,
            redis = common::redis_url(),
            kafka = common::kafka(),
        ),
    )
    .unwrap();
    let args = ["serve", "-c", config.to_str().unwrap()];
    let log = dir.path().join("fathom.log");
    let mut fathom = Fathom::start(&args, port, &log);
    fathom.wait_ready().await;

    let query = |q: String| {
        let db = db.clone();
        async move { influx_rows(&influxql(&db, &q).await) }
    };

    // phase 1: windows 0..8 — labels first for half of them
    let first = stream(&model, 0, 8);
    send(&first, &predictions_topic, &labels_topic).await;
    // a little feature traffic too, one record broken, for the feature-store dashboard
    let mut transactions: Records = (0..40)
        .map(|i| {
            let ts = chrono::Utc::now().to_rfc3339();
            (
                format!("c{}", i % 7),
                json!({"card_id": format!("c{}", i % 7), "ts": ts, "amount": i}).to_string().into_bytes(),
            )
        })
        .collect();
    transactions.push(("c1".into(), b"{\"card_id\": \"c1\", \"amount\": 1".to_vec()));
    produce(&tx_topic, &transactions).await;
    // drift detected in windows 6 and 7 → the alert fires when window 7 closes (idle after 3 s)
    let hook_ok = || {
        let r = receiver.clone();
        async move { r.requests.lock().unwrap().iter().filter(|(p, _, _)| p == "/hook").count() >= 2 }
    };
    wait_for("the alert webhook (second attempt)", &log, hook_ok).await;
    // the delivery is recorded at the checkpoint that forgets it
    let delivered = || query(format!("SELECT * FROM fathom_alert_deliveries WHERE model = '{model}'"));
    wait_for("both delivery records (signed JSON and Slack)", &log, || async { delivered().await.len() >= 2 }).await;

    // a second process of the same project stands by: ready, not monitoring
    let standby_port = free_port();
    let standby_config = dir.path().join("fathom-2.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&standby_config, text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{standby_port}")))
        .unwrap();
    let standby_args = ["serve", "-c", standby_config.to_str().unwrap()];
    let mut standby = Fathom::start(&standby_args, standby_port, &dir.path().join("fathom-2.log"));
    standby.wait_ready().await;
    let ready: Value = common::get_json(standby.url("/readyz")).await;
    let warning = ready["warnings"]["monitor"].as_str().unwrap_or_default();
    assert!(warning.starts_with("monitor: standby: ") && warning.ends_with(" is the active monitor"), "{ready}");

    // phase 2: windows 8..10, the active monitor killed while it is processing them — once its
    // checkpoint holds part of them and before it holds all (the producer paces its batches):
    // the standby takes over from that checkpoint once the lease lapses, mid-window
    let second = stream(&model, 8, 10);
    let topics = [predictions_topic.clone(), labels_topic.clone()];
    let phase_1 = (first.predictions.len() + first.labels.len()) as i64;
    let total = phase_1 + (second.predictions.len() + second.labels.len()) as i64;
    let sending = tokio::spawn({
        let (second, topics) = (second.clone(), topics.clone());
        async move {
            for (early, batch, late) in &second.batches {
                for (records, topic) in [(early, &topics[1]), (batch, &topics[0]), (late, &topics[1])] {
                    produce(topic, records).await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    });
    let durable = || checkpointed(&run, &topics);
    wait_for("the active monitor to checkpoint part of windows 8-9", &log, || async { durable().await > phase_1 })
        .await;
    fathom.sigkill();
    let at_kill = durable().await;
    assert!(at_kill < total, "killed too late to test anything ({at_kill} of {total} records checkpointed)");
    sending.await.unwrap();
    let mut fathom = standby;
    let log = dir.path().join("fathom-2.log");
    let readyz = fathom.url("/readyz");
    let took_over = || {
        let readyz = readyz.clone();
        async move {
            let ready: Value = common::get_json(readyz).await;
            ready.get("warnings").is_none_or(|w| w.get("monitor").is_none())
        }
    };
    wait_for("the standby to take over the monitor", &log, took_over).await;

    // phase 3: windows 10..12, a repeated prediction and label, labels for window 0 after expiry
    let third = stream(&model, 10, 12);
    send(&third, &predictions_topic, &labels_topic).await;
    produce(&predictions_topic, &third.predictions[..1]).await;
    produce(&labels_topic, &third.labels[..1]).await;
    let expired: Vec<(String, Vec<u8>)> = first
        .unlabelled_0
        .iter()
        .take(10)
        .map(|id| {
            (id.clone(), json!({"request_id": id, "label": 0, "timestamp": T0 + 7_200_000}).to_string().into_bytes())
        })
        .collect();
    produce(&labels_topic, &expired).await;
    let bad = vec![("x".to_string(), b"{\"request_id\": \"x\", \"prediction\": 1}".to_vec())];
    produce(&predictions_topic, &bad).await;

    // every window closed (idle), the counters caught up
    let counters = || query(format!("SELECT last(*) FROM fathom_monitor WHERE model = '{model}'"));
    wait_for("the monitor counters", &log, || async {
        let rows = counters().await;
        rows.first().is_some_and(|r| {
            r["last_predictions"] == json!(12 * PER_WINDOW)
                && r["last_labels_after_expiry"] == json!(10)
                && r["last_duplicate_labels"] == json!(1)
        })
    })
    .await;
    wait_for("all twelve windows", &log, || async {
        let count = query(format!(
            "SELECT count(score) FROM fathom_model_drift WHERE model = '{model}' AND \"window\" = 'tumbling'"
        ));
        count.await.first().map(|r| r["count"].clone()) == Some(json!(12))
    })
    .await;
    let models = query(format!(
        "SELECT score, status, predictions FROM fathom_model_drift WHERE model = '{model}' AND \"window\" = 'tumbling'"
    ))
    .await;
    let statuses: Vec<&str> = models.iter().map(|r| r["status"].as_str().unwrap()).collect();
    let expected: Vec<&str> = (0..12)
        .map(|w| match w {
            0..=3 => "no_drift",
            4..=5 => "possible_drift",
            _ => "drift_detected",
        })
        .collect();
    assert_eq!(statuses, expected, "scores: {models:?}");
    for (w, row) in models.iter().enumerate() {
        assert_eq!(row["predictions"], json!(PER_WINDOW), "window {w} counted once despite the SIGKILL");
        let time = chrono::DateTime::parse_from_rfc3339(row["time"].as_str().unwrap()).unwrap().timestamp_millis();
        assert_eq!(time, T0 + (w as i64 + 1) * WINDOW, "points stand at the window's end");
    }
    let features = query(format!(
        "SELECT count, tvd, hellinger, ks_p FROM fathom_feature_drift WHERE model = '{model}' AND \"window\" = 'tumbling' AND feature = 'amount'"
    ))
    .await;
    assert_eq!(features.len(), 12);
    assert!(features.iter().all(|r| r["count"] == json!(PER_WINDOW)));
    assert!(features[0]["ks_p"].as_f64().unwrap() > 0.01 && features[11]["ks_p"].as_f64().unwrap() < 1e-6);

    // exactly one alert, signed, delivered on the second attempt with the same id
    let requests = receiver.requests.lock().unwrap().clone();
    let hooks: Vec<&(String, HeaderMap, String)> = requests.iter().filter(|(p, _, _)| p == "/hook").collect();
    assert_eq!(hooks.len(), 2, "one failed attempt, one delivery, no duplicate after the restart");
    assert_eq!(hooks[0].2, hooks[1].2);
    assert_eq!(hooks[0].1["x-fathom-delivery"], hooks[1].1["x-fathom-delivery"]);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(hooks[1].2.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hooks[1].1["x-fathom-signature"].to_str().unwrap(), format!("sha256={hex}"));
    let alert: Value = serde_json::from_str(&hooks[1].2).unwrap();
    assert_eq!(
        (alert["model"].as_str(), alert["state"].as_str(), alert["metric"].as_str()),
        (Some(model.as_str()), Some("fired"), Some("drift_score"))
    );
    assert_eq!(alert["window"]["end"], json!("2026-01-01T01:20:00+00:00"), "windows 6 and 7 detected → fired at 01:20");
    let drifted: Vec<&str> =
        alert["drifted_features"].as_array().unwrap().iter().map(|f| f["feature"].as_str().unwrap()).collect();
    assert_eq!(drifted.len(), 2, "{alert}");

    // the Slack-format rule: one `{"text": …}` body, unsigned (no secret), for the same window
    let slack: Vec<&(String, HeaderMap, String)> = requests.iter().filter(|(p, _, _)| p == "/slack").collect();
    assert_eq!(slack.len(), 1, "{slack:?}");
    assert!(slack[0].1.get("x-fathom-signature").is_none());
    let slack_body: Value = serde_json::from_str(&slack[0].2).unwrap();
    assert_eq!(slack_body.as_object().unwrap().len(), 1, "only `text`: {slack_body}");
    let text = slack_body["text"].as_str().unwrap();
    for needle in
        [model.as_str(), "drift for Slack fired", "drift_score", "2026-01-01T01:20:00+00:00", "Most drifted: "]
    {
        assert!(text.contains(needle), "{needle:?} in {text:?}");
    }

    // exactly one Kubeflow run (windows 6, 7, 8 detected), its trigger and outcome on the topic
    let runs: Vec<&(String, HeaderMap, String)> =
        requests.iter().filter(|(p, _, _)| p == "/apis/v2beta1/runs").collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1["authorization"], "Bearer kfp-token-1");
    let run_body: Value = serde_json::from_str(&runs[0].2).unwrap();
    assert_eq!(
        run_body["pipeline_version_reference"],
        json!({"pipeline_id": "fraud-training", "pipeline_version_id": "v7"})
    );
    let parameters = &run_body["runtime_config"]["parameters"];
    assert_eq!(parameters["model"], json!(model));
    assert_eq!(
        (parameters["start"].as_str(), parameters["end"].as_str()),
        (Some("2026-01-01T01:00:00+00:00"), Some("2026-01-01T01:30:00+00:00"))
    );
    assert!(parameters["offline_data"].as_str().unwrap().ends_with("offline"));
    assert_eq!(runs[0].1["idempotency-key"].to_str().unwrap(), format!("{model}:retrain:{}", T0 + 9 * WINDOW));
    let records = retrain_records(&model, 2).await;
    let stages: Vec<&str> = records.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, vec!["triggered", "started"]);
    assert_eq!(records[1]["run_id"], json!("run-42"));
    let retrain = query(format!("SELECT * FROM fathom_retrain WHERE model = '{model}'")).await;
    let outcomes: Vec<&str> = retrain.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.len(), 2, "{retrain:?}");
    assert!(outcomes.contains(&"triggered") && outcomes.contains(&"started"));

    // performance per prediction window: labels joined once, whichever came first
    let labelled = labelled_per_window(&model);
    let all = stream(&model, 0, 12);
    let perf = query(format!("SELECT * FROM fathom_model_performance WHERE model = '{model}'")).await;
    assert_eq!(perf.len(), 12, "{perf:?}");
    for (w, row) in perf.iter().enumerate() {
        assert_eq!(row["labelled"], json!(labelled[w]), "window {w}");
        assert_eq!(row["predictions"], json!(PER_WINDOW));
        let accuracy = all.correct[w] as f64 / labelled[w] as f64;
        assert!((row["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12, "window {w}: {row:?}");
        let coverage = labelled[w] as f64 / PER_WINDOW as f64;
        assert!((row["label_coverage"].as_f64().unwrap() - coverage).abs() < 1e-12);
        // the slowest partition's newest prediction is in window 11 (before 02:00): windows
        // ending 30 minutes before 01:50 are final, their unlabelled predictions expired
        if w <= 7 {
            assert_eq!(row["final"], json!(true), "window {w}");
            assert_eq!(row["expired"], json!(PER_WINDOW - labelled[w]), "window {w}");
        } else {
            assert_eq!(row["final"], json!(false), "window {w}");
        }
    }
    let serving =
        query(format!("SELECT requests, latency_p50, latency_p99 FROM fathom_serving WHERE model = '{model}'")).await;
    assert_eq!(serving.len(), 12);
    assert!(serving.iter().all(|r| r["requests"] == json!(PER_WINDOW)));
    assert!((serving[0]["latency_p50"].as_f64().unwrap() - 9.0).abs() < 0.01, "{serving:?}");

    // every query of every dashboard returns series from what this run wrote
    dashboards_answer(&db, &model, &log).await;

    // the malformed prediction is a dead letter naming the field
    let letters = common::dead_letter_headers(&format!("{predictions_topic}.dlq"), 1).await;
    assert_eq!(letters[0]["fathom.reason"], "invalid_record");
    assert!(letters[0]["fathom.message"].contains("`timestamp`"), "{letters:?}");
    fathom.stop();
}

/// Runs every panel query and variable query of `dashboards/*.json` against InfluxDB with the
/// template variables substituted (`$model`, `$feature` = all of the model's features as Grafana
/// formats a multi-value for a regex, `$timeFilter` from the run's first window on, `$__interval`
/// = 1h) and fails on an error or an empty answer.
async fn dashboards_answer(db: &str, model: &str, log: &std::path::Path) {
    let substitute = |q: &str| {
        q.replace("$model", model)
            .replace("$feature", "(amount|country)")
            .replace("$timeFilter", "time >= '2026-01-01T00:00:00Z'")
            .replace("$__interval", "1h")
    };
    // the ingest points come with checkpoints: wait until each measurement has some
    for measurement in [
        "fathom_ingest",
        "fathom_dead_letters",
        "fathom_consumer_lag",
        "fathom_flush",
        "fathom_online",
        "fathom_freshness",
        "fathom_online_freshness",
    ] {
        wait_for(measurement, log, || async {
            !influx_rows(&influxql(db, &format!("SELECT * FROM \"{measurement}\" LIMIT 1")).await).is_empty()
        })
        .await;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json"))
    {
        let board: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        for variable in board["templating"]["list"].as_array().unwrap() {
            let q = substitute(variable["query"].as_str().unwrap());
            let answer = influxql(db, &q).await;
            let values: Vec<String> =
                influx_rows(&answer).iter().map(|r| r["value"].as_str().unwrap_or_default().to_string()).collect();
            let wanted = if variable["name"] == "model" { model.to_string() } else { "amount".to_string() };
            assert!(values.contains(&wanted), "{name}: variable {} ({q}) gave {values:?}", variable["name"]);
            checked += 1;
        }
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let q = substitute(target["query"].as_str().unwrap());
                let answer = influxql(db, &q).await;
                assert!(
                    answer["results"][0]["error"].is_null() && answer["error"].is_null(),
                    "{name} / {}: {q} → {answer}",
                    panel["title"]
                );
                let series = answer["results"][0]["series"].as_array().map_or(0, Vec::len);
                assert!(series > 0, "{name} / {}: no series for {q}", panel["title"]);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 38, "3 variable queries and 35 panel queries in the four dashboards");
}

/// An InfluxDB of this test's own (1.x, temporary directories, free ports), so it can be
/// stopped and restarted without touching the shared one.
struct OwnInflux {
    port: u16,
    rpc: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnInflux {
    fn start() -> OwnInflux {
        let mut influx =
            OwnInflux { port: free_port(), rpc: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        influx.restart();
        influx
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let d = self.dir.path();
        let child = std::process::Command::new("influxd")
            .args(["run", "-config", "/dev/null"])
            .env("INFLUXDB_REPORTING_DISABLED", "true")
            .env("INFLUXDB_BIND_ADDRESS", format!("127.0.0.1:{}", self.rpc))
            .env("INFLUXDB_HTTP_BIND_ADDRESS", format!("127.0.0.1:{}", self.port))
            .env("INFLUXDB_META_DIR", d.join("meta"))
            .env("INFLUXDB_DATA_DIR", d.join("data"))
            .env("INFLUXDB_DATA_WAL_DIR", d.join("wal"))
            .env("INFLUXDB_MONITOR_STORE_ENABLED", "false")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("influxd (installed by the test command)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "influxd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    async fn query(&self, db: &str, q: &str) -> Value {
        common::influxql_at(&self.url(), db, q).await
    }
}

impl Drop for OwnInflux {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fault injection: InfluxDB is down for a minute while windows close. The process stays up and
/// ready, `/readyz` warns about InfluxDB, the points wait on disk, and once InfluxDB is back every
/// window's points arrive exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influxdb_outage_loses_no_monitoring_points() {
    let mut influx = OwnInflux::start();
    let db = "fathom";
    let deadline = Instant::now() + Duration::from_secs(30);
    while influx.query(db, "CREATE DATABASE fathom").await["results"][0]["error"].is_string() {
        assert!(Instant::now() < deadline, "influxd never accepted CREATE DATABASE");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = "fraud";
    profile(model).save(&dir.path().join("profile.json")).unwrap();
    let port = free_port();
    let d = dir.path().display();
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
project: outage
stores:
  offline: {{ parquet: {{ path: {d}/offline }} }}
  dead_letters: {{ path: {d}/dlq }}
  influxdb: {{ url: "{url}", database: {db}, spill_dir: {d}/spill }}
server: {{ listen: "127.0.0.1:{port}" }}
processing: {{ checkpoint_interval: 300ms }}
models:
  {model}:
    features: []
    reference: {d}/profile.json
    monitoring: {{ window: 10m, sliding: none, lateness: 1m, idle: 2s }}
"#,
            url = influx.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("fathom.log");
    let mut fathom = Fathom::start(&["serve", "-c", config.to_str().unwrap()], port, &log);
    fathom.wait_ready().await;
    let client = fathom_monitor::https::default_client();
    let push = |records: &[(String, Vec<u8>)]| {
        let body = format!(
            "[{}]",
            records.iter().map(|(_, p)| String::from_utf8_lossy(p).to_string()).collect::<Vec<_>>().join(",")
        );
        let request = client.post(fathom.url(&format!("/v1/models/{model}/predictions"))).body(body);
        async move {
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            assert_eq!(answer["dead_lettered"], 0, "{answer}");
        }
    };
    let windows = |rows: Vec<BTreeMap<String, Value>>| rows.len();
    let drift = "SELECT predictions FROM fathom_model_drift WHERE \"window\" = 'tumbling'";

    // windows 0..3 pushed: 0, 1, 2 close and reach InfluxDB
    let all = stream(model, 0, 9);
    for (_, batch, _) in &all.batches[..4] {
        push(batch).await;
    }
    wait_for("three windows in InfluxDB", &log, || async { windows(influx_rows(&influx.query(db, drift).await)) == 3 })
        .await;

    // InfluxDB goes away; windows 3..7 close meanwhile
    influx.kill();
    let down = Instant::now();
    for (_, batch, _) in &all.batches[4..] {
        push(batch).await;
    }
    wait_for("the InfluxDB warning", &log, || async {
        let ready = client.get(fathom.url("/readyz")).send().await.unwrap();
        let status = ready.status();
        let body: Value = ready.json().await.unwrap();
        status == 200 && body["warnings"]["influxdb"].is_string()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    assert!(fathom.child.try_wait().unwrap().is_none(), "the process stays up while InfluxDB is down");
    assert!(std::fs::read_dir(dir.path().join("spill/monitor")).unwrap().count() > 0, "the points wait on disk");

    // back after a minute: every window (the last closed by idleness) arrives once
    influx.restart();
    wait_for("all nine windows", &log, || async { windows(influx_rows(&influx.query(db, drift).await)) == 9 }).await;
    let rows = influx_rows(&influx.query(db, drift).await);
    assert!(rows.iter().all(|r| r["predictions"] == json!(PER_WINDOW)), "{rows:?}");
    let features = influx_rows(&influx.query(db, "SELECT count(tvd) FROM fathom_feature_drift GROUP BY feature").await);
    assert!(features.iter().all(|r| r["count"] == json!(9)), "{features:?}");
    wait_for("the warning cleared", &log, || async {
        let body: Value = client.get(fathom.url("/readyz")).send().await.unwrap().json().await.unwrap();
        body["status"] == "ready" && body.get("warnings").is_none()
    })
    .await;
    fathom.stop();
}
