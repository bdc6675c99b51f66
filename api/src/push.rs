//! Push ingest: events for a source, predictions and labels for a monitored model.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use fathom_ingest::record::{Coordinates, Record};
use fathom_runtime::pipeline::{Push, PushSummary};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::{ApiError, AppState, ErrorBody, MAX_PUSH_RECORDS};

/// Splits a push body into records: a JSON array (each element one record, kept byte for
/// byte) or NDJSON (each non-blank line one record; malformed lines become dead letters).
pub fn split_body(body: &[u8], source: usize) -> Result<Vec<Record>, ApiError> {
    // the push's arrival, as a Kafka record's timestamp is its production: the time of an event
    // without a time field, and where its freshness is measured from
    let arrived = chrono::Utc::now().timestamp_millis();
    let record = |offset: usize, payload: Vec<u8>| Record {
        source,
        at: Coordinates { partition: None, offset: offset as i64 },
        transport_time_ms: Some(arrived),
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
pub(crate) async fn push(
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
pub(crate) async fn push_predictions(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    push_monitored(state, model, fathom_runtime::monitoring::Kind::Predictions, body).await
}

#[utoipa::path(post, path = "/v1/models/{model}/labels", tag = "monitoring",
    params(("model" = String, Path, description = "a monitored model")),
    request_body(content = String, description = "label records: a JSON array or NDJSON", content_type = "application/json"),
    responses((status = 200, body = PushSummary), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["push"])))]
pub(crate) async fn push_labels(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    push_monitored(state, model, fathom_runtime::monitoring::Kind::Labels, body).await
}

/// Pushes records to the monitor; answered once they are checkpointed.
pub(crate) async fn push_monitored(
    state: AppState,
    model: String,
    kind: fathom_runtime::monitoring::Kind,
    body: Bytes,
) -> Result<Json<PushSummary>, ApiError> {
    let monitored = state.project.models.get(&model).is_some_and(|m| m.monitoring.is_some());
    let (Some((monitor, _)), true) = (&state.monitor, monitored) else {
        return Err(ApiError::NotFound("unknown_model", format!("no monitored model named {model:?}")));
    };
    let records = split_body(&body, 0)?;
    let (done, answer) = oneshot::channel();
    monitor
        .send(fathom_runtime::monitoring::MonitorPush { model, kind, records, done })
        .await
        .map_err(|_| ApiError::Unavailable("the monitor has stopped".into()))?;
    let summary = answer.await.map_err(|_| ApiError::Unavailable("the monitor stopped before answering".into()))?;
    Ok(Json(summary))
}
