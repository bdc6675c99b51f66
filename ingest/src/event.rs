//! A decoded event: key, event time and fields, with where it came from.

use serde_json::{Map, Value};

use crate::record::Coordinates;

/// One decoded record.
#[derive(Debug, Clone)]
pub struct Event {
    /// Index of the source in the project's source list.
    pub source: usize,
    /// The entity key, as text (integers are written in decimal).
    pub key: String,
    /// Event time, ms since the epoch (UTC).
    pub time_ms: i64,
    /// The record's fields.
    pub fields: Map<String, Value>,
    /// Position in the source.
    pub at: Coordinates,
    /// The original bytes, kept for the offline store's `_raw` column.
    pub raw: Vec<u8>,
}
