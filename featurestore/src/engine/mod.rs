//! The window aggregation engine: per-entity bucket rings updated by events and read as of any
//! instant.
//!
//! State is buckets, never finished numbers: [`apply`] folds an event into the bucket of its
//! event time, and [`read`] merges the buckets inside each window *at read time*, so a
//! `count_1h` read an hour after an entity's last event is 0. The same two functions serve the
//! online path and offline point-in-time retrieval, which is what keeps them consistent.
//!
//! Rings are sparse (only buckets that saw events), sorted by bucket index and trimmed to the
//! longest window of their spec, so an entity costs memory in proportion to its recent activity.

mod bucket;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smallvec::SmallVec;

pub use bucket::{Bucket, Distinct, Frequent, Kept, Quantiles, DISTINCT_LG_K, FREQUENT_EXACT, QUANTILE_ACCURACY};

use crate::definition::{BucketSpec, FeatureSetPlan, Function};

/// All state of one entity in one feature set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// One ring per [`crate::definition::BucketSpec`], buckets sorted by index. Inline for the
    /// common one or two specs: one pointer less to chase per event.
    pub rings: SmallVec<[VecDeque<Bucket>; 2]>,
    /// Per latest-value feature: event time and the value as JSON text.
    pub latest: Vec<Option<(i64, String)>>,
    /// Newest event time applied, ms (`i64::MIN` before the first event).
    pub newest_ms: i64,
    /// Highest applied offset per source partition: replays at or below it are skipped.
    pub offsets: Vec<(i32, i64)>,
}

/// What [`apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Folded into the state.
    Applied,
    /// Older than the entity's newest event by more than the longest window plus the allowed
    /// lateness: not applied; the caller dead-letters it.
    Late,
    /// At or below the applied offset of its partition: already in the state.
    Duplicate,
}

/// Where an event came from, for exactly-once application of replayed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Source partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

impl EntityState {
    /// Empty state shaped for `plan`.
    pub fn new(plan: &FeatureSetPlan) -> EntityState {
        EntityState {
            rings: (0..plan.specs.len()).map(|_| VecDeque::new()).collect(),
            latest: vec![None; plan.latest.len()],
            newest_ms: i64::MIN,
            offsets: Vec::new(),
        }
    }

    /// Whether no event was ever applied.
    pub fn is_empty(&self) -> bool {
        self.newest_ms == i64::MIN
    }

    fn seen(&self, pos: Position) -> bool {
        self.offsets.iter().any(|&(p, o)| p == pos.partition && pos.offset <= o)
    }

    fn record(&mut self, pos: Position) {
        match self.offsets.iter_mut().find(|(p, _)| *p == pos.partition) {
            Some(entry) => entry.1 = pos.offset,
            None => self.offsets.push((pos.partition, pos.offset)),
        }
    }
}

/// Folds one event into `state`.
///
/// `columns[i]` is the event's value for `plan.columns[i]` and `latest[i]` its value for
/// `plan.latest[i]` (`None` when absent or null). Numbers feed numeric functions; any value
/// feeds count and distinct_count.
pub fn apply(
    plan: &FeatureSetPlan,
    state: &mut EntityState,
    ts: i64,
    columns: &[Option<&Value>],
    latest: &[Option<&Value>],
    position: Option<Position>,
) -> Applied {
    if let Some(pos) = position {
        if state.seen(pos) {
            return Applied::Duplicate;
        }
    }
    if !state.is_empty() && ts <= state.newest_ms.saturating_sub(plan.late_after_ms) {
        return Applied::Late;
    }
    if let Some(pos) = position {
        state.record(pos);
    }
    state.newest_ms = state.newest_ms.max(ts);
    for (spec, ring) in plan.specs.iter().zip(state.rings.iter_mut()) {
        let Some(value) = columns[spec.column] else {
            continue;
        };
        let index = ts.div_euclid(spec.period_ms);
        let newest = state.newest_ms.div_euclid(spec.period_ms);
        if index <= newest - spec.horizon {
            continue; // outside every window of this ring for any read at or after `newest`
        }
        let (bucket, pushed) = bucket_for(ring, index, spec);
        bucket.count += 1;
        if let Some(x) = value.as_f64() {
            bucket.add_number(ts, x);
        }
        bucket.add_kept(spec.keep, ts, value);
        if let Some(sketch) = &mut bucket.distinct {
            match value {
                Value::String(s) => sketch.insert(s),
                other => sketch.insert(&other.to_string()),
            }
        }
        // only a new newest bucket can push old ones out; checking the front on every event
        // would cost a cache miss for nothing
        if pushed {
            while ring.front().is_some_and(|b| b.index <= newest - spec.horizon) {
                ring.pop_front();
            }
            fit(ring);
        }
    }
    for (slot, value) in state.latest.iter_mut().zip(latest) {
        if let Some(value) = value {
            if slot.as_ref().is_none_or(|(t, _)| ts >= *t) {
                *slot = Some((ts, value.to_string()));
            }
        }
    }
    Applied::Applied
}

/// Keeps a ring's capacity within about twice its length. A `VecDeque` never gives capacity back
/// and a ring's length follows its entity's traffic, so without this every ring would end at the
/// power of two above the longest it ever was: each entity's rare busy spell ratchets it up, and
/// a steady stream's memory climbs for hours (100k entities × 16 spare 88-byte buckets is 140 MB).
/// Reallocating only past twice the length keeps it rare.
#[inline]
fn fit(ring: &mut VecDeque<Bucket>) {
    let len = ring.len();
    if ring.capacity() > 2 * len + 4 {
        ring.shrink_to(len + len / 2 + 2);
    }
}

