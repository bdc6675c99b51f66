//! Feature-set definitions: the `feature_sets` section of `fathom.yaml`, and the compiled
//! [`FeatureSetPlan`] the engine runs.
//!
//! The YAML shape stays close to what users write (strings for durations and function names) so
//! validation can report *every* bad element with its path; [`FeatureSetConfig::compile`] turns a
//! checked definition into a plan with bucket specs shared between functions and windows.

use std::collections::BTreeMap;

use std::sync::Arc;

use arrow_array::{new_null_array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use fathom_transform::{RowExpr, RowFilter};
use serde::Deserialize;

use crate::duration::Span;
use crate::engine::AggValue;

/// One feature set: aggregations and latest values of one source, per entity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSetConfig {
    /// Entity (a name under `entities`) whose key groups the events.
    pub entity: String,
    /// Source (a name under `sources`) whose events feed this feature set.
    pub source: String,
    /// Values whose newest event is older than this are returned as `OUTSIDE_MAX_AGE`; also the
    /// Redis key TTL, refreshed on write. Default: no limit.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Extra event-time slack, beyond the longest window, before an event counts as late.
    /// Default: `0s`.
    #[serde(default)]
    pub allowed_lateness: Option<String>,
    /// Latest-value features: the newest (by event time) value of each listed field.
    #[serde(default)]
    pub features: Vec<String>,
    /// Window aggregations, each named `{column}_{function}_{window}`. Over a CDC table:
    /// aggregations of its current rows, without windows, named `{column}_{function}`.
    #[serde(default)]
    pub aggregations: Vec<AggregationConfig>,
    /// Columns of CDC tables added to each event, as of the event's time, before aggregating
    /// (the entity key may be one of them: `entity` keyed by `country` aggregates per country).
    #[serde(default)]
    pub join: Vec<JoinConfig>,
    /// Over a CDC table only: rows count only while every listed column equals its value, e.g.
    /// `{status: active}`. A row that stops matching is retracted.
    #[serde(default)]
    pub filter: BTreeMap<String, serde_json::Value>,
    /// Over an event stream: a SQL condition over the source's declared and selected columns;
    /// events on which it is not true (false or `NULL`) do not reach this feature set.
    #[serde(default, rename = "where")]
    pub where_: Option<String>,
    /// Features computed at read time by SQL expressions over this set's aggregations, e.g.
    /// `amount_mean_1h: "amount_sum_1h / amount_count_1h"`; returned after the others.
    #[serde(default)]
    pub derived: BTreeMap<String, String>,
}

/// A stream–table join: columns of a CDC table's row, as of the event's time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// The CDC source (a `format: debezium` source).
    pub table: String,
    /// Event field holding the table's primary key.
    pub on: String,
    /// Table columns added to the event under their own names (replacing an event field of
    /// the same name).
    pub columns: Vec<String>,
    /// How far back, before a row's newest change, its older versions are kept for events
    /// that arrive late. Default: the feature set's longest window plus allowed lateness.
    #[serde(default)]
    pub history: Option<String>,
}

/// Aggregations of one column over one or more windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// Event field aggregated.
    pub column: String,
    /// Names the features `{name}_{function}_{window}` instead of `{column}_…`; required with
    /// `where`.
    #[serde(default)]
    pub name: Option<String>,
    /// A SQL condition over the source's declared and selected columns: only events on which
    /// it is true count in these aggregations (`count` of `amount` where `status = 'declined'`).
    #[serde(default, rename = "where")]
    pub where_: Option<String>,
    /// Any of count, sum, mean, min, max, first, last, variance, stddev, distinct_count.
    pub functions: Vec<String>,
    /// Window lengths, e.g. `[10m, 1h, 24h]` (none over a CDC table).
    #[serde(default)]
    pub windows: Vec<String>,
    /// `sliding` (default) or `tumbling` (aligned to the epoch).
    #[serde(default)]
    pub kind: WindowKind,
    /// Sliding windows only: bucket width; must divide every window. Default: the shortest
    /// window divided by 10.
    #[serde(default)]
    pub period: Option<String>,
}

/// How a window moves with the read time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// `(t − window, t]` in buckets of `period`.
    #[default]
    Sliding,
    /// The epoch-aligned window containing `t`.
    Tumbling,
}

