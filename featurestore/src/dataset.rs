//! Point-in-time training sets: for each input row (entity keys, a timestamp, anything else), each
//! feature's value **as of that row's timestamp**, computed from the offline store's raw events by
//! the online path's own engine ([`engine::apply`], [`lookup::feature_values`]).
//!
//! Semantics, for a feature set and a row (key K, time T): the events of K with event time ≤ T
//! (duplicates by (partition, offset) dropped; events the online pipeline refused as late for this
//! feature set — the `_late` column — left out), applied in event-time order, read at T: windows
//! end at T, TTL turns values older than it into `OUTSIDE_MAX_AGE`. A CDC table column is the
//! newest change of its key committed at or before T (by commit time, then LSN); a delete means
//! `NOT_FOUND`.
//!
//! Bounded memory: rows and events are hash-partitioned by key into `shards` spill files on disk,
//! then shards are computed in parallel (rayon), each holding only its rows and events; results
//! are written per shard sorted by row number and merged back in input order while the input is
//! read a second time for its own columns.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use fathom_transform::Transform;

use crate::definition::{FeatureSetPlan, Function};
use crate::engine::{self, EntityState};
use crate::lookup::{self, Status};
use crate::vector::{Catalog, Holder, Vector};

/// Why a dataset could not be built. Each names the file, column or row at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Unreadable Parquet or CSV.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A column the features need is not in the input.
    #[error("{path}: no column {column:?} ({why})")]
    MissingColumn {
        /// The input file.
        path: String,
        /// The column.
        column: String,
        /// What needs it.
        why: String,
    },
    /// A timestamp that cannot be read, or has no time zone.
    #[error("{path}: row {row}, column {column:?}: {message}")]
    BadTimestamp {
        /// The input file.
        path: String,
        /// Row number (0-based, excluding a CSV header).
        row: u64,
        /// The column.
        column: String,
        /// What is wrong, with the fix.
        message: String,
    },
    /// A feature this command cannot compute yet.
    #[error("{feature}: {message}")]
    Unsupported {
        /// The feature.
        feature: String,
        /// Why.
        message: String,
    },
}

/// What to build.
pub struct Request<'a> {
    /// What references resolve against.
    pub catalog: Catalog<'a>,
    /// The features.
    pub vector: &'a Vector,
    /// Per source name: its key field, and whether it is a CDC table.
    pub sources: &'a [(String, String, bool)],
    /// The row transform of each source, in `sources`' order (missing ones: none), evaluated
    /// over each event as the pipeline does.
    pub transforms: &'a [Transform],
    /// (feature set, source, transform) of the conditions that read joined columns, evaluated
    /// after the joins as the pipeline does.
    pub after_joins: &'a [(String, usize, Transform)],
    /// The offline store (a directory or a bucket prefix).
    pub offline: &'a crate::storage::Storage,
    /// Entity rows: `.parquet`, or CSV with a header.
    pub input: &'a Path,
    /// The input's timestamp column.
    pub timestamp: &'a str,
    /// Read timestamps without a time zone as UTC instead of refusing them.
    pub assume_utc: bool,
    /// Output Parquet file.
    pub output: &'a Path,
    /// Add a `<feature>__status` column per feature.
    pub statuses: bool,
    /// Hash partitions (each computed in memory on its own).
    pub shards: usize,
    /// Scratch directory for spill files.
    pub scratch: &'a Path,
}

/// Progress callbacks: a phase's name and its total, then done counts.
pub trait Progress: Sync {
    /// A phase starts (`total` when known).
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more units done in the current phase.
    fn advance(&self, n: u64);
}

/// What was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows written.
    pub rows: u64,
    /// Events and changes read from the offline store.
    pub events: u64,
}

/// A JSON value spilled to disk (postcard cannot carry `serde_json::Value` itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Cell {
    Null,
    Num(f64),
    Text(String),
    /// Any other JSON value, as JSON text.
    Json(String),
}

impl Cell {
    fn of(value: Option<&Value>) -> Cell {
        match value {
            None | Some(Value::Null) => Cell::Null,
            Some(Value::Number(n)) if n.is_f64() => n.as_f64().map_or(Cell::Null, Cell::Num),
            Some(Value::String(s)) => Cell::Text(s.clone()),
            Some(other) => Cell::Json(other.to_string()),
        }
    }

    fn to_value(&self) -> Option<Value> {
        match self {
            Cell::Null => None,
            Cell::Num(x) => serde_json::Number::from_f64(*x).map(Value::Number),
            Cell::Text(s) => Some(Value::String(s.clone())),
            Cell::Json(s) => serde_json::from_str(s).ok(),
        }
    }
}

/// An input row as a shard sees it.
#[derive(Debug, Serialize, Deserialize)]
struct Query {
    row: u64,
    at_ms: i64,
    key: String,
}

/// An event of a feature set's source.
#[derive(Debug, Serialize, Deserialize)]
struct SpilledEvent {
    key: String,
    time_ms: i64,
    partition: Option<i32>,
    offset: i64,
    /// The plan's columns, then its latest-value fields.
    cells: Vec<Cell>,
}

/// A change of a CDC table.
#[derive(Debug, Serialize, Deserialize)]
struct SpilledChange {
    key: String,
    commit_us: i64,
    /// `_position`: the connector's log position as sortable text.
    position: Option<String>,
    partition: Option<i32>,
    offset: i64,
    /// `None` after a delete.
    after: Option<String>,
    /// A snapshot read (`r`): the row as the snapshot found it, not when it was made.
    snapshot: bool,
}

/// One group's part of a table change: the old row leaving it and/or the new row entering it.
#[derive(Debug, Serialize, Deserialize)]
struct GroupDelta {
    group: String,
    commit_us: i64,
    /// (the change's rank among its key's changes, key, leaving before entering): applies
    /// deltas of one instant in the online table's order.
    order: (u64, String, u8),
    old: Option<String>,
    new: Option<String>,
}

/// An event on its way through joins: its fields as JSON text.
#[derive(Debug, Serialize, Deserialize)]
struct Staged {
    time_ms: i64,
    partition: Option<i32>,
    offset: i64,
    fields: String,
}

