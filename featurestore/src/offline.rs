//! The offline store: raw decoded events as Parquet, per source, partitioned by event date.
//!
//! `<root>/<source>/date=YYYY-MM-DD/part-<first event ms>-<pid>-<seq>.parquet`, zstd, with
//! `_partition` (Int32, null for push/replay), `_offset` (Int64), `_event_time` and
//! `_ingest_time` (Timestamp µs, UTC), the key column (Utf8), one typed column per field the
//! feature sets read (Float64 for numeric aggregations, Utf8 otherwise: strings as is, other JSON
//! values as JSON text), `_late` (the feature sets that refused the event as late, comma-separated;
//! null for most) and `_raw` (the original record). A file becomes visible only once
//! complete ([`Storage::put`]: locally a `.tmp` name, fsync'd and renamed; on object storage one
//! PUT), so readers never see a partial file; after a crash a record may appear in
//! two files, and readers de-duplicate by (`_partition`, `_offset`).
//!
//! A CDC source's directory holds its change log instead: one row per change with the same
//! coordinates, `_event_time` = the commit time, the key column, `_op` (`c`, `u`, `d`, `r`),
//! `_lsn`, `_tx_id`, `_snapshot`, `_position` (the connector's log position as text whose byte
//! order is the log order, see [`fathom_ingest::debezium::LogPosition::to_sortable`]), and the
//! rows `_before` and `_after` as JSON text — enough to answer "what was this row at instant t":
//! order a key's changes by (`_position`, `_partition`, `_offset`, `_event_time`), the order
//! the online table applies them in, and take the last one with `_event_time` ≤ t (a `d` means
//! no row). A column the connector sent as unavailable holds the value it kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use fathom_ingest::debezium::{Change, Op};
use fathom_ingest::event::Event;
use fathom_ingest::record::Coordinates;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use serde_json::Value;

use crate::storage::{Storage, StorageError};

/// The `stores.offline.parquet` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// Root directory, or a bucket prefix: `s3://bucket/prefix`, `gs://…`, `az://…`
    /// ([`Storage::open`]). Default: `./data/offline`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Object storage settings (object_store's keys: `endpoint`, `region`, `allow_http`,
    /// `access_key_id`, `secret_access_key`, …), values `env:NAME` or `file:/path` for secrets.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Local directory for the rows the store does not take ([`Spill`]): while it is away the
    /// stream keeps flowing and each checkpoint's rows wait here (same layout and file names),
    /// moved into the store by the next write that succeeds — also by the next start, for
    /// what a stop left. Default: `data/offline-spill`.
    #[serde(default = "default_spill")]
    pub spill_dir: PathBuf,
    /// Most the spill directory holds, in MiB (1 MiB = 2^20 bytes). Beyond it the stream waits
    /// for the store instead (backpressure: records wait in the broker); 0 never spills while
    /// running. Default: 10240 (10 GiB).
    #[serde(default = "default_max_spill_mb")]
    pub max_spill_mb: u64,
}

impl ParquetConfig {
    /// The store this section names.
    pub fn storage(&self) -> Result<Storage, StorageError> {
        Storage::open(&self.path, &self.options)
    }
}

fn default_spill() -> PathBuf {
    PathBuf::from("data/offline-spill")
}

fn default_max_spill_mb() -> u64 {
    10_240
}

fn default_path() -> PathBuf {
    PathBuf::from("data/offline")
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            path: default_path(),
            options: BTreeMap::new(),
            spill_dir: default_spill(),
            max_spill_mb: default_max_spill_mb(),
        }
    }
}

/// Failures writing Parquet.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Filesystem failure (removing a crashed run's leftovers).
    #[error("writing {path}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Parquet encoding failure.
    #[error("encoding {path}")]
    Parquet {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The file could not be stored (a disk, a bucket); the cause names it.
    #[error("writing to the offline store")]
    Storage(#[source] StorageError),
}

/// Arrow type of a stored field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Float64 (numbers; anything else stored as null).
    Float,
    /// Utf8: strings as is, other JSON values as JSON text.
    Text,
}

/// What the offline store keeps of one source.
#[derive(Debug, Clone)]
pub struct SourceSchema {
    /// Source name (the directory).
    pub name: String,
    /// Key field.
    pub key: String,
    /// Events with typed fields, or a CDC change log.
    pub layout: Layout,
}

/// The rows of a source's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Decoded events: these typed fields besides the key, then `_raw`.
    Events(Vec<(String, ColumnType)>),
    /// A CDC table's changes: `_op`, `_lsn`, `_tx_id`, `_snapshot`, `_position`, `_before`, `_after`.
    ChangeLog,
}

