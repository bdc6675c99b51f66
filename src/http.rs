//! The HTTP API: push ingest, the per-entity read path, health and metrics.
//!
//! `app(state)` builds the router so tests can drive it without a socket. Every error is one
//! JSON shape, `{"error": {"code": "...", "message": "..."}}`, with a stable `code`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fathom_featurestore::lookup::{self, FeatureValue};
use fathom_featurestore::online::{self, OnlineStore};
use fathom_featurestore::table;
use fathom_ingest::record::{Coordinates, Record};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, Scope, Tokens};
use crate::config::Project;
use crate::pipeline::{Health, Push, PushSummary};
use crate::serving::{ModelClient, PredictError, PredictionLog, PredictionRecord};

/// Largest push body, bytes.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Most records in one push.
pub const MAX_PUSH_RECORDS: usize = 100_000;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The project.
    pub project: Arc<Project>,
    /// Where lookups read.
    pub store: OnlineStore,
    /// Push input of the pipeline.
    pub push: mpsc::Sender<Push>,
    /// Pipeline readiness.
    pub health: Arc<Health>,
    /// The monitor's push input and readiness, when a model is monitored.
    pub monitor: Option<(mpsc::Sender<crate::monitoring::MonitorPush>, Arc<Health>)>,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// Accepted bearer tokens; `None` leaves every route open.
    pub tokens: Option<Arc<Tokens>>,
    /// Model endpoint clients by model name.
    pub models: Arc<BTreeMap<String, Arc<ModelClient>>>,
    /// Where prediction records go.
    pub predictions: PredictionLog,
    /// Whether this process serves the API (else only health and metrics: the `ingest` and
    /// `monitor` roles).
    pub api: bool,
}

