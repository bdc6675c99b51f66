//! Serving enrichment: a model's feature vector (`/v1/enrich`) and a model call with its
//! prediction record (`/v1/models/{model}/predict`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use fathom_featurestore::lookup::{self};
use fathom_runtime::models::{ModelClient, PredictError, PredictionRecord};
use serde::Serialize;

use crate::features::{lookup_rows, rfc3339, Lookup};
use crate::{ApiError, AppState, ErrorBody};

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

pub(crate) fn model<'a>(state: &'a AppState, name: &str) -> Result<&'a Arc<ModelClient>, ApiError> {
    state.models.get(name).ok_or_else(|| ApiError::NotFound("unknown_model", format!("no model named {name:?}")))
}

/// The model's vector for one entity row: stored features (imputed where configured), then
/// request fields.
pub(crate) async fn assemble(
    state: &AppState,
    client: &ModelClient,
    request: &PredictRequest,
) -> Result<Enriched, ApiError> {
    let config = client.config();
    // the request's fields feed on-demand features, as entity columns do in a lookup
    let entities = request.request.iter().chain(&request.entities).map(|(k, v)| (k.clone(), vec![v.clone()])).collect();
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

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest("malformed_body", format!("{e}")))
}

/// `POST /v1/enrich`: a model's assembled feature vector, without calling it.
#[utoipa::path(post, path = "/v1/enrich", tag = "serving", request_body = PredictRequest,
    responses((status = 200, body = Enriched), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"])))]
pub(crate) async fn enrich(State(state): State<AppState>, body: Bytes) -> Result<Json<Enriched>, ApiError> {
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
pub(crate) async fn predict(
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
pub(crate) fn new_request_id() -> String {
    use rand::Rng as _;
    let bits: u128 = rand::rng().random();
    format!("{bits:032x}")
}