/// Sorts table changes by key, then in the order the online table applies them
/// ([`fathom_ingest::debezium::ChangeOrder`]: log position, Kafka coordinates, commit time),
/// drops a change read twice (same coordinates, or a redelivery at the same log position: the
/// online table skips it as stale), and fills the columns a change carried as unavailable from
/// the change before it, then computes the table's `select` columns into each row as the online
/// table does ([`crate::table::select_row`]).
fn order_changes(changes: &mut Vec<SpilledChange>, select: Option<&Transform>) {
    // ChangeOrder's order on the spilled form: by position when there is one (equal positions
    // are the same change), else by Kafka coordinates, then commit time
    let order = |c: &SpilledChange| match &c.position {
        Some(p) => (Some(p.clone()), None, 0),
        None => (None, c.partition.map(|p| (p, c.offset)), c.commit_us),
    };
    changes.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| order(a).cmp(&order(b))));
    changes.dedup_by(|b, a| a.key == b.key && order(a) == order(b));
    let marker = fathom_ingest::debezium::UNAVAILABLE_VALUE;
    for i in 1..changes.len() {
        let (done, rest) = changes.split_at_mut(i);
        let (previous, change) = (&done[i - 1], &mut rest[0]);
        let Some(after) = change.after.as_deref().filter(|a| previous.key == change.key && a.contains(marker)) else {
            continue;
        };
        let Ok(mut row) = serde_json::from_str::<serde_json::Map<String, Value>>(after) else { continue };
        let old: serde_json::Map<String, Value> =
            previous.after.as_deref().and_then(|a| serde_json::from_str(a).ok()).unwrap_or_default();
        for (column, value) in row.iter_mut() {
            if value.as_str() == Some(marker) {
                *value = old.get(column).cloned().unwrap_or(Value::Null);
            }
        }
        change.after = Some(Value::Object(row).to_string());
    }
    let Some(select) = select else { return };
    for change in changes.iter_mut() {
        let Some(mut row) =
            change.after.as_deref().and_then(|a| serde_json::from_str::<serde_json::Map<String, Value>>(a).ok())
        else {
            continue;
        };
        crate::table::select_row(select, &mut row);
        change.after = Some(Value::Object(row).to_string());
    }
}

/// PostgreSQL's LSN as `_position` text.
fn postgres_position(lsn: i64) -> String {
    use fathom_ingest::debezium::{Connector, LogPosition};
    LogPosition { connector: Connector::Postgres, parts: [lsn as u128, 0, 0] }.to_sortable()
}

/// The row of a key as of `at_ms` among its changes in order ([`order_changes`]): the last one
/// committed at or before it; before the first change, a snapshot read stands for the past (as
/// the online join does).
fn as_of(changes: &[SpilledChange], at_ms: i64) -> Option<&SpilledChange> {
    changes
        .iter()
        .rev()
        .find(|c| c.commit_us.div_euclid(1000) <= at_ms)
        .or_else(|| changes.first().filter(|c| c.snapshot))
}

/// A key as the online path writes it: strings as is, other JSON as JSON text, null → none.
fn key_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(fathom_ingest::decode::number_key(n).unwrap_or_else(|_| n.to_string())),
        other => Some(other.to_string()),
    }
}

/// A computed value: feature index in the vector, value, status, event time.
type Computed = (u32, Cell, u8, Option<i64>);

fn status_code(status: Status) -> u8 {
    match status {
        Status::Present => 0,
        Status::NotFound => 1,
        Status::NullValue => 2,
        Status::OutsideMaxAge => 3,
    }
}

fn status_name(code: u8) -> &'static str {
    ["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"][usize::from(code.min(3))]
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.display().to_string(), source }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> DatasetError {
    DatasetError::Read { path: path.display().to_string(), message: e.to_string() }
}

/// Length-prefixed postcard records in a buffered file.
struct Spill {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Spill {
    fn create(path: PathBuf) -> Result<Spill, DatasetError> {
        let file = File::create(&path).map_err(io(&path))?;
        Ok(Spill { out: BufWriter::with_capacity(1 << 16, file), path })
    }

    fn write<T: Serialize>(&mut self, record: &T) -> Result<(), DatasetError> {
        let bytes = postcard::to_stdvec(record).expect("spilled records encode");
        self.out.write_all(&(bytes.len() as u32).to_le_bytes()).map_err(io(&self.path))?;
        self.out.write_all(&bytes).map_err(io(&self.path))
    }

    fn finish(mut self) -> Result<PathBuf, DatasetError> {
        self.out.flush().map_err(io(&self.path))?;
        Ok(self.path)
    }
}

/// Reads back a whole spill file.
fn read_spill<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, DatasetError> {
    SpillReader::open(path)?.collect()
}

/// Streams a spill file record by record.
struct SpillReader<T> {
    path: PathBuf,
    input: BufReader<File>,
    buf: Vec<u8>,
    _record: std::marker::PhantomData<T>,
}

impl<T> SpillReader<T> {
    fn open(path: &Path) -> Result<SpillReader<T>, DatasetError> {
        let input = BufReader::with_capacity(1 << 16, File::open(path).map_err(io(path))?);
        Ok(SpillReader { path: path.to_path_buf(), input, buf: Vec::new(), _record: std::marker::PhantomData })
    }
}

impl<T: for<'de> Deserialize<'de>> Iterator for SpillReader<T> {
    type Item = Result<T, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(io(&self.path)(e))),
        }
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        if let Err(e) = self.input.read_exact(&mut self.buf) {
            return Some(Err(io(&self.path)(e)));
        }
        Some(postcard::from_bytes(&self.buf).map_err(|e| read_err(&self.path, e)))
    }
}

fn shard_of(key: &str, shards: usize) -> usize {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Epoch ms from a timestamp text: RFC 3339 with an offset, or (with `assume_utc`) a naive
/// `YYYY-MM-DD[ T]HH:MM:SS[.f]`; integers as epoch s/ms/µs/ns by magnitude.
fn parse_time(text: &str, assume_utc: bool) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Ok(by_magnitude(n));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d"] {
        let naive = chrono::NaiveDateTime::parse_from_str(text, format).or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, format).map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        });
        if let Ok(naive) = naive {
            if !assume_utc {
                return Err(format!("{text:?} has no time zone; add one (e.g. Z) or pass --assume-utc"));
            }
            return Ok(naive.and_utc().timestamp_millis());
        }
    }
    Err(format!("{text:?} is not a timestamp (RFC 3339, e.g. 2026-11-24T14:03:00Z)"))
}

/// Epoch ms of an integer by its magnitude (s, ms, µs or ns), exact and rounded toward the past,
/// as the ingest decoder reads it. (Every i64 is in range in its magnitude's unit.)
fn by_magnitude(n: i64) -> i64 {
    use fathom_ingest::decode::{epoch_ms, EpochUnit};
    let n = i128::from(n);
    epoch_ms(n, EpochUnit::of_integer(n)).unwrap_or(i64::MIN)
}

/// The input's rows in batches: Parquet as typed, CSV as text columns.
fn input_batches(path: &Path) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, DatasetError>>>, DatasetError> {
    if path.extension().is_some_and(|e| e == "parquet") {
        let file = File::open(path).map_err(io(path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(65_536).build())
            .map_err(|e| read_err(path, e))?;
        let shown = path.to_path_buf();
        return Ok(Box::new(reader.map(move |b| b.map_err(|e| read_err(&shown, e)))));
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| read_err(path, e))?;
    let headers: Vec<String> = reader.headers().map_err(|e| read_err(path, e))?.iter().map(String::from).collect();
    let schema = Arc::new(Schema::new(headers.iter().map(|h| Field::new(h, DataType::Utf8, true)).collect::<Vec<_>>()));
    let shown = path.to_path_buf();
    let mut records = reader.into_records();
    Ok(Box::new(std::iter::from_fn(move || {
        let mut columns: Vec<StringBuilder> = headers.iter().map(|_| StringBuilder::new()).collect();
        let mut n = 0;
        for record in records.by_ref() {
            let record = match record {
                Ok(r) => r,
                Err(e) => return Some(Err(read_err(&shown, e))),
            };
            for (column, value) in columns.iter_mut().zip(record.iter()) {
                column.append_value(value);
            }
            n += 1;
            if n == 65_536 {
                break;
            }
        }
        if n == 0 {
            return None;
        }
        let arrays: Vec<ArrayRef> = columns.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef).collect();
        Some(RecordBatch::try_new(schema.clone(), arrays).map_err(|e| read_err(&shown, e)))
    })))
}

