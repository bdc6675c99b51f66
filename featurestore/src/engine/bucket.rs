//! One bucket of one (column, period) ring: mergeable moments, extremes, first/last and an
//! optional distinct-count sketch.
//!
//! Variance uses Welford updates within a bucket and Chan et al.'s parallel merge across
//! buckets, so long windows of large values stay numerically stable.

use datasketches::frequencies::FrequentItemsSketch;
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sketches_ddsketch::{Config, DDSketch};

use crate::definition::{BucketSpec, Keep};

/// log2 of the distinct-count sketch's registers: 2^14 registers, a relative standard error of
/// 1.04 / √16384 = 0.81 % (Apache DataSketches HLL, composite estimator).
pub const DISTINCT_LG_K: u8 = 14;

/// Distinct-count sketch of one bucket: Apache DataSketches' HyperLogLog with 2^14 8-bit
/// registers. It keeps a list, then a hash set, of 26-bit coupons until the registers are
/// smaller, so a small set stays small and counts exactly (unless two values share a coupon,
/// chance ≈ n²/2^27). Values are hashed as their UTF-8 bytes with MurmurHash3 (seed 9001), as
/// DataSketches' Java, C++ and Python `update(str)` do, and stored in its binary format, so a
/// sketch from Fathom reads and merges there too.
#[derive(Debug, Clone)]
pub struct Distinct(HllUnion);

impl Distinct {
    /// An empty sketch.
    pub fn new() -> Distinct {
        Distinct(HllUnion::new(DISTINCT_LG_K).expect("lg_k within 4..=21"))
    }

    /// Adds one value.
    #[inline]
    pub fn insert(&mut self, value: &str) {
        self.0.update_value(raw_bytes::from_str(value));
    }

    /// Folds `other` in: the sketch of the union of both sets.
    pub fn merge(&mut self, other: &Distinct) {
        self.0.update(&other.0.to_sketch(HllType::Hll8));
    }

    /// Estimated number of distinct values, rounded; it depends only on the set of values, not
    /// on their order or on how buckets were merged (the composite estimator, not HIP).
    pub fn estimate(&self) -> u64 {
        self.0.composite_estimate().round() as u64
    }

    /// The sketch in DataSketches' binary format (HLL_8).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_sketch(HllType::Hll8).serialize()
    }
}

impl Default for Distinct {
    fn default() -> Distinct {
        Distinct::new()
    }
}

impl PartialEq for Distinct {
    fn eq(&self, other: &Distinct) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Serialize for Distinct {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Distinct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Distinct, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        let sketch = HllSketch::deserialize(&bytes).map_err(serde::de::Error::custom)?;
        if sketch.lg_config_k() != DISTINCT_LG_K {
            return Err(serde::de::Error::custom(format!(
                "a distinct-count sketch of 2^{} registers, not 2^{DISTINCT_LG_K}",
                sketch.lg_config_k()
            )));
        }
        let mut union = Distinct::new();
        union.0.update(&sketch);
        Ok(union)
    }
}

/// Relative accuracy α of percentiles: the value returned for quantile q is within α·|x| of
/// the exact value x at rank ⌊q·(n − 1)⌋ (numpy's `method="lower"`); values within 1e-9 of 0
/// count as 0 (DDSketch, Masson, Rim and Lee, VLDB 2019).
pub const QUANTILE_ACCURACY: f64 = 0.01;

/// DDSketch bins per sign: 2048 bins of ratio (1+α)/(1−α) span 17 orders of magnitude above
/// 1e-9 before the lowest bins collapse.
const QUANTILE_BINS: u32 = 2048;

/// Map size of the frequent-items sketch: exact up to [`FREQUENT_EXACT`] distinct values per
/// bucket and per merged window; beyond, each count is low by at most 3.5/256 of the window's
/// values (Apache DataSketches `FrequentItemsSketch`, a mergeable Misra–Gries summary).
const FREQUENT_MAP: usize = 256;

/// Distinct values a top_k bucket (and a merged window) counts exactly.
pub const FREQUENT_EXACT: usize = FREQUENT_MAP * 3 / 4;

/// A DDSketch of one bucket's numeric values.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantiles(DDSketch);

impl Quantiles {
    fn new() -> Quantiles {
        Quantiles(DDSketch::new(Config::new(QUANTILE_ACCURACY, QUANTILE_BINS, 1e-9)))
    }

