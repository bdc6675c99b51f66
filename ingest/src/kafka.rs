//! The Kafka source: one consumer-group member for every Kafka-backed source, batches of raw
//! records out, offsets committed only when the caller says the work they cover is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::record::{Coordinates, Record};

/// Failures of the Kafka source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// librdkafka refused the configuration or the operation.
    #[error("kafka {what}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: KafkaError,
    },
    /// The broker did not answer; `reason` is the client's last error, which says why.
    #[error("kafka reaching the broker: {reason}")]
    Broker {
        /// What the metadata call returned.
        #[source]
        source: KafkaError,
        /// librdkafka's last error report (e.g. a failed SASL authentication).
        reason: String,
    },
    /// A secret option (`env:` / `file:`) could not be resolved.
    #[error("kafka option {key}: {message}")]
    Secret {
        /// The option key.
        key: String,
        /// Why.
        message: String,
    },
}

/// librdkafka settings from the project file; `env:NAME` and `file:/path` values are resolved so
/// secrets never sit in the config.
pub fn client_config(config: &KafkaConfig) -> Result<ClientConfig, SourceError> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in &config.options {
        client.set(key, resolve_secret(key, value)?);
    }
    Ok(client)
}

/// Asks librdkafka about the options, without connecting anywhere: all of them together (some
/// only make sense with others — `security.protocol: SASL_SSL` with its `sasl.mechanism`), and,
/// when that fails, each alone to name the culprit. Returns (key, librdkafka's message) for every
/// bad one; (`""`, message) when only the combination is refused. `env:`/`file:` values are
/// checked for their key only: the secret may live elsewhere.
pub fn check_options(config: &KafkaConfig) -> Vec<(String, String)> {
    let secret = |value: &str| value.starts_with("env:") || value.starts_with("file:");
    let refused = |options: &[(&String, &str)]| {
        let mut client = ClientConfig::new();
        options.iter().for_each(|(key, value)| {
            client.set(key.as_str(), *value);
        });
        client.create::<rdkafka::producer::BaseProducer>().err().map(|e| e.to_string())
    };
    // a secret stands in by a placeholder: SCRAM wants a password to be set, whatever it is
    let together: Vec<(&String, &str)> =
        config.options.iter().map(|(k, v)| (k, if secret(v) { "placeholder" } else { v.as_str() })).collect();
    // accepted together: nothing more to ask (an unknown key would have been refused)
    let Some(error) = refused(&together) else { return Vec::new() };
    let alone: Vec<(String, String)> = config
        .options
        .iter()
        .filter_map(|(key, value)| {
            let probe = if secret(value) { "" } else { value.as_str() };
            let error = refused(&[(key, probe)])?;
            // a secret's value is not known here: only an unknown property is a problem
            (!secret(value) || error.contains("No such configuration property")).then(|| (key.clone(), error))
        })
        .collect();
    if alone.is_empty() {
        vec![(String::new(), error)]
    } else {
        alone
    }
}

fn resolve_secret(key: &str, value: &str) -> Result<String, SourceError> {
    crate::config::resolve_secret(value).map_err(|message| SourceError::Secret { key: key.to_string(), message })
}

/// A producer on the same connection settings (dead letters).
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, SourceError> {
    let mut client = client_config(config)?;
    client.set("enable.idempotence", "true");
    client.set("linger.ms", "20");
    client.create().map_err(|source| SourceError::Kafka { what: "creating the producer", source })
}

/// Notes partition assignment changes, so the pipeline can drop cached state for partitions
/// another group member may have written meanwhile; and the client's last error, so a failing
/// probe can say why (a refused SASL login looks like a silent broker otherwise).
pub struct RebalanceWatch {
    changed: Arc<AtomicBool>,
    /// Rebalances so far; counted after `changed` is set.
    count: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<ClientError>>>,
}

