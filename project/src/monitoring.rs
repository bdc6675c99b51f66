//! The monitoring parts of a `models` entry: `labels`, `monitoring`, `alerts`, `retrain`.

use std::collections::BTreeMap;

use fathom_featurestore::duration::Span;
use fathom_monitor::alerts::{Comparison, Rule};
use fathom_monitor::https::ClientTls;
use fathom_monitor::performance::PositiveClass;
use fathom_monitor::window::{rule_name, Settings};
use serde::Deserialize;

use crate::models::ModelConfig;

/// `models.<m>.labels`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// Topic of label records. Default: `<model>.labels`.
    #[serde(default)]
    pub topic: Option<String>,
    /// How long a prediction waits for its label (event time). Default: `7d`.
    #[serde(default)]
    pub max_delay: Option<String>,
}

/// `models.<m>.monitoring`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Tumbling window. Default: `10m`.
    #[serde(default)]
    pub window: Option<String>,
    /// Sliding window, a multiple of `window`, or `none`. Default: `1h`.
    #[serde(default)]
    pub sliding: Option<String>,
    /// How long after a window's end its predictions may still arrive. Default: `1m`.
    #[serde(default)]
    pub lateness: Option<String>,
    /// With no record for this long (wall clock), the open window closes. Default: the window.
    #[serde(default)]
    pub idle: Option<String>,
    /// Drift thresholds.
    #[serde(default)]
    pub drift: DriftConfig,
    /// The class a binary classifier's precision, recall, F1 and ROC AUC are computed for, as
    /// labels spell it (a number or boolean label is compared by its text: `1`, `true`).
    /// Fixed per model, never inferred from a window. Default: `1` (which also matches `true`).
    #[serde(default)]
    pub positive_class: Option<String>,
}

/// `monitoring.drift`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Possible drift at or above this score. Default: 0.5.
    #[serde(default)]
    pub possible: Option<f64>,
    /// Drift detected at or above this score. Default: 0.7.
    #[serde(default)]
    pub detected: Option<f64>,
    /// Per-feature thresholds for the feature's own status.
    #[serde(default)]
    pub features: BTreeMap<String, Thresholds>,
}

/// A feature's thresholds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Possible drift.
    pub possible: f64,
    /// Drift detected.
    pub detected: f64,
}

/// What a rule watches: `when: drift_detected | drift_possible`, or `metric` + `op` + `threshold`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Condition {
    /// Shorthand for the drift score against the model's thresholds.
    #[serde(default)]
    pub when: Option<String>,
    /// A window metric (see [`METRICS`]).
    #[serde(default)]
    pub metric: Option<String>,
    /// `>=`, `>`, `<=`, `<`.
    #[serde(default)]
    pub op: Option<Comparison>,
    /// Threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// Metrics rules can watch: drift and serving ones when a window closes, performance ones when
/// its labels are final.
pub const METRICS: [&str; 15] = [
    "drift_score",
    "drift_status",
    "throughput",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "label_coverage",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "log_loss",
    "roc_auc",
    "mae",
    "rmse",
];

/// Webhook body shapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Fathom's JSON alert.
    #[default]
    Json,
    /// `{"text": …}` for Slack incoming webhooks (and Mattermost, Teams workflows).
    Slack,
}

/// A `models.<m>.alerts` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Name shown in alerts. Default: the condition.
    #[serde(default)]
    pub name: Option<String>,
    /// What it watches.
    #[serde(flatten)]
    pub condition: Condition,
    /// Breaching windows in a row before it fires. Default: 1.
    #[serde(default)]
    pub consecutive: Option<u32>,
    /// Minimum time between firings (event time). Default: `1h`.
    #[serde(default)]
    pub cooldown: Option<String>,
    /// Where the alert is POSTed.
    pub webhook: String,
    /// HMAC-SHA256 key for `X-Fathom-Signature`, `env:NAME` or `file:/path`.
    #[serde(default)]
    pub secret: Option<String>,
    /// `json` (default) or `slack`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Delivery attempts before giving up. Default: 12 (about an hour of backoff).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// For an `https://` webhook: a private CA, a client certificate (mutual TLS).
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// `models.<m>.retrain`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// What triggers it. Default: `when: drift_detected`.
    #[serde(flatten)]
    pub condition: Condition,
    /// Windows in a row. Default: 1.
    #[serde(default)]
    pub consecutive: Option<u32>,
    /// Minimum time between triggers (event time). Default: `24h`.
    #[serde(default)]
    pub cooldown: Option<String>,
    /// Start a Kubeflow Pipelines run.
    #[serde(default)]
    pub kubeflow: Option<KubeflowConfig>,
    /// Or call a webhook (signed like alerts).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Key for the webhook's signature, `env:NAME` or `file:/path`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Where the pipeline finds the training data. Default: the offline store's path.
    #[serde(default)]
    pub offline_data: Option<String>,
    /// Attempts before giving up. Default: 12.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// For an `https://` Kubeflow API or webhook: a private CA, a client certificate (mutual TLS).
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// Kubeflow Pipelines v2 REST.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeflowConfig {
    /// API base, e.g. `http://ml-pipeline.kubeflow:8888/apis/v2beta1` (runs are POSTed to
    /// `<url>/runs`).
    pub url: String,
    /// Pipeline id.
    pub pipeline_id: String,
    /// Pipeline version id. Default: the pipeline's latest.
    #[serde(default)]
    pub pipeline_version_id: Option<String>,
    /// Experiment the run belongs to.
    #[serde(default)]
    pub experiment_id: Option<String>,
    /// Bearer token, `env:NAME` or `file:/path`.
    #[serde(default)]
    pub token: Option<String>,
}