/// A column's values as key text.
fn texts(array: &ArrayRef) -> Option<Vec<Option<String>>> {
    Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(|v| v.map(String::from)).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(|v| v.map(String::from)).collect(),
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().map(|v| v.map(|v| v.to_string())).collect(),
        DataType::Int32 => array.as_primitive::<Int32Type>().iter().map(|v| v.map(|v| v.to_string())).collect(),
        _ => return None,
    })
}

/// A timestamp column as epoch ms (`Err(row, message)` on the first bad one).
fn times(array: &ArrayRef, assume_utc: bool) -> Result<Vec<Option<i64>>, (usize, String)> {
    let unzoned = |tz: &Option<Arc<str>>| -> Result<(), (usize, String)> {
        if tz.is_none() && !assume_utc {
            return Err((
                0,
                "a timestamp column without a time zone; write it with one (UTC) or pass --assume-utc".into(),
            ));
        }
        Ok(())
    };
    Ok(match array.data_type() {
        DataType::Timestamp(unit, tz) => {
            unzoned(tz)?;
            match unit {
                TimeUnit::Second => {
                    array.as_primitive::<TimestampSecondType>().iter().map(|v| v.map(|v| v * 1000)).collect()
                }
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().iter().collect(),
                TimeUnit::Microsecond => array
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .map(|v| v.map(|v| v.div_euclid(1000)))
                    .collect(),
                TimeUnit::Nanosecond => array
                    .as_primitive::<TimestampNanosecondType>()
                    .iter()
                    .map(|v| v.map(|v| v.div_euclid(1_000_000)))
                    .collect(),
            }
        }
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().map(|v| v.map(by_magnitude)).collect(),
        DataType::Utf8 => {
            let mut out = Vec::with_capacity(array.len());
            for (i, v) in array.as_string::<i32>().iter().enumerate() {
                out.push(v.map(|t| parse_time(t, assume_utc)).transpose().map_err(|m| (i, m))?);
            }
            out
        }
        other => {
            return Err((
                0,
                format!(
                "type {other} is not a timestamp (use a timestamp with a time zone, RFC 3339 text or epoch integers)"
            ),
            ))
        }
    })
}

/// The Parquet files of one source in the offline store, relative to its root, in path order.
pub fn source_files(offline: &crate::storage::Storage, source: &str) -> Result<Vec<String>, DatasetError> {
    offline
        .list(&format!("{source}/"), ".parquet")
        .map_err(|e| DatasetError::Read { path: offline.show(source), message: anyhow_chain(&e) })
}

/// An error and its causes, `: `-separated.
fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Reads named columns of an offline file (absent ones are `None`).
pub fn read_columns(
    offline: &crate::storage::Storage,
    file: &str,
    names: &[&str],
) -> Result<Vec<Vec<Option<ArrayRef>>>, DatasetError> {
    let shown = offline.show(file);
    let path = Path::new(&shown);
    let bytes = offline.get(file).map_err(|e| DatasetError::Read { path: shown.clone(), message: anyhow_chain(&e) })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| read_err(path, e))?;
    let schema = builder.schema().clone();
    let wanted: Vec<usize> = names.iter().filter_map(|n| schema.index_of(n).ok()).collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder.with_projection(mask).with_batch_size(65_536).build().map_err(|e| read_err(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| read_err(path, e))?;
        out.push(names.iter().map(|n| batch.column_by_name(n).cloned()).collect());
    }
    Ok(out)
}

fn int32s(a: &Option<ArrayRef>, n: usize) -> Vec<Option<i32>> {
    a.as_ref().map_or_else(|| vec![None; n], |a| a.as_primitive::<Int32Type>().iter().collect())
}

fn int64s(a: &Option<ArrayRef>, n: usize) -> Vec<Option<i64>> {
    a.as_ref().map_or_else(|| vec![None; n], |a| a.as_primitive::<Int64Type>().iter().collect())
}

fn micros(a: &Option<ArrayRef>, n: usize) -> Vec<Option<i64>> {
    a.as_ref().map_or_else(|| vec![None; n], |a| a.as_primitive::<TimestampMicrosecondType>().iter().collect())
}

fn strings(a: &Option<ArrayRef>, n: usize) -> Vec<Option<String>> {
    a.as_ref().map_or_else(|| vec![None; n], |a| a.as_string::<i32>().iter().map(|v| v.map(String::from)).collect())
}

/// The plan's cells of one offline row: numbers from Float columns; every other field from the
/// original record (`_raw`, parsed only when the plan reads such a field), so latest values keep
/// their exact JSON.
fn event_cells(plan: &FeatureSetPlan, numeric: &[bool], raw: Option<&str>, floats: &[Option<f64>]) -> Vec<Cell> {
    let needs_raw = !plan.latest.is_empty() || numeric.iter().any(|n| !n);
    let parsed: Option<serde_json::Map<String, Value>> =
        if needs_raw { raw.and_then(|r| serde_json::from_str(r).ok()) } else { None };
    let field = |name: &String| Cell::of(parsed.as_ref().and_then(|m| m.get(name)));
    let mut cells: Vec<Cell> = plan
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| if numeric[i] { floats[i].map_or(Cell::Null, Cell::Num) } else { field(c) })
        .collect();
    cells.extend(plan.latest.iter().map(field));
    cells
}