/// An aggregation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// Number of non-null values.
    Count,
    /// Sum of values.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Value with the earliest event time.
    First,
    /// Value with the latest event time.
    Last,
    /// Sample variance (n − 1); null below two values.
    Variance,
    /// Sample standard deviation; null below two values.
    Stddev,
    /// Approximate number of distinct values (HyperLogLog, ~0.8% error).
    DistinctCount,
    /// Seconds from the newest value in the window to the read time: computed at read time, so
    /// it grows between events; null when the window has no value.
    TimeSinceLast,
    /// `p<q>`: the q-th percentile (1–99) of the numeric values, from a DDSketch
    /// ([`crate::engine::QUANTILE_ACCURACY`] relative error; Masson et al., VLDB 2019).
    Percentile(u8),
    /// `last_<k>`: the k values (any type) with the latest event times, newest first.
    LastK(u8),
    /// `first_<k>`: the k values (any type) with the earliest event times, oldest first.
    FirstK(u8),
    /// `top_<k>`: the k most frequent values (any type), most frequent first, ties by value;
    /// exact up to [`crate::engine::FREQUENT_EXACT`] distinct values per bucket, then the
    /// Misra–Gries frequent-items sketch of Apache DataSketches.
    TopK(u8),
}

impl Function {
    /// Every function, in the order the docs list them.
    pub const ALL: [Function; 11] = [
        Function::Count,
        Function::Sum,
        Function::Mean,
        Function::Min,
        Function::Max,
        Function::First,
        Function::Last,
        Function::Variance,
        Function::Stddev,
        Function::DistinctCount,
        Function::TimeSinceLast,
    ];

    /// The parameterized functions, as the docs and error messages list them.
    pub const PARAMETERIZED: &'static str = "p<1-99> (p50, p99), last_<k>, first_<k>, top_<k> (k 1-100)";

    /// Largest k of last_k, first_k and top_k.
    pub const MAX_K: u8 = 100;

    /// The name used in configs and feature names.
    pub fn name(self) -> String {
        match self {
            Function::Percentile(q) => format!("p{q}"),
            Function::LastK(k) => format!("last_{k}"),
            Function::FirstK(k) => format!("first_{k}"),
            Function::TopK(k) => format!("top_{k}"),
            other => other.plain_name().to_string(),
        }
    }

    fn plain_name(self) -> &'static str {
        match self {
            Function::Percentile(_) | Function::LastK(_) | Function::FirstK(_) | Function::TopK(_) => "",
            Function::Count => "count",
            Function::Sum => "sum",
            Function::Mean => "mean",
            Function::Min => "min",
            Function::Max => "max",
            Function::First => "first",
            Function::Last => "last",
            Function::Variance => "variance",
            Function::Stddev => "stddev",
            Function::DistinctCount => "distinct_count",
            Function::TimeSinceLast => "time_since_last",
        }
    }

    /// Parses a configured name.
    pub fn parse(name: &str) -> Option<Function> {
        if let Some(f) = Function::ALL.into_iter().find(|f| f.plain_name() == name) {
            return Some(f);
        }
        // canonical numbers only (`p50`, not `p050`), so a feature has one name
        let number = |digits: &str, max: u8| {
            digits.parse::<u8>().ok().filter(|n| (1..=max).contains(n) && n.to_string() == digits)
        };
        if let Some(q) = name.strip_prefix('p') {
            return number(q, 99).map(Function::Percentile);
        }
        let (kind, k) = name.rsplit_once('_')?;
        let k = number(k, Function::MAX_K)?;
        match kind {
            "last" => Some(Function::LastK(k)),
            "first" => Some(Function::FirstK(k)),
            "top" => Some(Function::TopK(k)),
            _ => None,
        }
    }

    /// Every name a config may use, for error messages.
    pub fn known() -> String {
        let plain: Vec<_> = Function::ALL.iter().map(|f| f.plain_name()).collect();
        format!("{}, {}", plain.join(", "), Function::PARAMETERIZED)
    }

    /// Whether the function needs numeric input (count, distinct_count, last_k, first_k and
    /// top_k take any value).
    pub fn is_numeric(self) -> bool {
        !matches!(
            self,
            Function::Count | Function::DistinctCount | Function::LastK(_) | Function::FirstK(_) | Function::TopK(_)
        )
    }

    /// Whether the function counts (its values are integers).
    pub fn is_count(self) -> bool {
        matches!(self, Function::Count | Function::DistinctCount)
    }

    /// Whether the function's value is a list (last_k, first_k, top_k): JSON arrays online,
    /// JSON text in `fathom dataset` output.
    pub fn is_list(self) -> bool {
        matches!(self, Function::LastK(_) | Function::FirstK(_) | Function::TopK(_))
    }

    /// The Arrow type of the function's values: counts `Int64`, lists `Utf8` (JSON text), the
    /// rest `Float64`.
    pub fn data_type(self) -> DataType {
        if self.is_count() {
            DataType::Int64
        } else if self.is_list() {
            DataType::Utf8
        } else {
            DataType::Float64
        }
    }

    /// Whether a row's contribution can be taken back exactly when it changes or is deleted.
    pub fn is_retractable(self) -> bool {
        matches!(self, Function::Count | Function::Sum | Function::Mean | Function::Variance | Function::Stddev)
    }
}

