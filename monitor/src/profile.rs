//! Reference profiles: what a model's features looked like in its training set, the baseline live
//! windows are compared to (DESIGN §7).
//!
//! Per numeric feature: 20 equal-width bins over the reference range `[min, max]` plus two
//! open-ended outer bins (below and above), their counts, and summary statistics (count, missing,
//! mean, sample standard deviation, min, max, quantiles p01…p99, exact). Per categorical feature:
//! the top K values with counts, the count of all others, and the mode. Live values are binned on
//! the reference edges with [`NumericProfile::bin`]. The JSON format is versioned
//! (`"format": "fathom.profile/1"`) and documented in `docs/profiles.md`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

/// The format tag of this version.
pub const FORMAT: &str = "fathom.profile/1";
/// Inner bins of a numeric feature.
pub const BINS: usize = 20;

/// A model's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// `fathom.profile/1`.
    pub format: String,
    /// Model name.
    pub model: String,
    /// When it was built, RFC 3339.
    pub created: String,
    /// The training set it was built from.
    pub source: String,
    /// Rows read.
    pub rows: u64,
    /// Per feature (the model's feature names), in the model's order.
    pub features: BTreeMap<String, FeatureProfile>,
}

/// One feature's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureProfile {
    /// Numbers.
    Numeric(NumericProfile),
    /// Anything else, by value.
    Categorical(CategoricalProfile),
}

/// A numeric feature's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    /// Non-null values.
    pub count: u64,
    /// Null values (including NaN).
    pub missing: u64,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 below two values).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Exact quantiles by name: p01, p05, p25, p50, p75, p95, p99 (nearest rank).
    pub quantiles: BTreeMap<String, f64>,
    /// `BINS + 1` edges from `min` to `max`.
    pub edges: Vec<f64>,
    /// `BINS + 2` counts: below `min`, the inner bins, above `max`.
    pub counts: Vec<u64>,
}

/// A categorical feature's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    /// Non-null values.
    pub count: u64,
    /// Null values.
    pub missing: u64,
    /// The most frequent values with their counts, most frequent first (ties by value).
    pub top: Vec<(String, u64)>,
    /// Values outside `top`.
    pub other: u64,
}

