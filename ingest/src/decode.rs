//! JSON records to [`Event`]s: key, event time and field types checked, so nothing malformed
//! reaches the engine; every refusal carries a [`Reason`] and a message naming the field.

use chrono::DateTime;
use serde_json::{Map, Value};

use crate::config::{SourceConfig, TimestampFormat};
use crate::event::Event;
use crate::record::Record;

/// Why a record became a dead letter. The text form is the `reason` label and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not valid JSON, or not a JSON object.
    MalformedJson,
    /// The key field is absent or null.
    MissingKey,
    /// The timestamp field is absent or null.
    MissingTimestamp,
    /// A field has the wrong type (key not string/integer, timestamp unreadable, aggregated
    /// column not a number).
    WrongType,
    /// Larger than the source's `max_record_bytes`.
    Oversized,
    /// The entity key is longer than the source's `max_key_bytes`.
    KeyTooLong,
    /// Older than its entity's newest event by more than the longest window plus allowed
    /// lateness.
    Late,
    /// JSON, but not a well-formed Debezium change event (no `op`, no `source`, …).
    MalformedEnvelope,
    /// A Debezium truncate on a source configured with `on_truncate: dead_letter`.
    Truncate,
    /// JSON, but not a valid prediction or label record (the message names the field).
    InvalidRecord,
    /// A SQL expression of the source (`select`, `where`) failed on the record, e.g. a cast
    /// that cannot succeed (the message names the expression).
    ExpressionError,
}

impl Reason {
    /// Every reason, for metrics initialisation and docs.
    pub const ALL: [Reason; 11] = [
        Reason::MalformedJson,
        Reason::MissingKey,
        Reason::MissingTimestamp,
        Reason::WrongType,
        Reason::Oversized,
        Reason::KeyTooLong,
        Reason::Late,
        Reason::MalformedEnvelope,
        Reason::Truncate,
        Reason::InvalidRecord,
        Reason::ExpressionError,
    ];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingKey => "missing_key",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::WrongType => "wrong_type",
            Reason::Oversized => "oversized",
            Reason::KeyTooLong => "key_too_long",
            Reason::Late => "late",
            Reason::MalformedEnvelope => "malformed_envelope",
            Reason::Truncate => "truncate",
            Reason::InvalidRecord => "invalid_record",
            Reason::ExpressionError => "expression_error",
        }
    }
}

/// A refusal: the reason and a human message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Category.
    pub reason: Reason,
    /// What exactly was wrong.
    pub message: String,
}