/// Builds the dataset.
pub fn build(request: &Request<'_>, progress: &dyn Progress) -> Result<Summary, DatasetError> {
    let Request { catalog, vector, .. } = *request;
    let shards = request.shards.max(1);
    // on-demand features are computed while writing, from their stored inputs and the row
    let holders: Vec<Holder> = {
        let mut h: Vec<Holder> =
            vector.computed().into_iter().map(|(h, _)| h).filter(|h| !matches!(h, Holder::OnDemand(_))).collect();
        h.sort();
        h.dedup();
        h
    };
    std::fs::create_dir_all(request.scratch).map_err(io(request.scratch))?;

    // 1. input rows → per key field, shards of (row, time, key)
    let keys = &vector.keys;
    let mut query_spills: Vec<Vec<Spill>> = Vec::new();
    for (k, _) in keys.iter().enumerate() {
        let mut row = Vec::new();
        for s in 0..shards {
            row.push(Spill::create(request.scratch.join(format!("q-{k}-{s}")))?);
        }
        query_spills.push(row);
    }
    progress.phase("reading entity rows", None);
    let shown = request.input.display().to_string();
    let mut rows = 0u64;
    for batch in input_batches(request.input)? {
        let batch = batch?;
        let column = |name: &str, why: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| DatasetError::MissingColumn {
                path: shown.clone(),
                column: name.to_string(),
                why: why.to_string(),
            })
        };
        let ts = times(&column(request.timestamp, "the timestamp column")?, request.assume_utc).map_err(
            |(i, message)| DatasetError::BadTimestamp {
                path: shown.clone(),
                row: rows + i as u64,
                column: request.timestamp.into(),
                message,
            },
        )?;
        for field in &vector.request {
            column(field, "a request field of on-demand features")?;
        }
        for (k, key) in keys.iter().enumerate() {
            let values = column(key, "an entity key of the features")?;
            let values = texts(&values).ok_or_else(|| DatasetError::Read {
                path: shown.clone(),
                message: format!("column {key:?} has type {}; entity keys are strings or integers", values.data_type()),
            })?;
            for (i, (value, at)) in values.into_iter().zip(&ts).enumerate() {
                let row = rows + i as u64;
                let at_ms = at.ok_or_else(|| DatasetError::BadTimestamp {
                    path: shown.clone(),
                    row,
                    column: request.timestamp.into(),
                    message: "null timestamp".into(),
                })?;
                // a row without this key gets NOT_FOUND for its features: an empty key never matches
                let key = value.unwrap_or_default();
                let shard = shard_of(&key, shards);
                query_spills[k][shard].write(&Query { row, at_ms, key })?;
            }
        }
        rows += batch.num_rows() as u64;
        progress.advance(batch.num_rows() as u64);
    }
    let query_files: Vec<Vec<PathBuf>> =
        query_spills.into_iter().map(|r| r.into_iter().map(Spill::finish).collect()).collect::<Result<_, _>>()?;

    // 2. events and changes → per holder, shards by key; plain feature sets of one source share
    // one read of it
    let mut all_spills: Vec<Vec<Spill>> = (0..holders.len())
        .map(|h| (0..shards).map(|s| Spill::create(request.scratch.join(format!("e-{h}-{s}")))).collect())
        .collect::<Result<_, _>>()?;
    let mut by_source: std::collections::BTreeMap<&str, Vec<(usize, &FeatureSetPlan)>> = Default::default();
    let mut events = 0u64;
    for (h, holder) in holders.iter().enumerate() {
        match holder {
            Holder::Events(p)
                if catalog.plans[*p].joins.is_empty() && request.transform(&catalog.plans[*p].source).is_none() =>
            {
                let plan = &catalog.plans[*p];
                by_source.entry(plan.source.as_str()).or_default().push((h, plan));
            }
            Holder::Events(p) => {
                events += spill_joined_events(request, &catalog.plans[*p], h, &mut all_spills[h], progress)?;
            }
            Holder::Rows(t) => {
                let (table, key_column) = &catalog.tables[*t];
                events += spill_changes(request, table, key_column, &mut all_spills[h], progress)?;
            }
            Holder::Table(p) => {
                events += spill_group_changes(request, &catalog.table_plans[*p], h, &mut all_spills[h], progress)?;
            }
            Holder::OnDemand(_) => unreachable!("not among the holders"),
        }
    }
    for (source, plans) in by_source {
        events += spill_source_events(request, source, &plans, &mut all_spills, progress)?;
    }
    let holder_files: Vec<Vec<PathBuf>> = all_spills
        .into_iter()
        .map(|spills| spills.into_iter().map(Spill::finish).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;

    // 3. shards in parallel: each key field's rows against its holders' events
    progress.phase("computing", Some((keys.len() * shards) as u64));
    let jobs: Vec<(usize, usize)> = (0..keys.len()).flat_map(|k| (0..shards).map(move |s| (k, s))).collect();
    let results: Vec<PathBuf> = jobs
        .par_iter()
        .map(|&(k, s)| {
            let path = compute_shard(request, &holders, &holder_files, &query_files[k][s], k, s)?;
            progress.advance(1);
            Ok(path)
        })
        .collect::<Result<_, DatasetError>>()?;

    // 4. merge back in input order
    progress.phase("writing", Some(rows));
    write_output(request, &results, rows, progress)?;
    let _ = std::fs::remove_dir_all(request.scratch);
    Ok(Summary { rows, events })
}

/// Reads a source's events once and spills them for each of its (join-less) feature sets, by
/// that set's key; returns the events read.
fn spill_source_events(
    request: &Request<'_>,
    source: &str,
    plans: &[(usize, &FeatureSetPlan)],
    spills: &mut [Vec<Spill>],
    progress: &dyn Progress,
) -> Result<u64, DatasetError> {
    let (_, source_key, _) = request.sources.iter().find(|(n, _, _)| n == source).expect("plan source");
    let files = source_files(request.offline, source)?;
    progress.phase(&format!("reading {source} events"), Some(files.len() as u64));
    // per plan: its key column, which columns are numbers, whether it needs `_raw` (the largest
    // column: read only when a field is not a number column)
    let shapes: Vec<(&str, Vec<bool>, bool)> = plans
        .iter()
        .map(|(_, plan)| {
            let key = if plan.key_column == *source_key { source_key.as_str() } else { plan.key_column.as_str() };
            let numeric_columns = plan.numeric_columns();
            let numeric: Vec<bool> = plan.columns.iter().map(|c| numeric_columns.contains(c)).collect();
            let raw = !plan.latest.is_empty() || numeric.iter().any(|n| !n);
            (key, numeric, raw)
        })
        .collect();
    let mut names: Vec<&str> = vec!["_partition", "_offset", "_event_time", "_late"];
    if shapes.iter().any(|s| s.2) {
        names.push("_raw");
    }
    for ((_, plan), (key, _, _)) in plans.iter().zip(&shapes) {
        names.push(key);
        names.extend(plan.columns.iter().map(String::as_str));
    }
    names.sort_unstable();
    names.dedup();
    let at = |name: &str| names.iter().position(|n| *n == name);
    let mut read = 0;
    for file in files {
        for batch in read_columns(request.offline, &file, &names)? {
            let column = |name: &str| at(name).and_then(|i| batch[i].clone());
            let n = column("_offset").map_or(0, |a| a.len());
            let (partitions, offsets, times, late, raw) = (
                int32s(&column("_partition"), n),
                int64s(&column("_offset"), n),
                micros(&column("_event_time"), n),
                strings(&column("_late"), n),
                strings(&column("_raw"), n),
            );
            for ((h, plan), (key_column, numeric, _)) in plans.iter().zip(&shapes) {
                let keys = strings(&column(key_column), n);
                let floats: Vec<Vec<Option<f64>>> = plan
                    .columns
                    .iter()
                    .map(|c| match column(c) {
                        Some(a) if a.data_type() == &DataType::Float64 => {
                            a.as_primitive::<Float64Type>().iter().collect()
                        }
                        _ => vec![None; n],
                    })
                    .collect();
                for i in 0..n {
                    let refused = late[i].as_deref().is_some_and(|l| l.split(',').any(|s| s == plan.name));
                    let (Some(key), Some(time_us), false) = (&keys[i], times[i], refused) else { continue };
                    let row_floats: Vec<Option<f64>> = floats.iter().map(|c| c[i]).collect();
                    let event = SpilledEvent {
                        key: key.clone(),
                        time_ms: time_us.div_euclid(1000),
                        partition: partitions[i],
                        offset: offsets[i].unwrap_or(i as i64),
                        cells: event_cells(plan, numeric, raw[i].as_deref(), &row_floats),
                    };
                    let shard = shard_of(key, spills[*h].len());
                    spills[*h][shard].write(&event)?;
                }
            }
            read += n as u64;
        }
        progress.advance(1);
    }
    Ok(read)
}