/// Every API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed.
    BadRequest(&'static str, String),
    /// 401: no valid bearer token.
    Unauthorized(String),
    /// 403: the token lacks the route's scope.
    Forbidden(String),
    /// 404: the named thing does not exist.
    NotFound(&'static str, String),
    /// 413: over a size limit.
    TooLarge(String),
    /// 503: a dependency is down; retry later.
    Unavailable(String),
    /// 503: the request took longer than `server.request_timeout`.
    Timeout(std::time::Duration),
    /// 502/504: the model endpoint failed or timed out.
    Model(PredictError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(code, m) => (StatusCode::BAD_REQUEST, code, m),
            ApiError::Unauthorized(m) => {
                let body = Json(json!({"error": {"code": "unauthorized", "message": m}}));
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(code, m) => (StatusCode::NOT_FOUND, code, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::Unavailable(m) => {
                tracing::warn!(message = %m, "request failed: dependency unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "a dependency is unavailable; retry later".to_string())
            }
            ApiError::Model(e) => {
                let (status, code) = match e {
                    PredictError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "model_timeout"),
                    PredictError::Endpoint(_) | PredictError::Malformed(_) => (StatusCode::BAD_GATEWAY, "model_error"),
                    PredictError::NoEndpoint => (StatusCode::NOT_FOUND, "no_endpoint"),
                };
                tracing::warn!(error = %e, "model call failed");
                (status, code, e.to_string())
            }
            ApiError::Timeout(limit) => {
                (StatusCode::SERVICE_UNAVAILABLE, "timeout", format!("not answered within {} ms", limit.as_millis()))
            }
        };
        (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

/// The error body of every failed request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `{"code": stable code, "message": human text}`.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unknown_feature`, `missing_entity`, `unauthorized`, `model_timeout`.
    pub code: String,
    /// What went wrong, for humans.
    pub message: String,
}

/// The OpenAPI document, generated from the handlers and types above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Fathom", description = "Streaming feature store and model monitoring: ingest, lookups, serving enrichment."),
    paths(push, push_predictions, push_labels, features, batch_features, feast_online_features, enrich, predict, healthz, readyz, metrics, openapi),
    modifiers(&BearerAuth),
    tags((name = "ingest"), (name = "features"), (name = "serving"), (name = "operations"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document")), security(("bearer" = ["read"])))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// One route: method, path and the scope a token needs (`None`: open to everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path as axum matches it, with `{name}` parameters.
    pub path: &'static str,
    /// Scope needed; `None` only for the health endpoints.
    pub scope: Option<Scope>,
    /// Part of the API (served only by the `api` role).
    pub api: bool,
}

/// Every route with its handler. [`app`] builds the router from this table alone, so a test
/// that walks [`routes`] sees every route a request can reach.
fn table() -> Vec<(Route, axum::routing::MethodRouter<AppState>)> {
    let route = |method, path, scope, api| Route { method, path, scope, api };
    let (read, ingest, admin) = (Some(Scope::Read), Some(Scope::Push), Some(Scope::Admin));
    vec![
        (route("POST", "/v1/features", read, true), post(batch_features)),
        (route("GET", "/v1/features/{feature_set}/{key}", read, true), get(features)),
        (route("POST", "/get-online-features", read, true), post(feast_online_features)),
        (route("POST", "/v1/enrich", read, true), post(enrich)),
        (route("POST", "/v1/models/{model}/predict", read, true), post(predict)),
        (route("GET", "/openapi.json", read, true), get(openapi)),
        (route("POST", "/v1/push/{source}", ingest, true), post(push)),
        (route("POST", "/v1/models/{model}/predictions", ingest, true), post(push_predictions)),
        (route("POST", "/v1/models/{model}/labels", ingest, true), post(push_labels)),
        (route("GET", "/metrics", admin, false), get(metrics)),
        (route("GET", "/healthz", None, false), get(healthz)),
        (route("GET", "/readyz", None, false), get(readyz)),
    ]
}

/// The routes [`app`] serves (all roles), for tests and docs.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The router: each route behind the scope it needs (open when no tokens are configured);
/// health endpoints always open; every request bounded in time and body size.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for (route, handler) in table() {
        if route.api && !state.api {
            continue;
        }
        let handler = match route.scope {
            Some(scope) => handler.route_layer(axum::middleware::from_fn_with_state(
                auth::Guard { tokens: state.tokens.clone(), scope },
                auth::require,
            )),
            None => handler,
        };
        router = router.route(route.path, handler);
    }
    let timeout = state.project.server.request_timeout_ms();
    router
        .layer(axum::middleware::from_fn_with_state(timeout, bounded))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Answers 503 `timeout` when the handler takes longer than the limit (ms).
async fn bounded(
    State(limit_ms): State<u64>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = std::time::Duration::from_millis(limit_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// Splits a push body into records: a JSON array (each element one record, kept byte for
/// byte) or NDJSON (each non-blank line one record; malformed lines become dead letters).
pub fn split_body(body: &[u8], source: usize) -> Result<Vec<Record>, ApiError> {
    let record = |offset: usize, payload: Vec<u8>| Record {
        source,
        at: Coordinates { partition: None, offset: offset as i64 },
        transport_time_ms: None,
        key: None,
        payload,
    };
    let body = fathom_ingest::decode::without_bom(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let records: Vec<Record> = if first == Some(&b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest("malformed_body", format!("body starts like a JSON array but is not one: {e}"))
        })?;
        items.into_iter().enumerate().map(|(i, raw)| record(i, raw.get().as_bytes().to_vec())).collect()
    } else {
        let lines: Vec<(usize, &[u8])> = body
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .collect();
        // one pass over the body as a stream of JSON values decides its form: one value (laid
        // out over any number of lines, e.g. pretty-printed), NDJSON (one value per line), or
        // values spread over lines — neither, refused whole rather than cut into lines that each
        // fail. A body that does not parse is NDJSON whose bad lines are dead-lettered, unless
        // its first line only opens a value.
        let values = serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>().collect::<Result<Vec<_>, _>>();
        let opens_a_value = |line: &[u8]| matches!(line.trim_ascii(), b"{" | b"[");
        match values {
            Ok(values) if values.len() == 1 => vec![record(1, values[0].get().as_bytes().to_vec())],
            Ok(values) if values.len() == lines.len() => {
                lines.into_iter().map(|(i, line)| record(i + 1, line.to_vec())).collect()
            }
            Err(_) if !lines.first().is_some_and(|(_, l)| opens_a_value(l)) => {
                lines.into_iter().map(|(i, line)| record(i + 1, line.to_vec())).collect()
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "malformed_body",
                    "the body is neither one JSON value (an event, or an array of events) nor NDJSON (one event \
                     per line): its values spread over several lines"
                        .into(),
                ))
            }
        }
    };
    if records.len() > MAX_PUSH_RECORDS {
        return Err(ApiError::TooLarge(format!(
            "{} records in one push; the limit is {MAX_PUSH_RECORDS}",
            records.len()
        )));
    }
    Ok(records)
}

#[utoipa::path(post, path = "/v1/push/{source}", tag = "ingest",
    params(("source" = String, Path, description = "source name")),
    request_body(content = String, description = "a JSON array of events, or NDJSON", content_type = "application/json"),
    responses((status = 200, body = PushSummary), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["push"])))]
