//! Serving enrichment against a model server on 127.0.0.1 speaking Open Inference Protocol v2
//! (and plain JSON): the vector assembled from stored features, a CDC table column and request
//! fields, imputation, the prediction answered, the prediction record on the broker, and the
//! model's timeout.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use fathom_api::{self as http, serve};
use fathom_project as config;
use fathom_runtime::pipeline;
use serde_json::{json, Value};

static SLOW: AtomicBool = AtomicBool::new(true);
static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

/// A model server: `/v2/models/fraud/infer` answers `score = amount_sum + 1000·(segment == gold)`
/// after checking the request's shape; `/slow/infer` answers after 5 s while [`SLOW`] is set
/// (counting its calls in [`SLOW_CALLS`]); `/json` echoes.
async fn model_server() -> String {
    async fn infer(Json(request): Json<Value>) -> Json<Value> {
        let inputs = request["inputs"].as_array().expect("inputs");
        let input = |name: &str| inputs.iter().find(|i| i["name"] == name).unwrap_or_else(|| panic!("no input {name}"));
        assert_eq!(input("cards.amount_sum_1h")["datatype"], "FP64");
        assert_eq!(input("customers.segment")["datatype"], "BYTES");
        assert_eq!(input("channel")["shape"], json!([1]));
        let amount = input("cards.amount_sum_1h")["data"][0].as_f64().unwrap_or(0.0);
        let gold = input("customers.segment")["data"][0] == "gold";
        let score = amount + if gold { 1000.0 } else { 0.0 };
        Json(
            json!({"model_name": "fraud", "id": request["id"], "outputs": [{"name": "score", "shape": [1], "datatype": "FP64", "data": [score]}]}),
        )
    }
    async fn slow() -> Json<Value> {
        SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
        if SLOW.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Json(json!({"outputs": [{"name": "score", "shape": [1], "datatype": "FP64", "data": [0.5]}]}))
    }
    async fn plain(Json(request): Json<Value>) -> Json<Value> {
        Json(json!({"prediction": {"label": "ok", "features_seen": request["features"].as_object().unwrap().len()}}))
    }
    async fn echo(Json(request): Json<Value>) -> Json<Value> {
        Json(json!({"prediction": request["features"]}))
    }
    let app = Router::new()
        .route("/v2/models/fraud/infer", post(infer))
        .route("/slow/infer", post(slow))
        .route("/json", post(plain))
        .route("/echo", post(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_enriches_calls_the_model_and_logs_the_prediction_record() {
    let model = model_server().await;
    let dir = tempfile::tempdir().unwrap();
    let predictions = common::unique("fraud.predictions");
    let yaml = format!(
        r#"
project: {project}
stores:
  offline: {{ parquet: {{ path: "{dir}/offline" }} }}
  kafka: {{ bootstrap_servers: "{kafka}" }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
  customers: {{ format: debezium, key: customer_id }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards:
    entity: card
    source: tx
    aggregations: [{{ column: amount, functions: [sum, count], windows: [1h], period: 1m }}]
models:
  fraud:
    features: [cards.amount_sum_1h, customers.segment]
    request_fields: [channel]
    impute: {{ cards.amount_sum_1h: -1, customers.segment: unknown }}
    version: "7"
    predictions_topic: "{predictions}"
    endpoint: {{ url: "{model}/v2/models/fraud/infer", protocol: open_inference_v2, timeout: 2s }}
  slow:
    features: [cards.amount_count_1h]
    predictions_topic: "{slow_predictions}"
    endpoint: {{ url: "{model}/slow/infer", protocol: open_inference_v2, timeout: 300ms }}
  plain:
    features: [cards.*]
    endpoint: {{ url: "{model}/json", protocol: json }}
  referenced:
    features: [cards.amount_sum_1h, customers.segment]
    reference: "{dir}/profiles/referenced.json"
    impute: {{ cards.amount_sum_1h: {{ reference: median }}, customers.segment: {{ reference: mode }} }}
    endpoint: {{ url: "{model}/echo", protocol: json }}
"#,
        project = common::unique("serving"),
        dir = dir.path().display(),
        kafka = common::kafka(),
        slow_predictions = common::unique("slow.predictions"),
    );
    // the reference profile, built by `fathom profile` from a training set
    std::fs::write(dir.path().join("fathom.yaml"), &yaml).unwrap();
    let training = arrow_array::RecordBatch::try_from_iter([
        ("cards__amount_sum_1h", Arc::new(arrow_array::Float64Array::from(vec![1.0, 2.0, 3.0, 10.0, 50.0])) as _),
        (
            "customers.segment",
            Arc::new(arrow_array::StringArray::from(vec!["gold", "basic", "basic", "basic", "gold"])) as _,
        ),
    ])
    .unwrap();
    let train = dir.path().join("train.parquet");
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&train).unwrap(), training.schema(), None).unwrap();
    writer.write(&training).unwrap();
    writer.close().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args([
            "profile",
            "-c",
            dir.path().join("fathom.yaml").to_str().unwrap(),
            "--model",
            "referenced",
            "--training-set",
            train.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 rows, 2 features"));
    let project = Arc::new(config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}")));
    let running = pipeline::start(project.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = http::app(serve::state(project.clone(), &running).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = fathom_monitor::https::default_client();
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{base}{path}")).json(&body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"card_id": "c1", "ts": now - 5_000, "amount": 40.0}, {"card_id": "c1", "ts": now - 4_000, "amount": 2.5}]);
    assert_eq!(post("/v1/push/tx", events).await.0, 200);
    let change = json!({"before": null, "after": {"customer_id": 9, "segment": "gold"}, "op": "c", "source": {"ts_ms": now - 1_000}});
    assert_eq!(post("/v1/push/customers", change).await.0, 200);

    let request =
        json!({"entities": {"card_id": "c1", "customer_id": 9}, "request": {"channel": "web"}, "request_id": "req-1"});
    let (status, body) = post("/v1/models/fraud/predict", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prediction"], json!(1042.5), "{body}");
    assert_eq!((body["request_id"].clone(), body["model_version"].clone()), (json!("req-1"), json!("7")));
    assert_eq!(body["feature_names"], json!(["cards.amount_sum_1h", "customers.segment", "channel"]));
    assert!(body["imputed"].as_array().unwrap().is_empty());

    // an unknown card: its sum is imputed; no request_id given: one is generated
    let request = json!({"entities": {"card_id": "nobody", "customer_id": 1}, "request": {"channel": "app"}});
    let (status, body) = post("/v1/models/fraud/predict", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prediction"], json!(-1.0));
    assert_eq!(body["imputed"], json!(["cards.amount_sum_1h", "customers.segment"]));
    assert_eq!(body["statuses"], json!(["NOT_FOUND", "NOT_FOUND", "PRESENT"]));
    let generated = body["request_id"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);

    let records = common::consume(&predictions, 2).await;
    let first: Value = serde_json::from_slice(&records[0].2).unwrap();
    assert_eq!(records[0].1, b"req-1", "keyed by request_id");
    assert_eq!(first["model"], "fraud");
    assert_eq!(first["model_version"], "7");
    assert_eq!(first["prediction"], 1042.5);
    assert_eq!(first["features"], json!({"cards.amount_sum_1h": 42.5, "customers.segment": "gold", "channel": "web"}));
    assert!(first["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(chrono::DateTime::parse_from_rfc3339(first["timestamp"].as_str().unwrap()).is_ok());
    let second: Value = serde_json::from_slice(&records[1].2).unwrap();
    assert_eq!(second["request_id"], json!(generated));

    let (status, body) = post(
        "/v1/enrich",
        json!({"model": "fraud", "entities": {"card_id": "c1", "customer_id": 9}, "request": {"channel": "web"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["features"]["customers.segment"], "gold");

    let (status, body) = post("/v1/models/plain/predict", json!({"entities": {"card_id": "c1"}})).await;
    assert_eq!((status, &body["prediction"]), (200, &json!({"label": "ok", "features_seen": 2})), "{body}");

    // nothing stored for this card or customer: the profile's median and mode stand in
    let (status, body) =
        post("/v1/models/referenced/predict", json!({"entities": {"card_id": "new", "customer_id": 404}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prediction"], json!({"cards.amount_sum_1h": 3.0, "customers.segment": "basic"}));

    // a model endpoint timing out: 504, readiness warns (the rest still serves), no record is
    // logged for the failed prediction; once it answers again the warning clears and each
    // request reaches the model and the log exactly once
    let started = std::time::Instant::now();
    let slow = |id: &str| json!({"entities": {"card_id": "c1"}, "request_id": id});
    let (status, body) = post("/v1/models/slow/predict", slow("slow-1")).await;
    assert_eq!((status, &body["error"]["code"]), (504, &json!("model_timeout")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4), "the timeout cut the call short");
    let readiness = || async { common::get_json(format!("{base}/readyz")).await };
    let ready = readiness().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["warnings"]["model:slow"], "the model did not answer within 300 ms", "{ready}");
    SLOW.store(false, Ordering::SeqCst);
    for id in ["slow-2", "slow-3"] {
        let (status, body) = post("/v1/models/slow/predict", slow(id)).await;
        assert_eq!((status, &body["prediction"]), (200, &json!(0.5)), "{body}");
    }
    assert_eq!(readiness().await, json!({"status": "ready"}));
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 3, "one call per request, no retry");
    let topic = project.predictions_topic("slow");
    let mut logged: Vec<Vec<u8>> = common::consume(&topic, 2).await.into_iter().map(|r| r.1).collect();
    logged.sort();
    assert_eq!(logged, [b"slow-2".to_vec(), b"slow-3".to_vec()]);

    let errors = [
        ("/v1/models/nope/predict", json!({"entities": {}}), 404, "unknown_model"),
        ("/v1/models/fraud/predict", json!({"entities": {"card_id": "c1", "customer_id": 9}}), 400, "missing_field"),
        (
            "/v1/models/fraud/predict",
            json!({"entities": {"card_id": "c1"}, "request": {"channel": "web"}}),
            400,
            "missing_entity",
        ),
        ("/v1/models/fraud/predict", json!({"entities": "c1"}), 400, "malformed_body"),
    ];
    for (path, request, status, code) in errors {
        let (got, body) = post(path, request.clone()).await;
        assert_eq!((got, &body["error"]["code"]), (status, &json!(code)), "{request}: {body}");
    }
    serve::stop(running).await.unwrap();
}