/// Why a profile could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not readable Parquet.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// The cause.
        source: parquet::errors::ParquetError,
    },
    /// A feature has no column in the training set.
    #[error("{path}: no column for feature {feature:?} (looked for {candidates})")]
    MissingColumn {
        /// The file.
        path: String,
        /// The feature.
        feature: String,
        /// Column names tried.
        candidates: String,
    },
    /// A feature's column is neither numeric nor text.
    #[error("{path}: column {column:?} has type {data_type}; profiles take numbers, strings and booleans")]
    Type {
        /// The file.
        path: String,
        /// The column.
        column: String,
        /// Its type.
        data_type: String,
    },
    /// Not a profile of this format.
    #[error("{path}: not a {FORMAT} profile: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl NumericProfile {
    /// The bin of `x` on these edges: 0 below `min`, `BINS + 1` above `max`, else the inner bin
    /// (a value equal to `max` is in the last inner bin).
    pub fn bin(&self, x: f64) -> usize {
        let (min, max) = (self.edges[0], self.edges[BINS]);
        if x < min {
            return 0;
        }
        if x > max {
            return BINS + 1;
        }
        if max == min {
            return 1;
        }
        let inner = ((x - min) / (max - min) * BINS as f64).floor() as usize;
        1 + inner.min(BINS - 1)
    }

    /// The profile of `values` (finite numbers; `missing` counted beside them).
    pub fn build(mut values: Vec<f64>, missing: u64) -> NumericProfile {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let (min, max) = (values.first().copied().unwrap_or(0.0), values.last().copied().unwrap_or(0.0));
        let mean = if n == 0 { 0.0 } else { values.iter().sum::<f64>() / n as f64 };
        let std =
            if n < 2 { 0.0 } else { (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
        let quantiles =
            [("p01", 0.01), ("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95), ("p99", 0.99)]
                .into_iter()
                .filter(|_| n > 0)
                .map(|(name, q)| {
                    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                    (name.to_string(), values[rank - 1])
                })
                .collect();
        let edges =
            (0..=BINS).map(|i| if i == BINS { max } else { min + (max - min) * i as f64 / BINS as f64 }).collect();
        let mut profile = NumericProfile {
            count: n as u64,
            missing,
            mean,
            std,
            min,
            max,
            quantiles,
            edges,
            counts: vec![0; BINS + 2],
        };
        for x in &values {
            let bin = profile.bin(*x);
            profile.counts[bin] += 1;
        }
        profile
    }

    /// The midpoint of the fullest inner bin (the mode of the binned distribution).
    pub fn mode(&self) -> f64 {
        let (fullest, _) = self.counts[1..=BINS]
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .unwrap_or((0, &0));
        (self.edges[fullest] + self.edges[fullest + 1]) / 2.0
    }
}

impl CategoricalProfile {
    fn build(counts: HashMap<String, u64>, missing: u64, k: usize) -> CategoricalProfile {
        let count = counts.values().sum();
        let mut all: Vec<(String, u64)> = counts.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other = all.iter().skip(k).map(|(_, c)| c).sum();
        all.truncate(k);
        CategoricalProfile { count, missing, top: all, other }
    }

    /// The most frequent value.
    pub fn mode(&self) -> Option<&str> {
        self.top.first().map(|(v, _)| v.as_str())
    }
}

/// How a column of an Arrow type is compared: as numbers (binned, KS, Wasserstein), as text
/// (top values + other), or not at all, with the reason. `fathom profile`, `fathom drift` and
/// the monitor's profiles share this one rule.
///
/// - numbers: every integer width signed and unsigned, float16/32/64, decimal128/256 (their
///   value, the scale applied), dates and timestamps (seconds since the epoch, whatever the
///   unit, so a `timestamp[ms]` column compares with a `timestamp[us]` one);
/// - text: utf8, large_utf8, utf8view, dictionary-encoded strings (pandas' `category`), and
///   booleans (`true`/`false`);
/// - skipped: anything else (lists, structs, binary, durations, …).
pub fn column_kind(data_type: &DataType) -> Result<ColumnKind, String> {
    use DataType::*;
    Ok(match data_type {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float16 | Float32 | Float64
        | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => ColumnKind::Numeric,
        Date32 | Date64 | Timestamp(..) => ColumnKind::Numeric,
        Utf8 | LargeUtf8 | Utf8View | Boolean => ColumnKind::Text,
        Dictionary(_, values) if matches!(values.as_ref(), Utf8 | LargeUtf8 | Utf8View) => ColumnKind::Text,
        Dictionary(_, values) => return column_kind(values),
        other => return Err(format!("type {other} is neither numeric nor text")),
    })
}

/// See [`column_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Compared as numbers.
    Numeric,
    /// Compared as categories.
    Text,
}

/// Seconds per unit of a temporal type's integer value.
fn seconds_per_unit(data_type: &DataType) -> Option<f64> {
    use arrow_schema::TimeUnit;
    Some(match data_type {
        DataType::Date32 => 86_400.0,
        DataType::Date64 => 1e-3,
        DataType::Timestamp(TimeUnit::Second, _) => 1.0,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 1e-3,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1e-6,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1e-9,
        DataType::Dictionary(_, values) => return seconds_per_unit(values),
        _ => return None,
    })
}

/// Column values as numbers, when the column is numeric (see [`column_kind`]).
pub(crate) fn numbers(array: &ArrayRef) -> Option<Vec<Option<f64>>> {
    if column_kind(array.data_type()) != Ok(ColumnKind::Numeric) {
        return None;
    }
    if let Some(unit) = seconds_per_unit(array.data_type()) {
        // temporal values as their integer count of units (date32 by way of its int32 days),
        // then scaled to seconds
        let ints = arrow_cast::cast(array, &DataType::Int64)
            .or_else(|_| arrow_cast::cast(&arrow_cast::cast(array, &DataType::Int32)?, &DataType::Int64))
            .ok()?;
        let ints = ints.as_primitive::<Int64Type>();
        return Some(ints.iter().map(|v| v.map(|v| v as f64 * unit)).collect());
    }
    let floats = arrow_cast::cast(array, &DataType::Float64).ok()?;
    Some(floats.as_primitive::<Float64Type>().iter().collect())
}

/// Column values as text, when the column holds strings or booleans (see [`column_kind`]).
pub(crate) fn texts(array: &ArrayRef) -> Option<Vec<Option<String>>> {
    if column_kind(array.data_type()) != Ok(ColumnKind::Text) {
        return None;
    }
    let strings = arrow_cast::cast(array, &DataType::Utf8).ok()?;
    Some(strings.as_string::<i32>().iter().map(|v| v.map(String::from)).collect())
}

/// The training-set column of a feature: its name as is, or with `.` written `__` (the dataset
/// output's spelling).
fn column_names(feature: &str) -> [String; 2] {
    [feature.to_string(), feature.replace('.', "__")]
}

/// Builds the profile of `features` from a training set (Parquet), reading only their columns.
/// Numeric columns (integers, floats) get bins and statistics, others top-`k` values.
pub fn build(model: &str, features: &[String], training_set: &Path, k: usize) -> Result<Profile, ProfileError> {
    let path = training_set.display().to_string();
    let file = File::open(training_set).map_err(|source| ProfileError::Io { path: path.clone(), source })?;
    let pq = |source| ProfileError::Parquet { path: path.clone(), source };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
    let schema = builder.schema().clone();
    let mut indices = Vec::new();
    for feature in features {
        let names = column_names(feature);
        let index = names.iter().find_map(|n| schema.index_of(n).ok()).ok_or_else(|| ProfileError::MissingColumn {
            path: path.clone(),
            feature: feature.clone(),
            candidates: names.join(" or "),
        })?;
        indices.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let reader = builder.with_projection(mask).with_batch_size(65_536).build().map_err(pq)?;
    // the projected batch keeps the file's column order: find each feature's position in it
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let position: Vec<usize> = indices.iter().map(|i| sorted.binary_search(i).expect("projected")).collect();
    let mut numeric: Vec<Option<(Vec<f64>, u64)>> = vec![None; features.len()];
    let mut categorical: Vec<(HashMap<String, u64>, u64)> = vec![(HashMap::new(), 0); features.len()];
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| pq(e.into()))?;
        rows += batch.num_rows() as u64;
        for (f, &p) in position.iter().enumerate() {
            let column = batch.column(p);
            match numbers(column) {
                Some(values) => {
                    let (kept, missing) = numeric[f].get_or_insert_with(|| (Vec::new(), 0));
                    for v in values {
                        match v.filter(|x| x.is_finite()) {
                            Some(x) => kept.push(x),
                            None => *missing += 1,
                        }
                    }
                }
                None => {
                    let values = texts(column).ok_or_else(|| ProfileError::Type {
                        path: path.clone(),
                        column: batch.schema().field(p).name().clone(),
                        data_type: column.data_type().to_string(),
                    })?;
                    let (counts, missing) = &mut categorical[f];
                    for v in values {
                        match v {
                            Some(v) => *counts.entry(v).or_insert(0) += 1,
                            None => *missing += 1,
                        }
                    }
                }
            }
        }
    }
    let mut profiles = BTreeMap::new();
    for (f, feature) in features.iter().enumerate() {
        let profile = match numeric[f].take() {
            Some((values, missing)) => FeatureProfile::Numeric(NumericProfile::build(values, missing)),
            None => {
                let (counts, missing) = std::mem::take(&mut categorical[f]);
                FeatureProfile::Categorical(CategoricalProfile::build(counts, missing, k))
            }
        };
        profiles.insert(feature.clone(), profile);
    }
    Ok(Profile {
        format: FORMAT.into(),
        model: model.into(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source: path,
        rows,
        features: profiles,
    })
}

impl Profile {
    /// Reads a profile, checking its format tag.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io { path: shown.clone(), source })?;
        let profile: Profile = serde_json::from_str(&text)
            .map_err(|e| ProfileError::Format { path: shown.clone(), message: e.to_string() })?;
        if profile.format != FORMAT {
            return Err(ProfileError::Format { path: shown, message: format!("format is {:?}", profile.format) });
        }
        Ok(profile)
    }

    /// Writes the profile as pretty JSON (via a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let shown = path.display().to_string();
        let io = |source| ProfileError::Io { path: shown.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("a profile encodes")).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests;