async fn push(
    State(state): State<AppState>,
    Path(source): Path<String>,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    let index = state
        .project
        .source_index(&source)
        .ok_or_else(|| ApiError::NotFound("unknown_source", format!("no source named {source:?}")))?;
    let records = split_body(&body, index)?;
    let (done, answer) = oneshot::channel();
    state
        .push
        .send(Push { source: index, records, done })
        .await
        .map_err(|_| ApiError::Unavailable("the pipeline has stopped".into()))?;
    let summary = answer.await.map_err(|_| ApiError::Unavailable("the pipeline stopped before answering".into()))?;
    Ok(Json(summary))
}

#[utoipa::path(post, path = "/v1/models/{model}/predictions", tag = "monitoring",
    params(("model" = String, Path, description = "a monitored model")),
    request_body(content = String, description = "prediction records: a JSON array or NDJSON", content_type = "application/json"),
    responses((status = 200, body = PushSummary), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["push"])))]
async fn push_predictions(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    push_monitored(state, model, crate::monitoring::Kind::Predictions, body).await
}

#[utoipa::path(post, path = "/v1/models/{model}/labels", tag = "monitoring",
    params(("model" = String, Path, description = "a monitored model")),
    request_body(content = String, description = "label records: a JSON array or NDJSON", content_type = "application/json"),
    responses((status = 200, body = PushSummary), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["push"])))]
async fn push_labels(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    push_monitored(state, model, crate::monitoring::Kind::Labels, body).await
}

/// Pushes records to the monitor; answered once they are checkpointed.
async fn push_monitored(
    state: AppState,
    model: String,
    kind: crate::monitoring::Kind,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    let monitored = state.project.models.get(&model).is_some_and(|m| m.monitoring.is_some());
    let (Some((monitor, _)), true) = (&state.monitor, monitored) else {
        return Err(ApiError::NotFound("unknown_model", format!("no monitored model named {model:?}")));
    };
    let records = split_body(&body, 0)?;
    let (done, answer) = oneshot::channel();
    monitor
        .send(crate::monitoring::MonitorPush { model, kind, records, done })
        .await
        .map_err(|_| ApiError::Unavailable("the monitor has stopped".into()))?;
    let summary = answer.await.map_err(|_| ApiError::Unavailable("the monitor stopped before answering".into()))?;
    Ok(Json(summary))
}

/// `GET /v1/features/{feature_set}/{key}` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntityFeatures {
    /// Feature set.
    pub feature_set: String,
    /// Entity key.
    pub key: String,
    /// Read time, RFC 3339.
    pub read_time: String,
    /// Every feature of the set.
    pub features: Vec<Feature>,
}

