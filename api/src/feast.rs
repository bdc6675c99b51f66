//! Feast's feature-server route, `POST /get-online-features`, answered in Feast's shape.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use fathom_featurestore::lookup::{self};
use serde::Serialize;

use crate::features::{lookup_rows, rfc3339, Lookup};
use crate::{ApiError, AppState, ErrorBody};

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
pub(crate) async fn feast_online_features(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<FeastResponse>, ApiError> {
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
pub(crate) fn refuse_name_collisions(names: &[String]) -> Result<(), ApiError> {
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