/// The change-log columns after the key, with their types.
const CHANGE_COLUMNS: [(&str, DataType); 7] = [
    ("_op", DataType::Utf8),
    ("_lsn", DataType::Int64),
    ("_tx_id", DataType::Int64),
    ("_snapshot", DataType::Utf8),
    ("_position", DataType::Utf8),
    ("_before", DataType::Utf8),
    ("_after", DataType::Utf8),
];

impl SourceSchema {
    /// The Arrow schema of this source's files.
    pub fn arrow_schema(&self) -> Arc<Schema> {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields = vec![
            Field::new("_partition", DataType::Int32, true),
            Field::new("_offset", DataType::Int64, false),
            Field::new("_event_time", ts(), false),
            Field::new("_ingest_time", ts(), false),
            Field::new(&self.key, DataType::Utf8, false),
        ];
        match &self.layout {
            Layout::Events(columns) => {
                for (name, ty) in columns {
                    let dt = match ty {
                        ColumnType::Float => DataType::Float64,
                        ColumnType::Text => DataType::Utf8,
                    };
                    fields.push(Field::new(name, dt, true));
                }
                fields.push(Field::new("_late", DataType::Utf8, true));
                fields.push(Field::new("_raw", DataType::Utf8, false));
            }
            Layout::ChangeLog => {
                fields.push(Field::new("_op", DataType::Utf8, false));
                fields.extend(CHANGE_COLUMNS[1..].iter().map(|(name, dt)| Field::new(*name, dt.clone(), true)));
            }
        }
        Arc::new(Schema::new(fields))
    }
}

/// One change of a CDC table as the change log stores it.
#[derive(Debug, Clone, Copy)]
pub struct LoggedChange<'a> {
    /// Source index.
    pub source: usize,
    /// Position in the source.
    pub at: Coordinates,
    /// Primary key as text.
    pub key: &'a str,
    /// The decoded change (its `after` may have moved to the table: see `after`).
    pub change: &'a Change,
    /// The row after the change.
    pub after: Option<&'a serde_json::Map<String, Value>>,
}

/// Rows of one (source, date) waiting for the next commit.
struct Pending {
    first_ms: i64,
    partition: Int32Builder,
    offset: Int64Builder,
    event_time: TimestampMicrosecondBuilder,
    ingest_time: TimestampMicrosecondBuilder,
    key: StringBuilder,
    columns: Vec<Column>,
    /// `_late` and `_raw` (events only).
    raw: Option<(StringBuilder, StringBuilder)>,
    rows: usize,
}

enum Column {
    Float(Float64Builder),
    Int(Int64Builder),
    Text(StringBuilder),
}

impl Pending {
    fn new(schema: &SourceSchema, first_ms: i64) -> Pending {
        Pending {
            first_ms,
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            ingest_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            key: StringBuilder::new(),
            columns: match &schema.layout {
                Layout::Events(columns) => columns
                    .iter()
                    .map(|(_, ty)| match ty {
                        ColumnType::Float => Column::Float(Float64Builder::new()),
                        ColumnType::Text => Column::Text(StringBuilder::new()),
                    })
                    .collect(),
                Layout::ChangeLog => CHANGE_COLUMNS
                    .iter()
                    .map(|(_, dt)| match dt {
                        DataType::Int64 => Column::Int(Int64Builder::new()),
                        _ => Column::Text(StringBuilder::new()),
                    })
                    .collect(),
            },
            raw: matches!(schema.layout, Layout::Events(_)).then(|| (StringBuilder::new(), StringBuilder::new())),
            rows: 0,
        }
    }

    fn push_coordinates(&mut self, at: Coordinates, time_us: i64, ingest_us: i64, key: &str) {
        self.partition.append_option(at.partition);
        self.offset.append_value(at.offset);
        self.event_time.append_value(time_us);
        self.ingest_time.append_value(ingest_us);
        self.key.append_value(key);
        self.rows += 1;
    }

    fn push_event(&mut self, columns: &[(String, ColumnType)], event: &Event, late: Option<&str>, ingest_us: i64) {
        self.push_coordinates(event.at, event.time_ms * 1000, ingest_us, &event.key);
        for ((name, _), column) in columns.iter().zip(&mut self.columns) {
            let value = event.fields.get(name).filter(|v| !v.is_null());
            match column {
                Column::Float(b) => b.append_option(value.and_then(Value::as_f64)),
                Column::Text(b) => match value {
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                    None => b.append_null(),
                },
                Column::Int(b) => b.append_option(value.and_then(Value::as_i64)),
            }
        }
        if let Some((late_column, raw)) = &mut self.raw {
            late_column.append_option(late);
            raw.append_value(String::from_utf8_lossy(&event.raw));
        }
    }