/// One feature in an answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Feature {
    /// Name.
    pub name: String,
    /// Value.
    pub value: serde_json::Value,
    /// `PRESENT`, `NOT_FOUND`, `NULL_VALUE` or `OUTSIDE_MAX_AGE`.
    pub status: lookup::Status,
    /// Event time of the newest event behind the value, RFC 3339.
    pub event_timestamp: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<FeatureValue> for Feature {
    fn from(v: FeatureValue) -> Feature {
        Feature { name: v.name, value: v.value, status: v.status, event_timestamp: v.event_time_ms.map(rfc3339) }
    }
}

/// `GET /v1/features/{name}/{key}`: every feature of a feature set (over events or over a CDC
/// table), or every column of a CDC table's current row.
#[utoipa::path(get, path = "/v1/features/{feature_set}/{key}", tag = "features",
    params(("feature_set" = String, Path, description = "feature set or CDC table"), ("key" = String, Path, description = "entity key")),
    responses((status = 200, body = EntityFeatures), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"])))]
async fn features(
    State(state): State<AppState>,
    Path((set, key)): Path<(String, String)>,
) -> Result<Json<EntityFeatures>, ApiError> {
    let now = chrono::Utc::now().timestamp_millis();
    let unavailable =
        |e: fathom_featurestore::online::OnlineError| ApiError::Unavailable(format!("{:#}", anyhow::Error::from(e)));
    let features: Vec<Feature> = if let Some(plan) = state.project.plan(&set) {
        let stored =
            state.store.load(&[online::entity_key(&state.project.name, &set, &key)]).await.map_err(unavailable)?;
        let entity = stored[0].as_deref().and_then(|b| online::decode(plan, b));
        lookup::feature_values(plan, entity.as_ref(), now).into_iter().map(Feature::from).collect()
    } else if let Some(plan) = state.project.table_plan(&set) {
        let stored =
            state.store.load(&[online::entity_key(&state.project.name, &set, &key)]).await.map_err(unavailable)?;
        let group = stored[0].as_deref().and_then(|b| table::aggregate::GroupState::decode(plan, b));
        table::aggregate::group_values(plan, group.as_ref()).into_iter().map(Feature::from).collect()
    } else if state.project.table_index(&set).is_some() {
        let stored = state.store.load(&[table::row_key(&state.project.name, &set, &key)]).await.map_err(unavailable)?;
        let row = stored[0].as_deref().and_then(table::decode);
        table::row_values(row.as_ref()).into_iter().map(Feature::from).collect()
    } else {
        return Err(ApiError::NotFound("unknown_feature_set", format!("no feature set or CDC table named {set:?}")));
    };
    Ok(Json(EntityFeatures { feature_set: set, key, read_time: rfc3339(now), features }))
}

/// `POST /v1/features` body: features by reference or by vector name, entity keys as columns.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Feature references (`card_activity.amount_sum_1h`, `card_activity.*`, `customers.segment`).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// A feature vector declared in the project file.
    #[serde(default)]
    pub feature_vector: Option<String>,
    /// Entity key field → one key per row (strings or integers); every column the same length.
    pub entities: BTreeMap<String, Vec<serde_json::Value>>,
}

/// `POST /v1/features` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// Read time, RFC 3339.
    pub read_time: String,
    /// `<feature_set or table>.<feature>`, in the order of every row's values.
    pub feature_names: Vec<String>,
    /// One per entity row, in request order.
    pub rows: Vec<BatchRow>,
}

/// One entity row's features.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchRow {
    /// The row's keys.
    pub entities: BTreeMap<String, String>,
    /// Values, in `feature_names` order.
    pub values: Vec<serde_json::Value>,
    /// Statuses.
    pub statuses: Vec<lookup::Status>,
    /// Event time of the newest event behind each value, RFC 3339.
    pub event_timestamps: Vec<Option<String>>,
}

/// Feature values for entity rows given as key columns, as of now.
struct Lookup {
    vector: fathom_featurestore::vector::Vector,
    rows: Vec<BTreeMap<String, String>>,
    values: Vec<Vec<FeatureValue>>,
    now: i64,
}

