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
        /// Letters the broker has not acknowledged yet, each with its delivery once sent; one the
        /// broker refused waits without a delivery until the next flush sends it again.
        pending: Vec<(DeadLetter, Option<DeliveryFuture>)>,
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
        match self {
            DeadLetters::Files { dir, open } => {
                let topic = dlq_topic(letter);
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
                let delivery = produce(producer, letter)?;
                pending.push((letter.clone(), Some(delivery)));
                Ok(())
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
                for (letter, delivery) in pending.iter_mut().filter(|(_, delivery)| delivery.is_none()) {
                    *delivery = Some(produce(producer, letter)?);
                }
                // every delivery awaited, not only up to the first refusal: the refused ones stay
                // for the next flush, the acknowledged ones leave (a cancelled flush loses none)
                let mut refused = None;
                let mut i = 0;
                while i < pending.len() {
                    let delivery = pending[i].1.as_mut().expect("every pending letter was sent above");
                    let source = match delivery.await {
                        Ok(Ok(_)) => {
                            pending.swap_remove(i);
                            continue;
                        }
                        Ok(Err((source, _))) => source,
                        Err(_) => rdkafka::error::KafkaError::Canceled,
                    };
                    pending[i].1 = None;
                    refused.get_or_insert(DeadLetterError::Kafka { topic: dlq_topic(&pending[i].0), source });
                    i += 1;
                }
                if let Some(refused) = refused {
                    return Err(refused);
                }
                use rdkafka::producer::Producer as _;
                producer
                    .flush(Duration::from_secs(30))
                    .map_err(|source| DeadLetterError::Kafka { topic: "*".into(), source })
            }
        }
    }
}

/// `<topic>.dlq`: where the records of `letter`'s topic that were refused go.
fn dlq_topic(letter: &DeadLetter) -> String {
    format!("{}.dlq", letter.topic)
}

/// Sends `letter` to its dead-letter topic: the original bytes as the value, the rest as
/// `fathom.*` headers. Fails at once when the producer's queue is full.
fn produce(producer: &FutureProducer, letter: &DeadLetter) -> Result<DeliveryFuture, DeadLetterError> {
    let topic = dlq_topic(letter);
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
        Ok(delivery) => Ok(delivery),
        Err((source, _)) => Err(DeadLetterError::Kafka { topic: dlq_topic(letter), source }),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::config::KafkaConfig;

    /// The offsets (`fathom.offset` header) of every record on partition 0 of `topic`, read to
    /// its end.
    fn offsets_on(bootstrap: &str, topic: &str) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "reader")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let mut offsets = Vec::new();
        loop {
            match consumer.poll(Duration::from_secs(10)).expect("the topic read to its end within 10 s") {
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => return offsets,
                Err(e) => panic!("reading {topic}: {e}"),
                Ok(m) => {
                    let headers = m.headers().unwrap();
                    let header = headers.iter().find(|h| h.key == "fathom.offset").unwrap();
                    offsets.push(std::str::from_utf8(header.value.unwrap()).unwrap().parse().unwrap());
                }
            }
        }
    }

    /// A dead letter the broker refuses (here `MESSAGE_TOO_LARGE`, as a topic with a smaller
    /// `max.message.bytes` answers) fails the flush that waits for it — so the source's offsets
    /// are not committed — and stays queued: the next flush sends it again, and every letter
    /// reaches the topic. The broker is librdkafka's mock cluster, the one way to make a broker
    /// refuse a produce request on demand; the producer is the one Fathom builds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_letter_the_broker_refuses_is_sent_again_not_dropped() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("tx.dlq", 1, 1).unwrap();
        let config =
            KafkaConfig { bootstrap_servers: cluster.bootstrap_servers(), group_id: None, options: BTreeMap::new() };
        let mut dead = DeadLetters::kafka(crate::kafka::producer(&config).unwrap());
        let letter = |offset: i64| DeadLetter {
            source: "tx".into(),
            topic: "tx".into(),
            partition: Some(0),
            offset,
            reason: Reason::MalformedJson,
            message: format!("record {offset}"),
            payload: b"{not json".to_vec(),
        };
        // the first produce request is refused; the mock answers every later one normally
        cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
        for offset in 0..3 {
            dead.send(&letter(offset)).unwrap();
        }
        let refused = dead.flush().await.expect_err("a flush that waited for a refused letter fails");
        assert!(format!("{refused:?}").contains("MessageSizeTooLarge"), "{refused:?}");
        dead.send(&letter(3)).unwrap();
        dead.flush().await.unwrap();
        let mut delivered = offsets_on(&config.bootstrap_servers, "tx.dlq");
        delivered.sort_unstable();
        assert_eq!(delivered, vec![0, 1, 2, 3], "every dead letter on tx.dlq once");
    }
}
