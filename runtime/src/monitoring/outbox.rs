//! The delivery outbox: webhooks, pipeline runs and topic records sent after the checkpoint
//! that created them, retried with back-off.

use fathom_monitor::influx::{Field, Point};
use fathom_monitor::window::rule_name;
use serde::{Deserialize, Serialize};

use super::payloads::retrain_outcome;
use super::transport::{publish, send, signed};
use super::{monitoring_dir, Monitor};

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Target {
    /// The model's alert rule of this index.
    Alert(usize),
    /// The model's retraining endpoint (Kubeflow or webhook).
    Retrain,
    /// A record on [`RETRAIN_TOPIC`].
    Topic,
}

/// A webhook, pipeline run or topic record waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Delivery {
    /// Stable id: `<model>:<alert|retrain>:<rule>:<window end>:<transition>`.
    pub(super) id: String,
    pub(super) model: String,
    pub(super) target: Target,
    pub(super) body: String,
    pub(super) attempts: u32,
    /// Not before, ms (wall clock).
    pub(super) due_ms: i64,
    /// Created by a committed checkpoint (only those are sent).
    pub(super) committed: bool,
    /// For retraining: the trigger's reason and window, recorded with the outcome.
    pub(super) context: Option<String>,
}

/// A delivery's result: (id, Ok(HTTP status or 0 for a topic) | Err(why, permanent)).
pub(super) type DeliveryResult = (String, Result<(u16, String), Failure>);

/// Why a delivery attempt failed.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// What went wrong.
    pub(super) why: String,
    /// Whether trying again cannot help (a 4xx other than 408/425/429, a missing secret).
    pub(super) permanent: bool,
    /// The HTTP status answered; 0 when there was no answer.
    pub(super) status: u16,
}

impl Failure {
    /// A failure without an HTTP answer.
    pub(super) fn unanswered(why: String, permanent: bool) -> Failure {
        Failure { why, permanent, status: 0 }
    }
}

impl Delivery {
    /// A delivery not yet attempted nor committed.
    pub(super) fn new(id: String, model: &str, target: Target, body: String, context: Option<String>) -> Delivery {
        Delivery { id, model: model.to_string(), target, body, attempts: 0, due_ms: 0, committed: false, context }
    }
}

/// The next attempt's delay after `attempts` failed ones: 2 s, 4 s, … doubling up to 5 min.
fn backoff_ms(attempts: u32) -> i64 {
    1000i64 * (1i64 << attempts.min(9)).min(300)
}

impl Monitor {
    /// Starts sending committed deliveries that are due.
    pub(super) fn deliver(&mut self) {
        let now = self.clock.now_ms();
        let due: Vec<Delivery> = self
            .outbox
            .iter()
            .filter(|d| d.committed && d.due_ms <= now && !self.in_flight.contains(&d.id))
            .cloned()
            .collect();
        for d in due {
            let Some(m) = self.models.iter().position(|m| m.name == d.model) else { continue };
            self.in_flight.insert(d.id.clone());
            let tx = self.results_tx.clone();
            let id = d.id.clone();
            let request = match d.target {
                Target::Topic => {
                    let producer = self.producer.clone();
                    let dir = monitoring_dir(&self.project);
                    tokio::spawn(async move {
                        let result = publish(producer, &dir, &d.model, &d.body)
                            .await
                            .map(|()| (0, String::new()))
                            .map_err(|e| Failure::unanswered(e, false));
                        let _ = tx.send((id, result)).await;
                    });
                    continue;
                }
                Target::Alert(i) => {
                    let alert = &self.models[m].config.alerts[i];
                    signed(self.http.get(alert.tls.as_ref()), &alert.webhook, &d, alert.secret.as_deref(), "alert")
                }
                Target::Retrain => match self.retrain_request(m, &d) {
                    Ok(request) => Ok(request),
                    Err(failure) => {
                        let _ = self.results_tx.try_send((id, Err(failure)));
                        continue;
                    }
                },
            };
            tokio::spawn(async move {
                let _ = tx.send((id, send(request).await)).await;
            });
        }
    }