/// Resolves `references`, checks the entity columns, reads every value in one round trip.
async fn lookup_rows(
    state: &AppState,
    references: &[String],
    entities: &BTreeMap<String, Vec<serde_json::Value>>,
) -> Result<Lookup, ApiError> {
    let catalog = state.project.catalog();
    let max_features = state.project.server.max_lookup_features;
    if references.len() > max_features {
        let message = format!("{} feature references in one request; the limit is {max_features}", references.len());
        return Err(ApiError::TooLarge(message));
    }
    let vector = catalog.resolve(references).map_err(|m| ApiError::BadRequest("unknown_feature", m))?;
    if vector.names.len() > max_features {
        let message = format!("{} features in one request; the limit is {max_features}", vector.names.len());
        return Err(ApiError::TooLarge(message));
    }
    let n = entities.values().map(Vec::len).max().unwrap_or(0);
    let limit = state.project.server.max_lookup_rows;
    if n > limit {
        return Err(ApiError::TooLarge(format!("{n} entity rows in one request; the limit is {limit}")));
    }
    let mut rows: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); n];
    for key in &vector.keys {
        let column = entities.get(key).ok_or_else(|| {
            ApiError::BadRequest(
                "missing_entity",
                format!("the features need entity key {key:?}; add it to `entities`"),
            )
        })?;
        if column.len() != n {
            let message = format!("entities.{key} has {} keys, other columns {n}", column.len());
            return Err(ApiError::BadRequest("malformed_body", message));
        }
        for (i, value) in column.iter().enumerate() {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => fathom_ingest::decode::number_key(n).map_err(|why| {
                    ApiError::BadRequest(
                        "malformed_body",
                        format!("entities.{key}[{i}] must be a string or an integer: {why}"),
                    )
                })?,
                other => {
                    let message = format!("entities.{key}[{i}] must be a string or an integer, got {other}");
                    return Err(ApiError::BadRequest("malformed_body", message));
                }
            };
            let max_key = state.project.server.max_key_bytes;
            if text.len() > max_key {
                let message = format!("entities.{key}[{i}] is {} bytes long; the limit is {max_key}", text.len());
                return Err(ApiError::BadRequest("key_too_long", message));
            }
            rows[i].insert(key.clone(), text);
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    let values = catalog
        .read(&state.store, &vector, &rows, now)
        .await
        .map_err(|e| ApiError::Unavailable(format!("{:#}", anyhow::Error::from(e))))?;
    Ok(Lookup { vector, rows, values, now })
}

/// `POST /v1/features`: many features across feature sets and CDC tables for many entity rows,
/// one store round trip.
#[utoipa::path(post, path = "/v1/features", tag = "features", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["read"])))]
async fn batch_features(State(state): State<AppState>, body: Bytes) -> Result<Json<BatchResponse>, ApiError> {
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest("malformed_body", format!("not a feature request: {e}")))?;
    let references = match (request.features, &request.feature_vector) {
        (Some(features), None) => features,
        (None, Some(name)) => state.project.vectors.get(name).cloned().ok_or_else(|| {
            ApiError::BadRequest("unknown_feature_vector", format!("no feature vector named {name:?}"))
        })?,
        _ => {
            return Err(ApiError::BadRequest(
                "malformed_body",
                "give exactly one of `features` and `feature_vector`".into(),
            ))
        }
    };
    let Lookup { vector, rows, values, now } = lookup_rows(&state, &references, &request.entities).await?;
    let rows = rows
        .into_iter()
        .zip(values)
        .map(|(entities, values)| BatchRow {
            entities,
            statuses: values.iter().map(|v| v.status).collect(),
            event_timestamps: values.iter().map(|v| v.event_time_ms.map(rfc3339)).collect(),
            values: values.into_iter().map(|v| v.value).collect(),
        })
        .collect();
    Ok(Json(BatchResponse { read_time: rfc3339(now), feature_names: vector.names, rows }))
}

