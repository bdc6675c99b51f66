//! The bodies of alert webhooks, Slack messages, Kubeflow runs, retraining webhooks and the
//! records on the retraining topic: pure functions of the rule, the window's event and the
//! configuration, so each shape has a golden-JSON test. [`Monitor`] wraps them into deliveries.

use fathom_monitor::alerts::Rule;
use fathom_monitor::influx::{Field, Point};
use fathom_monitor::window::{rule_name, transition_name, Event};
use fathom_project::monitoring::{KubeflowConfig, WebhookFormat};
use serde_json::{json, Value};

use super::outbox::{Delivery, Target};
use super::{Model, Monitor};

/// RFC 3339 of an epoch time in ms (empty when out of range).
fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// An alert's stable id: `<model>:alert:<rule index>:<window end ms>:<fired|resolved>`.
pub(super) fn alert_id(model: &str, index: usize, event: &Event) -> String {
    format!("{model}:alert:{index}:{}:{}", event.end_ms, transition_name(event.transition))
}

/// The body of an alert webhook: Fathom's JSON alert, or `{"text": …}` for Slack incoming
/// webhooks (the five most drifted features named).
pub(super) fn alert_body(
    format: WebhookFormat,
    project: &str,
    model: &str,
    id: &str,
    rule: &Rule,
    event: &Event,
) -> Value {
    let name = rule_name(rule);
    let state = transition_name(event.transition);
    match format {
        WebhookFormat::Json => {
            let drifted: Vec<Value> = event.drifted.iter().map(|(f, s)| json!({"feature": f, "score": s})).collect();
            json!({
                "id": id,
                "project": project,
                "model": model,
                "alert": name,
                "state": state,
                "metric": rule.metric,
                "value": event.value,
                "threshold": rule.threshold,
                "window": {"start": time(event.start_ms), "end": time(event.end_ms)},
                "drifted_features": drifted,
            })
        }
        WebhookFormat::Slack => {
            let icon = if state == "fired" { ":rotating_light:" } else { ":white_check_mark:" };
            let features: Vec<String> = event.drifted.iter().take(5).map(|(f, s)| format!("{f} ({s:.2})")).collect();
            let mut text = format!(
                "{icon} *{model}* — {name} {state}: {} = {:.4} (threshold {}) for the window {} – {}",
                rule.metric,
                event.value,
                rule.threshold,
                time(event.start_ms),
                time(event.end_ms)
            );
            if !features.is_empty() {
                text.push_str(&format!("\nMost drifted: {}", features.join(", ")));
            }
            json!({"text": text})
        }
    }
}

/// What a retraining trigger sends and records.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Trigger {
    /// Stable id: `<model>:retrain:<window end ms>`.
    pub(super) id: String,
    /// Why: the rule, the windows in a row and the last value.
    pub(super) reason: String,
    /// The pipeline's parameters (model, reason, drifted features, time range, offline data).
    pub(super) parameters: Value,
    /// The endpoint's body: a Kubeflow Pipelines v2 run, or Fathom's retraining webhook.
    pub(super) body: Value,
    /// The `triggered` record on the retraining topic.
    pub(super) record: Value,
}

/// The retraining trigger of `rule` firing on `event`; the data range covers the `consecutive`
/// windows (of `window_ms`) that breached it.
pub(super) fn retrain_trigger(
    project: &str,
    model: &str,
    rule: &Rule,
    window_ms: i64,
    kubeflow: Option<&KubeflowConfig>,
    offline_data: &str,
    event: &Event,
) -> Trigger {
    let id = format!("{model}:retrain:{}", event.end_ms);
    let start_ms = event.end_ms - i64::from(rule.consecutive) * window_ms;
    let reason = format!("{} for {} window(s) in a row (last {:.4})", rule_name(rule), rule.consecutive, event.value);
    let drifted: Vec<&str> = event.drifted.iter().map(|(f, _)| f.as_str()).collect();
    let parameters = json!({
        "model": model,
        "reason": reason,
        "drifted_features": drifted,
        "start": time(start_ms),
        "end": time(event.end_ms),
        "offline_data": offline_data,
    });
    let body = match kubeflow {
        Some(k) => {
            let mut run = json!({
                "display_name": format!("fathom-{model}-{}", event.end_ms),
                "description": format!("Triggered by Fathom: {reason}"),
                "pipeline_version_reference": {"pipeline_id": k.pipeline_id},
                "runtime_config": {"parameters": parameters},
            });
            if let Some(version) = &k.pipeline_version_id {
                run["pipeline_version_reference"]["pipeline_version_id"] = json!(version);
            }
            if let Some(experiment) = &k.experiment_id {
                run["experiment_id"] = json!(experiment);
            }
            run
        }
        None => json!({"id": id, "project": project, "event": "retrain", "parameters": parameters}),
    };
    let record = json!({"id": id, "model": model, "stage": "triggered", "reason": reason, "parameters": parameters});
    Trigger { id, reason, parameters, body, record }
}

