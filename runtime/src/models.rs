//! Model calls: a model's feature vector assembled from the online store plus request-time
//! fields, the model endpoint called (Open Inference Protocol v2 or plain JSON) with a timeout
//! and a bounded number of requests in flight, and a prediction record published without adding
//! to the request's latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fathom_project::models::{EndpointConfig, Imputation, ModelConfig, Protocol, Statistic};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::telemetry::{self, Published};

/// Replaces `{reference: …}` imputations by the profile's values (the profile is read when any
/// is configured); the error names the model, feature and profile.
pub fn resolve_imputations(
    name: &str,
    mut config: ModelConfig,
    profile_path: &std::path::Path,
) -> anyhow::Result<ModelConfig> {
    use fathom_monitor::profile::{FeatureProfile, Profile};
    let mut profile: Option<Profile> = None;
    for (feature, value) in config.impute.iter_mut() {
        let Imputation::Reference(statistic) = Imputation::parse(value).map_err(anyhow::Error::msg)? else {
            continue;
        };
        if profile.is_none() {
            let loaded = Profile::load(profile_path).map_err(|e| {
                anyhow::anyhow!("models.{name}.impute.{feature} needs the reference profile ({e}); build it with `fathom profile --model {name}`")
            })?;
            profile = Some(loaded);
        }
        let reference = profile.as_ref().and_then(|p| p.features.get(feature)).ok_or_else(|| {
            anyhow::anyhow!(
                "models.{name}.impute.{feature}: the profile {} has no such feature",
                profile_path.display()
            )
        })?;
        *value = match (reference, statistic) {
            (FeatureProfile::Numeric(n), Statistic::Mean) => json!(n.mean),
            (FeatureProfile::Numeric(n), Statistic::Median) => json!(n.quantiles.get("p50").copied().unwrap_or(n.mean)),
            (FeatureProfile::Numeric(n), Statistic::Mode) => json!(n.mode()),
            (FeatureProfile::Categorical(c), Statistic::Mode) => c.mode().map_or(Value::Null, |m| json!(m)),
            (FeatureProfile::Categorical(_), _) => {
                anyhow::bail!("models.{name}.impute.{feature}: a categorical feature takes `reference: mode` only")
            }
        };
    }
    Ok(config)
}

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// No answer within the timeout.
    #[error("the model did not answer within {0} ms")]
    Timeout(u128),
    /// Connection failure or a non-2xx answer.
    #[error("the model endpoint failed: {0}")]
    Endpoint(String),
    /// An answer that is not what the protocol says.
    #[error("the model answered something unreadable: {0}")]
    Malformed(String),
    /// The model has no `endpoint`.
    #[error("the model has no endpoint configured (it is only monitored)")]
    NoEndpoint,
}

/// A model's endpoint client: shared connection pool, concurrency bound, timeout.
pub struct ModelClient {
    name: String,
    config: ModelConfig,
    http: reqwest::Client,
    slots: Semaphore,
    timeout: Duration,
}

