//! Every API error, one JSON shape: `{"error": {"code": "...", "message": "..."}}`, with a
//! stable `code`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fathom_runtime::models::PredictError;
use serde::Serialize;
use serde_json::json;

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