/// An error librdkafka reported on its own (not as the answer to a call).
#[derive(Clone)]
struct ClientError {
    /// "All brokers are down": true, but the error before it says why.
    vague: bool,
    /// librdkafka's words.
    reason: String,
}

impl ClientContext for RebalanceWatch {
    /// librdkafka's statistics (every `statistics.interval.ms`): what it holds prefetched, the
    /// memory a slow pipeline makes it keep. Each partition's fetch queue forwards to the
    /// consumer's one queue, whose length every partition then reports: the largest is the
    /// total, a sum would count it once per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let partitions = statistics.topics.values().flat_map(|t| t.partitions.values()).filter(|p| p.partition >= 0);
        let (messages, bytes) = partitions.fold((0, 0), |(n, b), p| (n.max(p.fetchq_cnt), b.max(p.fetchq_size)));
        metrics::gauge!("fathom_kafka_prefetched_messages").set(messages as f64);
        metrics::gauge!("fathom_kafka_prefetched_bytes").set(bytes as f64);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        let vague = error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
        let mut last = self.last_error.lock().unwrap_or_else(PoisonError::into_inner);
        // "all brokers are down" follows the error that says why: keep that one
        if !(vague && last.as_ref().is_some_and(|l| !l.vague)) {
            *last = Some(ClientError { vague, reason: reason.to_string() });
        }
    }
}

impl ConsumerContext for RebalanceWatch {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let what = match rebalance {
            Rebalance::Assign(list) => format!("assigned {} partitions", list.count()),
            Rebalance::Revoke(list) => format!("revoked {} partitions", list.count()),
            Rebalance::Error(e) => format!("rebalance error: {e}"),
        };
        tracing::info!(what, "consumer group rebalance");
        self.changed.store(true, Ordering::Release);
        self.count.fetch_add(1, Ordering::AcqRel);
    }
}

type Inner = StreamConsumer<RebalanceWatch>;

/// Creates the dead-letter topics that do not exist yet (one partition each), so refused
/// records never wait on a missing topic. Existing topics are left alone.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> Result<(), SourceError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;

    if topics.is_empty() {
        return Ok(());
    }
    let client = client_config(config)?;
    // only the missing ones: a broker (or an ACL) that refuses CreateTopics is not asked in vain.
    // Asking blocks (up to 10 s): off the async threads.
    let asked = tokio::task::spawn_blocking(move || {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            client.create().map_err(|source| SourceError::Kafka { what: "creating the admin client", source })?;
        let existing: std::collections::HashSet<String> = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect())
            .unwrap_or_default();
        Ok::<_, SourceError>((admin, existing))
    });
    let (admin, existing) = asked.await.expect("the metadata request does not panic")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .filter(|t| !existing.contains(t.as_str()))
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1)))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|source| SourceError::Kafka { what: "creating dead-letter topics", source })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created dead-letter topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(SourceError::Kafka {
                    what: "creating a dead-letter topic",
                    source: rdkafka::error::KafkaError::AdminOp(code),
                })
                .inspect_err(|_| tracing::warn!(topic, %code, "could not create dead-letter topic"));
            }
        }
    }
    Ok(())
}

/// The consumer's `fetch.wait.max.ms` unless the project sets it: what the slowest partition
/// of a fetch can add to a record's latency.
pub const FETCH_WAIT_MAX_MS: &str = "10";

/// The consumer of every Kafka-backed source.
pub struct KafkaSource {
    consumer: Arc<Inner>,
    /// topic → source index.
    topics: HashMap<String, usize>,
}

/// Commits offsets and reads lag for a [`KafkaSource`], from another task.
#[derive(Clone)]
pub struct Committer {
    consumer: Arc<Inner>,
    rebalanced: Arc<AtomicBool>,
    rebalances: Arc<AtomicU64>,
    /// The subscribed topics, for [`Committer::probe`].
    topics: Arc<[String]>,
    /// The client's last error (librdkafka's own words), for [`Committer::probe`].
    last_error: Arc<Mutex<Option<ClientError>>>,
}

