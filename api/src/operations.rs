//! Health, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "online store or pipeline degraded")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
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
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