fn refuse(reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// Decodes the records of one source.
#[derive(Debug, Clone)]
pub struct Decoder {
    key: String,
    timestamp: Option<String>,
    format: TimestampFormat,
    max_bytes: usize,
    max_key_bytes: usize,
    numeric: Vec<String>,
}

impl Decoder {
    /// A decoder for `source`; `numeric` lists the fields that must be numbers (or null)
    /// because a numeric aggregation reads them.
    pub fn new(source: &SourceConfig, numeric: Vec<String>) -> Decoder {
        Decoder {
            key: source.key.clone(),
            timestamp: source.timestamp.clone(),
            format: source.timestamp_format,
            max_bytes: source.max_record_bytes,
            max_key_bytes: source.max_key_bytes,
            numeric,
        }
    }

    /// Decodes one record; `now_ms` is the event time of last resort.
    pub fn decode(&self, record: Record, now_ms: i64) -> Result<Event, (Record, Refusal)> {
        match self.fields(&record, now_ms) {
            Ok((key, time_ms, fields)) => {
                Ok(Event { source: record.source, key, time_ms, fields, at: record.at, raw: record.payload })
            }
            Err(refusal) => Err((record, refusal)),
        }
    }

    fn fields(&self, record: &Record, now_ms: i64) -> Result<(String, i64, Map<String, Value>), Refusal> {
        if record.payload.len() > self.max_bytes {
            return Err(refuse(
                Reason::Oversized,
                format!("record is {} bytes, over the limit of {}", record.payload.len(), self.max_bytes),
            ));
        }
        let value: Value = serde_json::from_slice(&record.payload)
            .map_err(|e| refuse(Reason::MalformedJson, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(refuse(Reason::MalformedJson, "record is JSON but not an object"));
        };
        let key = match fields.get(&self.key) {
            None | Some(Value::Null) => {
                return Err(refuse(Reason::MissingKey, format!("key field {:?} is missing", self.key)))
            }
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => number_key(n).map_err(|why| {
                refuse(Reason::WrongType, format!("key field {:?} must be a string or an integer: {why}", self.key))
            })?,
            Some(other) => {
                return Err(refuse(
                    Reason::WrongType,
                    format!("key field {:?} must be a non-empty string or an integer, got {other}", self.key),
                ))
            }
        };
        check_key_length(&self.key, &key, self.max_key_bytes)?;
        let time_ms = match &self.timestamp {
            None => record.transport_time_ms.unwrap_or(now_ms),
            Some(name) => match fields.get(name) {
                None | Some(Value::Null) => {
                    return Err(refuse(Reason::MissingTimestamp, format!("timestamp field {name:?} is missing")))
                }
                Some(v) => parse_time(v, self.format)
                    .map_err(|why| refuse(Reason::WrongType, format!("timestamp field {name:?}: {why}")))?,
            },
        };
        for name in &self.numeric {
            match fields.get(name) {
                None | Some(Value::Null) | Some(Value::Number(_)) => {}
                Some(other) => {
                    return Err(refuse(Reason::WrongType, format!("field {name:?} must be a number, got {other}")))
                }
            }
        }
        Ok((key, time_ms, fields))
    }
}

/// Refuses an entity key longer than `max` bytes (`key_too_long`, naming the field).
pub fn check_key_length(field: &str, key: &str, max: usize) -> Result<(), Refusal> {
    if key.len() <= max {
        return Ok(());
    }
    Err(refuse(Reason::KeyTooLong, format!("key field {field:?} is {} bytes, over the limit of {max}", key.len())))
}

/// Reads an event time in ms since the epoch.
pub fn parse_time(value: &Value, format: TimestampFormat) -> Result<i64, String> {
    match (value, format) {
        (Value::String(s), TimestampFormat::Auto | TimestampFormat::Rfc3339) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("{s:?} is not an RFC 3339 time with an offset ({e})")),
        (Value::Number(n), format) if format != TimestampFormat::Rfc3339 => {
            let configured = match format {
                TimestampFormat::Seconds => Some(EpochUnit::Seconds),
                TimestampFormat::Millis => Some(EpochUnit::Millis),
                TimestampFormat::Micros => Some(EpochUnit::Micros),
                TimestampFormat::Nanos => Some(EpochUnit::Nanos),
                _ => None,
            };
            let integer = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            let ms = match integer {
                // integers exactly: a nanosecond time is not rounded through a float
                Some(i) => epoch_ms(i, configured.unwrap_or_else(|| EpochUnit::of_integer(i))),
                None => {
                    let x = n.as_f64().ok_or("not a finite number")?;
                    let ms = x * configured.unwrap_or_else(|| EpochUnit::of_magnitude(x.abs())).ms_per_unit();
                    (ms.is_finite() && ms.abs() < MAX_EPOCH_MS as f64).then(|| ms.floor() as i64)
                }
            };
            ms.ok_or_else(|| format!("{n} is out of range"))
        }
        (other, format) => Err(format!("{other} cannot be read as {format:?}")),
    }
}

/// The key text of a JSON number: an integer as its decimal digits, and a number written with a
/// fraction or an exponent (`1001.0`, `1.001e3`, what pandas writes for integers beside a NaN)
/// as the same integer when it is one and is exact in a float (|x| ≤ 2^53), so all three are one
/// key. A number is never turned into key text through a float's formatting. `Err` says why a
/// number is no key: not integral, or too large to be exact.
pub fn number_key(n: &serde_json::Number) -> Result<String, String> {
    if n.is_i64() || n.is_u64() {
        return Ok(n.to_string());
    }
    let x = n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() != 0.0 {
        return Err(format!("{n} is not an integer"));
    }
    if x.abs() > EXACT {
        return Err(format!("{n} is too large to be an exact integer key (write it as an integer or a string)"));
    }
    Ok((x as i64).to_string())
}

/// The text after a leading UTF-8 byte order mark (which editors and Windows tools write), so it
/// is never read as data; every text input (push bodies, NDJSON and CSV files) goes through here.
pub fn without_bom(text: &[u8]) -> &[u8] {
    text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text)
}

/// Epoch times are accepted up to this many ms from 1970 (about the year 318,857).
const MAX_EPOCH_MS: i64 = 10_000_000_000_000_000;

/// The unit of an epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochUnit {
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
    /// Nanoseconds.
    Nanos,
}

impl EpochUnit {
    /// The unit of an epoch number by its magnitude: below 1e11 seconds (until the year 5138),
    /// below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
    pub fn of_magnitude(magnitude: f64) -> EpochUnit {
        match magnitude {
            v if v < 1e11 => EpochUnit::Seconds,
            v if v < 1e14 => EpochUnit::Millis,
            v if v < 1e17 => EpochUnit::Micros,
            _ => EpochUnit::Nanos,
        }
    }

