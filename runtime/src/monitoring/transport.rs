//! Sending a delivery: signed HTTP POSTs and records on the retraining topic.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use fathom_monitor::alerts::signature;
use fathom_monitor::https::ClientTls;

use super::outbox::{Delivery, Failure};
use super::RETRAIN_TOPIC;

/// The HTTP clients of the models' alert and retraining targets: one per distinct `tls` setting
/// (most share the one without), each with a 10 s timeout per request.
pub(super) struct Clients(HashMap<Option<ClientTls>, reqwest::Client>);

impl Clients {
    /// Builds them for `models` (name, config); a `tls` file that cannot be used is an error
    /// naming its field.
    pub(super) fn new<'a>(
        models: impl Iterator<Item = (&'a str, &'a fathom_project::models::ModelConfig)>,
    ) -> anyhow::Result<Clients> {
        let mut clients = HashMap::new();
        let mut add = |tls: Option<&ClientTls>, field: String| -> anyhow::Result<()> {
            if let std::collections::hash_map::Entry::Vacant(entry) = clients.entry(tls.cloned()) {
                let client = fathom_monitor::https::client(tls, &field)?.timeout(Duration::from_secs(10)).build();
                entry.insert(client.with_context(|| field.clone())?);
            }
            Ok(())
        };
        add(None, "tls".into())?;
        for (name, config) in models {
            for (i, alert) in config.alerts.iter().enumerate() {
                add(alert.tls.as_ref(), format!("models.{name}.alerts[{i}].tls"))?;
            }
            if let Some(retrain) = &config.retrain {
                add(retrain.tls.as_ref(), format!("models.{name}.retrain.tls"))?;
            }
        }
        Ok(Clients(clients))
    }

    /// The client for a target with this `tls` setting.
    pub(super) fn get(&self, tls: Option<&ClientTls>) -> &reqwest::Client {
        self.0.get(&tls.cloned()).expect("Clients::new builds one for every target's tls")
    }
}

/// A POST of the delivery's body with `X-Fathom-Signature` (when a secret is set),
/// `X-Fathom-Delivery` and `Idempotency-Key`.
pub(super) fn signed(
    http: &reqwest::Client,
    url: &str,
    d: &Delivery,
    secret: Option<&str>,
    event: &str,
) -> Result<reqwest::RequestBuilder, Failure> {
    let mut request = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Fathom-Event", event)
        .header("X-Fathom-Delivery", &d.id)
        .header("Idempotency-Key", &d.id)
        .body(d.body.clone());
    if let Some(secret) = secret {
        let key = fathom_ingest::config::resolve_secret(secret)
            .map_err(|e| Failure::unanswered(format!("secret: {e}"), true))?;
        request = request.header("X-Fathom-Signature", signature(key.as_bytes(), d.body.as_bytes()));
    }
    Ok(request)
}

/// Sends; 2xx is done, 408/425/429/5xx and connection failures are retried, other 4xx are not.
pub(super) async fn send(request: Result<reqwest::RequestBuilder, Failure>) -> Result<(u16, String), Failure> {
    let response = request?.send().await.map_err(|e| Failure::unanswered(fathom_monitor::https::describe(e), false))?;
    let status = response.status().as_u16();
    let body: String = response.text().await.unwrap_or_default().chars().take(2000).collect();
    if (200..300).contains(&status) {
        return Ok((status, body));
    }
    let retry = matches!(status, 408 | 425 | 429) || status >= 500;
    let why = format!("HTTP {status}: {}", body.chars().take(200).collect::<String>());
    Err(Failure { why, permanent: !retry, status })
}

/// A record on [`RETRAIN_TOPIC`] (Kafka), or a line in `<monitoring dir>/fathom.retrain.ndjson`.
pub(super) async fn publish(
    producer: Option<rdkafka::producer::FutureProducer>,
    dir: &std::path::Path,
    model: &str,
    body: &str,
) -> Result<(), String> {
    match producer {
        Some(p) => {
            let record = rdkafka::producer::FutureRecord::to(RETRAIN_TOPIC).key(model).payload(body);
            p.send(record, Duration::from_secs(30)).await.map(drop).map_err(|(e, _)| e.to_string())
        }
        None => {
            let path = dir.join(format!("{RETRAIN_TOPIC}.ndjson"));
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(dir)?;
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                writeln!(file, "{body}")?;
                file.sync_data()
            };
            write().map_err(|e| e.to_string())
        }
    }
}
