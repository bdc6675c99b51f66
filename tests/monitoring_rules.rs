//! The monitor's rules end to end on embedded defaults (no Kafka, Redis or InfluxDB: records
//! pushed over HTTP, points written to `monitoring/points.lp`): predictions and real labels through
//! `POST /v1/models/{model}/predictions` and `/labels`, a performance rule that fires, the webhook
//! retry policy (a 4xx fails at once, a 5xx is retried up to `max_attempts`), `retrain: { webhook }`
//! with its signed payload, and a feature's own drift thresholds. Then both over HTTPS, against
//! servers of the test's own CA: an alert trusting it through `tls.ca`, one that does not (its
//! certificate error in `/readyz`), and the retraining webhook with a client certificate (mutual
//! TLS).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use common::tls::{certificates, HttpsReceiver};
use fathom_api::{self as http, serve};
use fathom_monitor::profile::{CategoricalProfile, FeatureProfile, NumericProfile, Profile};
use fathom_project as config;
use fathom_runtime::pipeline;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// Requests the receiver got: (path, headers, body); `/reject` answers 400, `/down` 500.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<(String, HeaderMap, String)>>>,
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let path = uri.path().to_string();
    r.requests.lock().unwrap().push((path.clone(), headers, String::from_utf8_lossy(&body).to_string()));
    match path.as_str() {
        "/reject" => StatusCode::BAD_REQUEST,
        "/down" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    }
}

impl Receiver {
    fn to(&self, path: &str) -> Vec<(HeaderMap, String)> {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|(p, _, _)| p == path).map(|(_, h, b)| (h.clone(), b.clone())).collect()
    }
}

/// Event time of the first window: a whole 10 minutes.
const T0: i64 = 1_795_168_800_000;
const MIN: i64 = 60_000;

fn profile() -> Profile {
    let amounts: Vec<f64> = (0..10_000).map(|i| f64::from(i % 100)).collect();
    Profile {
        format: fathom_monitor::profile::FORMAT.into(),
        model: "churn".into(),
        created: "2026-01-01T00:00:00Z".into(),
        source: "test".into(),
        rows: 10_000,
        features: [
            ("amount".to_string(), FeatureProfile::Numeric(NumericProfile::build(amounts, 0))),
            (
                "country".to_string(),
                FeatureProfile::Categorical(CategoricalProfile {
                    count: 10_000,
                    missing: 0,
                    top: vec![("DE".into(), 5_000), ("FR".into(), 5_000)],
                    other: 0,
                }),
            ),
        ]
        .into(),
    }
}

/// The value of `field` in a line-protocol line (strings unquoted, integers without `i`).
fn field(line: &str, name: &str) -> Option<String> {
    let line = line.replace("\\ ", "_"); // escaped spaces in tags
    let fields = line.split(' ').nth(1)?;
    fields.split(',').find_map(|f| {
        f.strip_prefix(&format!("{name}=")).map(|v| v.trim_matches('"').trim_end_matches('i').to_string())
    })
}

