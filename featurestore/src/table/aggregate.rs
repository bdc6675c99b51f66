//! Retracting aggregations over a CDC table: per group (the entity key column of the rows), the
//! moments of each aggregated column over the rows currently in the group.
//!
//! An insert adds the new row, an update retracts the old row and adds the new one (from one
//! group to another when the grouping column changed), a delete retracts. Count is exact; sum,
//! mean and variance are updated with Welford's add/remove formulas, exact up to floating-point
//! rounding, and reset to exactly zero when a group empties. Functions whose value cannot be
//! taken back (min, max, first, last, distinct_count) are refused when the definition compiles.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::{Function, TablePlan};
use crate::engine::Position;
use crate::lookup::{FeatureValue, Status};

/// Count and moments of one column over a group's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Rows whose value is not null.
    pub count: i64,
    /// Rows whose value is a number.
    pub n: i64,
    /// Sum of the numbers.
    pub sum: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    fn add(&mut self, value: &Value) {
        self.count += 1;
        let Some(x) = number(value) else { return };
        if self.n > 0 {
            let old_mean = self.sum / self.n as f64;
            let new_mean = (self.sum + x) / (self.n + 1) as f64;
            self.m2 += (x - old_mean) * (x - new_mean);
        }
        self.n += 1;
        self.sum += x;
    }

    fn retract(&mut self, value: &Value) {
        self.count -= 1;
        let Some(x) = number(value) else { return };
        self.n -= 1;
        if self.n <= 0 {
            *self = Moments { count: self.count, ..Moments::default() };
            return;
        }
        let old_mean = self.sum / (self.n + 1) as f64;
        self.sum -= x;
        let new_mean = self.sum / self.n as f64;
        self.m2 = if self.n == 1 { 0.0 } else { (self.m2 - (x - old_mean) * (x - new_mean)).max(0.0) };
    }

    fn value(&self, function: Function) -> Value {
        let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        match function {
            Function::Count => Value::from(self.count),
            Function::Sum => float(self.sum),
            Function::Mean if self.n > 0 => float(self.sum / self.n as f64),
            Function::Variance if self.n > 1 => float(self.m2 / (self.n - 1) as f64),
            Function::Stddev if self.n > 1 => float((self.m2 / (self.n - 1) as f64).sqrt()),
            _ => Value::Null,
        }
    }
}

/// A number, or a string holding one (Debezium's `decimal.handling.mode=string`).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The stored state of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Format version.
    pub version: u8,
    /// [`fingerprint`] of the plan that wrote it.
    pub plan: u64,
    /// One per [`TablePlan::columns`].
    pub moments: Vec<Moments>,
    /// Commit time of the newest change applied, µs.
    pub newest_us: i64,
    /// Highest applied offset per source partition: replayed changes are skipped.
    pub offsets: Vec<(i32, i64)>,
}

const FORMAT_VERSION: u8 = 1;

/// What the stored states of a plan depend on (grouping, filter, columns): state written
/// under another definition is not reused.
pub fn fingerprint(plan: &TablePlan) -> u64 {
    use std::hash::Hasher;
    let mut h = wyhash::WyHash::with_seed(0);
    h.write(format!("{}|{:?}|{:?}", plan.key_column, plan.filter, plan.columns).as_bytes());
    for (i, condition) in plan.conditions.iter().enumerate() {
        if let Some(c) = condition {
            h.write(format!("|{i} where {}", c.sql()).as_bytes());
        }
    }
    if let Some(condition) = &plan.condition {
        // a condition changes which rows count: state kept under another one is not reused
        h.write(format!("|where {}", condition.sql()).as_bytes());
    }
    h.finish()
}

impl GroupState {
    /// An empty group.
    pub fn new(plan: &TablePlan) -> GroupState {
        GroupState {
            version: FORMAT_VERSION,
            plan: fingerprint(plan),
            moments: vec![Moments::default(); plan.columns.len()],
            newest_us: i64::MIN,
            offsets: Vec::new(),
        }
    }

    /// Decodes a stored group; `None` if another format or definition wrote it.
    pub fn decode(plan: &TablePlan, bytes: &[u8]) -> Option<GroupState> {
        let state: GroupState = postcard::from_bytes(bytes).ok()?;
        let fits = state.version == FORMAT_VERSION
            && state.plan == fingerprint(plan)
            && state.moments.len() == plan.columns.len();
        fits.then_some(state)
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("plain data encodes")
    }

    /// Retracts `old` and adds `new` (either may be absent) for a change at `position`
    /// committed at `commit_us`; `false` if the group already holds that change.
    pub fn change(
        &mut self,
        plan: &TablePlan,
        old: Option<&Map<String, Value>>,
        new: Option<&Map<String, Value>>,
        position: Option<Position>,
        commit_us: i64,
    ) -> bool {
        if let Some(pos) = position {
            match self.offsets.iter_mut().find(|(p, _)| *p == pos.partition) {
                Some((_, offset)) if pos.offset <= *offset => return false,
                Some((_, offset)) => *offset = pos.offset,
                None => self.offsets.push((pos.partition, pos.offset)),
            }
        }
        for ((column, condition), moments) in plan.columns.iter().zip(&plan.conditions).zip(&mut self.moments) {
            // a row's value counts while the column's condition holds on it; the condition is
            // judged again on the stored row, so a row leaving the filter retracts exactly what
            // it added
            let counted = |row: &&Map<String, Value>| condition.as_ref().is_none_or(|c| c.holds(row));
            if let Some(v) = old.filter(counted).and_then(|r| r.get(column)).filter(|v| !v.is_null()) {
                moments.retract(v);
            }
            if let Some(v) = new.filter(counted).and_then(|r| r.get(column)).filter(|v| !v.is_null()) {
                moments.add(v);
            }
        }
        self.newest_us = self.newest_us.max(commit_us);
        true
    }
}

/// The group a row counts in, if it matches the plan's filter and has a grouping value.
pub fn group_of(plan: &TablePlan, row: &Map<String, Value>) -> Option<String> {
    if !plan.matches(row) {
        return None;
    }
    match row.get(&plan.key_column)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Every feature of a table plan for one group: `NOT_FOUND` when no row ever counted in it.
pub fn group_values(plan: &TablePlan, state: Option<&GroupState>) -> Vec<FeatureValue> {
    plan.aggregations
        .iter()
        .map(|(name, column, function)| {
            let Some(state) = state else {
                return FeatureValue {
                    name: name.clone(),
                    value: Value::Null,
                    status: Status::NotFound,
                    event_time_ms: None,
                };
            };
            let value = state.moments[*column].value(*function);
            let status = if value.is_null() { Status::NullValue } else { Status::Present };
            FeatureValue { name: name.clone(), value, status, event_time_ms: Some(state.newest_us.div_euclid(1000)) }
        })
        .collect()
}
