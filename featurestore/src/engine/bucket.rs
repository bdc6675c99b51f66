//! One bucket of one (column, period) ring: mergeable moments, extremes, first/last and an
//! optional distinct-count sketch.
//!
//! Variance uses Welford updates within a bucket and Chan et al.'s parallel merge across
//! buckets, so long windows of large values stay numerically stable.

use cardinality_estimator::CardinalityEstimator;
use serde::{Deserialize, Serialize};

/// HyperLogLog with 2^14 registers (~0.8% standard error); small sets stay exact and tiny.
pub type Distinct = CardinalityEstimator<str, wyhash::WyHash, 14, 6>;

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
}

impl Bucket {
    /// An empty bucket.
    pub fn new(index: i64, distinct: bool) -> Bucket {
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
            distinct: distinct.then(|| Box::new(Distinct::new())),
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

    /// Folds `other` (a bucket of a disjoint time range or disjoint events) into `self`.
    pub fn merge(&mut self, other: &Bucket) {
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
