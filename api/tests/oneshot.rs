//! The router without a socket (after axum's `examples/testing`): `app(state).oneshot(request)`
//! over the embedded store, for error codes, scopes and the Feast response shape. The
//! end-to-end tests against real services are in the workspace's `tests/`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use fathom_api::{app, serve};
use fathom_runtime::pipeline;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

/// A running pipeline over the embedded store and the router over it; `extra` ends the project
/// file (e.g. a `server:` section).
async fn router(extra: &str) -> (axum::Router, pipeline::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
project: oneshot
stores:
  offline: {{ parquet: {{ path: "{dir}/offline" }} }}
  dead_letters: {{ path: "{dir}/dlq" }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards:
    entity: card
    source: tx
    features: [merchant]
    aggregations:
      - {{ column: amount, functions: [count, sum], windows: [1h] }}
{extra}
"#,
        dir = dir.path().display()
    );
    let project = Arc::new(fathom_project::parse(&yaml).unwrap());
    let running = pipeline::start(project.clone()).await.unwrap();
    let router = app(serve::state(project, &running).unwrap());
    (router, running, dir)
}

async fn call(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn post(uri: &str, body: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::from(body.to_string())).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn errors_have_one_shape_and_stable_codes() {
    let (router, running, _dir) = router("").await;
    let cases = [
        (get("/v1/features/nope/1"), StatusCode::NOT_FOUND, "unknown_feature_set"),
        (post("/v1/push/nope", "[]", None), StatusCode::NOT_FOUND, "unknown_source"),
        (post("/v1/push/tx", "{\"a\":1}\n{\"b\":\n2}", None), StatusCode::BAD_REQUEST, "malformed_body"),
        (
            post("/v1/features", "{\"features\": [\"cards.nope\"], \"entities\": {\"card_id\": [\"1\"]}}", None),
            StatusCode::BAD_REQUEST,
            "unknown_feature",
        ),
        (post("/get-online-features", "not json", None), StatusCode::BAD_REQUEST, "malformed_body"),
    ];
    for (request, status, code) in cases {
        let uri = request.uri().to_string();
        let (answered, body) = call(&router, request).await;
        assert_eq!((answered, body["error"]["code"].as_str()), (status, Some(code)), "{uri}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{uri}: {body}");
    }
    serve::stop(running).await.unwrap();
}

#[tokio::test]
async fn scopes_decide_and_health_stays_open() {
    let hash = |t: &str| format!("{:x}", Sha256::digest(t.as_bytes()));
    let extra = format!(
        "server:\n  auth:\n    tokens:\n      - {{ name: reader, sha256: {}, scopes: [read] }}\n      - {{ name: ops, sha256: {}, scopes: [admin] }}\n",
        hash("r-token"),
        hash("a-token")
    );
    let (router, running, _dir) = router(&extra).await;
    let push = |token| post("/v1/push/tx", r#"[{"card_id": "c1", "ts": 1767225600000, "amount": 2}]"#, token);
    assert_eq!(call(&router, push(None)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&router, push(Some("r-token"))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&router, push(Some("wrong"))).await.0, StatusCode::UNAUTHORIZED);
    let (status, summary) = call(&router, push(Some("a-token"))).await;
    assert_eq!((status, summary["accepted"].as_u64()), (StatusCode::OK, Some(1)));
    assert_eq!(call(&router, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(call(&router, get("/metrics")).await.0, StatusCode::UNAUTHORIZED);
    serve::stop(running).await.unwrap();
}

#[tokio::test]
async fn feast_answers_in_feasts_shape_with_statuses() {
    let (router, running, _dir) = router("").await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"card_id": "c1", "ts": now, "amount": 2.5, "merchant": "m1"}]).to_string();
    assert_eq!(call(&router, post("/v1/push/tx", &events, None)).await.0, StatusCode::OK);
    let request = json!({"features": ["cards:amount_sum_1h", "cards:merchant"], "entities": {"card_id": ["c1", "c2"]}});
    let (status, body) = call(&router, post("/get-online-features", &request.to_string(), None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["metadata"]["feature_names"], json!(["card_id", "amount_sum_1h", "merchant"]));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["values"], json!(["c1", "c2"]));
    assert_eq!(results[1]["values"][0], json!(2.5));
    assert_eq!(results[1]["statuses"], json!(["PRESENT", "NOT_FOUND"]));
    assert_eq!(results[2]["values"][0], json!("m1"));
    assert_eq!(results[0]["event_timestamps"].as_array().map(Vec::len), Some(2));
    serve::stop(running).await.unwrap();
}