/// One problem found while checking a definition, with the path of the offending element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path into the project file, e.g. `feature_sets.cards.aggregations[0].windows[2]`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// State kept per (column, period): one ring of buckets shared by every function and window
/// that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// Index into [`FeatureSetPlan::columns`].
    pub column: usize,
    /// Bucket width in milliseconds.
    pub period_ms: i64,
    /// Buckets kept: the longest window of this spec, in periods.
    pub horizon: i64,
    /// Whether buckets keep a distinct-count sketch.
    pub distinct: bool,
    /// What buckets keep beyond moments for percentiles, last_k, first_k and top_k.
    pub keep: Keep,
}

/// Per-bucket state some functions need, all off (the default) for the moments-only functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// A quantile sketch (percentiles).
    pub quantiles: bool,
    /// The values with the latest event times, this many (largest k of last_k).
    pub newest: u8,
    /// The values with the earliest event times, this many (largest k of first_k).
    pub oldest: u8,
    /// Value frequencies (top_k).
    pub frequent: bool,
}

impl Keep {
    /// What `functions` need.
    pub fn of(functions: &[Function]) -> Keep {
        let mut keep = Keep::default();
        for f in functions {
            match *f {
                Function::Percentile(_) => keep.quantiles = true,
                Function::LastK(k) => keep.newest = keep.newest.max(k),
                Function::FirstK(k) => keep.oldest = keep.oldest.max(k),
                Function::TopK(_) => keep.frequent = true,
                _ => {}
            }
        }
        keep
    }

    /// Whether anything beyond moments is kept.
    pub fn any(self) -> bool {
        self != Keep::default()
    }

    fn widen(&mut self, other: Keep) {
        self.quantiles |= other.quantiles;
        self.newest = self.newest.max(other.newest);
        self.oldest = self.oldest.max(other.oldest);
        self.frequent |= other.frequent;
    }
}

/// One aggregated feature: which spec it reads, with which function, over how many buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggFeature {
    /// `{column}_{function}_{window}`.
    pub name: String,
    /// Index into [`FeatureSetPlan::specs`].
    pub spec: usize,
    /// The function.
    pub function: Function,
    /// Window length in buckets.
    pub buckets: i64,
}

/// A checked feature set, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSetPlan {
    /// Feature-set name.
    pub name: String,
    /// Source name.
    pub source: String,
    /// Event field holding the entity key.
    pub key_column: String,
    /// TTL in milliseconds, if any.
    pub ttl_ms: Option<i64>,
    /// An event this far (ms) behind the entity's newest event is late.
    pub late_after_ms: i64,
    /// Aggregated columns.
    pub columns: Vec<String>,
    /// Bucket rings.
    pub specs: Vec<BucketSpec>,
    /// Aggregated features, in config order.
    pub aggregations: Vec<AggFeature>,
    /// Latest-value features (field names).
    pub latest: Vec<String>,
    /// Table columns added to each event before aggregating.
    pub joins: Vec<JoinPlan>,
    /// The feature set's `where`: (the event field its result is written to, the SQL). An
    /// event counts only where that field is `true`.
    pub condition: Option<(String, String)>,
    /// Filtered aggregations: their column in [`FeatureSetPlan::columns`] is a field holding
    /// the aggregated column's value where the condition holds, else `NULL`.
    pub filtered: Vec<FilteredColumn>,
    /// Features computed at read time from the aggregations.
    pub derived: Derived,
    /// [`crate::online::plan_fingerprint`] of the compiled plan: every encode and decode of a
    /// state checks it, and computing it formats the plan.
    pub(crate) fingerprint: u64,
}

/// A feature set's derived features: SQL expressions over its aggregated features' values as of
/// the read time, evaluated by [`fathom_transform`] (so `x / 0` and non-finite results are
/// `NULL`).
#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// The aggregated features they read, as columns: counts `Int64`, the rest `Float64`.
    inputs: Option<SchemaRef>,
    /// Index in the plan's aggregations of each column of `inputs`.
    read: Vec<usize>,
    features: Vec<(String, RowExpr)>,
}

