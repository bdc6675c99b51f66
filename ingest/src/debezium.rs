//! Debezium change events (the PostgreSQL, MySQL and other connectors' JSON envelopes) decoded
//! into [`Change`]s: operation, primary key, before/after rows, commit time and log position.
//!
//! Accepts envelopes with or without the `schema`/`payload` wrapper (JSON converter with
//! `schemas.enable` true or false), keys from the Kafka record key (same two shapes) or from
//! configured columns, and Debezium 1.x and 2.x time fields (`ts_ms`, `ts_us`, `ts_ns`). A null
//! value is the tombstone that follows a delete; it is consumed, not refused.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::decode::{Reason, Refusal};
use crate::record::Coordinates;

/// Debezium's default `unavailable.value.placeholder`: what a connector sends for a column whose
/// value it does not have (PostgreSQL TOAST columns an update did not touch, Oracle LOBs, …).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// The connector a change came from, as `source.connector` names it (or as its position fields
/// reveal when that field is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Connector {
    /// `postgresql`: `lsn` (or the current LSN in `sequence`).
    Postgres,
    /// `mysql`, `mariadb`: binlog `file` (its sequence number), `pos`, `row`.
    MySql,
    /// `sqlserver`, `db2`, `informix`: `commit_lsn`, `change_lsn`, `event_serial_no`.
    SqlServer,
    /// `oracle`: `commit_scn` (the `scn` for snapshot rows), `scn`, `ssn`.
    Oracle,
    /// `mongodb`: the oplog time (`ts_ms`, whole seconds) and `ord`.
    MongoDb,
}

/// A change's position in its connector's log: changes of one row compare in commit order.
/// Positions of different connectors do not compare meaningfully (a table has one connector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// Which connector's fields `parts` holds.
    pub connector: Connector,
    /// The position's components, most significant first (see [`Connector`]).
    pub parts: [u128; 3],
}

impl LogPosition {
    /// The position as text whose byte order is the position order (`mysql:` followed by three
    /// 32-digit hex numbers), as the offline change log's `_position` column stores it.
    pub fn to_sortable(&self) -> String {
        let name = match self.connector {
            Connector::Postgres => "postgresql",
            Connector::MySql => "mysql",
            Connector::SqlServer => "sqlserver",
            Connector::Oracle => "oracle",
            Connector::MongoDb => "mongodb",
        };
        format!("{name}:{:032x}:{:032x}:{:032x}", self.parts[0], self.parts[1], self.parts[2])
    }

    /// Reads [`LogPosition::to_sortable`]'s text back.
    pub fn from_sortable(text: &str) -> Option<LogPosition> {
        let mut fields = text.split(':');
        let connector = match fields.next()? {
            "postgresql" => Connector::Postgres,
            "mysql" => Connector::MySql,
            "sqlserver" => Connector::SqlServer,
            "oracle" => Connector::Oracle,
            "mongodb" => Connector::MongoDb,
            _ => return None,
        };
        let mut parts = [0u128; 3];
        for part in &mut parts {
            *part = u128::from_str_radix(fields.next()?, 16).ok()?;
        }
        fields.next().is_none().then_some(LogPosition { connector, parts })
    }
}

/// The order of the changes of one row: the connector's log position when both changes have
/// one — two changes at the same position are the same change, however often Kafka delivers
/// it; without positions, the Kafka (partition, offset) — Debezium sends one key to one
/// partition in commit order — then the commit time (HTTP push and file replay, which have no
/// log). A change without a position orders before one with a position. A change applies only
/// when it is greater than the stored one, so redelivered and out-of-order changes never
/// overwrite newer ones, and a snapshot read (stamped with the time the snapshot *read* the
/// row) never outranks a change streamed at a later position.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChangeOrder {
    /// The connector's log position, when the envelope has one.
    pub position: Option<LogPosition>,
    /// Kafka (partition, offset); `None` for push and replay.
    pub kafka: Option<(i32, i64)>,
    /// Commit time (`source.ts_*`), µs since the epoch.
    pub commit_us: i64,
}

impl Ord for ChangeOrder {
    fn cmp(&self, other: &ChangeOrder) -> std::cmp::Ordering {
        match (&self.position, &other.position) {
            (Some(a), Some(b)) => a.cmp(b),
            (a, b) => a.cmp(b).then_with(|| (self.kafka, self.commit_us).cmp(&(other.kafka, other.commit_us))),
        }
    }
}

impl PartialOrd for ChangeOrder {
    fn partial_cmp(&self, other: &ChangeOrder) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ChangeOrder {
    fn eq(&self, other: &ChangeOrder) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for ChangeOrder {}

impl ChangeOrder {
    /// The order of `change` read at `at`.
    pub fn of(change: &Change, at: Coordinates) -> ChangeOrder {
        ChangeOrder {
            position: change.position,
            kafka: at.partition.map(|p| (p, at.offset)),
            commit_us: change.commit_us,
        }
    }
}

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
    /// The connector's log position, when the envelope has one ([`position`]).
    pub position: Option<LogPosition>,
    /// Columns whose value the connector did not have (the placeholder was sent): removed from
    /// `after`, to be kept from the stored row.
    pub unavailable: Vec<String>,
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

/// A row: an object, or — as the MongoDB connector sends its documents — a string holding one
/// (MongoDB extended JSON, whose typed values such as `{"$numberLong": "1004"}` stay objects).
fn object(value: Option<Value>, what: &str) -> Result<Option<Map<String, Value>>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            _ => Err(malformed(format!("`{what}` is a string but not a JSON document: {text:?}"))),
        },
        Some(other) => Err(malformed(format!("`{what}` must be an object or null, got {other}"))),
    }
}