/// Spills a CDC table's change log into `spills`, by key; returns the changes read.
fn spill_changes(
    request: &Request<'_>,
    table: &str,
    key_column: &str,
    spills: &mut [Spill],
    progress: &dyn Progress,
) -> Result<u64, DatasetError> {
    let files = source_files(request.offline, table)?;
    progress.phase(&format!("reading {table} changes"), Some(files.len() as u64));
    // `_lsn` stands in for `_position` in files written before it (PostgreSQL's LSN, as the
    // online table reads rows stored then)
    let names = ["_partition", "_offset", "_event_time", "_position", "_op", "_after", key_column, "_lsn"];
    let mut read = 0;
    for file in files {
        for batch in read_columns(request.offline, &file, &names)? {
            let n = batch[1].as_ref().map_or(0, |a| a.len());
            let (partitions, offsets, times, mut positions, ops, afters, keys) = (
                int32s(&batch[0], n),
                int64s(&batch[1], n),
                micros(&batch[2], n),
                strings(&batch[3], n),
                strings(&batch[4], n),
                strings(&batch[5], n),
                strings(&batch[6], n),
            );
            if batch[3].is_none() {
                positions =
                    int64s(&batch[7], n).into_iter().map(|lsn| lsn.filter(|l| *l > 0).map(postgres_position)).collect();
            }
            for i in 0..n {
                let (Some(key), Some(commit_us)) = (&keys[i], times[i]) else { continue };
                let deleted = ops[i].as_deref() == Some("d");
                let change = SpilledChange {
                    key: key.clone(),
                    commit_us,
                    position: positions[i].clone(),
                    partition: partitions[i],
                    offset: offsets[i].unwrap_or(i as i64),
                    after: if deleted { None } else { afters[i].clone() },
                    snapshot: ops[i].as_deref() == Some("r"),
                };
                let shard = shard_of(key, spills.len());
                spills[shard].write(&change)?;
                read += 1;
            }
        }
        progress.advance(1);
    }
    Ok(read)
}

impl Request<'_> {
    /// The row transform of a source, if it has one.
    fn transform(&self, source: &str) -> Option<&Transform> {
        let i = self.sources.iter().position(|(n, _, _)| n == source)?;
        self.transforms.get(i).filter(|t| !t.is_empty())
    }
}

/// Runs a source's transform over staged events, as the pipeline does before joins; an event
/// it fails on was dead-lettered online and is left out.
fn transformed(transform: &Transform, events: Vec<Staged>) -> Vec<Staged> {
    let mut parsed: Vec<(Staged, serde_json::Map<String, Value>)> = events
        .into_iter()
        .map(|e| {
            let fields = serde_json::from_str(&e.fields).unwrap_or_default();
            (e, fields)
        })
        .collect();
    let mut rows: Vec<&mut serde_json::Map<String, Value>> = parsed.iter_mut().map(|(_, f)| f).collect();
    let failed = transform.apply(&mut rows);
    let mut failed = failed.iter().map(|(i, _)| *i).peekable();
    parsed
        .into_iter()
        .enumerate()
        .filter(|(i, _)| failed.next_if_eq(i).is_none())
        .map(|(_, (mut event, fields))| {
            event.fields = Value::Object(fields).to_string();
            event
        })
        .collect()
}

/// A feature set's events (transformed by their source's `select`s and `where`s, as online)
/// joined with its tables as of their times, as the online path joins them: each join re-partitions the events by its key and meets the table's changes in the same
/// shard; then the events go to `spills` by the feature set's key. Returns the events read.
fn spill_joined_events(
    request: &Request<'_>,
    plan: &FeatureSetPlan,
    h: usize,
    spills: &mut [Spill],
    progress: &dyn Progress,
) -> Result<u64, DatasetError> {
    let shards = spills.len();
    let scratch = |name: String| request.scratch.join(format!("j-{h}-{name}"));
    // the source's events, full fields from `_raw`, minus those refused as late
    let files = source_files(request.offline, &plan.source)?;
    progress.phase(&format!("reading {} events", plan.source), Some(files.len() as u64));
    let mut staged: Vec<PathBuf> = Vec::new();
    let mut out = Spill::create(scratch("0".into()))?;
    let mut read = 0;
    for file in files {
        for batch in read_columns(request.offline, &file, &["_partition", "_offset", "_event_time", "_late", "_raw"])? {
            let n = batch[1].as_ref().map_or(0, |a| a.len());
            let (partitions, offsets, times, late, raw) = (
                int32s(&batch[0], n),
                int64s(&batch[1], n),
                micros(&batch[2], n),
                strings(&batch[3], n),
                strings(&batch[4], n),
            );
            let mut events = Vec::with_capacity(n);
            for i in 0..n {
                let refused = late[i].as_deref().is_some_and(|l| l.split(',').any(|s| s == plan.name));
                let (Some(time_us), Some(fields), false) = (times[i], raw[i].clone(), refused) else { continue };
                events.push(Staged {
                    time_ms: time_us.div_euclid(1000),
                    partition: partitions[i],
                    offset: offsets[i].unwrap_or(i as i64),
                    fields,
                });
            }
            if let Some(transform) = request.transform(&plan.source) {
                events = transformed(transform, events);
            }
            for event in &events {
                out.write(event)?;
            }
            read += events.len() as u64;
        }
        progress.advance(1);
    }
    staged.push(out.finish()?);
    for (j, join) in plan.joins.iter().enumerate() {
        let (_, key_column, _) = request.sources.iter().find(|(n, _, _)| *n == join.table).ok_or_else(|| {
            DatasetError::Unsupported { feature: plan.name.clone(), message: format!("no table {:?}", join.table) }
        })?;
        let mut tables: Vec<Spill> =
            (0..shards).map(|s| Spill::create(scratch(format!("t{j}-{s}")))).collect::<Result<_, _>>()?;
        spill_changes(request, &join.table, key_column, &mut tables, progress)?;
        let tables: Vec<PathBuf> = tables.into_iter().map(Spill::finish).collect::<Result<_, _>>()?;
        // events by this join's key
        let mut by_key: Vec<Spill> =
            (0..shards).map(|s| Spill::create(scratch(format!("k{j}-{s}")))).collect::<Result<_, _>>()?;
        for file in &staged {
            for event in SpillReader::<Staged>::open(file)? {
                let event = event?;
                let fields: serde_json::Map<String, Value> = serde_json::from_str(&event.fields).unwrap_or_default();
                let key = key_text(fields.get(&join.on)).unwrap_or_default();
                by_key[shard_of(&key, shards)].write(&event)?;
            }
        }
        let by_key: Vec<PathBuf> = by_key.into_iter().map(Spill::finish).collect::<Result<_, _>>()?;
        progress.phase(&format!("joining {}", join.table), Some(shards as u64));
        staged = (0..shards)
            .into_par_iter()
            .map(|s| {
                let mut changes: Vec<SpilledChange> = read_spill(&tables[s])?;
                order_changes(&mut changes, request.transform(&join.table));
                let mut out = Spill::create(scratch(format!("s{j}-{s}")))?;
                for event in SpillReader::<Staged>::open(&by_key[s])? {
                    let mut event = event?;
                    let mut fields: serde_json::Map<String, Value> =
                        serde_json::from_str(&event.fields).unwrap_or_default();
                    let row = key_text(fields.get(&join.on)).and_then(|key| {
                        let start = changes.partition_point(|c| c.key < key);
                        let end = start + changes[start..].partition_point(|c| c.key == key);
                        as_of(&changes[start..end], event.time_ms)
                            .and_then(|c| c.after.as_deref())
                            .and_then(|a| serde_json::from_str::<serde_json::Map<String, Value>>(a).ok())
                    });
                    for column in &join.columns {
                        let value = row.as_ref().and_then(|r| r.get(column)).cloned().unwrap_or(Value::Null);
                        fields.insert(column.clone(), value);
                    }
                    event.fields = Value::Object(fields).to_string();
                    out.write(&event)?;
                }
                progress.advance(1);
                out.finish()
            })
            .collect::<Result<_, DatasetError>>()?;
    }
    // the conditions over joined columns, on the joined events
    if let Some((_, _, after)) = request.after_joins.iter().find(|(set, _, _)| *set == plan.name) {
        staged = staged
            .iter()
            .enumerate()
            .map(|(s, file)| {
                let events = SpillReader::<Staged>::open(file)?.collect::<Result<Vec<Staged>, _>>()?;
                let mut out = Spill::create(scratch(format!("w-{s}")))?;
                for event in transformed(after, events) {
                    out.write(&event)?;
                }
                out.finish()
            })
            .collect::<Result<_, DatasetError>>()?;
    }
    // by the feature set's key, as cells
    for file in &staged {
        for event in SpillReader::<Staged>::open(file)? {
            let event = event?;
            let fields: serde_json::Map<String, Value> = serde_json::from_str(&event.fields).unwrap_or_default();
            if !plan.admits(&fields) {
                continue;
            }
            let Some(key) = key_text(fields.get(&plan.key_column)) else { continue };
            // the engine gets the values the online join produced, as they are
            let field = |name: &String| Cell::of(fields.get(name).filter(|v| !v.is_null()));
            let mut cells: Vec<Cell> = plan.columns.iter().map(field).collect();
            cells.extend(plan.latest.iter().map(|l| Cell::of(fields.get(l).filter(|v| !v.is_null()))));
            let shard = shard_of(&key, shards);
            spills[shard].write(&SpilledEvent {
                key,
                time_ms: event.time_ms,
                partition: event.partition,
                offset: event.offset,
                cells,
            })?;
        }
    }
    Ok(read)
}