impl ModelClient {
    /// A client for `config` (`timeout_ms` resolved from the config).
    pub fn new(name: &str, config: ModelConfig, timeout_ms: u64) -> anyhow::Result<ModelClient> {
        let concurrency = config.endpoint.as_ref().map_or(1, |e| e.max_concurrency);
        let tls = config.endpoint.as_ref().and_then(|e| e.tls.as_ref());
        let http = fathom_monitor::https::client(tls, &format!("models.{name}.endpoint.tls"))?
            .pool_max_idle_per_host(concurrency)
            .connect_timeout(Duration::from_millis(timeout_ms))
            .build()?;
        let slots = Semaphore::new(concurrency.max(1));
        Ok(ModelClient { name: name.into(), config, http, slots, timeout: Duration::from_millis(timeout_ms) })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Calls the model with the assembled features (name, value, always numeric) in order;
    /// returns its prediction.
    pub async fn predict(&self, request_id: &str, features: &[(String, Value, bool)]) -> Result<Value, PredictError> {
        let endpoint = self.config.endpoint.as_ref().ok_or(PredictError::NoEndpoint)?;
        let body = match endpoint.protocol {
            Protocol::OpenInferenceV2 => inference_request(endpoint, request_id, features),
            Protocol::Json => {
                let map: Map<String, Value> = features.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
                json!({"request_id": request_id, "features": map})
            }
        };
        let started = Instant::now();
        let call = async {
            let _slot = self.slots.acquire().await.map_err(|e| PredictError::Endpoint(e.to_string()))?;
            let response = self
                .http
                .post(&endpoint.url)
                .json(&body)
                .send()
                .await
                .map_err(|e| PredictError::Endpoint(fathom_monitor::https::describe(e)))?;
            let status = response.status();
            let text = response.text().await.map_err(|e| PredictError::Endpoint(fathom_monitor::https::describe(e)))?;
            if !status.is_success() {
                let snippet: String = text.chars().take(200).collect();
                return Err(PredictError::Endpoint(format!("HTTP {status}: {snippet}")));
            }
            serde_json::from_str::<Value>(&text).map_err(|e| PredictError::Malformed(e.to_string()))
        };
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| PredictError::Timeout(self.timeout.as_millis()))??;
        telemetry::model_answered(&self.name, started.elapsed().as_secs_f64());
        match endpoint.protocol {
            Protocol::OpenInferenceV2 => inference_prediction(answer),
            Protocol::Json => Ok(match answer {
                Value::Object(mut map) if map.contains_key("prediction") => {
                    map.remove("prediction").unwrap_or_default()
                }
                other => other,
            }),
        }
    }
}

/// An Open Inference Protocol v2 request: one input per feature, or one FP64 tensor. An
/// input's type must not change between requests, so aggregations are always FP64; other
/// features are typed by value (numbers FP64, booleans BOOL, the rest BYTES), and a missing
/// one is a `null` datum of a BYTES input — configure `impute` for features that can be
/// missing when the model server refuses nulls.
fn inference_request(endpoint: &EndpointConfig, request_id: &str, features: &[(String, Value, bool)]) -> Value {
    if let Some(tensor) = &endpoint.tensor {
        let data: Vec<Value> = features.iter().map(|(_, v, _)| v.as_f64().map_or(Value::Null, Value::from)).collect();
        return json!({"id": request_id, "inputs": [{"name": tensor, "shape": [1, data.len()], "datatype": "FP64", "data": data}]});
    }
    let inputs: Vec<Value> = features
        .iter()
        .map(|(name, value, numeric)| {
            let datatype = match value {
                _ if *numeric => "FP64",
                Value::Bool(_) => "BOOL",
                Value::Number(_) => "FP64",
                _ => "BYTES",
            };
            let value = match value {
                Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
                Value::Null | Value::String(_) | Value::Bool(_) => value.clone(),
                other => Value::String(other.to_string()),
            };
            json!({"name": name, "shape": [1], "datatype": datatype, "data": [value]})
        })
        .collect();
    json!({"id": request_id, "inputs": inputs})
}

/// The prediction in an inference response: the first output's data (a scalar when it holds one
/// value), or every output by name when there are several.
fn inference_prediction(answer: Value) -> Result<Value, PredictError> {
    let outputs = answer
        .get("outputs")
        .and_then(Value::as_array)
        .filter(|o| !o.is_empty())
        .ok_or_else(|| PredictError::Malformed("no `outputs` in the inference response".into()))?;
    let data = |output: &Value| -> Result<Value, PredictError> {
        let data = output
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| PredictError::Malformed(format!("output {:?} has no `data` array", output.get("name"))))?;
        Ok(if data.len() == 1 { data[0].clone() } else { Value::Array(data.clone()) })
    };
    if outputs.len() == 1 {
        return data(&outputs[0]);
    }
    let mut by_name = Map::new();
    for (i, output) in outputs.iter().enumerate() {
        let name = output.get("name").and_then(Value::as_str).map_or_else(|| format!("output-{i}"), String::from);
        by_name.insert(name, data(output)?);
    }
    Ok(Value::Object(by_name))
}

/// A prediction record (DESIGN §7), as published on the predictions topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PredictionRecord {
    /// The request's id (also the Kafka record key).
    pub request_id: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// When the prediction was made, RFC 3339.
    pub timestamp: String,
    /// The features sent to the model, by name.
    pub features: Map<String, Value>,
    /// What the model answered.
    pub prediction: Value,
    /// Time from request to answer, ms.
    pub latency_ms: f64,
}