impl PartialEq for Derived {
    fn eq(&self, other: &Derived) -> bool {
        let sqls = |d: &Derived| d.features.iter().map(|(n, e)| (n.clone(), e.sql().to_string())).collect::<Vec<_>>();
        sqls(self) == sqls(other)
    }
}

impl Eq for Derived {}

impl Derived {
    /// The derived features' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|(n, _)| n.as_str())
    }

    /// The type of a derived feature's values.
    pub fn data_type(&self, name: &str) -> Option<&DataType> {
        self.features.iter().find(|(n, _)| n == name).map(|(_, e)| e.data_type())
    }

    /// Each derived feature's value from the aggregated values (in plan order); `NULL` where
    /// the expression fails.
    pub fn evaluate(&self, aggregated: &[AggValue]) -> Vec<serde_json::Value> {
        let Some(inputs) = &self.inputs else { return Vec::new() };
        let columns: Vec<ArrayRef> = self
            .read
            .iter()
            .map(|&i| &aggregated[i])
            .zip(inputs.fields())
            .map(|(value, field)| -> ArrayRef {
                match (value, field.data_type()) {
                    (AggValue::Int(n), DataType::Int64) => Arc::new(Int64Array::from(vec![*n as i64])),
                    (AggValue::Float(x), DataType::Float64) => Arc::new(Float64Array::from(vec![*x])),
                    (AggValue::Int(n), _) => Arc::new(Float64Array::from(vec![*n as f64])),
                    (list @ AggValue::List(_), DataType::Utf8) => Arc::new(StringArray::from(vec![list.list_text()])),
                    (_, t) => new_null_array(t, 1),
                }
            })
            .collect();
        let one_row = arrow_array::RecordBatchOptions::new().with_row_count(Some(1));
        let Ok(batch) = RecordBatch::try_new_with_options(inputs.clone(), columns, &one_row) else {
            return vec![serde_json::Value::Null; self.features.len()];
        };
        self.features.iter().map(|(_, e)| fathom_transform::json(&e.evaluate(&batch).values, 0)).collect()
    }
}

/// An aggregation's `where`, as a field the row transform fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredColumn {
    /// The field written (in [`FeatureSetPlan::columns`]), `__where.<feature set>.<i>`.
    pub field: String,
    /// The aggregated column.
    pub column: String,
    /// The condition, as written.
    pub sql: String,
    /// Where it is configured, e.g. `feature_sets.cards.aggregations[1].where`.
    pub path: String,
}

/// Prefix of the fields the row transform adds for conditions: never stored offline.
pub const CONDITION_PREFIX: &str = "__where.";

/// The field holding feature set `set`'s `where`.
pub fn condition_field(set: &str) -> String {
    format!("{CONDITION_PREFIX}{set}")
}

/// The field holding aggregation `i` of feature set `set` where its `where` holds.
pub fn filtered_field(set: &str, i: usize) -> String {
    format!("{CONDITION_PREFIX}{set}.{i}")
}

/// A checked [`JoinConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    /// The CDC source's name.
    pub table: String,
    /// Event field holding the table key.
    pub on: String,
    /// Columns added.
    pub columns: Vec<String>,
    /// Older row versions kept this long before the newest change, ms.
    pub history_ms: i64,
}

/// A checked aggregation over a CDC table's current rows: updates retract the old row and add
/// the new one, deletes retract.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePlan {
    /// Feature-set name.
    pub name: String,
    /// The CDC source's name.
    pub source: String,
    /// Row column grouping the rows (the entity's key).
    pub key_column: String,
    /// Rows count only while each column equals its value.
    pub filter: Vec<(String, serde_json::Value)>,
    /// The feature set's `where` over the table's declared columns: rows count only while it
    /// is true (set by the project, which knows the columns).
    pub condition: Option<RowFilter>,
    /// Aggregated columns (a column appears once per aggregation `where` over it).
    pub columns: Vec<String>,
    /// Per column: the aggregation's `where`; a row's value counts in it only while true.
    pub conditions: Vec<Option<RowFilter>>,
    /// `{column or name}_{function}` features: name, index into `columns`, function.
    pub aggregations: Vec<(String, usize, Function)>,
}