/// `POST /get-online-features` body: Feast's feature-server request.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct FeastRequest {
    /// `feature_view:feature` references (a feature set, table aggregation or CDC table).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// A feature service: a feature vector of the project file.
    #[serde(default)]
    pub feature_service: Option<String>,
    /// Join key → values, one per entity row.
    pub entities: BTreeMap<String, Vec<serde_json::Value>>,
    /// Names as `view__feature` instead of `feature`.
    #[serde(default)]
    pub full_feature_names: bool,
}

/// `POST /get-online-features` answer, Feast's shape: column-major, join keys first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeastResponse {
    /// `{"feature_names": [...]}`.
    pub metadata: FeastMetadata,
    /// One per name in `metadata.feature_names`, values over the entity rows.
    pub results: Vec<FeastVector>,
}

/// Feast's response metadata.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeastMetadata {
    /// Join keys, then features.
    pub feature_names: Vec<String>,
}

/// One column of a Feast response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeastVector {
    /// One per entity row.
    pub values: Vec<serde_json::Value>,
    /// One per entity row.
    pub statuses: Vec<lookup::Status>,
    /// One per entity row; `1970-01-01T00:00:00Z` where there is none (as Feast does).
    pub event_timestamps: Vec<String>,
}

/// `POST /get-online-features`: Feast's feature-server endpoint, so a Feast HTTP client can
/// switch by changing its URL. Feature views are feature sets (or CDC tables), feature services
/// are feature vectors.
#[utoipa::path(post, path = "/get-online-features", tag = "features", request_body = FeastRequest,
    responses((status = 200, body = FeastResponse), (status = 400, body = ErrorBody)),
    security(("bearer" = ["read"])))]
async fn feast_online_features(State(state): State<AppState>, body: Bytes) -> Result<Json<FeastResponse>, ApiError> {
    let request: FeastRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest("malformed_body", format!("not a get-online-features request: {e}")))?;
    let references: Vec<String> = match (request.features, &request.feature_service) {
        (Some(features), None) => features
            .iter()
            .map(|f| {
                let (view, feature) = f.split_once(':').ok_or_else(|| {
                    ApiError::BadRequest("unknown_feature", format!("{f:?} is not a feature_view:feature reference"))
                })?;
                Ok(format!("{view}.{feature}"))
            })
            .collect::<Result<_, ApiError>>()?,
        (None, Some(name)) => state.project.vectors.get(name).cloned().ok_or_else(|| {
            ApiError::BadRequest(
                "unknown_feature_service",
                format!("no feature service (feature vector) named {name:?}"),
            )
        })?,
        _ => {
            let message = "give exactly one of `features` and `feature_service`".into();
            return Err(ApiError::BadRequest("malformed_body", message));
        }
    };
    let Lookup { vector, values, .. } = lookup_rows(&state, &references, &request.entities).await?;
    if !request.full_feature_names {
        refuse_name_collisions(&vector.names)?;
    }
    let epoch = "1970-01-01T00:00:00Z".to_string();
    let mut names = Vec::new();
    let mut results = Vec::new();
    for key in &vector.keys {
        names.push(key.clone());
        let column = &request.entities[key];
        results.push(FeastVector {
            values: column.clone(),
            statuses: vec![lookup::Status::Present; column.len()],
            event_timestamps: vec![epoch.clone(); column.len()],
        });
    }
    for (i, name) in vector.names.iter().enumerate() {
        let (view, feature) = name.split_once('.').expect("resolved names are <set>.<feature>");
        names.push(if request.full_feature_names { format!("{view}__{feature}") } else { feature.to_string() });
        results.push(FeastVector {
            values: values.iter().map(|row| row[i].value.clone()).collect(),
            statuses: values.iter().map(|row| row[i].status).collect(),
            event_timestamps: values
                .iter()
                .map(|row| row[i].event_time_ms.map(rfc3339).unwrap_or_else(|| epoch.clone()))
                .collect(),
        });
    }
    Ok(Json(FeastResponse { metadata: FeastMetadata { feature_names: names }, results }))
}

