//! File replay: NDJSON or Parquet files read as records of one source, so a user can try every
//! feature with no broker.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::record::{Coordinates, Record};

/// Failures reading a replay file.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened or read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet file could not be decoded.
    #[error("reading Parquet file {path}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
}

/// Records of a replay file, in file order, each numbered by its line or row.
pub fn records(
    path: &Path,
    source: usize,
) -> Result<Box<dyn Iterator<Item = Result<Record, ReplayError>>>, ReplayError> {
    let io = |source| ReplayError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let record = move |offset: usize, payload: Vec<u8>| Record {
        source,
        at: Coordinates { partition: None, offset: offset as i64 },
        transport_time_ms: None,
        key: None,
        payload,
    };
    if path.extension().is_some_and(|e| e == "parquet") {
        use parquet::file::reader::SerializedFileReader;
        let owned = path.to_path_buf();
        let reader =
            SerializedFileReader::new(file).map_err(|source| ReplayError::Parquet { path: owned.clone(), source })?;
        let rows = reader.into_iter().enumerate().map(move |(i, row)| {
            let row = row.map_err(|source| ReplayError::Parquet { path: owned.clone(), source })?;
            Ok(record(i, row_json(&row).to_string().into_bytes()))
        });
        return Ok(Box::new(rows));
    }
    let owned = path.to_path_buf();
    let lines = BufReader::new(file)
        .split(b'\n')
        .enumerate()
        .filter(|(_, line)| !matches!(line, Ok(l) if l.iter().all(u8::is_ascii_whitespace)))
        .map(move |(i, line)| {
            // a byte order mark before the first line is not data
            let line = line.map(|bytes| if i == 0 { crate::decode::without_bom(&bytes).to_vec() } else { bytes });
            line.map(|bytes| record(i + 1, bytes)).map_err(|source| ReplayError::Io { path: owned.clone(), source })
        });
    Ok(Box::new(lines))
}

/// A Parquet row as a JSON object; timestamps become epoch milliseconds (Parquet's own text form
/// of a timestamp is not RFC 3339).
fn row_json(row: &parquet::record::Row) -> serde_json::Value {
    use parquet::record::Field;
    let fields = row.get_column_iter().map(|(name, field)| {
        let value = match field {
            Field::TimestampMillis(ms) => serde_json::Value::from(*ms),
            Field::TimestampMicros(us) => serde_json::Value::from(us.div_euclid(1000)),
            other => other.to_json_value(),
        };
        (name.clone(), value)
    });
    serde_json::Value::Object(fields.collect())
}

/// Rows in a replay file, for a progress bar's length (lines for NDJSON, row count for Parquet).
pub fn count(path: &Path) -> Result<u64, ReplayError> {
    let io = |source| ReplayError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "parquet") {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(file)
            .map_err(|source| ReplayError::Parquet { path: path.to_path_buf(), source })?;
        return Ok(reader.metadata().file_metadata().num_rows() as u64);
    }
    let mut n = 0;
    for line in BufReader::new(file).split(b'\n') {
        n += u64::from(!line.map_err(io)?.iter().all(u8::is_ascii_whitespace));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, "\u{feff}{\"id\": 1}\r\n{\"id\": 2}\n").unwrap();
        let payloads: Vec<Vec<u8>> = records(&path, 0).unwrap().map(|r| r.unwrap().payload).collect();
        assert_eq!(payloads[0], b"{\"id\": 1}\r");
        for payload in &payloads {
            assert!(serde_json::from_slice::<serde_json::Value>(payload).is_ok(), "{payload:?}");
        }
    }
}