    fn push_change(&mut self, logged: &LoggedChange<'_>, ingest_us: i64) {
        let change = logged.change;
        self.push_coordinates(logged.at, change.commit_us, ingest_us, logged.key);
        let op = match change.op {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        };
        let json = |row: Option<&serde_json::Map<String, Value>>| {
            row.map(|r| serde_json::to_string(r).expect("a JSON map encodes"))
        };
        let [Column::Text(op_b), Column::Int(lsn), Column::Int(tx), Column::Text(snapshot), Column::Text(position), Column::Text(before), Column::Text(after)] =
            &mut self.columns[..]
        else {
            unreachable!("change-log builders are created in CHANGE_COLUMNS order")
        };
        op_b.append_value(op);
        lsn.append_option(change.lsn);
        tx.append_option(change.tx_id);
        snapshot.append_option(change.snapshot.as_deref());
        position.append_option(change.position.map(|p| p.to_sortable()));
        before.append_option(json(change.before.as_ref()));
        after.append_option(json(logged.after));
    }

    fn finish(mut self, schema: Arc<Schema>) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.ingest_time.finish()),
            Arc::new(self.key.finish()),
        ];
        for column in &mut self.columns {
            arrays.push(match column {
                Column::Float(b) => Arc::new(b.finish()),
                Column::Int(b) => Arc::new(b.finish()),
                Column::Text(b) => Arc::new(b.finish()),
            });
        }
        if let Some((late, raw)) = &mut self.raw {
            arrays.push(Arc::new(late.finish()));
            arrays.push(Arc::new(raw.finish()));
        }
        RecordBatch::try_new(schema, arrays)
    }
}

/// Buffers events and writes them as Parquet files on [`OfflineWriter::commit`].
pub struct OfflineWriter {
    storage: Storage,
    schemas: Vec<SourceSchema>,
    /// Rows per (source, UTC day number).
    pending: BTreeMap<(usize, i64), Pending>,
    /// Batches a failed commit could not write yet, with their file's directory and name:
    /// the next commit writes them first, so a full or read-only disk loses nothing.
    unwritten: Vec<Unwritten>,
    seq: u64,
}

/// A finished batch waiting for its file.
struct Unwritten {
    /// The file, relative to the root.
    relative: String,
    batch: RecordBatch,
}

impl OfflineWriter {
    /// A writer under `storage` for the given sources (indexed like the project's sources).
    /// Leftover `.tmp` files of a crashed run in a local directory are removed: their rows will
    /// be replayed (object storage never shows a partial object).
    pub fn new(storage: Storage, schemas: Vec<SourceSchema>) -> Result<OfflineWriter, OfflineError> {
        if let Storage::Local(root) = &storage {
            for schema in &schemas {
                remove_partial_files(root, &schema.name)?;
            }
        }
        Ok(OfflineWriter { storage, schemas, pending: BTreeMap::new(), unwritten: Vec::new(), seq: 0 })
    }

    /// Buffers events (their source must be one of the writer's, with an events layout);
    /// `late[i]` names the feature sets that refused event `i` as late (empty: none did).
    pub fn append(&mut self, events: &[Event], late: &[Option<String>]) {
        let ingest_us = Utc::now().timestamp_micros();
        for (i, event) in events.iter().enumerate() {
            let Some(schema) = self.schemas.get(event.source) else {
                continue;
            };
            let Layout::Events(columns) = &schema.layout else {
                continue;
            };
            let day = event.time_ms.div_euclid(86_400_000);
            self.pending.entry((event.source, day)).or_insert_with(|| Pending::new(schema, event.time_ms)).push_event(
                columns,
                event,
                late.get(i).and_then(Option::as_deref),
                ingest_us,
            );
        }
    }