/// Feast's `FeatureNameCollisionError`: without `full_feature_names`, two views' features of one
/// name would answer under one name, and a client building a dict would keep only one of them.
fn refuse_name_collisions(names: &[String]) -> Result<(), ApiError> {
    let mut views: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in names {
        let (view, feature) = name.split_once('.').expect("resolved names are <set>.<feature>");
        views.entry(feature).or_default().push(view);
    }
    let collided: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(feature, v)| format!("{feature:?} (in {})", v.join(", ")))
        .collect();
    if collided.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(
        "feature_name_collision",
        format!(
            "duplicate features named {} found; to resolve this collision, use the full feature names \
             (set `full_feature_names: true`) or ask for one of them",
            collided.join(", ")
        ),
    ))
}

/// `POST /v1/models/{model}/predict` and `POST /v1/enrich` body.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// `/v1/enrich` only: the model whose vector to assemble.
    #[serde(default)]
    pub model: Option<String>,
    /// Entity key field → key (string or integer), one entity row.
    pub entities: BTreeMap<String, serde_json::Value>,
    /// Request-time fields the model takes (`request_fields`).
    #[serde(default)]
    pub request: serde_json::Map<String, serde_json::Value>,
    /// The caller's id for this request; one is generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// An assembled feature vector.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Enriched {
    /// Feature name → value, in the model's order (JSON object order is not guaranteed: see
    /// `feature_names`).
    pub features: serde_json::Map<String, serde_json::Value>,
    /// Names in the order sent to the model.
    pub feature_names: Vec<String>,
    /// Status of each value as looked up (before imputation).
    pub statuses: Vec<lookup::Status>,
    /// Features whose missing value was imputed.
    pub imputed: Vec<String>,
    /// Whether each feature is always a number (aggregations), for the model's input types.
    #[serde(skip)]
    pub numeric: Vec<bool>,
}

/// `POST /v1/models/{model}/predict` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    /// The request's id (the caller's, or generated); labels join on it.
    pub request_id: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// What the model answered.
    pub prediction: serde_json::Value,
    /// The vector sent.
    #[serde(flatten)]
    pub enriched: Enriched,
}

fn model<'a>(state: &'a AppState, name: &str) -> Result<&'a Arc<ModelClient>, ApiError> {
    state.models.get(name).ok_or_else(|| ApiError::NotFound("unknown_model", format!("no model named {name:?}")))
}

/// The model's vector for one entity row: stored features (imputed where configured), then
/// request fields.
async fn assemble(state: &AppState, client: &ModelClient, request: &PredictRequest) -> Result<Enriched, ApiError> {
    let config = client.config();
    let entities = request.entities.iter().map(|(k, v)| (k.clone(), vec![v.clone()])).collect();
    let Lookup { vector, values, .. } = lookup_rows(state, &config.features, &entities).await?;
    let mut enriched = Enriched {
        features: Default::default(),
        feature_names: Vec::new(),
        statuses: Vec::new(),
        imputed: Vec::new(),
        numeric: state.project.catalog().numeric(&vector),
    };
    for (name, value) in vector.names.into_iter().zip(values.into_iter().next().unwrap_or_default()) {
        let v = match config.impute.get(&name) {
            Some(constant) if value.status != lookup::Status::Present => {
                enriched.imputed.push(name.clone());
                constant.clone()
            }
            _ => value.value,
        };
        enriched.features.insert(name.clone(), v);
        enriched.feature_names.push(name);
        enriched.statuses.push(value.status);
    }
    for field in &config.request_fields {
        let value = request.request.get(field).cloned().ok_or_else(|| {
            ApiError::BadRequest(
                "missing_field",
                format!("the model takes request field {field:?}; add it to `request`"),
            )
        })?;
        enriched.features.insert(field.clone(), value);
        enriched.feature_names.push(field.clone());
        enriched.statuses.push(lookup::Status::Present);
        enriched.numeric.push(false);
    }
    Ok(enriched)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest("malformed_body", format!("{e}")))
}