    /// The q-quantile (0 < q < 1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q).ok().flatten()
    }
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Quantiles(n={})", self.0.count())
    }
}

impl PartialEq for Quantiles {
    fn eq(&self, other: &Quantiles) -> bool {
        self.0.to_java_bytes() == other.0.to_java_bytes()
    }
}

/// Value frequencies of one bucket, keyed by the value's JSON text.
#[derive(Debug, Clone)]
pub struct Frequent(FrequentItemsSketch<String>);

impl Frequent {
    fn new() -> Frequent {
        Frequent(FrequentItemsSketch::new(FREQUENT_MAP).expect("a power of two"))
    }

    /// The `k` most frequent values' JSON texts, most frequent first, ties by text.
    pub fn top(&self, k: usize) -> Vec<String> {
        let mut rows: Vec<(u64, String)> = self
            .0
            .frequent_items(datasketches::frequencies::ErrorType::NoFalseNegatives)
            .into_iter()
            .map(|row| (row.estimate(), row.item().clone()))
            .collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        rows.into_iter().take(k).map(|(_, item)| item).collect()
    }
}

impl PartialEq for Frequent {
    fn eq(&self, other: &Frequent) -> bool {
        self.0.serialize() == other.0.serialize()
    }
}

impl Serialize for Frequent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.serialize())
    }
}

impl<'de> Deserialize<'de> for Frequent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Frequent, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        FrequentItemsSketch::deserialize(&bytes).map(Frequent).map_err(serde::de::Error::custom)
    }
}

/// What a bucket keeps for percentiles, last_k, first_k and top_k ([`Keep`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// Sketch of the numeric values.
    pub quantiles: Option<Quantiles>,
    /// Up to [`Keep::newest`] (event time, JSON text) with the latest times, oldest first; a
    /// later arrival counts as later on equal times.
    pub newest: Vec<(i64, String)>,
    /// Up to [`Keep::oldest`] with the earliest times, oldest first.
    pub oldest: Vec<(i64, String)>,
    /// Frequencies of the values.
    pub frequent: Option<Frequent>,
}

impl Kept {
    fn new(keep: Keep) -> Kept {
        Kept {
            quantiles: keep.quantiles.then(Quantiles::new),
            newest: Vec::new(),
            oldest: Vec::new(),
            frequent: keep.frequent.then(Frequent::new),
        }
    }

    /// Adds one value (any JSON) observed at `ts`, keeping what `keep` says.
    fn add(&mut self, keep: Keep, ts: i64, value: &Value) {
        let (newest_k, oldest_k) = (usize::from(keep.newest), usize::from(keep.oldest));
        if let (Some(q), Some(x)) = (&mut self.quantiles, value.as_f64()) {
            q.0.add(x);
        }
        let wanted_newest = self.newest.len() < newest_k || self.newest.first().is_some_and(|e| ts >= e.0);
        let wanted_oldest = self.oldest.len() < oldest_k || self.oldest.last().is_some_and(|e| ts < e.0);
        if !(wanted_newest || wanted_oldest || self.frequent.is_some()) {
            return;
        }
        // numbers as doubles, so `12` online and `12.0` read back from Parquet are one value
        let text = match value.as_f64() {
            Some(x) => Value::from(x).to_string(),
            None => value.to_string(),
        };
        if wanted_newest {
            let at = self.newest.partition_point(|e| e.0 <= ts);
            self.newest.insert(at, (ts, text.clone()));
            if self.newest.len() > newest_k {
                self.newest.remove(0);
            }
        }
        if wanted_oldest {
            let at = self.oldest.partition_point(|e| e.0 <= ts);
            self.oldest.insert(at, (ts, text.clone()));
            self.oldest.truncate(oldest_k);
        }
        if let Some(f) = &mut self.frequent {
            f.0.update(text);
        }
    }