/// A table aggregation's changes as per-group deltas: the change log partitioned by row key,
/// each row's versions replayed in (commit, LSN) order as the online table applies them (a
/// redelivered version once), each version retracting the previous one from its group and adding
/// itself to its own; deltas go to `spills` by group. Returns the changes read.
fn spill_group_changes(
    request: &Request<'_>,
    plan: &crate::definition::TablePlan,
    h: usize,
    spills: &mut [Spill],
    progress: &dyn Progress,
) -> Result<u64, DatasetError> {
    use crate::table::aggregate::group_of;
    let shards = spills.len();
    let (_, key_column, _) = request.sources.iter().find(|(n, _, _)| *n == plan.source).ok_or_else(|| {
        DatasetError::Unsupported { feature: plan.name.clone(), message: format!("no table {:?}", plan.source) }
    })?;
    let mut by_row: Vec<Spill> =
        (0..shards).map(|s| Spill::create(request.scratch.join(format!("g-{h}-{s}")))).collect::<Result<_, _>>()?;
    let read = spill_changes(request, &plan.source, key_column, &mut by_row, progress)?;
    let by_row: Vec<PathBuf> = by_row.into_iter().map(Spill::finish).collect::<Result<_, _>>()?;
    let parse = |row: Option<&str>| row.and_then(|r| serde_json::from_str::<serde_json::Map<String, Value>>(r).ok());
    for file in &by_row {
        let mut changes: Vec<SpilledChange> = read_spill(file)?;
        order_changes(&mut changes, request.transform(&plan.source));
        // a group sees a change at its commit time, but never before a change that precedes it
        // in order (a snapshot read is stamped when it was read, possibly after a change
        // streamed later): each change's effective time is the least commit time from it on
        let mut effective: Vec<i64> = changes.iter().map(|c| c.commit_us).collect();
        for i in (0..changes.len().saturating_sub(1)).rev() {
            if changes[i].key == changes[i + 1].key {
                effective[i] = effective[i].min(effective[i + 1]);
            }
        }
        let mut previous: Option<&SpilledChange> = None;
        for (rank, change) in changes.iter().enumerate() {
            let old_change = previous.filter(|p| p.key == change.key);
            let old = parse(old_change.and_then(|p| p.after.as_deref()));
            let new = parse(change.after.as_deref());
            let old_group = old.as_ref().and_then(|r| group_of(plan, r));
            let new_group = new.as_ref().and_then(|r| group_of(plan, r));
            let old_text = old_group.as_ref().and(old_change.and_then(|p| p.after.clone()));
            let new_text = new_group.as_ref().and(change.after.clone());
            let mut emit = |group: String, old: Option<String>, new: Option<String>, side: u8| {
                let delta = GroupDelta {
                    commit_us: effective[rank],
                    order: (rank as u64, change.key.clone(), side),
                    old,
                    new,
                    group,
                };
                let shard = shard_of(&delta.group, shards);
                spills[shard].write(&delta)
            };
            match (old_group, new_group) {
                (Some(g), Some(n)) if g == n => emit(g, old_text, new_text, 0)?,
                (g, n) => {
                    if let Some(g) = g {
                        emit(g, old_text, None, 0)?;
                    }
                    if let Some(n) = n {
                        emit(n, None, new_text, 1)?;
                    }
                }
            }
            previous = Some(change);
        }
    }
    Ok(read)
}

/// Table-aggregation values per query: the group's deltas committed at or before the query time,
/// applied with the online retraction code.
fn groups_as_of(
    plan: &crate::definition::TablePlan,
    queries: &[Query],
    deltas: &[GroupDelta],
    wanted: &[(u32, &str)],
    out: &mut Vec<(u64, Computed)>,
) {
    use crate::table::aggregate::{group_values, GroupState};
    let parse = |row: &Option<String>| {
        row.as_deref().and_then(|r| serde_json::from_str::<serde_json::Map<String, Value>>(r).ok())
    };
    let places = places(plan.aggregations.iter().map(|a| a.0.as_str()), wanted);
    let mut d = 0;
    let mut q = 0;
    while q < queries.len() {
        let key = &queries[q].key;
        while d < deltas.len() && deltas[d].group < *key {
            d += 1;
        }
        let mut state: Option<GroupState> = None;
        while q < queries.len() && queries[q].key == *key {
            let query = &queries[q];
            while d < deltas.len() && deltas[d].group == *key && deltas[d].commit_us.div_euclid(1000) <= query.at_ms {
                let delta = &deltas[d];
                let group = state.get_or_insert_with(|| GroupState::new(plan));
                group.change(plan, parse(&delta.old).as_ref(), parse(&delta.new).as_ref(), None, delta.commit_us);
                d += 1;
            }
            let values = group_values(plan, state.as_ref());
            for &(index, place) in &places {
                let v = &values[place];
                out.push((query.row, (index, Cell::of(Some(&v.value)), status_code(v.status), v.event_time_ms)));
            }
            q += 1;
        }
        while d < deltas.len() && deltas[d].group == *key {
            d += 1;
        }
    }
}