    /// Buffers CDC changes into their sources' change logs, partitioned by commit date.
    pub fn append_changes(&mut self, changes: &[LoggedChange<'_>]) {
        let ingest_us = Utc::now().timestamp_micros();
        for logged in changes {
            let Some(schema) = self.schemas.get(logged.source).filter(|s| s.layout == Layout::ChangeLog) else {
                continue;
            };
            let commit_ms = logged.change.commit_ms;
            self.pending
                .entry((logged.source, commit_ms.div_euclid(86_400_000)))
                .or_insert_with(|| Pending::new(schema, commit_ms))
                .push_change(logged, ingest_us);
        }
    }

    /// Rows buffered and not yet committed.
    pub fn buffered(&self) -> usize {
        self.pending.values().map(|p| p.rows).sum::<usize>()
            + self.unwritten.iter().map(|u| u.batch.num_rows()).sum::<usize>()
    }

    /// Writes every buffered row to new files, durably; returns the files written. On an error
    /// (disk full, directory not writable) the rows not yet in a file stay buffered and the next
    /// call writes them: retrying loses and repeats nothing.
    pub fn commit(&mut self) -> Result<Vec<String>, OfflineError> {
        let mut sealed = self.seal()?;
        let written = sealed.write();
        self.unseal(sealed);
        written
    }

    /// Every buffered row as finished batches (the ones a failed write gave back first), for
    /// [`Sealed::write`] on another thread while this writer buffers the next rows. Sealing
    /// copies nothing and encodes nothing; writing is the expensive part.
    pub fn seal(&mut self) -> Result<Sealed, OfflineError> {
        while let Some(((source, day), pending)) = self.pending.pop_first() {
            let schema = &self.schemas[source];
            let date = DateTime::from_timestamp_millis(day * 86_400_000).unwrap_or_default().format("%Y-%m-%d");
            self.seq += 1;
            let relative = format!(
                "{}/date={date}/part-{}-{}-{}.parquet",
                schema.name,
                pending.first_ms,
                std::process::id(),
                self.seq
            );
            let batch = pending
                .finish(schema.arrow_schema())
                .map_err(|e| OfflineError::Parquet { path: self.storage.show(&relative), source: e.into() })?;
            self.unwritten.push(Unwritten { relative, batch });
        }
        Ok(Sealed { storage: self.storage.clone(), files: std::mem::take(&mut self.unwritten) })
    }

    /// Moves every row not yet in the store to `spill` instead, as a stop does when the store
    /// does not answer; returns the rows spilled. The rows are then no longer buffered.
    pub fn spill(&mut self, spill: &mut Spill) -> Result<usize, OfflineError> {
        let mut sealed = self.seal()?;
        let spilled = spill.take(&mut sealed);
        self.unseal(sealed);
        spilled
    }

    /// Takes back what [`Sealed::write`] did not write: the next seal hands it out first.
    pub fn unseal(&mut self, sealed: Sealed) {
        let mut files = sealed.files;
        files.append(&mut self.unwritten);
        self.unwritten = files;
    }
}

/// Sealed batches of an [`OfflineWriter`], each waiting for its file.
pub struct Sealed {
    storage: Storage,
    files: Vec<Unwritten>,
}

impl Sealed {
    /// Rows in the batches not yet written.
    pub fn rows(&self) -> usize {
        self.files.iter().map(|u| u.batch.num_rows()).sum()
    }

    /// Files (batches) not yet written.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// The store the batches are for.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Writes each batch to its file, durably and in order; returns the files written. On an
    /// error the batches from the failing one on stay here, for [`OfflineWriter::unseal`].
    pub fn write(&mut self) -> Result<Vec<String>, OfflineError> {
        let (storage, mut written) = (self.storage.clone(), Vec::new());
        self.write_to(&storage, &mut written)?;
        Ok(written.into_iter().map(|(relative, _)| storage.show(&relative)).collect())
    }

