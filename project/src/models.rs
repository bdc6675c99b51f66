//! A `models` entry: the features a model is called with, its endpoint and imputations (the
//! monitoring parts are in [`crate::monitoring`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A `models` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Feature references (as in `feature_vectors`), in the order the model expects them.
    pub features: Vec<String>,
    /// Fields the caller sends with each request, appended after the stored features.
    #[serde(default)]
    pub request_fields: Vec<String>,
    /// Value used for a feature that is not `PRESENT`: a constant, or `{reference: mean}`
    /// (`median`, `mode`) from the model's reference profile. A feature without one is sent as
    /// `null`.
    #[serde(default)]
    pub impute: BTreeMap<String, Value>,
    /// The model's reference profile (built by `fathom profile`), relative to the project file.
    /// Default: `profiles/<model>.json`.
    #[serde(default)]
    pub reference: Option<std::path::PathBuf>,
    /// The model server; without one, the model is only monitored (its prediction records come
    /// from another producer) and `predict` answers 404.
    #[serde(default)]
    pub endpoint: Option<EndpointConfig>,
    /// Ground-truth labels: their topic and how long a prediction waits for its label.
    #[serde(default)]
    pub labels: Option<crate::monitoring::LabelsConfig>,
    /// Monitoring windows and drift thresholds; a model is monitored when this is present.
    #[serde(default)]
    pub monitoring: Option<crate::monitoring::MonitoringConfig>,
    /// Alert rules.
    #[serde(default)]
    pub alerts: Vec<crate::monitoring::AlertConfig>,
    /// Retraining trigger.
    #[serde(default)]
    pub retrain: Option<crate::monitoring::RetrainConfig>,
    /// Model version written into prediction records. Default: `"1"`.
    #[serde(default = "default_version")]
    pub version: String,
    /// Kafka topic of prediction records. Default: `<model>.predictions`. Without Kafka they
    /// are appended to `<dead_letters path>/../predictions/<model>.ndjson`.
    #[serde(default)]
    pub predictions_topic: Option<String>,
}

fn default_version() -> String {
    "1".into()
}

/// How to reach a model server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// URL the request is POSTed to, e.g. `http://127.0.0.1:8081/v2/models/fraud/infer` or
    /// `https://…` (see `tls`).
    pub url: String,
    /// `open_inference_v2` (KServe, MLServer, Triton) or `json`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Open Inference v2 only: send every feature in one FP64 tensor of this name (shape
    /// `[1, n]`, non-numbers as `null`) instead of one named input per feature.
    #[serde(default)]
    pub tensor: Option<String>,
    /// Time the model may take. Default: `2s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Requests in flight to this endpoint at most; more wait. Default: 64.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// For an `https://` URL: a private CA, a client certificate (mutual TLS).
    #[serde(default)]
    pub tls: Option<fathom_monitor::https::ClientTls>,
}

fn default_concurrency() -> usize {
    64
}

/// Model server protocols.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `POST {"id", "inputs": [...]}` → `{"outputs": [...]}`.
    #[default]
    OpenInferenceV2,
    /// `POST {"request_id", "features": {name: value}}` → any JSON (its `prediction` field if
    /// it has one).
    Json,
}

/// How a missing value is filled.
#[derive(Debug, Clone, PartialEq)]
pub enum Imputation {
    /// This value.
    Constant(Value),
    /// A statistic of the feature in the reference profile.
    Reference(Statistic),
}

/// A reference statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// Mean (numeric features).
    Mean,
    /// Median, p50 (numeric features).
    Median,
    /// Most frequent value (categorical), or the middle of the fullest bin (numeric).
    Mode,
}

impl Imputation {
    /// Reads an `impute` value: `{reference: mean|median|mode}` or a constant.
    pub fn parse(value: &Value) -> Result<Imputation, String> {
        let Some(map) = value.as_object().filter(|m| m.contains_key("reference")) else {
            return Ok(Imputation::Constant(value.clone()));
        };
        let statistic = match map.get("reference").and_then(Value::as_str) {
            Some("mean") => Statistic::Mean,
            Some("median") => Statistic::Median,
            Some("mode") => Statistic::Mode,
            _ => return Err("`reference` must be mean, median or mode".into()),
        };
        if map.len() > 1 {
            return Err("write `{reference: mean}` (median, mode) with nothing else".into());
        }
        Ok(Imputation::Reference(statistic))
    }
}