/// Computes one shard of one key field; returns its result file, sorted by row.
fn compute_shard(
    request: &Request<'_>,
    holders: &[Holder],
    holder_files: &[Vec<PathBuf>],
    query_file: &Path,
    k: usize,
    s: usize,
) -> Result<PathBuf, DatasetError> {
    let catalog = request.catalog;
    let vector = request.vector;
    let key_field = &vector.keys[k];
    let mut queries: Vec<Query> = read_spill(query_file)?;
    queries.sort_by(|a, b| a.key.cmp(&b.key).then(a.at_ms.cmp(&b.at_ms)).then(a.row.cmp(&b.row)));
    let mut computed: Vec<(u64, Computed)> = Vec::new();
    let computed_refs = vector.computed();
    for (h, holder) in holders.iter().enumerate() {
        if catalog.key_of(holder) != key_field {
            continue;
        }
        // the features held here, with their index in what is computed
        let wanted: Vec<(u32, &str)> = computed_refs
            .iter()
            .enumerate()
            .filter(|(_, (hh, _))| hh == holder)
            .map(|(i, (_, f))| (i as u32, f.as_str()))
            .collect();
        match holder {
            Holder::Events(p) => {
                let plan = &catalog.plans[*p];
                let mut events: Vec<SpilledEvent> = read_spill(&holder_files[h][s])?;
                // replays after a crash: the same (partition, offset) once
                events.sort_by(|a, b| {
                    a.key.cmp(&b.key).then(a.partition.cmp(&b.partition)).then(a.offset.cmp(&b.offset))
                });
                events.dedup_by(|a, b| {
                    a.partition.is_some() && a.key == b.key && a.partition == b.partition && a.offset == b.offset
                });
                events.sort_by(|a, b| {
                    a.key
                        .cmp(&b.key)
                        .then(a.time_ms.cmp(&b.time_ms))
                        .then(a.partition.cmp(&b.partition))
                        .then(a.offset.cmp(&b.offset))
                });
                point_in_time(plan, &queries, &events, &wanted, &mut computed);
            }
            Holder::Rows(t) => {
                let mut changes: Vec<SpilledChange> = read_spill(&holder_files[h][s])?;
                order_changes(&mut changes, request.transform(&catalog.tables[*t].0));
                rows_as_of(&queries, &changes, &wanted, &mut computed);
            }
            Holder::Table(p) => {
                let plan = &catalog.table_plans[*p];
                let mut deltas: Vec<GroupDelta> = read_spill(&holder_files[h][s])?;
                deltas.sort_by(|a, b| {
                    a.group.cmp(&b.group).then(a.commit_us.cmp(&b.commit_us)).then(a.order.cmp(&b.order))
                });
                groups_as_of(plan, &queries, &deltas, &wanted, &mut computed);
            }
            Holder::OnDemand(_) => unreachable!("not among the holders"),
        }
    }
    computed.sort_by_key(|(row, (f, ..))| (*row, *f));
    let mut out = Spill::create(request.scratch.join(format!("r-{k}-{s}")))?;
    for record in &computed {
        out.write(record)?;
    }
    out.finish()
}

/// Where each wanted feature (index in the vector, name) sits among a holder's answers, which
/// come in `names` order: found once, not per row.
fn places<'a>(names: impl Iterator<Item = &'a str>, wanted: &[(u32, &str)]) -> Vec<(u32, usize)> {
    let names: Vec<&str> = names.collect();
    wanted.iter().filter_map(|(index, name)| names.iter().position(|n| n == name).map(|p| (*index, p))).collect()
}

/// Feature-set values per query: events of the key applied in time order up to each query time.
fn point_in_time(
    plan: &FeatureSetPlan,
    queries: &[Query],
    events: &[SpilledEvent],
    wanted: &[(u32, &str)],
    out: &mut Vec<(u64, Computed)>,
) {
    let split = plan.columns.len();
    // feature_values answers in feature_names order
    let places = places(plan.feature_names(), wanted);
    let mut e = 0;
    let mut q = 0;
    while q < queries.len() {
        let key = &queries[q].key;
        while e < events.len() && events[e].key < *key {
            e += 1;
        }
        let mut state = EntityState::new(plan);
        let mut applied = false;
        while q < queries.len() && queries[q].key == *key {
            let query = &queries[q];
            while e < events.len() && events[e].key == *key && events[e].time_ms <= query.at_ms {
                let cells: Vec<Option<Value>> = events[e].cells.iter().map(Cell::to_value).collect();
                let columns: Vec<Option<&Value>> = cells[..split].iter().map(Option::as_ref).collect();
                let latest: Vec<Option<&Value>> = cells[split..].iter().map(Option::as_ref).collect();
                engine::apply(plan, &mut state, events[e].time_ms, &columns, &latest, None);
                applied = true;
                e += 1;
            }
            let values = lookup::feature_values(plan, applied.then_some(&state), query.at_ms);
            for &(index, place) in &places {
                let v = &values[place];
                out.push((query.row, (index, Cell::of(Some(&v.value)), status_code(v.status), v.event_time_ms)));
            }
            q += 1;
        }
        while e < events.len() && events[e].key == *key {
            e += 1;
        }
    }
}

/// Table columns per query: the newest change of the key committed at or before the query time.
fn rows_as_of(queries: &[Query], changes: &[SpilledChange], wanted: &[(u32, &str)], out: &mut Vec<(u64, Computed)>) {
    for query in queries {
        let start = changes.partition_point(|c| c.key < query.key);
        let end = start + changes[start..].partition_point(|c| c.key == query.key);
        let newest = as_of(&changes[start..end], query.at_ms);
        let row: Option<serde_json::Map<String, Value>> =
            newest.and_then(|c| c.after.as_deref()).and_then(|a| serde_json::from_str(a).ok());
        let time = newest.map(|c| c.commit_us.div_euclid(1000));
        for (index, column) in wanted {
            let (value, status) = match row.as_ref().map(|r| r.get(*column)) {
                Some(Some(Value::Null)) => (Cell::Null, Status::NullValue),
                Some(Some(v)) => (Cell::of(Some(v)), Status::Present),
                _ => (Cell::Null, Status::NotFound),
            };
            out.push((query.row, (*index, value, status_code(status), time)));
        }
    }
}

/// The Arrow type of a feature's output column.
fn output_type(catalog: &Catalog<'_>, holder: &Holder, feature: &str) -> DataType {
    match holder {
        Holder::Events(p) => match catalog.plans[*p].aggregations.iter().find(|a| a.name == feature) {
            Some(a) => a.function.data_type(),
            None => match catalog.plans[*p].derived.data_type(feature) {
                Some(t) if t.is_integer() => DataType::Int64,
                Some(t) if t.is_numeric() => DataType::Float64,
                _ => DataType::Utf8,
            },
        },
        Holder::Table(p) => match catalog.table_plans[*p].aggregations.iter().find(|a| a.0 == feature) {
            Some((_, _, Function::Count)) => DataType::Int64,
            _ => DataType::Float64,
        },
        Holder::OnDemand(v) => match catalog.on_demand_feature(*v, feature).data_type() {
            t if t.is_integer() => DataType::Int64,
            t if t.is_numeric() => DataType::Float64,
            _ => DataType::Utf8,
        },
        _ => DataType::Utf8,
    }
}