/// The consumer's settings: the project's `kafka` section, the group, offsets committed only
/// by Fathom, and Fathom's defaults where the project's `options` are silent
/// (`auto.offset.reset: earliest`, `statistics.interval.ms: 10000`, `fetch.wait.max.ms`:
/// [`FETCH_WAIT_MAX_MS`]).
pub fn consumer_config(config: &KafkaConfig, group: &str) -> Result<ClientConfig, SourceError> {
    let mut client = client_config(config)?;
    client.set("group.id", group).set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
    // librdkafka's 500 ms default of fetch.wait.max.ms is how long a broker may hold a fetch
    // open waiting for data: a broker that waits it out whenever a partition has nothing new
    // puts the records of the partitions that do behind that wait
    let defaults = [
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "10000"),
        ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS),
    ];
    for (key, value) in defaults {
        if !config.options.contains_key(key) {
            client.set(key, value);
        }
    }
    Ok(client)
}

/// Next offset to read per (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

impl KafkaSource {
    /// Joins `group` and subscribes to `topics` (topic, source index).
    pub fn new(
        config: &KafkaConfig,
        group: &str,
        topics: &[(String, usize)],
    ) -> Result<(KafkaSource, Committer), SourceError> {
        let client = consumer_config(config, group)?;
        let (rebalanced, rebalances) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let last_error = Arc::new(Mutex::new(None));
        let watch =
            RebalanceWatch { changed: rebalanced.clone(), count: rebalances.clone(), last_error: last_error.clone() };
        let consumer: Inner = client
            .create_with_context(watch)
            .map_err(|source| SourceError::Kafka { what: "creating the consumer", source })?;
        let names: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&names).map_err(|source| SourceError::Kafka { what: "subscribing", source })?;
        let consumer = Arc::new(consumer);
        let source = KafkaSource { consumer: consumer.clone(), topics: topics.iter().cloned().collect() };
        let topics = names.iter().map(|t| t.to_string()).collect();
        Ok((source, Committer { consumer, rebalanced, rebalances, topics, last_error }))
    }

    /// Up to `max` records: waits for the first one, then takes what arrives within `linger`.
    /// A zero `linger` waits for nothing more: the batch is what the consumer already holds, so
    /// under load batches grow by themselves (records queue while the previous batch is
    /// processed) and when quiet a record waits for no one.
    /// Not cancel-safe (records received before cancellation are lost to this batch): run it
    /// in a task of its own.
    pub async fn batch(&self, max: usize, linger: Duration) -> Result<Vec<Record>, SourceError> {
        use futures_util::FutureExt as _;
        let mut out = Vec::with_capacity(max.min(4096));
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max {
            let message = if out.is_empty() {
                self.consumer.recv().await
            } else if linger.is_zero() {
                // `recv` takes a message off the queue only when it returns one: dropping it
                // unfinished loses nothing
                match self.consumer.recv().now_or_never() {
                    Some(m) => m,
                    None => break,
                }
            } else {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            let message = message.map_err(|source| SourceError::Kafka { what: "receiving", source })?;
            let Some(&source) = self.topics.get(message.topic()) else {
                continue;
            };
            out.push(Record {
                source,
                at: Coordinates { partition: Some(message.partition()), offset: message.offset() },
                transport_time_ms: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
        }
        Ok(out)
    }
}

impl Committer {
    /// Whether the partition assignment changed since the last call.
    pub fn take_rebalanced(&self) -> bool {
        self.rebalanced.swap(false, Ordering::AcqRel)
    }

    /// How many times the assignment changed so far (after each rebalance callback, once
    /// [`Committer::take_rebalanced`] would see it).
    pub fn rebalances(&self) -> Arc<AtomicU64> {
        self.rebalances.clone()
    }

    /// Commits `next` offsets. Call only once the work covering the records below them is
    /// durable.
    pub fn commit(&self, next: &Offsets) -> Result<(), SourceError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|source| SourceError::Kafka { what: "building the commit", source })?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(|source| SourceError::Kafka { what: "committing offsets", source })
    }

    /// Asks a broker for a subscribed topic's metadata (blocking, at most `timeout`): `Ok` when
    /// one answers. A consumer waiting for records cannot tell a quiet topic from a lost broker;
    /// this can. A failure carries the client's last error, which names the cause
    /// (authentication, TLS, resolution) where the metadata call only timed out.
    pub fn probe(&self, timeout: Duration) -> Result<(), SourceError> {
        let before = self.last_error.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.consumer.fetch_metadata(self.topics.first().map(String::as_str), timeout).map(drop).map_err(|source| {
            let during = self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone();
            // the newest that says why, else the newest
            let telling = [&during, &before].into_iter().flatten().find(|e| !e.vague);
            match telling.or(during.as_ref()).or(before.as_ref()) {
                Some(e) => SourceError::Broker { source, reason: e.reason.clone() },
                None => SourceError::Kafka { what: "reaching the broker", source },
            }
        })
    }

    /// Consumer lag per (topic, partition): high watermark minus the next offset to read. Asks
    /// the broker (blocking, at most a second per partition): call it off the async threads.
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        let Ok(assignment) = self.consumer.position() else {
            return Vec::new();
        };
        assignment
            .elements()
            .iter()
            .filter_map(|e| {
                let Offset::Offset(next) = e.offset() else {
                    return None;
                };
                let (_, high) =
                    self.consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1)).ok()?;
                Some((e.topic().to_string(), e.partition(), (high - next).max(0)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The consumer waits 10 ms, not librdkafka's 500 ms, for a partition with nothing new
    /// (freshness, issue 21), and a project's own value wins.
    #[test]
    fn the_consumer_defaults_to_a_short_fetch_wait_that_options_override() {
        let config =
            KafkaConfig { bootstrap_servers: "127.0.0.1:9092".into(), group_id: None, options: Default::default() };
        let client = consumer_config(&config, "g").unwrap();
        assert_eq!(client.get("fetch.wait.max.ms"), Some(FETCH_WAIT_MAX_MS));
        assert_eq!(FETCH_WAIT_MAX_MS, "10");
        assert_eq!((client.get("group.id"), client.get("enable.auto.commit")), (Some("g"), Some("false")));
        assert_eq!(client.get("auto.offset.reset"), Some("earliest"));
        let options = [("fetch.wait.max.ms", "500"), ("auto.offset.reset", "latest")];
        let config =
            KafkaConfig { options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..config };
        let client = consumer_config(&config, "g").unwrap();
        assert_eq!((client.get("fetch.wait.max.ms"), client.get("auto.offset.reset")), (Some("500"), Some("latest")));
    }

    #[test]
    fn options_pass_through_and_secrets_come_from_env_or_files() {
        let dir = std::env::temp_dir().join(format!("fathom-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        std::env::set_var("FATHOM_TEST_SASL_USER", "alice");
        let config = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: None,
            options: [
                ("security.protocol", "sasl_plaintext".to_string()),
                ("sasl.mechanism", "PLAIN".to_string()),
                ("sasl.username", "env:FATHOM_TEST_SASL_USER".to_string()),
                ("sasl.password", format!("file:{}", dir.display())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        let client = client_config(&config).unwrap();
        assert_eq!(client.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(client.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(client.get("sasl.username"), Some("alice"));
        assert_eq!(client.get("sasl.password"), Some("s3cret"));
        let _ = std::fs::remove_file(&dir);
        let missing = KafkaConfig {
            options: [("sasl.password".to_string(), "env:FATHOM_TEST_NOT_SET".to_string())].into(),
            ..config
        };
        let err = client_config(&missing).err().unwrap().to_string();
        assert_eq!(err, "kafka option sasl.password: environment variable FATHOM_TEST_NOT_SET is not set");
    }
}