impl TablePlan {
    /// Whether a row counts (matches every filter and the `where`). Deterministic, so the row
    /// stored before a change is judged again exactly as when it was added.
    pub fn matches(&self, row: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.filter.iter().all(|(column, wanted)| match (row.get(column), wanted) {
            (Some(a), b) if a.is_number() && b.is_number() => a.as_f64() == b.as_f64(),
            (Some(a), b) => a == b,
            (None, b) => b.is_null(),
        }) && self.condition.as_ref().is_none_or(|c| c.holds(row))
    }
}

impl FeatureSetPlan {
    /// The fingerprint of what shapes its states ([`crate::online::plan_fingerprint`]),
    /// computed once when the plan was compiled.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Columns that must hold numbers (or null) in every event (a filtered aggregation's
    /// column, not the field the transform writes).
    pub fn numeric_columns(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .aggregations
            .iter()
            .filter(|a| a.function.is_numeric())
            .map(|a| self.source_column(&self.columns[self.specs[a.spec].column]).to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The column a field of [`FeatureSetPlan::columns`] reads: itself, or a filtered
    /// aggregation's column.
    pub fn source_column<'a>(&'a self, field: &'a str) -> &'a str {
        self.filtered.iter().find(|f| f.field == field).map_or(field, |f| f.column.as_str())
    }

    /// Whether the event counts in this feature set (its `where`, if any, is true).
    pub fn admits(&self, fields: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.condition.as_ref().is_none_or(|(field, _)| fields.get(field) == Some(&serde_json::Value::Bool(true)))
    }

    /// Whether a column comes from a joined table rather than the event itself.
    pub fn is_joined(&self, column: &str) -> bool {
        self.joins.iter().any(|j| j.columns.iter().any(|c| c == column))
    }

    /// Every feature name this set serves: aggregations first, then latest values, then derived
    /// features.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.aggregations
            .iter()
            .map(|a| a.name.as_str())
            .chain(self.latest.iter().map(String::as_str))
            .chain(self.derived.names())
    }
}

fn span(text: &str, path: String, problems: &mut Vec<Problem>) -> Option<Span> {
    Span::parse(text).map_err(|e| problems.push(Problem { path, message: e.to_string() })).ok()
}

impl FeatureSetConfig {
    /// Checks the definition and builds its plan; every problem is pushed with its path.
    /// `key_column` is the entity's key field (resolved by the caller).
    pub fn compile(
        &self,
        name: &str,
        key_column: &str,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<FeatureSetPlan> {
        let before = problems.len();
        let ttl_ms = self.ttl.as_deref().and_then(|t| span(t, format!("{path}.ttl"), problems)).map(Span::millis);
        let lateness = self
            .allowed_lateness
            .as_deref()
            .and_then(|t| span(t, format!("{path}.allowed_lateness"), problems))
            .map_or(0, Span::millis);
        let mut plan = FeatureSetPlan {
            name: name.to_string(),
            source: self.source.clone(),
            key_column: key_column.to_string(),
            ttl_ms,
            late_after_ms: 0,
            columns: Vec::new(),
            specs: Vec::new(),
            aggregations: Vec::new(),
            latest: self.features.clone(),
            joins: Vec::new(),
            condition: self.where_.as_ref().map(|sql| (condition_field(name), sql.clone())),
            filtered: Vec::new(),
            derived: Derived::default(),
            fingerprint: 0,
        };
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (i, feature) in self.features.iter().enumerate() {
            let p = format!("{path}.features[{i}]");
            if feature.is_empty() {
                problems.push(Problem { path: p.clone(), message: "feature name is empty".into() });
            }
            if let Some(first) = names.insert(feature.clone(), p.clone()) {
                problems.push(Problem { path: p, message: format!("duplicate feature {feature:?} (also at {first})") });
            }
        }
        for (i, agg) in self.aggregations.iter().enumerate() {
            agg.compile(&mut plan, &mut names, i, &format!("{path}.aggregations[{i}]"), problems);
        }
        plan.derived = self.derive(&plan, &mut names, path, problems);
        let longest = plan.specs.iter().map(|s| s.horizon * s.period_ms).max().unwrap_or(0);
        plan.late_after_ms = longest + lateness;
        if self.features.is_empty() && self.aggregations.is_empty() {
            problems.push(Problem {
                path: path.to_string(),
                message: "defines no features (add `features` or `aggregations`)".into(),
            });
        }
        if !self.filter.is_empty() {
            problems.push(Problem {
                path: format!("{path}.filter"),
                message: "`filter` applies to aggregations over a CDC table; over an event stream write a SQL condition under `where`, e.g. `where: \"status = 'active'\"`".into(),
            });
        }
        for (i, join) in self.join.iter().enumerate() {
            let p = format!("{path}.join[{i}]");
            if join.columns.is_empty() {
                problems
                    .push(Problem { path: format!("{p}.columns"), message: "list at least one table column".into() });
            }
            if join.on.is_empty() {
                problems.push(Problem {
                    path: format!("{p}.on"),
                    message: "must name the event field holding the table key".into(),
                });
            }
            let history_ms = match &join.history {
                Some(h) => span(h, format!("{p}.history"), problems).map_or(0, Span::millis),
                None => plan.late_after_ms,
            };
            plan.joins.push(JoinPlan {
                table: join.table.clone(),
                on: join.on.clone(),
                columns: join.columns.clone(),
                history_ms,
            });
        }
        plan.fingerprint = crate::online::plan_fingerprint(&plan);
        (problems.len() == before).then_some(plan)
    }

    /// Compiles `derived` over the plan's aggregations.
    fn derive(
        &self,
        plan: &FeatureSetPlan,
        names: &mut BTreeMap<String, String>,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Derived {
        if self.derived.is_empty() {
            return Derived::default();
        }
        let fields: Vec<Field> =
            plan.aggregations.iter().map(|a| Field::new(&a.name, a.function.data_type(), true)).collect();
        let inputs = Arc::new(Schema::new(fields));
        let mut features = Vec::new();
        for (name, sql) in &self.derived {
            let here = format!("{path}.derived.{name}");
            if let Some(first) = names.insert(name.clone(), here.clone()) {
                problems.push(Problem { path: here, message: format!("duplicate feature {name:?} (also at {first})") });
                continue;
            }
            match RowExpr::compile(sql, &inputs) {
                Ok(e) => features.push((name.clone(), e.column_indices())),
                Err(e) => {
                    let names: Vec<&str> = plan.aggregations.iter().map(|a| a.name.as_str()).collect();
                    let e =
                        e.hinted(|_| format!("a derived feature reads this set's aggregations: {}", names.join(", ")));
                    problems.push(Problem { path: here, message: e.describe() });
                }
            }
        }
        // recompiled over the aggregations they read only: a read builds those columns alone
        let mut read: Vec<usize> = features.iter().flat_map(|(_, used)| used.iter().copied()).collect();
        read.sort_unstable();
        read.dedup();
        let schema = Arc::new(inputs.project(&read).expect("indices of its own fields"));
        let features = features
            .into_iter()
            .map(|(name, _)| {
                let e = RowExpr::compile(&self.derived[&name], &schema).expect("compiled over a superset");
                (name, e)
            })
            .collect();
        Derived { inputs: Some(schema), read, features }
    }

    /// Checks a feature set over a CDC table and builds its plan: window-less, retractable
    /// aggregations of the current rows grouped by `key_column`.
    ///
    /// `compile_where(path, sql)` compiles an aggregation's `where` over the table's columns
    /// (reporting its own problems).
    pub fn compile_table(
        &self,
        name: &str,
        key_column: &str,
        path: &str,
        problems: &mut Vec<Problem>,
        compile_where: &mut dyn FnMut(&str, &str) -> Option<RowFilter>,
    ) -> Option<TablePlan> {
        let before = problems.len();
        let mut refuse = |field: &str, message: &str| {
            problems.push(Problem { path: format!("{path}.{field}"), message: message.to_string() })
        };
        if self.ttl.is_some() {
            refuse("ttl", "aggregations over a CDC table hold its current rows and do not expire; remove `ttl`");
        }
        if self.allowed_lateness.is_some() {
            refuse("allowed_lateness", "changes to a CDC table are never late; remove `allowed_lateness`");
        }
        if !self.features.is_empty() {
            refuse("features", "a CDC table's columns are looked up at /v1/features/<table>/<key> or joined into a stream; remove `features`");
        }
        if !self.join.is_empty() {
            refuse("join", "joins enrich event streams; a feature set over a CDC table cannot join");
        }
        if self.aggregations.is_empty() {
            refuse("aggregations", "list at least one aggregation of the table's rows");
        }
        let mut plan = TablePlan {
            name: name.to_string(),
            source: self.source.clone(),
            key_column: key_column.to_string(),
            filter: self.filter.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            condition: None,
            columns: Vec::new(),
            conditions: Vec::new(),
            aggregations: Vec::new(),
        };
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (i, agg) in self.aggregations.iter().enumerate() {
            let p = format!("{path}.aggregations[{i}]");
            if !agg.windows.is_empty() || agg.period.is_some() || agg.kind != WindowKind::Sliding {
                problems.push(Problem {
                    path: format!("{p}.windows"),
                    message: "aggregations over a CDC table cover its current rows, not a time window; remove `windows`, `period` and `kind`".into(),
                });
            }
            if agg.where_.is_some() && agg.name.is_none() {
                problems.push(Problem {
                    path: format!("{p}.name"),
                    message: format!("a filtered aggregation needs a `name` for its features (`{{name}}_{{function}}`, e.g. `declined_{}`)", agg.column),
                });
            }
            let condition = agg.where_.as_ref().and_then(|sql| compile_where(&format!("{p}.where"), sql));
            // a filtered aggregation has its own moments; unfiltered ones of a column share theirs
            let shared = plan.columns.iter().zip(&plan.conditions).position(|(c, w)| *c == agg.column && w.is_none());
            let column = match shared.filter(|_| agg.where_.is_none()) {
                Some(c) => c,
                None => {
                    plan.columns.push(agg.column.clone());
                    plan.conditions.push(condition);
                    plan.columns.len() - 1
                }
            };
            let base = agg.name.as_deref().unwrap_or(&agg.column);
            if agg.functions.is_empty() {
                problems.push(Problem { path: format!("{p}.functions"), message: "list at least one function".into() });
            }
            for (j, f) in agg.functions.iter().enumerate() {
                let here = format!("{p}.functions[{j}]");
                match Function::parse(f) {
                    Some(function) if function.is_retractable() => {
                        let feature = format!("{base}_{}", function.name());
                        if let Some(first) = names.insert(feature.clone(), here.clone()) {
                            problems.push(Problem { path: here, message: format!("duplicate feature {feature:?} (also at {first})") });
                        } else {
                            plan.aggregations.push((feature, column, function));
                        }
                    }
                    Some(_) => problems.push(Problem {
                        path: here,
                        message: format!("{f} cannot be retracted when a row changes or is deleted; over a CDC table use count, sum, mean, variance or stddev"),
                    }),
                    None => problems.push(Problem { path: here, message: format!("unknown function {f:?} (use count, sum, mean, variance or stddev)") }),
                }
            }
        }
        (problems.len() == before).then_some(plan)
    }
}

impl AggregationConfig {
    fn compile(
        &self,
        plan: &mut FeatureSetPlan,
        names: &mut BTreeMap<String, String>,
        index: usize,
        path: &str,
        problems: &mut Vec<Problem>,
    ) {
        let column = match &self.where_ {
            Some(sql) => {
                if self.name.is_none() {
                    problems.push(Problem {
                        path: format!("{path}.name"),
                        message: format!("a filtered aggregation needs a `name` for its features (`{{name}}_{{function}}_{{window}}`, e.g. `declined_{}`)", self.column),
                    });
                }
                let field = filtered_field(&plan.name, index);
                plan.filtered.push(FilteredColumn {
                    field: field.clone(),
                    column: self.column.clone(),
                    sql: sql.clone(),
                    path: format!("{path}.where"),
                });
                field
            }
            None => self.column.clone(),
        };
        let base = self.name.as_deref().unwrap_or(&self.column);
        let functions: Vec<Function> = self
            .functions
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                Function::parse(f).or_else(|| {
                    problems.push(Problem {
                        path: format!("{path}.functions[{i}]"),
                        message: format!("unknown function {f:?} (use one of {})", Function::known()),
                    });
                    None
                })
            })
            .collect();
        if self.functions.is_empty() {
            problems.push(Problem { path: format!("{path}.functions"), message: "list at least one function".into() });
        }
        if self.windows.is_empty() {
            problems.push(Problem { path: format!("{path}.windows"), message: "list at least one window".into() });
        }
        let windows: Vec<(usize, Span)> = self
            .windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| span(w, format!("{path}.windows[{i}]"), problems).map(|s| (i, s)))
            .collect();
        if windows.len() != self.windows.len() {
            return;
        }
        let period = match (self.kind, &self.period) {
            (WindowKind::Tumbling, Some(_)) => {
                problems.push(Problem {
                    path: format!("{path}.period"),
                    message: "tumbling windows have no period (each window is its own bucket); remove it or use kind: sliding".into(),
                });
                return;
            }
            (WindowKind::Tumbling, None) => None,
            (WindowKind::Sliding, Some(p)) => match span(p, format!("{path}.period"), problems) {
                Some(p) => Some(p),
                None => return,
            },
            (WindowKind::Sliding, None) => {
                let shortest = windows.iter().map(|(_, w)| w.millis()).min().unwrap_or(0);
                if shortest % 10 != 0 {
                    problems.push(Problem {
                        path: format!("{path}.period"),
                        message: "cannot default the period to the shortest window / 10; set `period`".into(),
                    });
                    return;
                }
                Some(Span(shortest / 10))
            }
        };
        let column = match plan.columns.iter().position(|c| *c == column) {
            Some(i) => i,
            None => {
                plan.columns.push(column);
                plan.columns.len() - 1
            }
        };
        let distinct = functions.contains(&Function::DistinctCount);
        for (i, window) in &windows {
            let period_ms = period.map_or(window.millis(), Span::millis);
            if window.millis() % period_ms != 0 {
                problems.push(Problem {
                    path: format!("{path}.windows[{i}]"),
                    message: format!("window {window} is not a multiple of the period {}", Span(period_ms)),
                });
                continue;
            }
            let buckets = window.millis() / period_ms;
            let spec = plan.spec_for(column, period_ms, buckets, distinct, Keep::of(&functions));
            for f in &functions {
                let name = format!("{base}_{}_{}", f.name(), self.windows[*i].trim());
                let here = format!("{path}.windows[{i}]");
                if let Some(first) = names.insert(name.clone(), here.clone()) {
                    problems
                        .push(Problem { path: here, message: format!("duplicate feature {name:?} (also at {first})") });
                    continue;
                }
                plan.aggregations.push(AggFeature { name, spec, function: *f, buckets });
            }
        }
    }
}