/// A computed value as the writer holds it: value, status code, event time.
type Got = Option<(Option<Value>, u8, Option<i64>)>;

fn status_of(code: u8) -> Status {
    [Status::Present, Status::NotFound, Status::NullValue, Status::OutsideMaxAge][usize::from(code.min(3))]
}

/// Where each input of an on-demand feature comes from: `None` for a request field, else its
/// index in [`Vector::computed`]; found once per vector, not per row.
fn input_places(
    catalog: &Catalog<'_>,
    computed: &[(Holder, String)],
    view: usize,
    feature: &str,
) -> Vec<Option<usize>> {
    let on_demand = catalog.on_demand_feature(view, feature);
    on_demand
        .inputs
        .iter()
        .map(|(q, name)| {
            (q != crate::on_demand::REQUEST).then(|| {
                let holder = catalog.holder(q).expect("resolved");
                computed.iter().position(|(h, n)| *h == holder && n == name).expect("an input of the vector")
            })
        })
        .collect()
}

/// An on-demand feature's value for row `i`: its stored inputs from `got` (at `places`, see
/// [`input_places`]), its request fields from the row's columns.
fn on_demand_value(
    catalog: &Catalog<'_>,
    (view, feature): (usize, &str),
    places: &[Option<usize>],
    got: &[Got],
    request: &[(&str, ArrayRef)],
    i: usize,
) -> lookup::FeatureValue {
    let on_demand = catalog.on_demand_feature(view, feature);
    let owned: Vec<Result<Value, lookup::FeatureValue>> = on_demand
        .inputs
        .iter()
        .zip(places)
        .map(|((_, name), place)| match place {
            None => {
                let (_, column) = request.iter().find(|(n, _)| n == name).expect("checked while reading rows");
                Ok(fathom_transform::json(column, i))
            }
            Some(f) => {
                let (value, status, time) = got[*f].clone().unwrap_or((None, status_code(Status::NotFound), None));
                Err(lookup::FeatureValue {
                    name: name.clone(),
                    value: value.unwrap_or(Value::Null),
                    status: status_of(status),
                    event_time_ms: time,
                })
            }
        })
        .collect();
    let inputs: Vec<Result<Option<&Value>, &lookup::FeatureValue>> =
        owned.iter().map(|input| input.as_ref().map(Some)).collect();
    on_demand.value(&inputs)
}

enum OutColumn {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
}

/// Streams the input again and writes it with the features, merging the shard results by row.
fn write_output(
    request: &Request<'_>,
    results: &[PathBuf],
    rows: u64,
    progress: &dyn Progress,
) -> Result<(), DatasetError> {
    let vector = request.vector;
    // one streaming reader per result file, each sorted by row: memory stays one batch wide
    let mut readers: Vec<std::iter::Peekable<SpillReader<(u64, Computed)>>> =
        results.iter().map(|p| SpillReader::open(p).map(Iterator::peekable)).collect::<Result<_, _>>()?;
    let types: Vec<DataType> = vector.refs.iter().map(|(h, f)| output_type(&request.catalog, h, f)).collect();
    let computed = vector.computed();
    let places: Vec<Vec<Option<usize>>> = vector
        .refs
        .iter()
        .map(|(h, f)| match h {
            Holder::OnDemand(v) => input_places(&request.catalog, &computed, *v, f),
            _ => Vec::new(),
        })
        .collect();
    let out_names: Vec<String> = vector.names.iter().map(|n| n.replace('.', "__")).collect();
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut row = 0u64;
    for batch in input_batches(request.input)? {
        let batch = batch?;
        let n = batch.num_rows();
        let mut columns: Vec<OutColumn> = types
            .iter()
            .map(|t| match t {
                DataType::Int64 => OutColumn::Int(Int64Builder::with_capacity(n)),
                DataType::Float64 => OutColumn::Float(Float64Builder::with_capacity(n)),
                _ => OutColumn::Text(StringBuilder::new()),
            })
            .collect();
        let mut statuses: Vec<StringBuilder> = types.iter().map(|_| StringBuilder::new()).collect();
        let request_columns: Vec<(&str, ArrayRef)> = vector
            .request
            .iter()
            .filter_map(|name| batch.column_by_name(name).map(|c| (name.as_str(), c.clone())))
            .collect();
        for (i, r) in (row..row + n as u64).enumerate() {
            let mut got: Vec<Got> = vec![None; computed.len()];
            for reader in &mut readers {
                while reader.peek().is_some_and(|next| next.as_ref().map_or(true, |(at, _)| *at == r)) {
                    let (_, (f, value, status, time)) = reader.next().expect("peeked")?;
                    got[f as usize] = Some((value.to_value(), status, time));
                }
            }
            for (f, column) in columns.iter_mut().enumerate() {
                let (value, status) = match &vector.refs[f] {
                    (Holder::OnDemand(v), feature) => {
                        let fv =
                            on_demand_value(&request.catalog, (*v, feature), &places[f], &got, &request_columns, i);
                        (Some(fv.value).filter(|v| !v.is_null()), status_code(fv.status))
                    }
                    _ => got[f].clone().map_or((None, status_code(Status::NotFound)), |(v, s, _)| (v, s)),
                };
                match column {
                    OutColumn::Int(b) => b.append_option(value.as_ref().and_then(Value::as_i64)),
                    OutColumn::Float(b) => b.append_option(value.as_ref().and_then(Value::as_f64)),
                    OutColumn::Text(b) => b.append_option(value.map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })),
                }
                statuses[f].append_value(status_name(status));
            }
        }
        row += n as u64;
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
        for ((name, ty), (column, status)) in
            out_names.iter().zip(&types).zip(columns.iter_mut().zip(statuses.iter_mut()))
        {
            fields.push(Field::new(name, ty.clone(), true));
            arrays.push(match column {
                OutColumn::Int(b) => Arc::new(b.finish()),
                OutColumn::Float(b) => Arc::new(b.finish()),
                OutColumn::Text(b) => Arc::new(b.finish()),
            });
            if request.statuses {
                fields.push(Field::new(format!("{name}__status"), DataType::Utf8, false));
                arrays.push(Arc::new(status.finish()));
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let out = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| read_err(request.output, e))?;
        if writer.is_none() {
            let file = File::create(request.output).map_err(io(request.output))?;
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(
                    parquet::basic::ZstdLevel::try_new(3).expect("valid level"),
                ))
                .build();
            writer = Some(ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| read_err(request.output, e))?);
        }
        writer.as_mut().expect("created above").write(&out).map_err(|e| read_err(request.output, e))?;
        progress.advance(n as u64);
    }
    debug_assert_eq!(row, rows);
    match writer {
        Some(w) => {
            w.close().map_err(|e| read_err(request.output, e))?;
        }
        None => return Err(read_err(request.input, "no rows")),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
