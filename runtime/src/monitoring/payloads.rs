//! The bodies of alert webhooks, Slack messages, Kubeflow runs and retraining records.

use fathom_monitor::alerts::Transition;
use fathom_monitor::influx::{Field, Point};
use fathom_monitor::window::{rule_name, Event};
use fathom_project::monitoring::WebhookFormat;
use serde_json::{json, Value};

use super::outbox::{Delivery, Target};
use super::{Model, Monitor};

impl Monitor {
    pub(super) fn alert(&self, m: &Model, i: usize, event: &Event) -> Delivery {
        let alert = &m.config.alerts[i];
        let rule = &m.monitor.settings.rules[i];
        let name = rule_name(rule);
        let state = match event.transition {
            Transition::Fired => "fired",
            Transition::Resolved => "resolved",
        };
        let id = format!("{}:alert:{i}:{}:{state}", m.name, event.end_ms);
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        let drifted: Vec<Value> = event.drifted.iter().map(|(f, s)| json!({"feature": f, "score": s})).collect();
        let body = match alert.format {
            WebhookFormat::Json => json!({
                "id": id,
                "project": self.project.name,
                "model": m.name,
                "alert": name,
                "state": state,
                "metric": rule.metric,
                "value": event.value,
                "threshold": rule.threshold,
                "window": {"start": time(event.start_ms), "end": time(event.end_ms)},
                "drifted_features": drifted,
            }),
            WebhookFormat::Slack => {
                let icon = if state == "fired" { ":rotating_light:" } else { ":white_check_mark:" };
                let features: Vec<String> =
                    event.drifted.iter().take(5).map(|(f, s)| format!("{f} ({s:.2})")).collect();
                let mut text = format!(
                    "{icon} *{}* — {name} {state}: {} = {:.4} (threshold {}) for the window {} – {}",
                    m.name,
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
        };
        Delivery {
            id,
            model: m.name.clone(),
            target: Target::Alert(i),
            body: body.to_string(),
            attempts: 0,
            due_ms: 0,
            committed: false,
            context: None,
        }
    }

    pub(super) fn retrain(&self, m: &Model, event: &Event) -> (Delivery, Delivery, Point) {
        let retrain = m.config.retrain.as_ref().expect("a retraining rule has its config");
        let rule = m.monitor.settings.retrain.as_ref().expect("rule");
        let id = format!("{}:retrain:{}", m.name, event.end_ms);
        let start_ms = event.end_ms - i64::from(rule.consecutive) * m.monitor.settings.window_ms;
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        let reason =
            format!("{} for {} window(s) in a row (last {:.4})", rule_name(rule), rule.consecutive, event.value);
        let drifted: Vec<&str> = event.drifted.iter().map(|(f, _)| f.as_str()).collect();
        let offline = retrain.offline_data.clone().unwrap_or_else(|| {
            let path = &self.project.stores.offline.parquet.path;
            std::path::absolute(path).unwrap_or_else(|_| path.clone()).display().to_string()
        });
        let parameters = json!({
            "model": m.name,
            "reason": reason,
            "drifted_features": drifted,
            "start": time(start_ms),
            "end": time(event.end_ms),
            "offline_data": offline,
        });
        let body = match &retrain.kubeflow {
            Some(k) => {
                let mut run = json!({
                    "display_name": format!("fathom-{}-{}", m.name, event.end_ms),
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
            None => json!({"id": id, "project": self.project.name, "event": "retrain", "parameters": parameters}),
        };
        let record =
            json!({"id": id, "model": m.name, "stage": "triggered", "reason": reason, "parameters": parameters});
        let context = json!({"reason": reason, "parameters": parameters}).to_string();
        let target = if retrain.kubeflow.is_some() { "kubeflow" } else { "webhook" };
        let point = Point {
            measurement: "fathom_retrain".into(),
            tags: vec![
                ("model".into(), m.name.clone()),
                ("target".into(), target.into()),
                ("outcome".into(), "triggered".into()),
            ],
            fields: vec![
                ("id".into(), Field::Str(id.clone())),
                ("reason".into(), Field::Str(reason.clone())),
                ("value".into(), Field::Float(event.value)),
            ],
            time_ns: event.end_ms * 1_000_000,
        };
        (
            Delivery {
                id: id.clone(),
                model: m.name.clone(),
                target: Target::Retrain,
                body: body.to_string(),
                attempts: 0,
                due_ms: 0,
                committed: false,
                context: Some(context),
            },
            Delivery {
                id: format!("{id}:triggered"),
                model: m.name.clone(),
                target: Target::Topic,
                body: record.to_string(),
                attempts: 0,
                due_ms: 0,
                committed: false,
                context: None,
            },
            point,
        )
    }
}