/// The bucket with `index`, inserted in order if missing, and whether it was pushed at the
/// back. Events mostly arrive in order, so the common case is the back of the ring.
#[inline]
fn bucket_for<'r>(ring: &'r mut VecDeque<Bucket>, index: i64, spec: &BucketSpec) -> (&'r mut Bucket, bool) {
    let (at, pushed) = match ring.back() {
        Some(b) if b.index == index => (ring.len() - 1, false),
        Some(b) if b.index > index => match ring.binary_search_by_key(&index, |b| b.index) {
            Ok(i) => (i, false),
            Err(i) => {
                ring.insert(i, Bucket::new(index, spec));
                (i, false)
            }
        },
        _ => {
            ring.push_back(Bucket::new(index, spec));
            (ring.len() - 1, true)
        }
    };
    (&mut ring[at], pushed)
}

/// One aggregated value as of a read time.
#[derive(Debug, Clone, PartialEq)]
pub enum AggValue {
    /// count and distinct_count.
    Int(u64),
    /// A number.
    Float(f64),
    /// No value in the window (mean, min, … of nothing).
    Null,
    /// last_k, first_k and top_k: the values' JSON texts, in the function's order.
    List(Vec<String>),
}

impl AggValue {
    /// As JSON (`null` for [`AggValue::Null`] and non-finite floats).
    pub fn to_json(&self) -> Value {
        match self {
            AggValue::Int(n) => Value::from(*n),
            AggValue::Float(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
            AggValue::Null => Value::Null,
            AggValue::List(items) => {
                Value::Array(items.iter().map(|t| serde_json::from_str(t).unwrap_or(Value::Null)).collect())
            }
        }
    }

    /// A list as JSON array text (`fathom dataset` output), `None` otherwise.
    pub fn list_text(&self) -> Option<String> {
        match self {
            AggValue::List(items) => Some(format!("[{}]", items.join(","))),
            _ => None,
        }
    }
}

/// Every aggregated feature of `plan` as of `at_ms`, in plan order.
///
/// Per ring, one pass from the newest bucket backwards: the windows of a ring are nested (all
/// end at `at_ms`), so the merge for the shortest window continues into the next one, and each
/// window's functions read the same merged bucket.
pub fn read(plan: &FeatureSetPlan, state: &EntityState, at_ms: i64) -> Vec<AggValue> {
    let mut out = vec![AggValue::Null; plan.aggregations.len()];
    for (s, (spec, ring)) in plan.specs.iter().zip(&state.rings).enumerate() {
        let mut windows: Vec<i64> = plan.aggregations.iter().filter(|a| a.spec == s).map(|a| a.buckets).collect();
        windows.sort_unstable();
        windows.dedup();
        let end = at_ms.div_euclid(spec.period_ms);
        let mut next = ring.partition_point(|b| b.index <= end);
        let mut acc = Bucket::new(end, spec);
        let mut merged = Vec::with_capacity(windows.len());
        for &buckets in &windows {
            // buckets with index in (end − buckets, end]
            while next > 0 && ring[next - 1].index > end - buckets {
                next -= 1;
                acc.merge(spec, &ring[next]);
            }
            merged.push(acc.clone());
        }
        for (slot, agg) in out.iter_mut().zip(&plan.aggregations).filter(|(_, a)| a.spec == s) {
            let at = windows.binary_search(&agg.buckets).expect("window listed above");
            *slot = finish(agg.function, &merged[at], at_ms);
        }
    }
    out
}

/// A function's value over the merged bucket of its window, read at `at_ms`.
fn finish(function: Function, b: &Bucket, at_ms: i64) -> AggValue {
    let numeric = |x: f64| {
        if b.n == 0 {
            AggValue::Null
        } else {
            AggValue::Float(x)
        }
    };
    match function {
        Function::Count => AggValue::Int(u64::from(b.count)),
        Function::Sum => AggValue::Float(b.sum),
        Function::Mean => numeric(b.mean()),
        Function::Min => numeric(b.min),
        Function::Max => numeric(b.max),
        Function::First => numeric(b.first.1),
        Function::Last => numeric(b.last.1),
        Function::Variance => b.variance().map_or(AggValue::Null, AggValue::Float),
        Function::Stddev => b.variance().map_or(AggValue::Null, |v| AggValue::Float(v.sqrt())),
        Function::DistinctCount => AggValue::Int(b.distinct.as_ref().map_or(0, |d| d.estimate())),
        // `last` holds the newest numeric value's time; an event stamped after the read time
        // (a clock ahead of ours) counts as just now
        Function::TimeSinceLast if b.n == 0 => AggValue::Null,
        Function::TimeSinceLast => AggValue::Float(at_ms.saturating_sub(b.last.0).max(0) as f64 / 1000.0),
        Function::Percentile(q) => {
            let sketch = b.kept.as_ref().and_then(|k| k.quantiles.as_ref());
            sketch.and_then(|s| s.quantile(f64::from(q) / 100.0)).map_or(AggValue::Null, AggValue::Float)
        }
        Function::LastK(k) => {
            let newest = b.kept.as_ref().map_or(&[][..], |kept| &kept.newest[..]);
            AggValue::List(newest.iter().rev().take(usize::from(k)).map(|e| e.1.clone()).collect())
        }
        Function::FirstK(k) => {
            let oldest = b.kept.as_ref().map_or(&[][..], |kept| &kept.oldest[..]);
            AggValue::List(oldest.iter().take(usize::from(k)).map(|e| e.1.clone()).collect())
        }
        Function::TopK(k) => {
            let frequent = b.kept.as_ref().and_then(|kept| kept.frequent.as_ref());
            AggValue::List(frequent.map_or_else(Vec::new, |f| f.top(usize::from(k))))
        }
    }
}
