//! A raw record as a source delivers it, before decoding.

/// Where a record sits in its source: Kafka coordinates, or a position in a push or a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coordinates {
    /// Kafka partition; `None` for HTTP push and file replay, which have no replayable log.
    pub partition: Option<i32>,
    /// Kafka offset, or the record's index in its push request or file.
    pub offset: i64,
}

/// Undecoded bytes plus what the transport knows about them.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index of the source in the project's source list.
    pub source: usize,
    /// Position in the source.
    pub at: Coordinates,
    /// The transport's timestamp (the Kafka record's timestamp, a push request's arrival), ms
    /// since the epoch.
    pub transport_time_ms: Option<i64>,
    /// The Kafka record key, if any (Debezium puts the primary key there).
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub payload: Vec<u8>,
}