    /// [`Sealed::write`] to `storage`, each file written added to `written` (relative, with
    /// its size in bytes) as it is.
    fn write_to(&mut self, storage: &Storage, written: &mut Vec<(String, u64)>) -> Result<(), OfflineError> {
        while let Some(next) = self.files.first() {
            let bytes = encode(&next.batch)
                .map_err(|source| OfflineError::Parquet { path: storage.show(&next.relative), source })?;
            let size = bytes.len() as u64;
            storage.put(&next.relative, bytes).map_err(OfflineError::Storage)?;
            written.push((self.files.remove(0).relative, size));
        }
        Ok(())
    }
}

/// Rows the offline store did not take, as Parquet files in a local directory under the
/// store's own layout and file names, waiting to be moved into the store: a checkpoint whose
/// write fails puts its rows here ([`Spill::take`]) so the stream keeps flowing, and every later
/// write first moves these files into the store ([`Spill::upload`], oldest first). Files a
/// stopped process left are found again at the next start ([`Spill::open`]). The directory's
/// size is bounded ([`Spill::full`]); its callers wait for the store beyond it.
///
/// A file reaches the store under its spilled name, so a crash between uploading and removing
/// it repeats the same object, never a second copy.
pub struct Spill {
    dir: PathBuf,
    /// Waiting files, oldest first.
    files: Vec<Waiting>,
    max_bytes: u64,
}

/// A spilled file.
struct Waiting {
    /// Relative to the spill directory and to the store's root alike.
    relative: String,
    bytes: u64,
    rows: u64,
}

impl Spill {
    /// The spill directory `dir` (created when first needed), holding at most `max_bytes`
    /// before [`Spill::full`]; the Parquet files an earlier process left there wait for the
    /// next upload (their row counts read from their footers), and its `.tmp` leftovers are
    /// removed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spill, OfflineError> {
        let mut spill = Spill { dir: dir.to_path_buf(), files: Vec::new(), max_bytes };
        remove_partial_files(dir, "")?;
        for relative in Storage::local(dir).list("", ".parquet").map_err(OfflineError::Storage)? {
            let path = dir.join(&relative);
            let parquet = |source| OfflineError::Parquet { path: path.display().to_string(), source };
            let file = std::fs::File::open(&path).map_err(|e| parquet(e.into()))?;
            let bytes = file.metadata().map_err(|e| parquet(e.into()))?.len();
            let reader = parquet::file::reader::SerializedFileReader::new(file).map_err(parquet)?;
            let rows = parquet::file::reader::FileReader::metadata(&reader).file_metadata().num_rows() as u64;
            spill.files.push(Waiting { relative, bytes, rows });
        }
        Ok(spill)
    }