    /// The retraining request of model `m`: a Kubeflow run (bearer token resolved; a missing
    /// secret fails for good) or a signed webhook.
    fn retrain_request(&self, m: usize, d: &Delivery) -> Result<reqwest::RequestBuilder, Failure> {
        let retrain = self.models[m].config.retrain.as_ref().expect("config");
        let http = self.http.get(retrain.tls.as_ref());
        let Some(k) = &retrain.kubeflow else {
            let url = retrain.webhook.as_deref().unwrap_or_default();
            return signed(http, url, d, retrain.secret.as_deref(), "retrain");
        };
        let url = format!("{}/runs", k.url.trim_end_matches('/'));
        let mut r = http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &d.id)
            .header("X-Fathom-Delivery", &d.id)
            .body(d.body.clone());
        match k.token.as_deref().map(fathom_ingest::config::resolve_secret).transpose() {
            Ok(Some(token)) => r = r.bearer_auth(token),
            Ok(None) => {}
            Err(e) => return Err(Failure::unanswered(format!("retrain.kubeflow.token: {e}"), true)),
        }
        Ok(r)
    }

    /// A delivery finished: drop it, or schedule the next attempt.
    pub(super) fn delivered(&mut self, id: &str, result: Result<(u16, String), Failure>) {
        self.in_flight.remove(id);
        let Some(index) = self.outbox.iter().position(|d| d.id == id) else { return };
        let mut d = self.outbox[index].clone();
        d.attempts += 1;
        let Some(m) = self.models.iter().position(|m| m.name == d.model) else { return };
        let max = match d.target {
            Target::Alert(i) => self.models[m].config.alerts[i].max_attempts,
            Target::Retrain => self.models[m].config.retrain.as_ref().and_then(|r| r.max_attempts),
            Target::Topic => Some(u32::MAX),
        }
        .unwrap_or(12);
        let finished = match &result {
            Ok(_) => true,
            Err(failure) => failure.permanent || d.attempts >= max,
        };
        // readiness names a target whose last attempt failed (an untrusted certificate, a
        // refused client certificate, a 5xx) until one succeeds
        let target = match d.target {
            Target::Alert(i) => format!("models.{}.alerts[{i}]", d.model),
            Target::Retrain => format!("models.{}.retrain", d.model),
            Target::Topic => format!("models.{}.retrain topic", d.model),
        };
        match &result {
            Ok(_) => self.health.clear(&target),
            Err(failure) => self.health.warn(&target, format!("delivery failed: {}", failure.why)),
        }
        if !finished {
            let why = result.as_ref().err().map(|f| f.why.clone()).unwrap_or_default();
            let backoff = backoff_ms(d.attempts);
            tracing::warn!(delivery = %d.id, attempt = d.attempts, error = %why, retry_in_ms = backoff, "delivery failed; retrying");
            d.due_ms = self.clock.now_ms() + backoff;
            self.outbox[index] = d;
            return;
        }
        self.outbox.remove(index);
        self.urgent = true;
        self.record_outcome(m, &d, result);
    }

    /// A finished delivery's point (`fathom_alert_deliveries`, `fathom_retrain`) and, for
    /// retraining, its outcome record on the retraining topic.
    fn record_outcome(&mut self, m: usize, d: &Delivery, result: Result<(u16, String), Failure>) {
        let (status, answer) = match &result {
            Ok((status, body)) => (*status, Ok(body.as_str())),
            Err(failure) => (failure.status, Err(failure.why.as_str())),
        };
        if let Err(detail) = answer {
            tracing::error!(delivery = %d.id, attempts = d.attempts, error = %detail, "delivery failed for good");
        }
        let model = self.models[m].name.clone();
        let time_ns = self.clock.now_ms() * 1_000_000;
        let mut points = Vec::new();
        match d.target {
            Target::Alert(i) => {
                let rule = rule_name(&self.models[m].monitor.settings.rules[i]);
                points.push(Point {
                    measurement: "fathom_alert_deliveries".into(),
                    tags: vec![
                        ("model".into(), model),
                        ("rule".into(), rule),
                        ("outcome".into(), if answer.is_ok() { "delivered" } else { "failed" }.into()),
                    ],
                    fields: vec![
                        ("id".into(), Field::Str(d.id.clone())),
                        ("attempts".into(), Field::Int(i64::from(d.attempts))),
                        ("status".into(), Field::Int(i64::from(status))),
                    ],
                    time_ns,
                });
            }
            Target::Retrain => {
                let kubeflow = self.models[m].config.retrain.as_ref().is_some_and(|r| r.kubeflow.is_some());
                let target = if kubeflow { "kubeflow" } else { "webhook" };
                let (outcome, run_id, record) =
                    retrain_outcome(&d.id, &model, target, d.attempts, status, answer, d.context.as_deref());
                points.push(Point {
                    measurement: "fathom_retrain".into(),
                    tags: vec![
                        ("model".into(), model.clone()),
                        ("target".into(), target.into()),
                        ("outcome".into(), outcome.into()),
                    ],
                    fields: vec![
                        ("id".into(), Field::Str(d.id.clone())),
                        ("run_id".into(), Field::Str(run_id)),
                        ("attempts".into(), Field::Int(i64::from(d.attempts))),
                        ("status".into(), Field::Int(i64::from(status))),
                    ],
                    time_ns,
                });
                let id = format!("{}:{outcome}", d.id);
                self.outbox.push(Delivery::new(id, &d.model, Target::Topic, record.to_string(), None));
            }
            Target::Topic => {}
        }
        if let Err(e) = self.points.push(&points) {
            tracing::warn!(error = format!("{e:#}"), "delivery points not queued");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        let delays: Vec<i64> = (1..=10).map(super::backoff_ms).collect();
        assert_eq!(delays, [2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000]);
    }
}