    /// Folds `other` in, keeping what `keep` says: for equal event times, `self`'s values
    /// count as later.
    fn merge(&mut self, keep: Keep, other: &Kept) {
        if let (Some(mine), Some(theirs)) = (&mut self.quantiles, &other.quantiles) {
            mine.0.merge(&theirs.0).expect("one configuration");
        }
        let merged = |mine: &[(i64, String)], theirs: &[(i64, String)]| {
            let mut all: Vec<(i64, String)> = theirs.iter().chain(mine).cloned().collect();
            all.sort_by_key(|e| e.0); // stable: `theirs` before `mine` on equal times
            all
        };
        if keep.newest > 0 {
            let mut all = merged(&self.newest, &other.newest);
            let extra = all.len().saturating_sub(usize::from(keep.newest));
            all.drain(..extra);
            self.newest = all;
        }
        if keep.oldest > 0 {
            let mut all = merged(&self.oldest, &other.oldest);
            all.truncate(usize::from(keep.oldest));
            self.oldest = all;
        }
        if let (Some(mine), Some(theirs)) = (&mut self.frequent, &other.frequent) {
            mine.0.merge(&theirs.0);
        }
    }
}

/// Aggregate state of the events of one entity whose event time falls in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket index: `floor(event_time_ms / period_ms)`.
    pub index: i64,
    /// Number of events with a value for the column (saturating).
    pub count: u32,
    /// Number of numeric values (saturating); the moments below cover these.
    pub n: u32,
    /// Sum of numeric values; the mean is `sum / n`.
    pub sum: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Smallest numeric value.
    pub min: f64,
    /// Largest numeric value.
    pub max: f64,
    /// Event time and value of the earliest numeric value.
    pub first: (i64, f64),
    /// Event time and value of the latest numeric value (later arrival wins ties).
    pub last: (i64, f64),
    /// Distinct-count sketch, when a distinct_count reads this ring.
    pub distinct: Option<Box<Distinct>>,
    /// Percentile, last_k, first_k and top_k state, when one reads this ring.
    pub kept: Option<Box<Kept>>,
}

impl Bucket {
    /// An empty bucket shaped for `spec`.
    pub fn new(index: i64, spec: &BucketSpec) -> Bucket {
        Bucket {
            index,
            count: 0,
            n: 0,
            sum: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: (i64::MAX, f64::NAN),
            last: (i64::MIN, f64::NAN),
            distinct: spec.distinct.then(|| Box::new(Distinct::new())),
            kept: spec.keep.any().then(|| Box::new(Kept::new(spec.keep))),
        }
    }

    /// Feeds `value` (any JSON) observed at `ts` to the state `keep` asks for, if any.
    #[inline]
    pub fn add_kept(&mut self, keep: Keep, ts: i64, value: &Value) {
        if let Some(kept) = &mut self.kept {
            kept.add(keep, ts, value);
        }
    }

    /// Adds one numeric value observed at `ts`.
    #[inline]
    pub fn add_number(&mut self, ts: i64, x: f64) {
        if self.n > 0 {
            // Welford: (x − old mean)(x − new mean)
            let old_mean = self.sum / f64::from(self.n);
            let new_mean = (self.sum + x) / f64::from(self.n + 1);
            self.m2 += (x - old_mean) * (x - new_mean);
        }
        self.n = self.n.saturating_add(1);
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if ts < self.first.0 {
            self.first = (ts, x);
        }
        if ts >= self.last.0 {
            self.last = (ts, x);
        }
    }

    /// Folds `other` (a bucket of a disjoint time range or disjoint events, of the same
    /// `spec`) into `self`.
    pub fn merge(&mut self, spec: &BucketSpec, other: &Bucket) {
        self.count = self.count.saturating_add(other.count);
        if other.n > 0 {
            if self.n > 0 {
                let (a, b) = (f64::from(self.n), f64::from(other.n));
                let delta = other.sum / b - self.sum / a;
                self.m2 += other.m2 + delta * delta * a * b / (a + b);
            } else {
                self.m2 = other.m2;
            }
            self.n = self.n.saturating_add(other.n);
            self.sum += other.sum;
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
            if other.first.0 < self.first.0 {
                self.first = other.first;
            }
            if other.last.0 >= self.last.0 {
                self.last = other.last;
            }
        }
        if let (Some(mine), Some(theirs)) = (&mut self.distinct, &other.distinct) {
            mine.merge(theirs);
        }
        if let (Some(mine), Some(theirs)) = (&mut self.kept, &other.kept) {
            mine.merge(spec.keep, theirs);
        }
    }

    /// Sample variance, or `None` below two values.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| (self.m2 / f64::from(self.n - 1)).max(0.0))
    }

    /// Arithmetic mean of the numeric values (NaN when there are none).
    pub fn mean(&self) -> f64 {
        self.sum / f64::from(self.n)
    }
}
