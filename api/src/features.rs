//! Lookups: one entity of a feature set, and batches of entity rows over feature references.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use fathom_featurestore::lookup::{self, FeatureValue};
use fathom_featurestore::online::{self};
use fathom_featurestore::table;
use serde::Serialize;

use crate::{ApiError, AppState, ErrorBody};

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

pub(crate) fn rfc3339(ms: i64) -> String {
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
pub(crate) async fn features(
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
    fathom_runtime::telemetry::near_cache(&state.store);
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
pub(crate) struct Lookup {
    pub(crate) vector: fathom_featurestore::vector::Vector,
    pub(crate) rows: Vec<BTreeMap<String, String>>,
    pub(crate) values: Vec<Vec<FeatureValue>>,
    pub(crate) now: i64,
}

/// Resolves `references`, checks the entity columns, reads every value in one round trip.
pub(crate) async fn lookup_rows(
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
    // request fields of on-demand features, beside the keys (as Feast clients send them)
    let mut requests: Vec<serde_json::Map<String, serde_json::Value>> = vec![serde_json::Map::new(); n];
    for field in &vector.request {
        let column = entities.get(field).ok_or_else(|| {
            ApiError::BadRequest(
                "missing_request_field",
                format!("on-demand features read request field {field:?}; add it to `entities`"),
            )
        })?;
        if column.len() != n {
            let message = format!("entities.{field} has {} values, other columns {n}", column.len());
            return Err(ApiError::BadRequest("malformed_body", message));
        }
        for (request, value) in requests.iter_mut().zip(column) {
            request.insert(field.clone(), value.clone());
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    let values = catalog
        .read(&state.store, &vector, &rows, &requests, now)
        .await
        .map_err(|e| ApiError::Unavailable(format!("{:#}", anyhow::Error::from(e))))?;
    fathom_runtime::telemetry::near_cache(&state.store);
    Ok(Lookup { vector, rows, values, now })
}

/// `POST /v1/features`: many features across feature sets and CDC tables for many entity rows,
/// one store round trip.
#[utoipa::path(post, path = "/v1/features", tag = "features", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["read"])))]
pub(crate) async fn batch_features(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<BatchResponse>, ApiError> {
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
