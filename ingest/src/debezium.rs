//! Debezium change events (the PostgreSQL, MySQL and other connectors' JSON envelopes) decoded
//! into [`Change`]s: operation, primary key, before/after rows, commit time and log position.
//!
//! Accepts envelopes with or without the `schema`/`payload` wrapper (JSON converter with
//! `schemas.enable` true or false), keys from the Kafka record key (same two shapes) or from
//! configured columns, and Debezium 1.x and 2.x time fields (`ts_ms`, `ts_us`, `ts_ns`). A null
//! value is the tombstone that follows a delete; it is consumed, not refused.

use serde_json::{Map, Value};

use crate::decode::{Reason, Refusal};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `c`: insert.
    Create,
    /// `u`: update.
    Update,
    /// `d`: delete.
    Delete,
    /// `r`: a row read by a snapshot.
    Read,
    /// `t`: the table was truncated.
    Truncate,
}

/// One decoded change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Operation.
    pub op: Op,
    /// Primary-key columns.
    pub key: Map<String, Value>,
    /// Row before the change (updates with REPLICA IDENTITY FULL, deletes).
    pub before: Option<Map<String, Value>>,
    /// Row after the change (creates, updates, snapshot reads).
    pub after: Option<Map<String, Value>>,
    /// Commit time in the source database (`source.ts_ns`/`ts_us`/`ts_ms`), ms since the epoch.
    pub commit_ms: i64,
    /// Commit time in µs when the connector gives that precision.
    pub commit_us: i64,
    /// Log sequence number (`source.lsn`), when the connector has one.
    pub lsn: Option<i64>,
    /// Transaction id (`source.txId`).
    pub tx_id: Option<i64>,
    /// `source.snapshot`: `true`, `last`, `false`, `incremental`, …
    pub snapshot: Option<String>,
    /// `schema.table` (or `db.table`) from `source`.
    pub table: Option<String>,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A row change (truncates included: the caller decides whether to skip them).
    Change(Box<Change>),
    /// The null value that follows a delete so compaction can drop the key.
    Tombstone,
}

fn malformed(message: impl Into<String>) -> Refusal {
    Refusal { reason: Reason::MalformedEnvelope, message: message.into() }
}

/// Unwraps `{"schema": …, "payload": …}`; anything else is already the payload.
fn payload(value: Value) -> Value {
    match value {
        Value::Object(mut map) if map.contains_key("payload") && map.contains_key("schema") => {
            map.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    }
}

fn object(value: Option<Value>, what: &str) -> Result<Option<Map<String, Value>>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(malformed(format!("`{what}` must be an object or null, got {other}"))),
    }
}

fn integer(source: &Map<String, Value>, field: &str) -> Option<i64> {
    source.get(field).and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
}

/// Decodes one Kafka record of a Debezium topic. `key_columns` names the primary key when the
/// record key should not be used (empty: take the record key).
pub fn decode(record_key: Option<&[u8]>, value: &[u8], key_columns: &[String]) -> Result<Decoded, Refusal> {
    if value.is_empty() {
        return Ok(Decoded::Tombstone);
    }
    let envelope: Value = serde_json::from_slice(value)
        .map_err(|e| Refusal { reason: Reason::MalformedJson, message: format!("not valid JSON: {e}") })?;
    let Value::Object(mut envelope) = payload(envelope) else {
        return Ok(Decoded::Tombstone); // a schema-wrapped null payload, or a bare `null`
    };
    let op = match envelope.get("op").and_then(Value::as_str) {
        Some("c") => Op::Create,
        Some("u") => Op::Update,
        Some("d") => Op::Delete,
        Some("r") => Op::Read,
        Some("t") => Op::Truncate,
        Some(other) => return Err(malformed(format!("unknown op {other:?} (expected c, u, d, r or t)"))),
        None => return Err(malformed("`op` is missing: not a Debezium change event")),
    };
    let before = object(envelope.remove("before"), "before")?;
    let after = object(envelope.remove("after"), "after")?;
    let source = match envelope.remove("source") {
        Some(Value::Object(source)) => source,
        _ => return Err(malformed("`source` is missing or not an object")),
    };
    let commit_us = integer(&source, "ts_ns")
        .map(|ns| ns.div_euclid(1_000))
        .or_else(|| integer(&source, "ts_us"))
        .or_else(|| integer(&source, "ts_ms").map(|ms| ms * 1_000))
        .ok_or_else(|| Refusal {
            reason: Reason::MissingTimestamp,
            message: "`source.ts_ms` (commit time) is missing".into(),
        })?;
    if matches!(op, Op::Create | Op::Read | Op::Update) && after.is_none() {
        return Err(malformed(format!("{op:?} without `after`")));
    }
    let key = if op == Op::Truncate {
        Map::new()
    } else if key_columns.is_empty() {
        record_key_columns(record_key)?
    } else {
        let row = after.as_ref().or(before.as_ref()).ok_or_else(|| malformed("no row to take key columns from"))?;
        let mut key = Map::new();
        for column in key_columns {
            match row.get(column) {
                Some(v) if !v.is_null() => {
                    key.insert(column.clone(), v.clone());
                }
                _ => {
                    return Err(Refusal {
                        reason: Reason::MissingKey,
                        message: format!("key column {column:?} is missing"),
                    })
                }
            }
        }
        key
    };
    let table = match (
        source.get("schema").or(source.get("db")).and_then(Value::as_str),
        source.get("table").and_then(Value::as_str),
    ) {
        (Some(schema), Some(table)) => Some(format!("{schema}.{table}")),
        (None, Some(table)) => Some(table.to_string()),
        _ => None,
    };
    Ok(Decoded::Change(Box::new(Change {
        op,
        key,
        before,
        after,
        commit_ms: commit_us.div_euclid(1_000),
        commit_us,
        lsn: integer(&source, "lsn"),
        tx_id: integer(&source, "txId"),
        snapshot: source.get("snapshot").and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }),
        table,
    })))
}

/// The primary key from a Debezium key envelope (`{"id": 1}` or `{"schema": …, "payload": {"id": 1}}`).
fn record_key_columns(record_key: Option<&[u8]>) -> Result<Map<String, Value>, Refusal> {
    let missing = || Refusal {
        reason: Reason::MissingKey,
        message: "the Kafka record has no key and no key columns are configured".into(),
    };
    let bytes = record_key.filter(|k| !k.is_empty()).ok_or_else(missing)?;
    let key: Value = serde_json::from_slice(bytes).map_err(|e| malformed(format!("record key is not JSON: {e}")))?;
    match payload(key) {
        Value::Object(map) if !map.is_empty() => Ok(map),
        other => Err(malformed(format!("record key must be an object of key columns, got {other}"))),
    }
}

#[cfg(test)]
mod tests;
