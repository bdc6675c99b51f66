//! The `sources` section and the Kafka connection of `fathom.yaml`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A stream of events: a Kafka topic, or HTTP push / file replay only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Kafka topic to consume; without it the source takes HTTP push and replay only.
    #[serde(default)]
    pub kafka: Option<TopicConfig>,
    /// Record format. Default: `json` (one JSON object per record).
    #[serde(default)]
    pub format: Format,
    /// Field holding the entity key (a string or an integer).
    pub key: String,
    /// Field holding the event time. Default: the Kafka record timestamp, else the time of
    /// arrival.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// How to read the timestamp field. Default: `auto` (RFC 3339 strings; numbers as epoch
    /// seconds, milliseconds, microseconds or nanoseconds by magnitude).
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
    /// Records larger than this many bytes are dead-lettered. Default: 1048576 (1 MiB).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Records whose entity key is longer than this many bytes are dead-lettered with reason
    /// `key_too_long` (keys become Redis keys and Parquet values). Default: 512.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Debezium sources: what a truncate (`op: t`) does. Default: `skip` (logged and counted
    /// in `fathom_truncates_total`); `dead_letter` sends it to the dead letters with reason
    /// `truncate` so an operator sees it. Rows are never cleared by a truncate.
    #[serde(default)]
    pub on_truncate: TruncatePolicy,
    /// Debezium sources: where the primary key comes from. Default: `row` (the `key` column
    /// of the row after, or before for deletes); `record` reads the Kafka record key (the
    /// connector's key envelope), composite keys as their values joined with `:` in column-name
    /// order. Either way `key` names the key in lookups and joins.
    #[serde(default)]
    pub key_from: KeyFrom,
    /// Debezium sources: the connector's `unavailable.value.placeholder`, the value it sends for
    /// a column it does not have (PostgreSQL TOAST columns an update left alone, …). Such a
    /// column keeps its stored value. Default: Debezium's, `__debezium_unavailable_value`.
    #[serde(default)]
    pub unavailable_value_placeholder: Option<String>,
    /// The fields SQL expressions (`select`, `where`) read, with their SQL types: `double`,
    /// `bigint`, `string`, `boolean`, `timestamp` (RFC 3339 text or epoch milliseconds), `date`,
    /// or a mapping of a nested object's fields. A record whose declared field holds another
    /// type is dead-lettered with reason `wrong_type`.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSpec>,
    /// New fields computed from each record by SQL expressions over `columns`, e.g.
    /// `amount_usd: "amount * rate"`; usable wherever a field is (aggregations, latest values,
    /// entity keys, join keys, conditions).
    #[serde(default)]
    pub select: BTreeMap<String, String>,
}

/// A declared column's type: a SQL type name, or a nested object's fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ColumnSpec {
    /// `double`, `bigint`, `string`, `boolean`, `timestamp`, `date`.
    Type(String),
    /// A nested object (a struct), read as `column.field` or `column['field']`.
    Nested(BTreeMap<String, ColumnSpec>),
}

/// Where a Debezium source's primary key comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFrom {
    /// The `key` column of the row.
    #[default]
    Row,
    /// The Kafka record key (Debezium's key envelope).
    Record,
}

/// What a Debezium truncate does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncatePolicy {
    /// Logged and counted, otherwise ignored.
    #[default]
    Skip,
    /// Sent to the dead letters with reason `truncate`.
    DeadLetter,
}

fn default_max_record_bytes() -> usize {
    1 << 20
}

fn default_max_key_bytes() -> usize {
    512
}

/// Where a source's records come from in Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name. Dead letters go to `<topic>.dlq`.
    pub topic: String,
}

/// Record encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per record.
    #[default]
    Json,
    /// Debezium change events: the source is a table whose current row per key is kept in the
    /// online store (`key` names the primary-key column; the commit time is the event time).
    Debezium,
}

/// Timestamp encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// RFC 3339 strings; numbers by magnitude.
    #[default]
    Auto,
    /// RFC 3339 / ISO 8601 strings with an offset.
    Rfc3339,
    /// Epoch seconds (may be fractional).
    Seconds,
    /// Epoch milliseconds.
    Millis,
    /// Epoch microseconds.
    Micros,
    /// Epoch nanoseconds.
    Nanos,
}

/// The Kafka connection shared by every Kafka source and the dead-letter producer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Consumer group. Default: `fathom-<project>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Any librdkafka property, passed through as is (`security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `ssl.ca.location`, …). Values of keys containing `password` or
    /// `secret` may be written `env:NAME` or `file:/path` to keep them out of the file.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Resolves a secret written `env:NAME` (the variable) or `file:/path` (the file, trailing
/// whitespace trimmed); any other value is returned as is. The error says what is missing,
/// never the secret.
pub fn resolve_secret(value: &str) -> Result<String, String> {
    if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path).map(|s| s.trim_end().to_string()).map_err(|e| format!("reading {path}: {e}"))
    } else {
        Ok(value.to_string())
    }
}