/// Starts the pipeline and API on embedded defaults for model `churn` with these `alerts:` and
/// `retrain:` lines; answers (API base URL, the running pipeline).
async fn serve_churn(dir: &std::path::Path, targets: &str) -> (String, pipeline::Running) {
    let d = dir.display();
    profile().save(&dir.join("churn.json")).unwrap();
    let yaml = format!(
        r#"
project: {project}
stores:
  offline: {{ parquet: {{ path: "{d}/offline" }} }}
  dead_letters: {{ path: "{d}/dlq" }}
processing: {{ checkpoint_interval: 200ms }}
sources:
  tx: {{ key: id, timestamp: ts }}
entities:
  id: {{ key: id }}
feature_sets:
  ids: {{ entity: id, source: tx, features: [amount] }}
models:
  churn:
    features: []
    reference: "{d}/churn.json"
    labels: {{ max_delay: 1m }}
    monitoring:
      window: 10m
      sliding: none
      lateness: 1m
      idle: 1h
      drift: {{ features: {{ amount: {{ possible: 0.05, detected: 0.1 }} }} }}
{targets}"#,
        project = common::unique("rules"),
    );
    let project = Arc::new(config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}")));
    let running = pipeline::start(project.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = http::app(serve::state(project.clone(), &running).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, running)
}

/// Window 0 of model `churn`, closed with its labels final: 40 predictions, every one "0"; 20
/// labels, 8 of them "1" — the model missed every positive (recall 0; precision undefined:
/// nothing was predicted positive). Amounts sit a little above the reference's, beyond the
/// feature's own thresholds but not the model's.
async fn miss_every_positive(base: &str) {
    let push = |what: &'static str, records: Vec<Value>| {
        let url = format!("{base}/v1/models/churn/{what}");
        async move {
            let body = records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
            let r = fathom_monitor::https::default_client().post(url).body(body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let predictions: Vec<Value> = (0..40)
        .map(|i| {
            json!({"request_id": format!("r{i}"), "model": "churn", "timestamp": T0 + i * 10_000,
                   "features": {"amount": f64::from(i as i32 % 100) + 40.0, "country": if i % 2 == 0 { "DE" } else { "FR" }},
                   "prediction": {"class": "0", "probabilities": {"0": 0.9, "1": 0.1}}})
        })
        .collect();
    let labels: Vec<Value> = (0..20)
        .map(
            |i| json!({"request_id": format!("r{i}"), "label": i64::from(i < 8), "timestamp": T0 + i * 10_000 + 5_000}),
        )
        .collect();
    assert_eq!(push("predictions", predictions).await["accepted"], 40);
    assert_eq!(push("labels", labels).await["accepted"], 20);
    // both clocks pass window 0's end by more than max_delay and lateness: it closes and its
    // labels are final
    let next = json!({"request_id": "later", "model": "churn", "timestamp": T0 + 13 * MIN,
                      "features": {"amount": 50.0, "country": "DE"}, "prediction": {"class": "0"}});
    push("predictions", vec![next]).await;
    push("labels", vec![json!({"request_id": "later", "label": 0, "timestamp": T0 + 13 * MIN})]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_on_pushed_labels_and_deliveries_follow_the_retry_policy() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(post(receive)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let targets = format!(
        r#"    alerts:
      - {{ name: low recall, metric: recall, op: "<", threshold: 0.5, webhook: "{hooks}/recall" }}
      - {{ name: rejected, metric: accuracy, op: "<", threshold: 2, webhook: "{hooks}/reject", max_attempts: 5 }}
      - {{ name: flaky, metric: accuracy, op: "<", threshold: 2, webhook: "{hooks}/down", max_attempts: 2 }}
    retrain: {{ metric: recall, op: "<", threshold: 0.5, webhook: "{hooks}/retrain", secret: "s3cret" }}
"#
    );
    let (base, running) = serve_churn(dir.path(), &targets).await;
    miss_every_positive(&base).await;

    // the recall alert and the retraining webhook are delivered; the 400 is tried once, the 500
    // twice (max_attempts), then both are given up
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.to("/down").len() < 2 || receiver.to("/retrain").is_empty() || receiver.to("/recall").is_empty() {
        assert!(
            Instant::now() < deadline,
            "deliveries: {:?}",
            receiver.requests.lock().unwrap().iter().map(|r| r.0.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // a third attempt would come after ~4 s
    assert_eq!(receiver.to("/reject").len(), 1, "a 4xx is not retried");
    assert_eq!(receiver.to("/down").len(), 2, "a 5xx is retried up to max_attempts");
    assert_eq!(receiver.to("/recall").len(), 1);

    let (alert_headers, alert) = &receiver.to("/recall")[0];
    let alert: Value = serde_json::from_str(alert).unwrap();
    assert_eq!((alert["model"].clone(), alert["metric"].clone()), (json!("churn"), json!("recall")), "{alert}");
    assert_eq!(alert["value"], json!(0.0), "{alert}");
    assert!(alert_headers.contains_key("x-fathom-delivery"));

    // retrain: { webhook } — the signed trigger
    let (headers, body) = &receiver.to("/retrain")[0];
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let signature = format!("sha256={hex}");
    assert_eq!(headers["x-fathom-signature"].to_str().unwrap(), signature);
    let trigger: Value = serde_json::from_str(body).unwrap();
    let parameters = &trigger["parameters"];
    assert_eq!(
        (trigger["event"].clone(), parameters["model"].clone()),
        (json!("retrain"), json!("churn")),
        "{trigger}"
    );
    assert!(parameters["reason"].as_str().unwrap().starts_with("recall < 0.5 for 1 window"), "{trigger}");
    assert_eq!(parameters["start"], "2026-11-20T10:00:00+00:00", "the window that fired it: {trigger}");
    assert!(headers.contains_key("idempotency-key"), "{headers:?}");

    // the points: performance from the pushed labels, the feature's own status, the deliveries
    let points_path = dir.path().join("monitoring/points.lp");
    let deadline = Instant::now() + Duration::from_secs(10);
    let points = loop {
        let text = std::fs::read_to_string(&points_path).unwrap_or_default();
        if text.lines().filter(|l| l.starts_with("fathom_alert_deliveries,")).count() >= 3 {
            break text;
        }
        assert!(Instant::now() < deadline, "delivery records in {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let window_end = format!(" {}", (T0 + 10 * MIN) * 1_000_000);
    let performance: Vec<&str> =
        points.lines().filter(|l| l.starts_with("fathom_model_performance,") && l.ends_with(&window_end)).collect();
    let last = performance.last().unwrap_or_else(|| panic!("performance of window 0 in {points}"));
    // 20 labelled: 12 right (the "0"s), 8 missed positives
    assert_eq!(field(last, "labelled").as_deref(), Some("20"), "{last}");
    assert_eq!(field(last, "accuracy").and_then(|a| a.parse::<f64>().ok()), Some(12.0 / 20.0), "{last}");
    assert_eq!(field(last, "final").as_deref(), Some("true"), "{last}");
    let number = |name: &str| field(last, name).map(|v| v.parse::<f64>().unwrap());
    assert_eq!(number("recall"), Some(0.0), "{last}");
    // log-loss: 12 labels "0" at p = 0.9, 8 labels "1" at p = 0.1
    let log_loss = (12.0 * -(0.9f64.ln()) + 8.0 * -(0.1f64.ln())) / 20.0;
    assert!((number("log_loss").unwrap() - log_loss).abs() < 1e-12, "{last}");
    assert_eq!(field(last, "precision"), None, "precision is undefined, not written: {last}");
    let drift = |feature: &str| {
        points
            .lines()
            .find(|l| {
                l.starts_with("fathom_feature_drift,")
                    && l.contains(&format!("feature={feature},"))
                    && l.ends_with(&window_end)
            })
            .unwrap_or_else(|| panic!("{feature} drift in {points}"))
            .to_string()
    };
    assert_eq!(field(&drift("amount"), "status").as_deref(), Some("drift_detected"), "its own thresholds");
    let model = points
        .lines()
        .find(|l| l.starts_with("fathom_model_drift,") && l.ends_with(&window_end))
        .unwrap_or_else(|| panic!("model drift in {points}"));
    let score: f64 = field(model, "score").unwrap().parse().unwrap();
    assert!(score < 0.5 && field(model, "status").as_deref() == Some("no_drift"), "the model's thresholds: {model}");
    // a delivery record per alert, by its id (`<model>:alert:<rule index>:<window end>:fired`)
    let delivery = |rule: usize| -> (String, Option<String>, Option<String>) {
        let id = format!("id=\"churn:alert:{rule}:");
        let line = points
            .lines()
            .find(|l| l.starts_with("fathom_alert_deliveries,") && l.contains(&id))
            .unwrap_or_else(|| panic!("rule {rule}'s delivery in {points}"));
        let outcome = line.split(",outcome=").nth(1).unwrap().split([',', ' ']).next().unwrap().to_string();
        (outcome, field(line, "attempts"), field(line, "status"))
    };
    let record = |outcome: &str, attempts: &str, status: &str| {
        (outcome.to_string(), Some(attempts.to_string()), Some(status.to_string()))
    };
    assert_eq!(delivery(0), record("delivered", "1", "200"));
    assert_eq!(delivery(1), record("failed", "1", "400"), "a 4xx fails at once, its status recorded");
    assert_eq!(delivery(2), record("failed", "2", "500"), "max_attempts exhausted");
    // each alert's points carry its configured name
    for name in ["low\\ recall", "rejected", "flaky"] {
        let tag = format!(",rule={name}");
        assert!(points.lines().any(|l| l.starts_with("fathom_alerts,") && l.contains(&tag)), "{tag} in {points}");
    }
    serve::stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_retraining_are_delivered_over_https_with_the_targets_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let server = HttpsReceiver::start(dir.path(), &certs, false);
    let mutual = HttpsReceiver::start(dir.path(), &certs, true);
    let (hooks, mutual_hooks, ca) = (&server.url, &mutual.url, &certs.ca);
    let (cert, key) = (&certs.client_cert, &certs.client_key);
    let targets = format!(
        r#"    alerts:
      - {{ name: trusted, metric: recall, op: "<", threshold: 0.5, webhook: "{hooks}/recall", tls: {{ ca: "file:{ca}" }} }}
      - {{ name: untrusted, metric: recall, op: "<", threshold: 0.5, webhook: "{hooks}/untrusted", max_attempts: 1 }}
    retrain:
      metric: recall
      op: "<"
      threshold: 0.5
      webhook: "{mutual_hooks}/retrain"
      secret: "s3cret"
      tls: {{ ca: "file:{ca}", cert: "file:{cert}", key: "file:{key}" }}
"#
    );
    let (base, running) = serve_churn(dir.path(), &targets).await;
    miss_every_positive(&base).await;

    let readyz = || async {
        let r = fathom_monitor::https::default_client().get(format!("{base}/readyz")).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let ready = readyz().await;
        if !server.requests().is_empty() && !mutual.requests().is_empty() && ready["warnings"].is_object() {
            break ready;
        }
        assert!(Instant::now() < deadline, "{ready} {:?} {:?}", server.requests(), mutual.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // the trusted alert arrived; the untrusted one never reached the server
    let received = server.requests();
    assert_eq!(received.iter().map(|r| r["path"].clone()).collect::<Vec<_>>(), [json!("/recall")], "{received:?}");
    let alert: Value = serde_json::from_str(received[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!((alert["model"].clone(), alert["metric"].clone()), (json!("churn"), json!("recall")), "{alert}");
    // readiness names the failing target and the certificate error; the process stays ready
    assert_eq!(ready["status"], "ready", "{ready}");
    let warning = ready["warnings"]["models.churn.alerts[1]"].as_str().unwrap_or_default();
    assert!(warning.starts_with("monitor: delivery failed:") && warning.contains("UnknownIssuer"), "{ready}");
    assert!(ready["warnings"].get("models.churn.alerts[0]").is_none(), "{ready}");
    // the retraining webhook over mutual TLS, signed, from the configured client certificate
    let received = mutual.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["client"]["commonName"], "fathom-client", "{received:?}");
    let body = received[0]["body"].as_str().unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(received[0]["headers"]["x-fathom-signature"], format!("sha256={hex}"), "{received:?}");
    serve::stop(running).await.unwrap();
}
