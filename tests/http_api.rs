//! The HTTP API in-process on 127.0.0.1: push (JSON array and NDJSON), the read path with
//! statuses and windows that expire at read time (real Redis), dead letters per reason, JSON
//! errors, health and metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use fathom_api::{self as http, serve};
use fathom_project::{self as config, Project};
use fathom_runtime::pipeline;
use serde_json::{json, Value};

struct Server {
    base: String,
    running: Option<fathom_runtime::pipeline::Running>,
    _dir: tempfile::TempDir,
    project: Arc<Project>,
}

async fn server(online: &str) -> Server {
    server_with(online, "").await
}

/// A server whose project file ends with `extra` (e.g. a `server:` section).
async fn server_with(online: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
project: {project}
stores:
  online: {online}
  offline: {{ parquet: {{ path: "{dir}/offline" }} }}
  dead_letters: {{ path: "{dir}/dlq" }}
sources:
  tx: {{ key: card_id, timestamp: ts, max_record_bytes: 300, max_key_bytes: 64 }}
  customers: {{ format: debezium, key: customer_id }}
entities:
  card: {{ key: card_id }}
  segment: {{ key: segment }}
feature_sets:
  cards:
    entity: card
    source: tx
    ttl: 2h
    features: [merchant]
    aggregations:
      - {{ column: amount, functions: [count, sum, mean], windows: [1h], period: 1s }}
  per_segment:
    entity: segment
    source: customers
    aggregations: [{{ column: customer_id, functions: [count] }}]
feature_vectors:
  fraud: {{ features: [cards.amount_sum_1h, cards.merchant, customers.segment, per_segment.customer_id_count] }}
{extra}
"#,
        project = common::unique("api"),
        dir = dir.path().display(),
    );
    start(&yaml, dir).await
}

