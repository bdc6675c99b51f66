//! Dead letters: every refused record kept with its original bytes, coordinates and reason.
//!
//! With Kafka configured they go to `<topic>.dlq` (original bytes as the value, the rest as
//! `fathom.*` headers); in embedded mode to an NDJSON file `<dir>/<topic>.dlq`. Either way
//! [`DeadLetters::flush`] makes them durable before the source's offsets are committed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde_json::json;

use crate::decode::Reason;

/// One refused record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Source name.
    pub source: String,
    /// Topic (or source name for push/replay) the record came from; the dead-letter stream is
    /// `<topic>.dlq`.
    pub topic: String,
    /// Kafka partition, if any.
    pub partition: Option<i32>,
    /// Offset, or index in the push request / replay file.
    pub offset: i64,
    /// Category.
    pub reason: Reason,
    /// What exactly was wrong.
    pub message: String,
    /// The original bytes.
    pub payload: Vec<u8>,
}

/// Failures writing dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The dead-letter file could not be written.
    #[error("writing dead letters to {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The broker refused or timed out a dead letter.
    #[error("producing a dead letter to {topic}")]
    Kafka {
        /// The dead-letter topic.
        topic: String,
        /// The cause.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Where dead letters go.
pub enum DeadLetters {
    /// NDJSON files, one per topic.
    Files {
        /// Directory holding `<topic>.dlq`.
        dir: PathBuf,
        /// Open writers.
        open: HashMap<String, BufWriter<File>>,
    },
    /// `<topic>.dlq` topics.
    Kafka {
        /// Producer.
        producer: FutureProducer,
        /// Sends not yet confirmed, with their topic.
        pending: Vec<(String, DeliveryFuture)>,
    },
}

impl DeadLetters {
    /// File-backed dead letters under `dir` (created if missing).
    pub fn files(dir: PathBuf) -> DeadLetters {
        DeadLetters::Files { dir, open: HashMap::new() }
    }

    /// Topic-backed dead letters.
    pub fn kafka(producer: FutureProducer) -> DeadLetters {
        DeadLetters::Kafka { producer, pending: Vec::new() }
    }

    /// Queues one dead letter and counts it.
    pub fn send(&mut self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        self.queue(letter)?;
        metrics::counter!("fathom_dead_letters_total", "source" => letter.source.clone(), "reason" => letter.reason.as_str())
            .increment(1);
        tracing::debug!(source = %letter.source, reason = letter.reason.as_str(), offset = letter.offset, message = %letter.message, "dead letter");
        Ok(())
    }

    fn queue(&mut self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let topic = format!("{}.dlq", letter.topic);
        match self {
            DeadLetters::Files { dir, open } => {
                let path = dir.join(&topic);
                let io = |source| DeadLetterError::File { path: path.clone(), source };
                if !open.contains_key(&topic) {
                    std::fs::create_dir_all(&*dir).map_err(io)?;
                    let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
                    open.insert(topic.clone(), BufWriter::new(file));
                }
                let writer = open.get_mut(&topic).expect("inserted above");
                let mut line = serde_json::to_vec(&file_line(letter)).expect("JSON of plain values");
                line.push(b'\n');
                writer.write_all(&line).map_err(io)
            }
            DeadLetters::Kafka { producer, pending } => {
                let partition = letter.partition.map(|p| p.to_string()).unwrap_or_default();
                let offset = letter.offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "fathom.reason", value: Some(letter.reason.as_str()) })
                    .insert(Header { key: "fathom.message", value: Some(&letter.message) })
                    .insert(Header { key: "fathom.source", value: Some(&letter.source) })
                    .insert(Header { key: "fathom.topic", value: Some(&letter.topic) })
                    .insert(Header { key: "fathom.partition", value: Some(&partition) })
                    .insert(Header { key: "fathom.offset", value: Some(&offset) });
                let record = FutureRecord::<(), [u8]>::to(&topic).payload(&letter.payload).headers(headers);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((topic, delivery));
                        Ok(())
                    }
                    Err((source, _)) => Err(DeadLetterError::Kafka { topic, source }),
                }
            }
        }
    }

    /// Waits until every queued dead letter is durable (fsync'd, or acknowledged by the broker).
    pub async fn flush(&mut self) -> Result<(), DeadLetterError> {
        match self {
            DeadLetters::Files { dir, open } => {
                for (topic, writer) in open.iter_mut() {
                    let io = |source| DeadLetterError::File { path: dir.join(topic), source };
                    writer.flush().map_err(io)?;
                    writer.get_ref().sync_data().map_err(io)?;
                }
                Ok(())
            }
            DeadLetters::Kafka { producer, pending } => {
                for (topic, delivery) in pending.drain(..) {
                    match delivery.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((source, _))) => return Err(DeadLetterError::Kafka { topic, source }),
                        Err(_) => {
                            return Err(DeadLetterError::Kafka { topic, source: rdkafka::error::KafkaError::Canceled })
                        }
                    }
                }
                use rdkafka::producer::Producer as _;
                producer
                    .flush(Duration::from_secs(30))
                    .map_err(|source| DeadLetterError::Kafka { topic: "*".into(), source })
            }
        }
    }
}

/// The NDJSON form: payload as text when it is UTF-8, else base64.
fn file_line(letter: &DeadLetter) -> serde_json::Value {
    let mut line = json!({
        "reason": letter.reason.as_str(),
        "message": letter.message,
        "source": letter.source,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    match std::str::from_utf8(&letter.payload) {
        Ok(text) => line["payload"] = json!(text),
        Err(_) => line["payload_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&letter.payload)),
    }
    line
}