/// Where prediction records go: a background task publishes them so the request never waits.
#[derive(Clone)]
pub struct PredictionLog {
    tx: mpsc::Sender<(String, PredictionRecord)>,
}

/// A prediction record's destination.
pub enum Sink {
    /// Kafka, topic per record.
    Kafka(rdkafka::producer::FutureProducer),
    /// NDJSON files in this directory, one per topic.
    Files(std::path::PathBuf),
    /// Without Kafka: records of monitored models straight to the monitor, the others to files.
    Monitor(
        tokio::sync::mpsc::Sender<crate::monitoring::MonitorPush>,
        std::path::PathBuf,
        std::collections::BTreeSet<String>,
    ),
}

impl Sink {
    fn monitors(&self, model: &str) -> bool {
        matches!(self, Sink::Monitor(_, _, models) if models.contains(model))
    }
}

impl PredictionLog {
    /// Starts the publishing task. At most `capacity` records wait; beyond that a record is
    /// dropped and counted (`fathom_prediction_records_dropped_total`) rather than slowing
    /// predictions down.
    pub fn start(sink: Sink, capacity: usize) -> PredictionLog {
        let (tx, mut rx) = mpsc::channel::<(String, PredictionRecord)>(capacity);
        let sink = Arc::new(sink);
        tokio::spawn(async move {
            while let Some((topic, record)) = rx.recv().await {
                let payload = serde_json::to_vec(&record).expect("a record encodes");
                let result = match sink.as_ref() {
                    Sink::Kafka(producer) => {
                        let send =
                            rdkafka::producer::FutureRecord::to(&topic).key(&record.request_id).payload(&payload);
                        producer.send(send, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e.to_string())
                    }
                    Sink::Files(dir) => append(dir, &topic, &payload).map_err(|e| e.to_string()),
                    Sink::Monitor(_, dir, _) if !sink.monitors(&record.model) => {
                        append(dir, &topic, &payload).map_err(|e| e.to_string())
                    }
                    Sink::Monitor(monitor, dir, _) => {
                        // what queued up meanwhile goes in the same push
                        let mut records = vec![payload];
                        while records.len() < 1_000 {
                            match rx.try_recv() {
                                Ok((t, r)) if t == topic && r.model == record.model => {
                                    records.push(serde_json::to_vec(&r).expect("a record encodes"))
                                }
                                Ok((t, r)) => {
                                    let other = serde_json::to_vec(&r).expect("a record encodes");
                                    if let Err(e) = append(dir, &t, &other) {
                                        tracing::warn!(error = %e, topic = t, "prediction record not written");
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        let records = records
                            .into_iter()
                            .enumerate()
                            .map(|(i, payload)| fathom_ingest::record::Record {
                                source: 0,
                                at: fathom_ingest::record::Coordinates { partition: None, offset: i as i64 },
                                transport_time_ms: None,
                                key: None,
                                payload,
                            })
                            .collect();
                        let (done, answer) = tokio::sync::oneshot::channel();
                        let push = crate::monitoring::MonitorPush {
                            model: record.model.clone(),
                            kind: crate::monitoring::Kind::Predictions,
                            records,
                            done,
                        };
                        match monitor.send(push).await {
                            Ok(()) => answer.await.map(drop).map_err(|e| e.to_string()),
                            Err(_) => Err("the monitor has stopped".to_string()),
                        }
                    }
                };
                match result {
                    Ok(()) => telemetry::prediction_record(record.model, Published::Done),
                    Err(e) => {
                        tracing::warn!(error = %e, topic, "prediction record not published");
                        telemetry::prediction_record(record.model, Published::Failed);
                    }
                }
            }
        });
        PredictionLog { tx }
    }

    /// Queues a record without waiting.
    pub fn publish(&self, topic: &str, record: PredictionRecord) {
        if let Err(e) = self.tx.try_send((topic.to_string(), record)) {
            let model = match &e {
                mpsc::error::TrySendError::Full((_, r)) | mpsc::error::TrySendError::Closed((_, r)) => r.model.clone(),
            };
            telemetry::prediction_record(model, Published::Dropped);
        }
    }
}

fn append(dir: &std::path::Path, topic: &str, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{topic}.ndjson")))?;
    file.write_all(payload)?;
    file.write_all(b"\n")
}