fn span(text: &Option<String>, default: &str) -> Result<i64, String> {
    Span::parse(text.as_deref().unwrap_or(default)).map(Span::millis).map_err(|e| e.to_string())
}

impl Condition {
    /// The rule this condition makes, with the model's drift thresholds for the shorthands.
    pub fn rule(
        &self,
        default: &str,
        consecutive: Option<u32>,
        cooldown_ms: i64,
        thresholds: (f64, f64),
    ) -> Result<Rule, String> {
        let explicit = self.metric.is_some() || self.op.is_some() || self.threshold.is_some();
        let (metric, comparison, threshold) = match (&self.when, explicit) {
            (Some(_), true) => return Err("write either `when` or `metric`/`op`/`threshold`, not both".into()),
            (_, false) => match self.when.as_deref().unwrap_or(default) {
                "drift_detected" => ("drift_score".to_string(), Comparison::AtLeast, thresholds.1),
                "drift_possible" => ("drift_score".to_string(), Comparison::AtLeast, thresholds.0),
                other => {
                    return Err(format!(
                        "`when: {other}`: use drift_detected or drift_possible (or metric/op/threshold)"
                    ))
                }
            },
            (None, true) => {
                let metric = self.metric.clone().ok_or("`metric` is missing")?;
                if !METRICS.contains(&metric.as_str()) {
                    return Err(format!("unknown metric {metric:?}; one of {}", METRICS.join(", ")));
                }
                let op = self.op.ok_or("`op` is missing (>=, >, <=, <)")?;
                let threshold = self.threshold.filter(|t| t.is_finite()).ok_or("`threshold` is missing")?;
                (metric, op, threshold)
            }
        };
        let consecutive = consecutive.unwrap_or(1);
        if consecutive == 0 {
            return Err("`consecutive` must be at least 1".into());
        }
        Ok(Rule { name: None, metric, comparison, threshold, consecutive, cooldown_ms })
    }
}

/// Problems in a model's monitoring configuration, as (field, message).
pub fn check(config: &ModelConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(labels) = &config.labels {
        if let Err(e) = span(&labels.max_delay, "7d") {
            problems.push(("labels.max_delay".into(), e));
        }
    }
    let monitored = config.monitoring.is_some();
    if !monitored && (config.labels.is_some() || !config.alerts.is_empty() || config.retrain.is_some()) {
        problems.push((
            "monitoring".into(),
            "labels, alerts and retrain need `monitoring:` (write `monitoring: {}` for the defaults)".into(),
        ));
    }
    if let Err(e) = settings("model", config) {
        problems.push(e);
    }
    for (i, alert) in config.alerts.iter().enumerate() {
        let target = (format!("alerts[{i}].webhook"), format!("alerts[{i}].tls"));
        problems.extend(outbound(target, &alert.webhook, alert.tls.as_ref()));
    }
    if let Some(retrain) = &config.retrain {
        let tls = retrain.tls.as_ref();
        match (&retrain.kubeflow, &retrain.webhook) {
            (Some(k), None) => {
                problems.extend(outbound(("retrain.kubeflow.url".into(), "retrain.tls".into()), &k.url, tls))
            }
            (None, Some(url)) => problems.extend(outbound(("retrain.webhook".into(), "retrain.tls".into()), url, tls)),
            _ => problems.push(("retrain".into(), "give one of `kubeflow` or `webhook`".into())),
        }
    }
    problems
}