fn integer(source: &Map<String, Value>, field: &str) -> Option<i64> {
    source.get(field).and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
}

/// A non-negative integer given as a JSON number or as decimal text (Debezium writes SCNs and
/// some LSNs as strings).
fn unsigned(source: &Map<String, Value>, field: &str) -> Option<u128> {
    match source.get(field)? {
        Value::Number(n) => n.as_u64().map(u128::from),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An LSN of SQL Server or Db2 (`"0000002c:00000b28:0004"`: fixed-width hex groups, so the
/// concatenation orders as the LSN does), or of Informix (a number).
fn hex_lsn(source: &Map<String, Value>, field: &str) -> Option<u128> {
    match source.get(field)? {
        Value::String(s) if s.contains(':') => {
            let digits: String = s.split(':').collect();
            (digits.len() <= 32).then(|| u128::from_str_radix(&digits, 16).ok()).flatten()
        }
        _ => unsigned(source, field),
    }
}

/// The change's log position from Debezium's documented `source` fields, per connector:
///
/// | connector | fields, most significant first |
/// |---|---|
/// | `postgresql` | `lsn` (else the current LSN, `sequence[1]`) |
/// | `mysql`, `mariadb` | `file` (the number after its last `.`), `pos`, `row` |
/// | `sqlserver`, `db2`, `informix` | `commit_lsn`, `change_lsn`, `event_serial_no` |
/// | `oracle` | `commit_scn` (snapshot rows: `scn`), `scn`, `ssn` |
/// | `mongodb` | `ts_ms` (the oplog's whole seconds), `ord` |
///
/// The connector is `source.connector`, or else the first family whose fields are present.
/// `None` when the fields are missing: the change is then ordered by Kafka offset or time.
pub fn position(source: &Map<String, Value>) -> Option<LogPosition> {
    let named = source.get("connector").and_then(Value::as_str).map(str::to_ascii_lowercase);
    let connector = match named.as_deref() {
        Some("postgresql" | "postgres") => Connector::Postgres,
        Some("mysql" | "mariadb") => Connector::MySql,
        Some("sqlserver" | "db2" | "informix") => Connector::SqlServer,
        Some("oracle") => Connector::Oracle,
        Some("mongodb") => Connector::MongoDb,
        _ if source.contains_key("lsn") || source.contains_key("sequence") => Connector::Postgres,
        _ if source.contains_key("file") && source.contains_key("pos") => Connector::MySql,
        _ if source.contains_key("commit_lsn") || source.contains_key("change_lsn") => Connector::SqlServer,
        _ if source.contains_key("scn") => Connector::Oracle,
        _ if source.contains_key("ord") => Connector::MongoDb,
        _ => return None,
    };
    let parts = match connector {
        Connector::Postgres => {
            let sequence = || -> Option<u128> {
                let text = source.get("sequence")?.as_str()?;
                let list: Vec<Option<String>> = serde_json::from_str(text).ok()?;
                list.get(1)?.as_deref()?.parse().ok()
            };
            [unsigned(source, "lsn").or_else(sequence)?, 0, 0]
        }
        Connector::MySql => {
            let file = source.get("file")?.as_str()?;
            let number = file.rsplit('.').next()?.parse::<u128>().ok()?;
            [number, unsigned(source, "pos")?, unsigned(source, "row").unwrap_or(0)]
        }
        Connector::SqlServer => {
            let commit = hex_lsn(source, "commit_lsn")?;
            [commit, hex_lsn(source, "change_lsn").unwrap_or(0), unsigned(source, "event_serial_no").unwrap_or(0)]
        }
        Connector::Oracle => {
            let scn = unsigned(source, "scn")?;
            [unsigned(source, "commit_scn").unwrap_or(scn), scn, unsigned(source, "ssn").unwrap_or(0)]
        }
        Connector::MongoDb => [unsigned(source, "ts_ms")?, unsigned(source, "ord").unwrap_or(0), 0],
    };
    Some(LogPosition { connector, parts })
}

/// Whether `value` is the connector's placeholder for a value it does not have: the text itself,
/// its bytes base64-encoded (binary columns), or a one-element array of it (array columns).
fn is_placeholder(value: &Value, placeholder: &str) -> bool {
    use base64::Engine as _;
    match value {
        Value::String(s) => s == placeholder || base64::engine::general_purpose::STANDARD.encode(placeholder) == *s,
        Value::Array(items) => items.len() == 1 && items[0].as_str() == Some(placeholder),
        _ => false,
    }
}

/// Decodes one Kafka record of a Debezium topic. `key_columns` names the primary key when the
/// record key should not be used (empty: take the record key); `placeholder` is the connector's
/// `unavailable.value.placeholder` ([`UNAVAILABLE_VALUE`] unless configured otherwise).
pub fn decode(
    record_key: Option<&[u8]>,
    value: &[u8],
    key_columns: &[String],
    placeholder: &str,
) -> Result<Decoded, Refusal> {
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
    let mut after = object(envelope.remove("after"), "after")?;
    let mut unavailable = Vec::new();
    if let Some(row) = after.as_mut() {
        row.retain(|column, value| {
            let missing = is_placeholder(value, placeholder);
            if missing {
                unavailable.push(column.clone());
            }
            !missing
        });
    }
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
        source.get("table").or(source.get("collection")).and_then(Value::as_str),
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
        position: position(&source),
        unavailable,
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