    /// No file waits.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Files waiting.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Rows waiting.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|w| w.rows).sum()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|w| w.bytes).sum()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// At or over its bound: nothing more should be spilled while running.
    pub fn full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Writes every batch of `sealed` here instead of to its store (regardless of the bound:
    /// the caller checks [`Spill::full`] first when it can wait instead); returns the rows
    /// spilled. On an error the batches not written stay in `sealed`.
    pub fn take(&mut self, sealed: &mut Sealed) -> Result<usize, OfflineError> {
        let before = sealed.rows();
        let rows: Vec<u64> = sealed.files.iter().map(|u| u.batch.num_rows() as u64).collect();
        let mut written = Vec::new();
        // the files written before a failure wait here too
        let result = sealed.write_to(&Storage::local(&self.dir), &mut written);
        self.files.extend(written.into_iter().zip(rows).map(|((relative, bytes), rows)| Waiting {
            relative,
            bytes,
            rows,
        }));
        result.map(|()| before - sealed.rows())
    }

    /// Moves each waiting file into `store`, oldest first (read, stored under the same relative
    /// name, then removed here). On an error the files from the failing one on stay here for
    /// the next call.
    pub fn upload(&mut self, store: &Storage) -> Result<(), OfflineError> {
        while let Some(next) = self.files.first() {
            let local = self.dir.join(&next.relative);
            let io = |source| OfflineError::Io { path: local.display().to_string(), source };
            let bytes = std::fs::read(&local).map_err(io)?;
            store.put(&next.relative, bytes).map_err(OfflineError::Storage)?;
            std::fs::remove_file(&local).map_err(io)?;
            self.files.remove(0);
        }
        Ok(())
    }
}

/// A batch as a Parquet file's bytes (zstd level 3).
fn encode(batch: &RecordBatch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_created_by(format!("fathom {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.into_inner()
}

/// Removes the `.parquet.tmp` files a crashed process left under `root`/`dir` (a file being
/// written when it stopped: [`Storage::put`]).
fn remove_partial_files(root: &Path, dir: &str) -> Result<(), OfflineError> {
    for relative in Storage::local(root).list(dir, ".parquet.tmp").map_err(OfflineError::Storage)? {
        let path = root.join(&relative);
        std::fs::remove_file(&path).map_err(|source| OfflineError::Io { path: path.display().to_string(), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
    use fathom_ingest::record::Coordinates;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::json;
    use std::fs::File;

    use super::*;

    fn event(offset: i64, time_ms: i64, fields: Value) -> Event {
        Event {
            source: 0,
            key: "c1".into(),
            time_ms,
            raw: fields.to_string().into_bytes(),
            fields: fields.as_object().unwrap().clone(),
            at: Coordinates { partition: Some(2), offset },
        }
    }

    /// A writer of one event source, `tx`, with a float column `amount`.
    fn amount_writer(root: &Path) -> OfflineWriter {
        let schema = SourceSchema {
            name: "tx".into(),
            key: "card".into(),
            layout: Layout::Events(vec![("amount".into(), ColumnType::Float)]),
        };
        OfflineWriter::new(Storage::local(root), vec![schema]).unwrap()
    }

    /// The `_offset` column of a Parquet file, in file order.
    fn offsets(file: &Path) -> Vec<i64> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap()).unwrap().build().unwrap();
        reader
            .flat_map(|batch| {
                let batch = batch.unwrap();
                let column = batch.column(batch.schema().index_of("_offset").unwrap()).clone();
                column.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect()
    }

    #[test]
    fn round_trips_events_partitioned_by_event_date() {
        let dir = tempfile::tempdir().unwrap();
        let schema = SourceSchema {
            name: "tx".into(),
            key: "card".into(),
            layout: Layout::Events(vec![("amount".into(), ColumnType::Float), ("merchant".into(), ColumnType::Text)]),
        };
        let mut writer = OfflineWriter::new(Storage::local(dir.path()), vec![schema]).unwrap();
        let day1 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        writer.append(
            &[
                event(10, day1 + 5, json!({"amount": 1.5, "merchant": "m1"})),
                event(11, day1 - 1, json!({"amount": null, "merchant": 7})),
                event(12, day1 + 9, json!({"merchant": "m2"})),
            ],
            &[None, None, Some("cards".into())],
        );
        assert_eq!(writer.buffered(), 3);
        let files = writer.commit().unwrap();
        assert_eq!(writer.buffered(), 0);
        assert_eq!(files.len(), 2);
        assert!(files[0].contains("/tx/date=2025-12-31/"), "{files:?}");
        assert!(files[1].contains("/tx/date=2026-01-01/"), "{files:?}");

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[1]).unwrap()).unwrap();
        let metadata = reader.metadata().clone();
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        assert_eq!(column("_offset").as_primitive::<Int64Type>().values(), &[10, 12]);
        let times = column("_event_time");
        assert_eq!(times.data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        assert_eq!(times.as_primitive::<TimestampMicrosecondType>().value(1), (day1 + 9) * 1000);
        let amount = column("amount");
        assert_eq!(amount.as_primitive::<Float64Type>().value(0), 1.5);
        assert!(amount.is_null(1));
        assert_eq!(column("merchant").as_string::<i32>().value(1), "m2");
        assert_eq!(column("_late").as_string::<i32>().iter().collect::<Vec<_>>(), [None, Some("cards")]);
        assert_eq!(column("_raw").as_string::<i32>().value(0), r#"{"amount":1.5,"merchant":"m1"}"#);
        let compression = metadata.row_group(0).column(0).compression();
        assert!(matches!(compression, Compression::ZSTD(_)), "{compression:?}");
        let other = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0]).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let merchant = other.column(other.schema().index_of("merchant").unwrap());
        assert_eq!(merchant.as_string::<i32>().value(0), "7", "non-string values kept as JSON text");
    }

    /// A full disk (the kernel's ENOSPC, from /dev/full behind the file's name) and a directory
    /// that cannot be created: each commit fails naming the path, keeps every row, and the
    /// commit after the fault writes each row exactly once.
    #[test]
    fn a_failed_commit_keeps_its_rows_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = amount_writer(dir.path());
        let day1 = 1_767_225_600_000; // 2026-01-01
        writer.append(&[event(1, day1 + 5, json!({"amount": 1.0})), event(2, day1 + 6, json!({"amount": 2.0}))], &[]);
        let date = dir.path().join("tx/date=2026-01-01");
        std::fs::create_dir_all(&date).unwrap();
        let tmp = date.join(format!("part-{}-{}-1.parquet.tmp", day1 + 5, std::process::id()));
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let chain = |e: OfflineError| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text += &format!(": {cause}");
                source = cause.source();
            }
            text
        };
        let error = chain(writer.commit().unwrap_err());
        assert!(error.contains("date=2026-01-01/part-") && error.contains("No space left on device"), "{error}");
        assert_eq!(writer.buffered(), 2, "rows kept");
        assert!(std::fs::symlink_metadata(&tmp).is_err(), "the failed temporary file is removed");

        // the source's directory is a file now: nothing can be created under it
        writer.append(&[event(3, day1 + 7, json!({"amount": 3.0}))], &[]);
        std::fs::rename(dir.path().join("tx"), dir.path().join("tx.away")).unwrap();
        std::fs::write(dir.path().join("tx"), b"").unwrap();
        let error = chain(writer.commit().unwrap_err());
        assert!(error.contains("/tx/date=2026-01-01") && error.contains("Not a directory"), "{error}");
        assert_eq!(writer.buffered(), 3);
        std::fs::remove_file(dir.path().join("tx")).unwrap();

        let files = writer.commit().unwrap();
        assert_eq!(writer.buffered(), 0);
        let mut offsets: Vec<i64> = files.iter().flat_map(|file| offsets(Path::new(file))).collect();
        offsets.sort();
        assert_eq!(offsets, [1, 2, 3], "each row once");
        let leftovers: Vec<_> = std::fs::read_dir(&date).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), files.len(), "no temporary file left: {leftovers:?}");
    }

    /// The pipeline's checkpoint: rows sealed and written on another thread while new rows are
    /// buffered. A sealed write that fails gives its batches back ahead of the new rows; the
    /// next commit writes every row once, the sealed ones in earlier files.
    #[test]
    fn a_failed_sealed_write_goes_back_ahead_of_rows_buffered_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = amount_writer(dir.path());
        let day1 = 1_767_225_600_000; // 2026-01-01
        writer.append(&[event(1, day1 + 5, json!({"amount": 1.0})), event(2, day1 + 6, json!({"amount": 2.0}))], &[]);
        let mut sealed = writer.seal().unwrap();
        assert_eq!((sealed.rows(), writer.buffered()), (2, 0), "sealed rows leave the buffer");
        writer.append(&[event(3, day1 + 7, json!({"amount": 3.0}))], &[]);
        std::fs::write(dir.path().join("tx"), b"").unwrap(); // the source's directory is a file
        assert!(sealed.write().is_err());
        assert_eq!(sealed.rows(), 2, "nothing written, nothing dropped");
        writer.unseal(sealed);
        assert_eq!(writer.buffered(), 3);
        std::fs::remove_file(dir.path().join("tx")).unwrap();
        let files = writer.commit().unwrap();
        assert_eq!(writer.buffered(), 0);
        let offsets: Vec<Vec<i64>> = files.iter().map(|file| offsets(Path::new(file))).collect();
        assert_eq!(offsets, [vec![1, 2], vec![3]], "the sealed rows first, each row once");
    }

    #[test]
    fn change_log_keeps_before_after_and_commit_time() {
        let dir = tempfile::tempdir().unwrap();
        let schema = SourceSchema { name: "customers".into(), key: "id".into(), layout: Layout::ChangeLog };
        let mut writer = OfflineWriter::new(Storage::local(dir.path()), vec![schema]).unwrap();
        let row = |segment: &str| Some(json!({"id": 7, "segment": segment}).as_object().unwrap().clone());
        let commit_us = 1_767_225_600_123_456; // 2026-01-01T00:00:00.123456Z
        let change = |op, before, after, lsn| Change {
            op,
            key: json!({"id": 7}).as_object().unwrap().clone(),
            before,
            after,
            commit_ms: commit_us / 1000,
            commit_us,
            lsn,
            position: lsn.map(|l| fathom_ingest::debezium::LogPosition {
                connector: fathom_ingest::debezium::Connector::Postgres,
                parts: [l as u128, 0, 0],
            }),
            unavailable: Vec::new(),
            tx_id: Some(99),
            snapshot: Some("false".into()),
            table: Some("public.customers".into()),
        };
        let update = change(Op::Update, None, row("gold"), Some(42));
        let delete = change(Op::Delete, row("gold"), None, None);
        let at = |offset| Coordinates { partition: Some(0), offset };
        writer.append_changes(&[
            LoggedChange { source: 0, at: at(5), key: "7", change: &update, after: update.after.as_ref() },
            LoggedChange { source: 0, at: at(6), key: "7", change: &delete, after: None },
        ]);
        let files = writer.commit().unwrap();
        assert!(files[0].contains("/customers/date=2026-01-01/"), "{files:?}");
        let batch = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0]).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            [
                "_partition",
                "_offset",
                "_event_time",
                "_ingest_time",
                "id",
                "_op",
                "_lsn",
                "_tx_id",
                "_snapshot",
                "_position",
                "_before",
                "_after"
            ]
        );
        let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        assert_eq!(column("_event_time").as_primitive::<TimestampMicrosecondType>().value(0), commit_us);
        assert_eq!(column("_op").as_string::<i32>().iter().collect::<Vec<_>>(), [Some("u"), Some("d")]);
        assert_eq!(column("_lsn").as_primitive::<Int64Type>().iter().collect::<Vec<_>>(), [Some(42), None]);
        assert_eq!(column("_tx_id").as_primitive::<Int64Type>().value(1), 99);
        let positions = column("_position");
        assert_eq!(positions.as_string::<i32>().value(0), format!("postgresql:{:032x}:{:032x}:{:032x}", 42, 0, 0));
        assert!(positions.is_null(1));
        let (before, after) = (column("_before"), column("_after"));
        assert!(before.is_null(0) && after.is_null(1));
        assert_eq!(after.as_string::<i32>().value(0), r#"{"id":7,"segment":"gold"}"#);
        assert_eq!(before.as_string::<i32>().value(1), r#"{"id":7,"segment":"gold"}"#);
        assert_eq!(column("id").as_string::<i32>().value(1), "7");
    }

    /// The running pipeline's outage path: a write the store refuses spills its rows to a local
    /// directory under the store's own names; an upload while the store is still away keeps
    /// them; a new process finds them (row counts from the footers, `.tmp` leftovers removed);
    /// once the store takes writes the upload moves each file there once and empties the
    /// directory. A bound of 0 bytes is full from the start.
    #[test]
    fn spilled_rows_wait_on_disk_and_reach_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let (root, spill_dir) = (dir.path().join("store"), dir.path().join("spill"));
        let mut writer = amount_writer(&root);
        let day1 = 1_767_225_600_000; // 2026-01-01
        writer.append(&[event(1, day1 + 5, json!({"amount": 1.0})), event(2, day1 + 6, json!({"amount": 2.0}))], &[]);
        writer.append(&[event(3, day1 + 86_400_000, json!({"amount": 3.0}))], &[]);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("tx"), b"").unwrap(); // the store refuses every write
        let mut sealed = writer.seal().unwrap();
        assert!(sealed.write().is_err());

        let mut spill = Spill::open(&spill_dir, 1 << 20).unwrap();
        assert!(spill.is_empty() && !spill.full());
        assert_eq!(spill.take(&mut sealed).unwrap(), 3);
        assert_eq!((sealed.rows(), spill.rows(), spill.files()), (0, 3, 2));
        let spilled = Storage::local(&spill_dir).list("tx", ".parquet").unwrap();
        assert_eq!(spilled.len(), 2);
        assert!(spilled[0].starts_with("tx/date=2026-01-01/part-"), "the store's layout: {spilled:?}");
        assert_eq!(offsets(&spill_dir.join(&spilled[0])), [1, 2]);
        assert_eq!(
            spill.bytes(),
            spilled.iter().map(|f| std::fs::metadata(spill_dir.join(f)).unwrap().len()).sum::<u64>()
        );

        let store = Storage::local(&root);
        assert!(spill.upload(&store).is_err(), "the store is still away");
        assert_eq!(spill.rows(), 3, "nothing lost");
        drop(spill);
        std::fs::write(spill_dir.join("tx/date=2026-01-01/part-9-9-9.parquet.tmp"), b"partial").unwrap();
        let mut spill = Spill::open(&spill_dir, 1 << 20).unwrap();
        assert_eq!((spill.rows(), spill.files()), (3, 2), "found by the next process");
        assert!(!spill_dir.join("tx/date=2026-01-01/part-9-9-9.parquet.tmp").exists());

        std::fs::remove_file(root.join("tx")).unwrap();
        spill.upload(&store).unwrap();
        assert!(spill.is_empty() && spill.bytes() == 0);
        assert_eq!(store.list("tx", ".parquet").unwrap(), spilled, "the same names in the store");
        let mut stored: Vec<i64> = spilled.iter().flat_map(|f| offsets(&root.join(f))).collect();
        stored.sort();
        assert_eq!(stored, [1, 2, 3], "each row once");
        assert!(Storage::local(&spill_dir).list("", ".parquet").unwrap().is_empty(), "the spill directory is empty");

        assert!(Spill::open(&spill_dir, 0).unwrap().full(), "a bound of 0 never spills");
    }

    #[test]
    fn leftover_tmp_files_are_removed_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let date = dir.path().join("tx/date=2026-01-01");
        std::fs::create_dir_all(&date).unwrap();
        std::fs::write(date.join("part-1.parquet.tmp"), b"partial").unwrap();
        std::fs::write(date.join("part-0.parquet"), b"kept").unwrap();
        let schema = SourceSchema { name: "tx".into(), key: "k".into(), layout: Layout::Events(vec![]) };
        OfflineWriter::new(Storage::local(dir.path()), vec![schema]).unwrap();
        assert!(!date.join("part-1.parquet.tmp").exists());
        assert!(date.join("part-0.parquet").exists());
    }
}