/// `POST /v1/enrich`: a model's assembled feature vector, without calling it.
#[utoipa::path(post, path = "/v1/enrich", tag = "serving", request_body = PredictRequest,
    responses((status = 200, body = Enriched), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"])))]
async fn enrich(State(state): State<AppState>, body: Bytes) -> Result<Json<Enriched>, ApiError> {
    let request: PredictRequest = parse_body(&body)?;
    let name =
        request.model.as_deref().ok_or_else(|| ApiError::BadRequest("malformed_body", "`model` is required".into()))?;
    let client = model(&state, name)?;
    Ok(Json(assemble(&state, client, &request).await?))
}

/// `POST /v1/models/{model}/predict`: assembles the vector, calls the model, answers, and queues
/// the prediction record (the publish never delays the answer).
#[utoipa::path(post, path = "/v1/models/{model}/predict", tag = "serving", request_body = PredictRequest,
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, body = Prediction), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = ["read"])))]
async fn predict(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Prediction>, ApiError> {
    let started = std::time::Instant::now();
    let request: PredictRequest = parse_body(&body)?;
    let client = model(&state, &name)?;
    let enriched = assemble(&state, client, &request).await?;
    let request_id = request.request_id.clone().unwrap_or_else(new_request_id);
    let ordered: Vec<(String, serde_json::Value, bool)> = enriched
        .feature_names
        .iter()
        .zip(&enriched.numeric)
        .map(|(n, numeric)| (n.clone(), enriched.features[n].clone(), *numeric))
        .collect();
    // a failing endpoint shows in /readyz until its next success; nothing is logged for a
    // prediction that was not made
    let warning = format!("model:{name}");
    let prediction = match client.predict(&request_id, &ordered).await {
        Ok(prediction) => {
            state.health.clear(&warning);
            prediction
        }
        Err(e) => {
            if matches!(e, PredictError::Timeout(_) | PredictError::Endpoint(_)) {
                state.health.warn(&warning, e.to_string());
            }
            return Err(ApiError::Model(e));
        }
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let version = client.config().version.clone();
    let record = PredictionRecord {
        request_id: request_id.clone(),
        model: name.clone(),
        model_version: version.clone(),
        timestamp: rfc3339(chrono::Utc::now().timestamp_millis()),
        features: enriched.features.clone(),
        prediction: prediction.clone(),
        latency_ms,
    };
    state.predictions.publish(&state.project.predictions_topic(&name), record);
    Ok(Json(Prediction { request_id, model: name, model_version: version, prediction, enriched }))
}

/// 128 random bits as hex.
fn new_request_id() -> String {
    use rand::Rng as _;
    let bits: u128 = rand::rng().random();
    format!("{bits:032x}")
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "online store or pipeline degraded")))]
async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await;
    let monitor_ok = state.monitor.as_ref().is_none_or(|(_, h)| h.ready.load(Ordering::Relaxed));
    let pipeline_ok = state.health.ready.load(Ordering::Relaxed) && monitor_ok;
    let problem = state.health.problem.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let monitor = state.monitor.as_ref().and_then(|(_, h)| h.problem.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let mut warnings = state.health.warnings();
    if let Some((_, h)) = &state.monitor {
        warnings.extend(h.warnings().into_iter().map(|(k, v)| (k, format!("monitor: {v}"))));
    }
    match (store, pipeline_ok) {
        (Ok(()), true) if warnings.is_empty() => Json(json!({"status": "ready"})).into_response(),
        // still serving, but a dependency is failing (its work waits, nothing is lost)
        (Ok(()), true) => Json(json!({"status": "ready", "warnings": warnings})).into_response(),
        (store, _) => {
            let store = store.err().map(|e| format!("{:#}", anyhow::Error::from(e)));
            let body = json!({"status": "degraded", "online_store": store, "pipeline": problem, "monitor": monitor, "warnings": warnings});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("bearer" = ["admin"])))]
async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