/// A server of the project file `yaml` (whose paths lie in `dir`).
async fn start(yaml: &str, dir: tempfile::TempDir) -> Server {
    let project = Arc::new(config::parse(yaml).unwrap());
    let running = pipeline::start(project.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = http::app(serve::state(project.clone(), &running).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { base, running: Some(running), _dir: dir, project }
}

impl Server {
    async fn push(&self, body: &str) -> (u16, Value) {
        self.push_to("tx", body).await
    }

    async fn push_to(&self, source: &str, body: &str) -> (u16, Value) {
        let r = fathom_monitor::https::default_client()
            .post(format!("{}/v1/push/{source}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = fathom_monitor::https::default_client()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Status and error code of a request with an optional bearer token.
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let client = fathom_monitor::https::default_client();
        let url = format!("{}{path}", self.base);
        let mut request = if method == "GET" { client.get(url) } else { client.post(url).body(body.to_string()) };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str::<Value>(&text).map(|v| v["error"]["code"].clone()).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = fathom_monitor::https::default_client().get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn feature(&self, key: &str, name: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/features/cards/{key}")).await;
        assert_eq!(status, 200, "{body}");
        body["features"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap().clone()
    }

    async fn stop(mut self) {
        serve::stop(self.running.take().unwrap()).await.unwrap();
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_expire_at_read_time_through_redis() {
    let s = server(&format!("{{ redis: {{ url: \"{}\" }} }}", common::redis_url())).await;
    let now = chrono::Utc::now().timestamp_millis();
    // one event that leaves the 1h window about six seconds from now, one well inside it
    let old = now - 3_600_000 + 6_000;
    let body = format!(
        "{}\n{}\n",
        json!({"card_id": "c1", "ts": rfc3339(old), "amount": 10.0, "merchant": "m1"}),
        json!({"card_id": "c1", "ts": rfc3339(now - 60_000), "amount": 30.0})
    );
    assert_eq!(s.push(&body).await, (200, json!({"accepted": 2, "dead_lettered": 0})));
    let count = s.feature("c1", "amount_count_1h").await;
    assert_eq!((count["value"].clone(), count["status"].clone()), (json!(2), json!("PRESENT")));
    assert_eq!(s.feature("c1", "amount_mean_1h").await["value"], json!(20.0));
    let merchant = s.feature("c1", "merchant").await;
    assert_eq!(merchant["value"], json!("m1"), "the newer event has no merchant: the latest value stays");
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    assert_eq!(s.feature("c1", "amount_count_1h").await["value"], json!(1), "the old event left the window");
    assert_eq!(s.feature("c1", "amount_sum_1h").await["value"], json!(30.0));
    // unknown entity
    let missing = s.feature("nobody", "amount_count_1h").await;
    assert_eq!((missing["value"].clone(), missing["status"].clone()), (Value::Null, json!("NOT_FOUND")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_older_than_the_ttl_are_outside_max_age() {
    let s = server("{}").await;
    let now = chrono::Utc::now().timestamp_millis();
    let body =
        json!([{"card_id": "c2", "ts": rfc3339(now - 3 * 3_600_000), "merchant": "m9", "amount": 1}]).to_string();
    assert_eq!(s.push(&body).await, (200, json!({"accepted": 1, "dead_lettered": 0})));
    let merchant = s.feature("c2", "merchant").await;
    assert_eq!((merchant["value"].clone(), merchant["status"].clone()), (Value::Null, json!("OUTSIDE_MAX_AGE")));
    assert_eq!(merchant["event_timestamp"].as_str().map(|t| t.len() > 10), Some(true));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_record_lands_in_the_dead_letter_file_and_the_stream_keeps_flowing() {
    let s = server("{}").await;
    let now = chrono::Utc::now().timestamp_millis();
    let good = |amount: f64| json!({"card_id": "c3", "ts": now, "amount": amount}).to_string();
    let body = [
        good(1.0),
        "{\"card_id\": \"c3\", \"ts\": ".to_string(),
        json!({"ts": now, "amount": 1}).to_string(),
        json!({"card_id": "c3", "amount": 1}).to_string(),
        json!({"card_id": "c3", "ts": now, "amount": "1"}).to_string(),
        json!({"card_id": "c3", "ts": now, "pad": "x".repeat(400)}).to_string(),
        json!({"card_id": "c3", "ts": now - 2 * 3_600_000, "amount": 5}).to_string(),
        json!({"card_id": "c".repeat(65), "ts": now, "amount": 1}).to_string(),
        good(2.0),
    ]
    .join("\n");
    let (status, summary) = s.push(&body).await;
    assert_eq!((status, summary["accepted"].clone(), summary["dead_lettered"].clone()), (200, json!(2), json!(7)));
    assert_eq!(s.feature("c3", "amount_sum_1h").await["value"], json!(3.0));
    let dlq = s.project.stores.dead_letters.path.join("tx.dlq");
    let lines: Vec<Value> =
        std::fs::read_to_string(&dlq).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reasons: Vec<&str> = lines.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["malformed_json", "missing_key", "missing_timestamp", "wrong_type", "oversized", "key_too_long", "late"]
    );
    // the answer says why, record by record, as the dead letters do
    let answered: Vec<(i64, &str, &str)> = summary["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_i64().unwrap(), e["reason"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    let lettered: Vec<(i64, &str, &str)> = lines
        .iter()
        .map(|l| (l["offset"].as_i64().unwrap(), l["reason"].as_str().unwrap(), l["message"].as_str().unwrap()))
        .collect();
    assert_eq!(answered, lettered, "{summary}");
    assert_eq!(lines[0]["payload"], json!("{\"card_id\": \"c3\", \"ts\": "), "original bytes kept");
    assert_eq!(lines[0]["offset"], json!(2), "NDJSON line number");
    assert!(lines[3]["message"].as_str().unwrap().contains("\"amount\" must be a number"));
    assert_eq!(lines[5]["message"], json!("key field \"card_id\" is 65 bytes, over the limit of 64"));
    let metrics = fathom_monitor::https::default_client()
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fathom_dead_letters_total{source=\"tx\",reason=\"late\"}"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_stable_codes_and_health_is_open() {
    let s = server("{}").await;
    let (status, body) = s.get("/v1/features/nope/k").await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("unknown_feature_set")));
    let r = fathom_monitor::https::default_client()
        .post(format!("{}/v1/push/nope", s.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], json!("unknown_source"));
    let (status, body) = s.push("[{\"card_id\": 1},").await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("malformed_body")));
    assert!(body["error"]["message"].as_str().unwrap().contains("line 1"), "{body}");
    assert_eq!(s.get("/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(s.get("/readyz").await, (200, json!({"status": "ready"})));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lookup_mixes_feature_sets_table_columns_and_table_aggregations() {
    let server = server(&format!("{{ redis: {{ url: \"{}\" }} }}", common::redis_url())).await;
    let now = chrono::Utc::now().timestamp_millis();
    let change = |id: i64, segment: &str, lsn: i64| {
        json!({"before": null, "after": {"customer_id": id, "segment": segment}, "op": "c",
               "source": {"connector": "postgresql", "ts_ms": now - 1_000, "lsn": lsn}})
    };
    let body = [change(1, "gold", 1), change(2, "basic", 2), change(3, "gold", 3)].map(|c| c.to_string()).join("\n");
    assert_eq!(server.push_to("customers", &body).await.0, 200);
    let events = json!([{"card_id": "c1", "ts": now - 5_000, "amount": 4.5, "merchant": "m1"},
                        {"card_id": "c1", "ts": now - 4_000, "amount": 1.5, "merchant": "m2"}]);
    assert_eq!(server.push(&events.to_string()).await.0, 200);

    let request = json!({"feature_vector": "fraud", "entities": {"card_id": ["c1", "c9"], "customer_id": [1, "7"], "segment": ["gold", "gold"]}});
    let (status, body) = server.post("/v1/features", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["feature_names"],
        json!(["cards.amount_sum_1h", "cards.merchant", "customers.segment", "per_segment.customer_id_count"])
    );
    let row = &body["rows"][0];
    assert_eq!(row["values"], json!([6.0, "m2", "gold", 2]), "{body}");
    assert_eq!(row["statuses"], json!(["PRESENT", "PRESENT", "PRESENT", "PRESENT"]));
    assert_eq!(row["entities"], json!({"card_id": "c1", "customer_id": "1", "segment": "gold"}));
    let unknown = &body["rows"][1];
    assert_eq!(unknown["values"], json!([null, null, null, 2]));
    assert_eq!(unknown["statuses"], json!(["NOT_FOUND", "NOT_FOUND", "NOT_FOUND", "PRESENT"]));

    // the same by reference, with a wildcard
    let request = json!({"features": ["cards.*"], "entities": {"card_id": ["c1"]}});
    let (status, body) = server.post("/v1/features", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["feature_names"].as_array().unwrap().len(), 4, "{body}");

    let errors = [
        (
            json!({"features": ["cards.nope"], "entities": {"card_id": ["c1"]}}),
            "unknown_feature",
            "has no feature \"nope\"",
        ),
        (
            json!({"features": ["nope.x"], "entities": {}}),
            "unknown_feature",
            "no feature set or CDC table named \"nope\"",
        ),
        (
            json!({"features": ["customers.segment"], "entities": {"card_id": ["c1"]}}),
            "missing_entity",
            "\"customer_id\"",
        ),
        (json!({"feature_vector": "nope", "entities": {}}), "unknown_feature_vector", "\"nope\""),
        (json!({"features": ["cards.*"], "feature_vector": "fraud", "entities": {}}), "malformed_body", "exactly one"),
        (json!({"features": ["cards.*"], "entities": {"card_id": [true]}}), "malformed_body", "entities.card_id[0]"),
        (
            json!({"features": ["cards.*"], "entities": {"card_id": ["c1", "k".repeat(513)]}}),
            "key_too_long",
            "entities.card_id[1] is 513 bytes long; the limit is 512",
        ),
    ];
    for (request, code, message) in errors {
        let (status, body) = server.post("/v1/features", request.clone()).await;
        assert_eq!(status, 400, "{request} → {body}");
        assert_eq!(body["error"]["code"], code, "{request} → {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(message), "{request} → {body}");
    }
    // more features than `server.max_lookup_features` (default 1000) in one request
    let many = json!({"features": vec!["cards.merchant"; 1001], "entities": {"card_id": ["c1"]}});
    let (status, body) = server.post("/v1/features", many).await;
    assert_eq!((status, body["error"]["code"].clone()), (413, json!("too_large")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("the limit is 1000"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feast_clients_get_feasts_response_shape() {
    let server = server(&format!("{{ redis: {{ url: \"{}\" }} }}", common::redis_url())).await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"card_id": "c1", "ts": now - 5_000, "amount": 4.5, "merchant": "m1"},
                        {"card_id": "c2", "ts": now - 4_000, "amount": 1.5, "merchant": "m2"}]);
    assert_eq!(server.push(&events.to_string()).await.0, 200);
    let request =
        json!({"features": ["cards:amount_sum_1h", "cards:merchant"], "entities": {"card_id": ["c1", "c2", "c3"]}});
    let (status, body) = server.post("/get-online-features", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["feature_names"], json!(["card_id", "amount_sum_1h", "merchant"]));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["values"], json!(["c1", "c2", "c3"]), "join keys first, as given");
    assert_eq!(results[0]["event_timestamps"][0], "1970-01-01T00:00:00Z");
    assert_eq!(results[1]["values"], json!([4.5, 1.5, null]), "column-major: one result per feature");
    assert_eq!(results[1]["statuses"], json!(["PRESENT", "PRESENT", "NOT_FOUND"]));
    assert_eq!(results[2]["values"], json!(["m1", "m2", null]));
    assert_eq!(results[2]["event_timestamps"][2], "1970-01-01T00:00:00Z");

    let request = json!({"feature_service": "fraud", "full_feature_names": true,
                         "entities": {"card_id": ["c1"], "customer_id": [1], "segment": ["gold"]}});
    let (status, body) = server.post("/get-online-features", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["metadata"]["feature_names"],
        json!([
            "card_id",
            "customer_id",
            "segment",
            "cards__amount_sum_1h",
            "cards__merchant",
            "customers__segment",
            "per_segment__customer_id_count"
        ])
    );
    let (status, body) =
        server.post("/get-online-features", json!({"features": ["cards.merchant"], "entities": {}})).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("unknown_feature")), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_needs_a_token_with_its_scope() {
    let hash = |t: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(t.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    std::env::set_var("FATHOM_TEST_PUSH_TOKEN", "push-secret");
    let auth = format!(
        "server:\n  auth:\n    tokens:\n      - {{ name: reader, sha256: {}, scopes: [read] }}\n      - {{ name: ingest, token: env:FATHOM_TEST_PUSH_TOKEN, scopes: [push] }}\n      - {{ name: ops, sha256: {}, scopes: [admin] }}\n",
        hash("read-secret"),
        hash("admin-secret")
    );
    let server = server_with("{ embedded: {} }", &auth).await;
    let lookup = json!({"features": ["cards.*"], "entities": {"card_id": ["c1"]}}).to_string();
    let feast = json!({"features": ["cards:merchant"], "entities": {"card_id": ["c1"]}}).to_string();
    let event = json!([{"card_id": "c1", "ts": 1_000, "amount": 1.0}]).to_string();
    let routes: [(&str, &str, &str, &str); 5] = [
        ("GET", "/v1/features/cards/c1", "read", ""),
        ("POST", "/v1/features", "read", &lookup),
        ("POST", "/get-online-features", "read", &feast),
        ("POST", "/v1/push/tx", "push", &event),
        ("GET", "/metrics", "admin", ""),
    ];
    let tokens = [("read", "read-secret"), ("push", "push-secret"), ("admin", "admin-secret")];
    for (method, path, scope, body) in routes {
        assert_eq!(server.call(method, path, None, body).await, (401, json!("unauthorized")), "{path} without a token");
        assert_eq!(server.call(method, path, Some("wrong"), body).await, (401, json!("unauthorized")), "{path}");
        for (granted, token) in tokens {
            let (status, code) = server.call(method, path, Some(token), body).await;
            if granted == scope || granted == "admin" {
                assert_eq!(status, 200, "{path} with {granted}: {code}");
            } else {
                assert_eq!((status, code), (403, json!("forbidden")), "{path} with {granted}");
            }
        }
    }
    for open in ["/healthz", "/readyz"] {
        assert_eq!(server.call("GET", open, None, "").await.0, 200, "{open} stays open");
    }
    // every route the router has (it is built from `routes()` alone) refuses a request without
    // a token or with a token lacking its scope, except the two health endpoints; and the
    // OpenAPI document describes each one
    let document: Value = fathom_monitor::https::default_client()
        .get(format!("{}/openapi.json", server.base))
        .bearer_auth("read-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for route in fathom_api::routes() {
        let operation = &document["paths"][route.path][route.method.to_lowercase()];
        assert!(operation.is_object(), "{} {} is not in the OpenAPI document", route.method, route.path);
        let concrete = route
            .path
            .replace("{source}", "tx")
            .replace("{feature_set}", "cards")
            .replace("{key}", "c1")
            .replace("{model}", "m");
        let (status, code) = server.call(route.method, &concrete, None, "{}").await;
        let Some(scope) = route.scope else {
            assert_eq!(status, 200, "{concrete} is open");
            continue;
        };
        assert_eq!((status, code), (401, json!("unauthorized")), "{} {} must need a token", route.method, route.path);
        for (granted, token) in tokens {
            let (status, code) = server.call(route.method, &concrete, Some(token), "{}").await;
            if granted == scope.name() || granted == "admin" {
                assert!(status != 401 && status != 403, "{concrete} with {granted}: {status} {code}");
            } else {
                assert_eq!((status, code), (403, json!("forbidden")), "{concrete} with {granted}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 10, "push, two lookups, feast, enrich, predict, predictions, labels, metrics, openapi");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_its_schemas() {
    let server = server("{ embedded: {} }").await;
    let (status, document) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{document}");
    // the document and the router describe the same operations
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        documented.extend(operations.as_object().unwrap().keys().map(|m| (m.to_uppercase(), path.clone())));
    }
    let mut served: Vec<(String, String)> =
        fathom_api::routes().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    assert_eq!(served.len(), 12);
    // every referenced schema is defined
    let text = document.to_string();
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(schemas.contains_key(name), "{name} referenced but not defined");
    }
    assert_eq!(
        document["components"]["schemas"]["Status"]["enum"],
        json!(["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"])
    );
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    server.stop().await;
}

/// Debezium envelopes as each connector's documentation shows them (field names and types of
/// `source`), pushed to a `format: debezium` source and read back: a change's order is the
/// connector's log position, never its `ts_ms` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changes_apply_in_the_connectors_log_order() {
    let s = server("{}").await;
    let envelope = |op: &str, after: Value, source: Value| {
        json!({"before": null, "after": after, "op": op, "source": source, "ts_ms": 1_795_168_800_000i64}).to_string()
    };
    // MySQL 5.7: whole-second ts_ms, binlog file/pos/row, no lsn
    let mysql = |ts_ms: i64, file: &str, pos: i64, row: i64| {
        json!({"version": "2.7.3.Final", "connector": "mysql", "name": "dbserver1", "ts_ms": ts_ms, "snapshot": "false",
               "db": "inventory", "sequence": null, "table": "customers", "server_id": 223344, "gtid": null,
               "file": file, "pos": pos, "row": row, "thread": 7, "query": null})
    };
    let t = 1_795_168_800_000i64; // a whole second
    let customer =
        |id: i64, segment: &str, credit: i64| json!({"customer_id": id, "segment": segment, "credit": credit});
    let body = [
        envelope("c", customer(1, "bronze", 100), mysql(t, "mysql-bin.000003", 484, 0)),
        envelope("u", customer(1, "silver", 250), mysql(t, "mysql-bin.000003", 805, 0)),
        envelope("u", customer(2, "bronze", 10), mysql(t, "mysql-bin.000003", 1100, 0)),
        envelope("u", customer(2, "gold", 20), mysql(t, "mysql-bin.000003", 1100, 1)),
    ]
    .join("\n");
    assert_eq!(s.push_to("customers", &body).await.0, 200);
    // a redelivered older change, later, from an earlier binlog file
    let old = envelope("u", customer(1, "stale", 1), mysql(t + 5_000, "mysql-bin.000002", 99_999, 0));
    assert_eq!(s.push_to("customers", &old).await.0, 200);

    // PostgreSQL: the snapshot reads row 7 at 10:30; an update committed at 10:05 during the
    // snapshot streams afterwards at a later LSN
    let pg = |ts_ms: i64, lsn: i64, snapshot: &str| {
        json!({"version": "2.7.3.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms, "ts_us": ts_ms * 1000,
               "ts_ns": ts_ms * 1_000_000, "snapshot": snapshot, "db": "shop", "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 8),
               "schema": "public", "table": "customers", "txId": 771, "lsn": lsn, "xmin": null})
    };
    let ten = 1_795_168_800_000i64 - 1_795_168_800_000i64 % 86_400_000 + 10 * 3_600_000;
    let body = [
        envelope("r", customer(7, "bronze", 1), pg(ten + 30 * 60_000, 33_554_432, "last")),
        envelope("u", customer(7, "gold", 2), pg(ten + 5 * 60_000, 33_554_600, "false")),
    ]
    .join("\n");
    assert_eq!(s.push_to("customers", &body).await.0, 200);

    // PostgreSQL TOAST: an update that did not touch `notes` sends the placeholder
    let body = [
        envelope(
            "c",
            json!({"customer_id": 8, "segment": "silver", "notes": "a long text"}),
            pg(ten, 40_000_000, "false"),
        ),
        envelope(
            "u",
            json!({"customer_id": 8, "segment": "gold", "notes": "__debezium_unavailable_value"}),
            pg(ten + 1_000, 40_000_100, "false"),
        ),
    ]
    .join("\n");
    assert_eq!(s.push_to("customers", &body).await.0, 200);

    // SQL Server: LSNs as fixed-width hex text, event_serial_no; the snapshot row has no change_lsn
    let mssql = |ts_ms: i64, commit: &str, change: Option<&str>, serial: Option<i64>, snapshot: &str| {
        json!({"version": "2.7.3.Final", "connector": "sqlserver", "name": "server1", "ts_ms": ts_ms, "snapshot": snapshot,
               "db": "testDB", "sequence": null, "schema": "dbo", "table": "customers", "change_lsn": change,
               "commit_lsn": commit, "event_serial_no": serial})
    };
    let body = [
        envelope("r", customer(11, "bronze", 1), mssql(ten + 60_000, "00000025:00000d98:0002", None, None, "true")),
        envelope(
            "u",
            customer(11, "gold", 2),
            mssql(ten, "00000025:00000f00:0005", Some("00000025:00000f00:0003"), Some(2), "false"),
        ),
        envelope(
            "u",
            customer(11, "silver", 3),
            mssql(ten, "00000025:00000f00:0005", Some("00000025:00000f00:0003"), Some(1), "false"),
        ),
    ]
    .join("\n");
    assert_eq!(s.push_to("customers", &body).await.0, 200);

    // Oracle: SCNs as decimal text
    let oracle = |ts_ms: i64, scn: &str, commit: Option<&str>| {
        json!({"version": "2.7.3.Final", "connector": "oracle", "name": "server1", "ts_ms": ts_ms, "snapshot": "false",
               "db": "ORCLPDB1", "sequence": null, "schema": "DEBEZIUM", "table": "CUSTOMERS", "txId": "6a000300b1030000",
               "scn": scn, "commit_scn": commit, "lcr_position": null, "rs_id": null, "ssn": 0, "redo_thread": 1})
    };
    let body = [
        envelope("u", customer(12, "gold", 2), oracle(ten, "1513734", Some("1513754"))),
        envelope("u", customer(12, "bronze", 1), oracle(ten + 60_000, "1513700", Some("1513710"))),
    ]
    .join("\n");
    assert_eq!(s.push_to("customers", &body).await.0, 200);

    let row = |key: i64| {
        let s = &s;
        async move {
            let (status, body) = s.get(&format!("/v1/features/customers/{key}")).await;
            assert_eq!(status, 200, "{body}");
            let features = body["features"].as_array().unwrap().clone();
            let value = |name: &str| {
                features.iter().find(|f| f["name"] == name).map(|f| (f["value"].clone(), f["status"].clone()))
            };
            (value("segment"), value("credit"), value("notes"))
        }
    };
    let present = |v: Value| Some((v, json!("PRESENT")));
    assert_eq!(row(1).await.0, present(json!("silver")), "MySQL: the update in the same second wins");
    assert_eq!(row(1).await.1, present(json!(250)));
    assert_eq!(row(2).await.0, present(json!("gold")), "MySQL: the second row of one event wins");
    assert_eq!(row(7).await.0, present(json!("gold")), "a snapshot read never outranks a later streamed change");
    let toast = row(8).await;
    assert_eq!((toast.0, toast.2), (present(json!("gold")), present(json!("a long text"))), "TOAST column kept");
    assert_eq!(row(11).await.0, present(json!("gold")), "SQL Server: commit LSN, change LSN, then event serial");
    assert_eq!(row(12).await.0, present(json!("gold")), "Oracle: an earlier commit SCN is stale");
    s.stop().await;
}

/// `allowed_lateness` widens what a feature set takes: an event is late only at or before
/// newest − (longest window + allowed lateness), per docs/semantics.md; and a source without a
/// `timestamp` field stamps events with their arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_lateness_and_arrival_time_when_a_source_has_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
project: {project}
stores:
  offline: {{ parquet: {{ path: "{d}/offline" }} }}
  dead_letters: {{ path: "{d}/dlq" }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
  clicks: {{ key: user }}
entities:
  card: {{ key: card_id }}
  user: {{ key: user }}
feature_sets:
  strict:
    entity: card
    source: tx
    aggregations: [{{ column: amount, functions: [count], windows: [10m], period: 1m }}]
  lenient:
    entity: card
    source: tx
    allowed_lateness: 5m
    aggregations: [{{ column: amount, functions: [count], windows: [10m], period: 1m }}]
  visits:
    entity: user
    source: clicks
    features: [page]
    aggregations: [{{ column: page, functions: [count], windows: [1h] }}]
"#,
        project = common::unique("late"),
        d = dir.path().display(),
    );
    let s = start(&yaml, dir).await;
    let now = chrono::Utc::now().timestamp_millis();
    let event = |card: &str, age_min: i64| json!({"card_id": card, "ts": now - age_min * 60_000, "amount": 1.0});
    // the newest event first, then 14 and 16 minutes older: within 10m + 5m for `lenient` or not
    let body = [event("c1", 0), event("c1", 14), event("c1", 16)].map(|e| e.to_string()).join("\n");
    let (status, summary) = s.push_to("tx", &body).await;
    assert_eq!(status, 200, "{summary}");
    let late: Vec<Value> = std::fs::read_to_string(s._dir.path().join("dlq/tx.dlq"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let late_for = |name: &str| {
        late.iter().filter(|l| l["reason"] == "late" && l["message"].as_str().unwrap().contains(name)).count()
    };
    assert_eq!(late_for("strict"), 2, "10 m is the strict set's bound: {late:?}");
    assert_eq!(late_for("lenient"), 1, "15 m is the lenient set's: {late:?}");

    let before = chrono::Utc::now().timestamp_millis();
    assert_eq!(s.push_to("clicks", r#"{"user": "u1", "page": "/home"}"#).await.0, 200);
    let after = chrono::Utc::now().timestamp_millis();
    let (status, body) = s.get("/v1/features/visits/u1").await;
    assert_eq!(status, 200, "{body}");
    let page = body["features"].as_array().unwrap().iter().find(|f| f["name"] == "page").unwrap().clone();
    assert_eq!((page["value"].clone(), page["status"].clone()), (json!("/home"), json!("PRESENT")), "{body}");
    let stamped =
        chrono::DateTime::parse_from_rfc3339(page["event_timestamp"].as_str().unwrap()).unwrap().timestamp_millis();
    assert!((before..=after).contains(&stamped), "the arrival time {stamped} in [{before}, {after}]");
    s.stop().await;
}

/// Push bodies in every shape JSON producers write — NDJSON (LF or CRLF), a compact or
/// pretty-printed array, one compact or pretty-printed object — with or without a UTF-8 byte
/// order mark: every event is accepted, none is cut into lines that fail (RFC 8259 allows any
/// whitespace between tokens; a BOM is not data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_bodies_of_every_json_shape_with_or_without_a_bom_are_read_whole() {
    let s = server("{}").await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut rng = common::Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut next = |n: u64| rng.below(n);
    let mut shapes_seen = std::collections::BTreeSet::new();
    for round in 0..60 {
        let shape = next(5);
        let count = if shape >= 3 { 1 } else { 1 + next(14) as usize };
        let events: Vec<Value> = (0..count)
            .map(|i| json!({"card_id": format!("b{round}"), "ts": now - i as i64, "amount": 1.5, "merchant": "m"}))
            .collect();
        let mut body = match shape {
            0 => events.iter().map(Value::to_string).collect::<Vec<_>>().join(if next(2) == 0 { "\n" } else { "\r\n" }),
            1 => serde_json::to_string(&events).unwrap(),
            2 => serde_json::to_string_pretty(&events).unwrap(),
            3 => events[0].to_string(),
            _ => serde_json::to_string_pretty(&events[0]).unwrap(), // json.dumps(event, indent=2)
        };
        let bom = next(2) == 0;
        if bom {
            body.insert(0, '\u{feff}');
        }
        let (status, summary) = s.push(&body).await;
        assert_eq!(status, 200, "shape {shape}, BOM {bom}: {summary}");
        assert_eq!(
            (summary["accepted"].clone(), summary["dead_lettered"].clone()),
            (json!(count), json!(0)),
            "shape {shape}, BOM {bom}: {body:?}"
        );
        shapes_seen.insert((shape, bom));
    }
    assert_eq!(shapes_seen.len(), 10, "every shape with and without a BOM: {shapes_seen:?}");

    // what is neither one JSON value nor NDJSON is refused whole, naming the formats
    let pretty = serde_json::to_string_pretty(&json!({"card_id": "x", "ts": now, "amount": 1})).unwrap();
    for body in [format!("{pretty}\n{pretty}"), pretty.replace("\"amount\": 1", "\"amount\": ")] {
        let (status, answer) = s.push(&body).await;
        assert_eq!((status, answer["error"]["code"].clone()), (400, json!("malformed_body")), "{body}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("NDJSON"), "{answer}");
    }
    // an NDJSON body with one broken line still dead-letters just that line
    let lines = format!(
        "{}\n{{\"card_id\": \"y\",\n{}",
        json!({"card_id": "y", "ts": now, "amount": 1}),
        json!({"card_id": "y", "ts": now, "amount": 2})
    );
    let (status, summary) = s.push(&lines).await;
    assert_eq!(
        (status, summary["accepted"].clone(), summary["dead_lettered"].clone()),
        (200, json!(2), json!(1)),
        "{summary}"
    );
    s.stop().await;
}

/// An entity key sent as a JSON number is the same key however it is written — `1001`,
/// `1001.0`, `1.001e3` — on ingest and on every lookup route; a number that is no integer key is
/// a 400 naming `entities.<key>[i]`, never a silent NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_entity_keys_are_one_key_however_they_are_written() {
    let s = server("{}").await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"card_id": 1001, "ts": now - 2_000, "amount": 4.5, "merchant": "m1"},
                        {"card_id": 1001.0, "ts": now - 1_000, "amount": 1.5, "merchant": "m2"}]);
    let (status, summary) = s.push(&events.to_string()).await;
    assert_eq!((status, summary["accepted"].clone()), (200, json!(2)), "{summary}");
    for written in ["1001", "1001.0", "1.001e3", "\"1001\""] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"features": ["cards.amount_count_1h", "cards.merchant"], "entities": {{"card_id": [{written}]}}}}"#
        ))
        .unwrap();
        let (status, answer) = s.post("/v1/features", body).await;
        assert_eq!(status, 200, "{written}: {answer}");
        assert_eq!(answer["rows"][0]["values"], json!([2, "m2"]), "{written}: {answer}");
        let feast: Value = serde_json::from_str(&format!(
            r#"{{"features": ["cards:amount_count_1h"], "entities": {{"card_id": [{written}]}}}}"#
        ))
        .unwrap();
        let (status, answer) = s.post("/get-online-features", feast).await;
        assert_eq!((status, answer["results"][1]["values"].clone()), (200, json!([2])), "{written}: {answer}");
    }
    // over the range: integers up to ±2^53 pushed as integers, looked up written with a
    // fraction or an exponent (and the other way round)
    let mut rng = common::Xorshift(0x2545_f491_4f6c_dd1d);
    let mut keys = Vec::new();
    for i in 0..40 {
        let magnitude = 10f64.powf(rng.below(1_000) as f64 / 1_000.0 * 15.0) as i64; // 7 × up to 1e15 < 2^53
        let key = if i % 2 == 0 { magnitude } else { -magnitude } * 7 + i; // distinct keys
        keys.push(key);
        let written = if i % 3 == 0 { format!("{key}.0") } else { key.to_string() };
        let event = format!(r#"{{"card_id": {written}, "ts": {now}, "amount": 1, "merchant": "k{i}"}}"#);
        assert_eq!(s.push(&event).await.1["accepted"], json!(1), "{event}");
    }
    let forms = |key: i64| [key.to_string(), format!("{key}.0"), format!("{}e0", key), format!("\"{key}\"")];
    for (i, key) in keys.iter().enumerate() {
        for written in forms(*key) {
            let body: Value = serde_json::from_str(&format!(
                r#"{{"features": ["cards.merchant"], "entities": {{"card_id": [{written}]}}}}"#
            ))
            .unwrap();
            let (status, answer) = s.post("/v1/features", body).await;
            assert_eq!(
                (status, answer["rows"][0]["values"][0].clone()),
                (200, json!(format!("k{i}"))),
                "{written}: {answer}"
            );
        }
    }
    for (written, why) in [("1001.5", "not an integer"), ("1e20", "too large"), ("true", "got true")] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"features": ["cards.merchant"], "entities": {{"card_id": ["x", {written}]}}}}"#
        ))
        .unwrap();
        let (status, answer) = s.post("/v1/features", body).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(status, 400, "{written}: {answer}");
        assert!(message.contains("entities.card_id[1]") && message.contains(why), "{written}: {message}");
    }
    s.stop().await;
}

/// Feast refuses features of one name from two views unless `full_feature_names` is set; so do we.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feast_feature_name_collisions_are_refused_as_feast_does() {
    let s = server("{}").await;
    let now = chrono::Utc::now().timestamp_millis();
    let change = json!({"before": null, "after": {"customer_id": 7, "merchant": "m9"}, "op": "c",
                        "source": {"connector": "postgresql", "ts_ms": now - 1_000, "lsn": 1}});
    assert_eq!(s.push_to("customers", &change.to_string()).await.0, 200);
    let request = |full: bool| {
        json!({"features": ["cards:merchant", "customers:merchant"], "entities": {"card_id": ["c1"], "customer_id": [7]},
               "full_feature_names": full})
    };
    let (status, answer) = s.post("/get-online-features", request(false)).await;
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!("feature_name_collision")), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"merchant\" (in cards, customers)") && message.contains("full_feature_names"),
        "{message}"
    );
    let (status, answer) = s.post("/get-online-features", request(true)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["metadata"]["feature_names"],
        json!(["card_id", "customer_id", "cards__merchant", "customers__merchant"])
    );
    s.stop().await;
}