/// The problem with an outbound target (`url` at field `fields.0`, its `tls` at `fields.1`), if
/// any: not http(s), `tls` on a plain `http://` URL, or TLS files that cannot be read.
pub fn outbound(fields: (String, String), url: &str, tls: Option<&ClientTls>) -> Option<(String, String)> {
    let (url_field, tls_field) = fields;
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Some((url_field, format!("{url:?} must be an http:// or https:// URL")));
    }
    if tls.is_some() && !https {
        return Some((tls_field, format!("`tls` applies to https:// URLs only; {url_field} is http://")));
    }
    let e = fathom_monitor::https::client(tls, &tls_field).err()?;
    Some((e.field, e.message))
}

/// A model's resolved settings; the error is (field, message).
pub fn settings(model: &str, config: &ModelConfig) -> Result<Settings, (String, String)> {
    let m = config.monitoring.clone().unwrap_or_default();
    fn field(name: &str) -> impl Fn(String) -> (String, String) + '_ {
        move |e| (name.to_string(), e)
    }
    let window_ms = span(&m.window, "10m").map_err(field("monitoring.window"))?;
    let sliding_ms = match m.sliding.as_deref() {
        Some("none") => None,
        _ => Some(span(&m.sliding, "1h").map_err(field("monitoring.sliding"))?),
    };
    if let Some(s) = sliding_ms {
        if s % window_ms != 0 || s < window_ms {
            return Err((
                "monitoring.sliding".into(),
                format!("must be a multiple of the window ({})", Span(window_ms)),
            ));
        }
    }
    let lateness_ms = span(&m.lateness, "1m").map_err(field("monitoring.lateness"))?;
    let max_delay_ms =
        span(&config.labels.as_ref().and_then(|l| l.max_delay.clone()), "7d").map_err(field("labels.max_delay"))?;
    let thresholds = (m.drift.possible.unwrap_or(0.5), m.drift.detected.unwrap_or(0.7));
    let valid = |(p, d): (f64, f64)| (0.0..=1.0).contains(&p) && (0.0..=1.0).contains(&d) && p <= d;
    if !valid(thresholds) {
        return Err(("monitoring.drift".into(), "thresholds must satisfy 0 ≤ possible ≤ detected ≤ 1".into()));
    }
    let mut feature_thresholds = BTreeMap::new();
    for (feature, t) in &m.drift.features {
        if !valid((t.possible, t.detected)) {
            return Err((
                format!("monitoring.drift.features.{feature}"),
                "thresholds must satisfy 0 ≤ possible ≤ detected ≤ 1".into(),
            ));
        }
        feature_thresholds.insert(feature.clone(), (t.possible, t.detected));
    }
    let mut rules: Vec<Rule> = Vec::new();
    for (i, alert) in config.alerts.iter().enumerate() {
        let cooldown = span(&alert.cooldown, "1h").map_err(field(&format!("alerts[{i}].cooldown")))?;
        let mut rule = alert
            .condition
            .rule("drift_detected", alert.consecutive, cooldown, thresholds)
            .map_err(field(&format!("alerts[{i}]")))?;
        rule.name = alert.name.clone();
        // the name is the `rule` tag of the alert's points: two alike would overwrite each other
        let name = rule_name(&rule);
        if let Some(j) = rules.iter().position(|r| rule_name(r) == name) {
            return Err((
                format!("alerts[{i}]"),
                format!("named {name:?} like alerts[{j}]; give each alert its own `name`"),
            ));
        }
        rules.push(rule);
    }
    let retrain = match &config.retrain {
        Some(r) => {
            let cooldown = span(&r.cooldown, "24h").map_err(field("retrain.cooldown"))?;
            Some(r.condition.rule("drift_detected", r.consecutive, cooldown, thresholds).map_err(field("retrain"))?)
        }
        None => None,
    };
    Ok(Settings {
        model: model.to_string(),
        window_ms,
        sliding_ms,
        lateness_ms,
        max_delay_ms,
        thresholds,
        feature_thresholds,
        rules,
        retrain,
        positive_class: m.positive_class.as_deref().map_or_else(Default::default, PositiveClass::new),
    })
}

/// With no record for this long, a model's open window closes (ms).
pub fn idle_ms(config: &ModelConfig) -> i64 {
    let m = config.monitoring.clone().unwrap_or_default();
    let window = span(&m.window, "10m").unwrap_or(600_000);
    m.idle.as_deref().and_then(|t| Span::parse(t).ok()).map_or(window, Span::millis)
}