/// The record on the retraining topic once the endpoint answered for good: `started` (with the
/// run id Kubeflow answered) or `failed` (with the error), merged with the trigger's reason and
/// parameters (`context`).
pub(super) fn retrain_outcome(
    id: &str,
    model: &str,
    target: &str,
    attempts: u32,
    status: u16,
    answer: Result<&str, &str>,
    context: Option<&str>,
) -> (&'static str, String, Value) {
    let (outcome, detail) = match answer {
        Ok(body) => ("started", body),
        Err(error) => ("failed", error),
    };
    let run_id = serde_json::from_str::<Value>(detail)
        .ok()
        .and_then(|v| v.get("run_id").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    let mut record = json!({"id": id, "model": model, "stage": outcome, "target": target, "attempts": attempts, "status": status, "run_id": run_id});
    if answer.is_err() {
        record["error"] = json!(detail);
    }
    if let Some(Value::Object(c)) = context.and_then(|c| serde_json::from_str(c).ok()) {
        for (k, v) in c {
            record[k] = v;
        }
    }
    (outcome, run_id, record)
}

impl Monitor {
    pub(super) fn alert(&self, m: &Model, i: usize, event: &Event) -> Delivery {
        let rule = &m.monitor.settings.rules[i];
        let id = alert_id(&m.name, i, event);
        let body = alert_body(m.config.alerts[i].format, &self.project.name, &m.name, &id, rule, event);
        Delivery::new(id, &m.name, Target::Alert(i), body.to_string(), None)
    }

    pub(super) fn retrain(&self, m: &Model, event: &Event) -> (Delivery, Delivery, Point) {
        let retrain = m.config.retrain.as_ref().expect("a retraining rule has its config");
        let rule = m.monitor.settings.retrain.as_ref().expect("rule");
        let offline = retrain.offline_data.clone().unwrap_or_else(|| {
            let path = &self.project.stores.offline.parquet.path;
            std::path::absolute(path).unwrap_or_else(|_| path.clone()).display().to_string()
        });
        let window_ms = m.monitor.settings.window_ms;
        let kubeflow = retrain.kubeflow.as_ref();
        let trigger = retrain_trigger(&self.project.name, &m.name, rule, window_ms, kubeflow, &offline, event);
        let context = json!({"reason": trigger.reason, "parameters": trigger.parameters}).to_string();
        let target = if kubeflow.is_some() { "kubeflow" } else { "webhook" };
        let point = Point {
            measurement: "fathom_retrain".into(),
            tags: vec![
                ("model".into(), m.name.clone()),
                ("target".into(), target.into()),
                ("outcome".into(), "triggered".into()),
            ],
            fields: vec![
                ("id".into(), Field::Str(trigger.id.clone())),
                ("reason".into(), Field::Str(trigger.reason.clone())),
                ("value".into(), Field::Float(event.value)),
            ],
            time_ns: event.end_ms * 1_000_000,
        };
        let id = trigger.id;
        (
            Delivery::new(id.clone(), &m.name, Target::Retrain, trigger.body.to_string(), Some(context)),
            Delivery::new(format!("{id}:triggered"), &m.name, Target::Topic, trigger.record.to_string(), None),
            point,
        )
    }
}

#[cfg(test)]
mod tests {
    use fathom_monitor::alerts::{Comparison, Transition};

    use super::*;

    fn rule(name: Option<&str>) -> Rule {
        Rule {
            name: name.map(String::from),
            metric: "drift_score".into(),
            comparison: Comparison::AtLeast,
            threshold: 0.7,
            consecutive: 2,
            cooldown_ms: 0,
        }
    }

    fn event(transition: Transition) -> Event {
        Event {
            rule: Some(0),
            transition,
            value: 0.8125,
            start_ms: 1_767_225_000_000,
            end_ms: 1_767_225_600_000,
            drifted: vec![("amount".into(), 0.9), ("merchant".into(), 0.75)],
        }
    }

    #[test]
    fn a_json_alert_has_its_documented_shape() {
        let e = event(Transition::Fired);
        let id = alert_id("fraud", 1, &e);
        assert_eq!(id, "fraud:alert:1:1767225600000:fired");
        let body = alert_body(WebhookFormat::Json, "payments", "fraud", &id, &rule(Some("drift")), &e);
        let golden = json!({
            "id": "fraud:alert:1:1767225600000:fired",
            "project": "payments",
            "model": "fraud",
            "alert": "drift",
            "state": "fired",
            "metric": "drift_score",
            "value": 0.8125,
            "threshold": 0.7,
            "window": {"start": "2025-12-31T23:50:00+00:00", "end": "2026-01-01T00:00:00+00:00"},
            "drifted_features": [{"feature": "amount", "score": 0.9}, {"feature": "merchant", "score": 0.75}],
        });
        assert_eq!(body, golden);
    }

    #[test]
    fn a_slack_alert_is_one_text_naming_the_rule_and_the_most_drifted_features() {
        let e = event(Transition::Resolved);
        let id = alert_id("fraud", 0, &e);
        let body = alert_body(WebhookFormat::Slack, "payments", "fraud", &id, &rule(None), &e);
        let text = ":white_check_mark: *fraud* — drift_score >= 0.7 resolved: drift_score = 0.8125 (threshold 0.7) \
                    for the window 2025-12-31T23:50:00+00:00 – 2026-01-01T00:00:00+00:00\n\
                    Most drifted: amount (0.90), merchant (0.75)";
        assert_eq!(body, json!({ "text": text }));
    }

    #[test]
    fn a_kubeflow_run_follows_the_pipelines_v2_api() {
        let kubeflow = KubeflowConfig {
            url: "http://kfp:8888/apis/v2beta1".into(),
            pipeline_id: "p-1".into(),
            pipeline_version_id: Some("v-2".into()),
            experiment_id: Some("x-3".into()),
            token: None,
        };
        let e = event(Transition::Fired);
        let trigger = retrain_trigger("payments", "fraud", &rule(None), 600_000, Some(&kubeflow), "s3://b/off", &e);
        let parameters = json!({
            "model": "fraud",
            "reason": "drift_score >= 0.7 for 2 window(s) in a row (last 0.8125)",
            "drifted_features": ["amount", "merchant"],
            "start": "2025-12-31T23:40:00+00:00",
            "end": "2026-01-01T00:00:00+00:00",
            "offline_data": "s3://b/off",
        });
        let golden = json!({
            "display_name": "fathom-fraud-1767225600000",
            "description": "Triggered by Fathom: drift_score >= 0.7 for 2 window(s) in a row (last 0.8125)",
            "pipeline_version_reference": {"pipeline_id": "p-1", "pipeline_version_id": "v-2"},
            "runtime_config": {"parameters": parameters},
            "experiment_id": "x-3",
        });
        assert_eq!(trigger.body, golden);
        assert_eq!(trigger.id, "fraud:retrain:1767225600000");
        let record = json!({"id": trigger.id, "model": "fraud", "stage": "triggered", "reason": trigger.reason, "parameters": parameters});
        assert_eq!(trigger.record, record);
    }

    #[test]
    fn a_retraining_webhook_carries_the_parameters_and_outcomes_are_recorded() {
        let e = event(Transition::Fired);
        let trigger = retrain_trigger("payments", "fraud", &rule(Some("drifting")), 600_000, None, "/data", &e);
        assert_eq!(
            trigger.body,
            json!({"id": "fraud:retrain:1767225600000", "project": "payments", "event": "retrain", "parameters": trigger.parameters})
        );
        let context = json!({"reason": trigger.reason, "parameters": trigger.parameters}).to_string();
        let answer = r#"{"run_id": "run-42"}"#;
        let (outcome, run_id, record) =
            retrain_outcome(&trigger.id, "fraud", "kubeflow", 1, 200, Ok(answer), Some(&context));
        assert_eq!((outcome, run_id.as_str()), ("started", "run-42"));
        assert_eq!(record["reason"], json!("drifting for 2 window(s) in a row (last 0.8125)"));
        assert_eq!(record["parameters"]["offline_data"], json!("/data"));
        let (outcome, run_id, record) =
            retrain_outcome(&trigger.id, "fraud", "webhook", 12, 503, Err("HTTP 503: busy"), Some(&context));
        assert_eq!((outcome, run_id.as_str()), ("failed", ""));
        assert_eq!(
            (record["error"].clone(), record["status"].clone(), record["attempts"].clone()),
            (json!("HTTP 503: busy"), json!(503), json!(12))
        );
    }
}