    /// [`EpochUnit::of_magnitude`] for an integer, compared exactly.
    pub fn of_integer(n: i128) -> EpochUnit {
        match n.unsigned_abs() {
            v if v < 100_000_000_000 => EpochUnit::Seconds,
            v if v < 100_000_000_000_000 => EpochUnit::Millis,
            v if v < 100_000_000_000_000_000 => EpochUnit::Micros,
            _ => EpochUnit::Nanos,
        }
    }

    fn ms_per_unit(self) -> f64 {
        match self {
            EpochUnit::Seconds => 1e3,
            EpochUnit::Millis => 1.0,
            EpochUnit::Micros => 1e-3,
            EpochUnit::Nanos => 1e-6,
        }
    }
}

/// Epoch ms of the integer `n` counted in `unit`, in integer arithmetic: exact, and where
/// precision is dropped rounded toward the past (floor, as numpy's `datetime64` casts do), never
/// into the future. `None` beyond ±10^16 ms.
pub fn epoch_ms(n: i128, unit: EpochUnit) -> Option<i64> {
    let ms = match unit {
        EpochUnit::Seconds => n.checked_mul(1000)?,
        EpochUnit::Millis => n,
        EpochUnit::Micros => n.div_euclid(1000),
        EpochUnit::Nanos => n.div_euclid(1_000_000),
    };
    (ms.unsigned_abs() < MAX_EPOCH_MS as u128).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::record::Coordinates;

    fn decoder() -> Decoder {
        let source: SourceConfig = serde_json::from_value(
            json!({"key": "card_id", "timestamp": "ts", "max_record_bytes": 200, "max_key_bytes": 16}),
        )
        .unwrap();
        Decoder::new(&source, vec!["amount".into()])
    }

    fn record(payload: &str) -> Record {
        Record {
            source: 0,
            at: Coordinates { partition: Some(1), offset: 7 },
            transport_time_ms: None,
            key: None,
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn reason(payload: &str) -> (Reason, String) {
        let (_, r) = decoder().decode(record(payload), 0).unwrap_err();
        (r.reason, r.message)
    }

    #[test]
    fn decodes_key_time_and_fields() {
        let e =
            decoder().decode(record(r#"{"card_id": 42, "ts": "2026-01-02T03:04:05.678Z", "amount": 9.5}"#), 0).unwrap();
        assert_eq!(e.key, "42");
        assert_eq!(e.time_ms, 1_767_323_045_678);
        assert_eq!(e.fields["amount"], json!(9.5));
    }

    #[test]
    fn epoch_numbers_by_magnitude() {
        for v in [
            json!(1_767_323_045),
            json!(1_767_323_045_000i64),
            json!(1_767_323_045_000_000i64),
            json!(1_767_323_045_000_000_000i64),
        ] {
            assert_eq!(parse_time(&v, TimestampFormat::Auto), Ok(1_767_323_045_000), "{v}");
        }
        assert_eq!(parse_time(&json!(1.5), TimestampFormat::Seconds), Ok(1500));
    }

    #[test]
    fn each_refusal_names_its_reason_and_field() {
        assert_eq!(reason("{not json").0, Reason::MalformedJson);
        assert_eq!(reason("[1,2]").0, Reason::MalformedJson);
        assert_eq!(reason(r#"{"ts": 1}"#), (Reason::MissingKey, "key field \"card_id\" is missing".into()));
        assert_eq!(
            reason(r#"{"card_id": "a"}"#),
            (Reason::MissingTimestamp, "timestamp field \"ts\" is missing".into())
        );
        assert_eq!(reason(r#"{"card_id": [1], "ts": 1}"#).0, Reason::WrongType);
        let (why, message) = reason(r#"{"card_id": "a", "ts": "yesterday"}"#);
        assert_eq!(why, Reason::WrongType);
        assert!(message.starts_with("timestamp field \"ts\": \"yesterday\" is not an RFC 3339 time"), "{message}");
        assert_eq!(
            reason(r#"{"card_id": "a", "ts": 1, "amount": "12"}"#),
            (Reason::WrongType, "field \"amount\" must be a number, got \"12\"".into())
        );
        assert_eq!(
            reason(&format!(r#"{{"card_id": "a", "ts": 1, "pad": "{}"}}"#, "x".repeat(300))).0,
            Reason::Oversized
        );
        assert_eq!(
            reason(&format!(r#"{{"card_id": "{}", "ts": 1}}"#, "k".repeat(17))),
            (Reason::KeyTooLong, "key field \"card_id\" is 17 bytes, over the limit of 16".into())
        );
        let at_limit = format!(r#"{{"card_id": "{}", "ts": 1}}"#, "k".repeat(16));
        assert_eq!(decoder().decode(record(&at_limit), 0).unwrap().key.len(), 16);
    }
}
