//! The HTTP API over the runtime: push ingest (events, predictions, labels), lookups (our API
//! and Feast's), serving enrichment and model calls, health and metrics; bearer-token auth,
//! HTTPS, the OpenAPI document.
//!
//! [`app`] builds the router so tests can drive it without a socket. Every error is one JSON
//! shape, `{"error": {"code": "...", "message": "..."}}`, with a stable `code` ([`ApiError`]).

pub mod auth;
mod error;
mod feast;
mod features;
mod models;
mod openapi;
mod operations;
mod push;
pub mod serve;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fathom_featurestore::online::OnlineStore;
use fathom_project::auth::Scope;
use fathom_project::Project;
use fathom_runtime::models::{ModelClient, PredictionLog};
use fathom_runtime::monitoring::MonitorPush;
use fathom_runtime::pipeline::Push;
use fathom_runtime::Health;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;

use self::auth::Tokens;
pub use self::error::{ApiError, ErrorBody, ErrorDetail};
use self::feast::feast_online_features;
pub use self::feast::{FeastMetadata, FeastRequest, FeastResponse, FeastVector};
use self::features::{batch_features, features};
pub use self::features::{BatchRequest, BatchResponse, BatchRow, EntityFeatures, Feature};
use self::models::{enrich, predict};
pub use self::models::{Enriched, PredictRequest, Prediction};
use self::openapi::openapi;
pub use self::openapi::ApiDoc;
use self::operations::{healthz, metrics, readyz};
pub use self::push::split_body;
use self::push::{push, push_labels, push_predictions};

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
    pub monitor: Option<(mpsc::Sender<MonitorPush>, Arc<Health>)>,
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
