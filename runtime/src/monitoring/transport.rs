//! Sending a delivery: signed HTTP POSTs and records on the retraining topic.

use std::io::Write as _;
use std::time::Duration;

use fathom_monitor::alerts::signature;

use super::outbox::{Delivery, Failure};
use super::RETRAIN_TOPIC;

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
    let response = request?.send().await.map_err(|e| Failure::unanswered(e.without_url().to_string(), false))?;
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