impl FeatureSetPlan {
    /// The ring for (column, period), created or widened to cover `buckets`.
    fn spec_for(&mut self, column: usize, period_ms: i64, buckets: i64, distinct: bool, keep: Keep) -> usize {
        if let Some(i) = self.specs.iter().position(|s| s.column == column && s.period_ms == period_ms) {
            let spec = &mut self.specs[i];
            spec.horizon = spec.horizon.max(buckets);
            spec.distinct |= distinct;
            spec.keep.widen(keep);
            return i;
        }
        self.specs.push(BucketSpec { column, period_ms, horizon: buckets, distinct, keep });
        self.specs.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<FeatureSetPlan, Vec<String>> {
        let config: FeatureSetConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        config
            .compile("cards", "card_id", "feature_sets.cards", &mut problems)
            .ok_or_else(|| problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn shares_one_ring_per_column_and_period() {
        let plan = compile(
            "entity: card\nsource: tx\nttl: 7d\nfeatures: [merchant]\naggregations:\n  - { column: amount, functions: [count, sum, mean, max, stddev], windows: [10m, 1h, 24h], period: 1m }\n  - { column: merchant, functions: [distinct_count], windows: [24h], period: 10m }\n",
        )
        .unwrap();
        assert_eq!(plan.specs.len(), 2);
        assert_eq!(
            plan.specs[0],
            BucketSpec { column: 0, period_ms: 60_000, horizon: 1440, distinct: false, keep: Keep::default() }
        );
        assert_eq!(plan.aggregations.len(), 16);
        assert_eq!(plan.aggregations[0].name, "amount_count_10m");
        assert_eq!(plan.aggregations[14].name, "amount_stddev_24h");
        assert_eq!(plan.late_after_ms, 86_400_000);
        assert_eq!(plan.numeric_columns(), vec!["amount".to_string()]);
    }

    #[test]
    fn tumbling_windows_are_one_bucket_each() {
        let plan = compile("entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [sum], windows: [1h, 1d], kind: tumbling }\n").unwrap();
        assert_eq!(plan.aggregations[1].name, "amount_sum_1d");
        assert!(plan.aggregations.iter().all(|a| a.buckets == 1));
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let errors = compile(
            "entity: card\nsource: tx\nttl: 7y\naggregations:\n  - { column: amount, functions: [sum, median], windows: [10m, 24x, 7m], period: 2m }\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with("feature_sets.cards.ttl: \"7y\" is not a duration"));
        assert!(errors[1].starts_with("feature_sets.cards.aggregations[0].functions[1]: unknown function \"median\""));
        assert!(errors[2].starts_with("feature_sets.cards.aggregations[0].windows[1]: \"24x\" is not a duration"));
    }

    #[test]
    fn period_must_divide_windows() {
        let errors = compile("entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [sum], windows: [10m, 7m], period: 2m }\n").unwrap_err();
        assert_eq!(
            errors,
            vec!["feature_sets.cards.aggregations[0].windows[1]: window 7m is not a multiple of the period 2m"
                .to_string()]
        );
    }
}
