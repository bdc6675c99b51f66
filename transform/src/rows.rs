//! A source's row transform: its records' declared columns decoded into an Arrow batch
//! (arrow-json), its `select` expressions evaluated over it, then its conditions (`where`) over
//! the columns and the selected values; the results written back into each record's fields.
//!
//! The pipeline and `fathom dataset` both call [`Transform::apply`] on the records' fields, so a
//! feature computed online and one computed offline went through the same code.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

use crate::{ExprError, RowExpr};

/// The Arrow type of a column declared under a source's `columns`, by its SQL name (as DuckDB
/// and Spark spell them); `None` for a name that is not one.
pub fn sql_type(name: &str) -> Option<DataType> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "double" | "float64" | "float" | "real" | "decimal" | "numeric" => DataType::Float64,
        "bigint" | "int" | "integer" | "int64" | "long" | "smallint" | "tinyint" => DataType::Int64,
        "string" | "varchar" | "text" | "utf8" => DataType::Utf8,
        "boolean" | "bool" => DataType::Boolean,
        "timestamp" | "timestamptz" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        "date" => DataType::Date32,
        _ => return None,
    })
}

/// The SQL type names [`sql_type`] knows, for messages.
pub const SQL_TYPES: &str = "double, bigint, string, boolean, timestamp, date, or a mapping of nested fields";

/// Why a record could not be transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A declared column holds a value of another type (the message names the column).
    Decode(String),
    /// An expression failed on the record (a cast that cannot succeed).
    Expression {
        /// Where the expression is configured, e.g. `select.amount_usd`.
        name: String,
        /// The expression as written.
        sql: String,
        /// DataFusion's message.
        message: String,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Decode(message) => f.write_str(message),
            Failure::Expression { name, sql, message } => write!(f, "{name} ({sql}): {message}"),
        }
    }
}

/// A condition's result, written into a field.
#[derive(Debug, Clone)]
struct Condition {
    /// Where it is configured, for failures.
    name: String,
    /// The field it writes.
    field: String,
    expr: RowExpr,
    /// `None`: the field is `true`/`false` (a `NULL` condition is `false`). `Some(column)`: the
    /// field is the column's value where the condition holds, else `NULL`.
    keep: Option<String>,
}

/// The compiled transform of one source.
#[derive(Debug, Clone)]
pub struct Transform {
    input: SchemaRef,
    /// (output name, expression over `input`).
    selects: Vec<(String, RowExpr)>,
    /// Per select: whether its value is written into the record (see [`Transform::write_only`]).
    written: Vec<bool>,
    conditions: Vec<Condition>,
}

impl Transform {
    /// A transform reading `input`, the source's declared columns.
    pub fn new(input: Schema) -> Transform {
        Transform { input: Arc::new(input), selects: Vec::new(), written: Vec::new(), conditions: Vec::new() }
    }

    /// Adds a `select` output `name` = `sql`, over the declared columns. Add every select before
    /// the first condition.
    pub fn select(&mut self, name: &str, sql: &str) -> Result<&DataType, ExprError> {
        if self.input.field_with_name(name).is_ok() {
            return Err(ExprError {
                message: format!("{name:?} is a declared column; a select adds a new one"),
                hint: Some(format!("name it differently, e.g. `{name}_2`")),
            });
        }
        let expr = RowExpr::compile(sql, &self.input)?;
        self.selects.push((name.to_string(), expr));
        self.written.push(true);
        Ok(self.selects.last().map(|(_, e)| e.data_type()).expect("pushed"))
    }

    /// The columns a condition reads: the declared ones, then the selected ones.
    pub fn selected_schema(&self) -> Schema {
        let mut fields: Vec<Field> = self.input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (name, expr) in &self.selects {
            fields.push(Field::new(name, expr.data_type().clone(), true));
        }
        Schema::new(fields)
    }

    /// Adds a condition (`where`) configured at `name`, over the declared and selected columns;
    /// its result is written to `field` (see [`Transform::apply`]): `true`/`false`, or, with
    /// `keep`, that column's value where the condition holds and `NULL` elsewhere.
    pub fn condition(&mut self, name: &str, field: &str, sql: &str, keep: Option<&str>) -> Result<(), ExprError> {
        let example = "`status = 'declined'` or `amount > 100`";
        let expr = RowExpr::compile_condition(sql, &self.selected_schema(), example)?;
        let keep = keep.map(str::to_string);
        self.conditions.push(Condition { name: name.to_string(), field: field.to_string(), expr, keep });
        Ok(())
    }

    /// Writes into the records only the selects for which `read` is true: the others are still
    /// evaluated (conditions read them, and a record they fail on still fails) but their values
    /// are not stored in fields nothing reads — writing a value back costs more than computing
    /// it.
    pub fn write_only(&mut self, read: impl Fn(&str) -> bool) {
        self.written = self.selects.iter().map(|(name, _)| read(name)).collect();
    }

    /// The names of the selected columns, in order.
    pub fn selected(&self) -> impl Iterator<Item = &str> {
        self.selects.iter().map(|(name, _)| name.as_str())
    }

    /// Whether the transform computes anything.
    pub fn is_empty(&self) -> bool {
        self.selects.is_empty() && self.conditions.is_empty()
    }

    /// Evaluates the selects and conditions over `rows` without changing them: the declared
    /// and selected columns as one batch, each condition's result, and the records that could
    /// not be transformed (by index, sorted, one failure each).
    pub fn evaluate(&self, rows: &[&mut Map<String, Value>]) -> Evaluation {
        let (batch, mut failed) = self.decode(rows);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (name, expr) in &self.selects {
            let evaluated = expr.evaluate(&batch);
            failed.extend(evaluated.failed.into_iter().map(|(i, message)| {
                (i, Failure::Expression { name: format!("select.{name}"), sql: expr.sql().to_string(), message })
            }));
            columns.push(evaluated.values);
        }
        let columns = RecordBatch::try_new_with_options(
            Arc::new(self.selected_schema()),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )
        .expect("columns match the selected schema");
        let conditions: Vec<ArrayRef> = self
            .conditions
            .iter()
            .map(|c| {
                let evaluated = c.expr.evaluate(&columns);
                failed.extend(evaluated.failed.into_iter().map(|(i, message)| {
                    (i, Failure::Expression { name: c.name.clone(), sql: c.expr.sql().to_string(), message })
                }));
                evaluated.values
            })
            .collect();
        failed.sort_by_key(|(i, _)| *i);
        failed.dedup_by_key(|(i, _)| *i);
        Evaluation { columns, conditions, failed }
    }

    /// Transforms records in place: each select's value and each condition's result become a
    /// field of the record (replacing a field of its name). Returns the records that
    /// could not be transformed, by index; their fields are left as they were.
    pub fn apply(&self, rows: &mut [&mut Map<String, Value>]) -> Vec<(usize, Failure)> {
        if rows.is_empty() || self.is_empty() {
            return Vec::new();
        }
        let Evaluation { columns, conditions, failed } = self.evaluate(rows);
        let selected = &columns.columns()[self.input.fields().len()..];
        let mut next_failed = failed.iter().map(|(i, _)| *i).peekable();
        for (i, row) in rows.iter_mut().enumerate() {
            if next_failed.next_if_eq(&i).is_some() {
                continue;
            }
            for (((name, _), values), _) in self.selects.iter().zip(selected).zip(&self.written).filter(|(_, w)| **w) {
                row.insert(name.clone(), json(values, i));
            }
            for (c, values) in self.conditions.iter().zip(&conditions) {
                let value = match &c.keep {
                    None => Value::Bool(holds(values, i)),
                    Some(column) if holds(values, i) => row.get(column).cloned().unwrap_or(Value::Null),
                    Some(_) => Value::Null,
                };
                row.insert(c.field.clone(), value);
            }
        }
        failed
    }

    /// The declared columns of `rows` as a batch; a record whose values do not decode is a
    /// failure and a row of nulls in the batch.
    fn decode(&self, rows: &[&mut Map<String, Value>]) -> (RecordBatch, Vec<(usize, Failure)>) {
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        if self.input.fields().is_empty() {
            let batch = RecordBatch::try_new_with_options(self.input.clone(), Vec::new(), &options);
            return (batch.expect("no columns"), Vec::new());
        }
        if let Some(batch) = decode_exact(&self.input, rows) {
            return (batch, Vec::new());
        }
        if let Ok(batch) = decode(&self.input, rows) {
            return (batch, Vec::new());
        }
        let empty = Map::new();
        let mut failed = Vec::new();
        let mut usable: Vec<&Map<String, Value>> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            match decode(&self.input, std::slice::from_ref(&&**row)) {
                Ok(_) => usable.push(row),
                Err(message) => {
                    failed.push((i, Failure::Decode(message)));
                    usable.push(&empty);
                }
            }
        }
        let batch = decode(&self.input, &usable).unwrap_or_else(|_| RecordBatch::new_empty(self.input.clone()));
        (batch, failed)
    }
}

/// `rows`' values of `schema`'s columns built straight from the JSON values when each already
/// has its column's JSON type — numbers for `double` and (integral) `bigint`, strings for
/// `string`, booleans for `boolean`, null or absent for NULL — which is what producers send
/// nearly always; `None` otherwise (text for a number, nested or timestamp columns), and
/// [`decode`] does it with arrow-json's coercions and errors. Equal to [`decode`]'s batch where
/// both apply (tested): a throughput path, not other semantics.
fn decode_exact(schema: &SchemaRef, rows: &[&mut Map<String, Value>]) -> Option<RecordBatch> {
    use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
    // a column from `builder`, or `None` at the first value `get` does not take
    macro_rules! column {
        ($values:expr, $builder:expr, $get:expr) => {{
            let mut b = $builder;
            for v in $values {
                match v {
                    None => b.append_null(),
                    Some(v) => b.append_value($get(v)?),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let n = rows.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let values = rows.iter().map(|r| r.get(field.name()).filter(|v| !v.is_null()));
        columns.push(match field.data_type() {
            DataType::Float64 => column!(values, Float64Builder::with_capacity(n), Value::as_f64),
            DataType::Int64 => column!(values, Int64Builder::with_capacity(n), Value::as_i64),
            DataType::Utf8 => column!(values, StringBuilder::with_capacity(n, n * 8), Value::as_str),
            DataType::Boolean => column!(values, BooleanBuilder::with_capacity(n), Value::as_bool),
            _ => return None,
        });
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).ok()
}

/// `rows`' values of `schema`'s columns as a batch (arrow-json; numbers are accepted as text).
fn decode<S: serde::Serialize>(schema: &SchemaRef, rows: &[S]) -> Result<RecordBatch, String> {
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.serialize(rows).map_err(|e| e.to_string())?;
    let batch = decoder.flush().map_err(|e| e.to_string())?;
    Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// `expr` (compiled against `schema`) over one JSON object whose keys are `schema`'s column
/// names: its value as JSON, `NULL` when a value does not decode or the expression fails.
pub fn evaluate_object(expr: &RowExpr, schema: &SchemaRef, object: &Map<String, Value>) -> Value {
    let Ok(batch) = decode(schema, std::slice::from_ref(&object)) else { return Value::Null };
    let evaluated = expr.evaluate(&batch);
    if evaluated.failed.is_empty() && evaluated.values.len() == 1 {
        json(&evaluated.values, 0)
    } else {
        Value::Null
    }
}

/// A condition over one record's declared columns, evaluated a record at a time: a CDC table
/// row's `where`, checked again on the stored row when it changes so that its retraction is
/// exact.
#[derive(Debug, Clone)]
pub struct RowFilter {
    input: SchemaRef,
    expr: RowExpr,
}

impl PartialEq for RowFilter {
    fn eq(&self, other: &RowFilter) -> bool {
        self.expr.sql() == other.expr.sql() && self.input == other.input
    }
}

impl RowFilter {
    /// Parses and type-checks `sql`, which must be true or false, against `input`.
    pub fn compile(sql: &str, input: Schema) -> Result<RowFilter, ExprError> {
        let expr = RowExpr::compile_condition(sql, &input, "`status = 'active'` or `balance > 0`")?;
        Ok(RowFilter { input: Arc::new(input), expr })
    }

    /// The condition as written.
    pub fn sql(&self) -> &str {
        self.expr.sql()
    }

    /// Whether the condition is true for `row`: `false` when it is NULL, when a declared column
    /// holds another type or when the expression fails on the row.
    pub fn holds(&self, row: &Map<String, Value>) -> bool {
        let Ok(batch) = decode(&self.input, std::slice::from_ref(&row)) else { return false };
        let evaluated = self.expr.evaluate(&batch);
        evaluated.failed.is_empty()
            && evaluated.values.as_boolean_opt().is_some_and(|b| b.len() == 1 && b.is_valid(0) && b.value(0))
    }
}

/// What [`Transform::evaluate`] computed over a batch of records.
#[derive(Debug)]
pub struct Evaluation {
    /// The declared columns, then the selected ones ([`Transform::selected_schema`]).
    pub columns: RecordBatch,
    /// Each condition's result (boolean; `NULL` where it did not evaluate), in the order added.
    pub conditions: Vec<ArrayRef>,
    /// The records that could not be transformed, by index, sorted, one failure each.
    pub failed: Vec<(usize, Failure)>,
}

/// Whether a condition's result `values` holds at row `i` (`NULL` does not).
pub fn holds(values: &ArrayRef, i: usize) -> bool {
    values.as_boolean_opt().is_some_and(|b| b.is_valid(i) && b.value(i))
}

/// Row `i` of `values` as JSON: numbers, booleans and text as themselves; any other type
/// (timestamps, dates, nested values) as Arrow's text form of it.
pub fn json(values: &ArrayRef, i: usize) -> Value {
    if values.is_null(i) {
        return Value::Null;
    }
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    match values.data_type() {
        DataType::Boolean => Value::Bool(values.as_boolean().value(i)),
        DataType::Float64 => float(values.as_primitive::<Float64Type>().value(i)),
        DataType::Float32 => float(f64::from(values.as_primitive::<Float32Type>().value(i))),
        DataType::Int64 => values.as_primitive::<Int64Type>().value(i).into(),
        DataType::Int32 => values.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int16 => values.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int8 => values.as_primitive::<Int8Type>().value(i).into(),
        DataType::UInt64 => values.as_primitive::<UInt64Type>().value(i).into(),
        DataType::UInt32 => values.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt16 => values.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt8 => values.as_primitive::<UInt8Type>().value(i).into(),
        DataType::Utf8 => Value::String(values.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(values.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(values.as_string_view().value(i).to_string()),
        _ => arrow_cast::display::ArrayFormatter::try_new(values.as_ref(), &Default::default())
            .map_or(Value::Null, |f| Value::String(f.value(i).to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The direct path builds exactly arrow-json's batch wherever it applies, and declines the
    /// rest: values of every JSON type in every declared type, nulls, absent fields, unicode,
    /// integers beyond i64, floats in integer columns.
    #[test]
    fn exact_decoding_equals_arrow_json_where_it_applies() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Boolean, true),
        ]));
        let pool = [
            json!(null),
            json!(0),
            json!(-7),
            json!(1.5),
            json!(1e300),
            json!(-0.1),
            json!(9_007_199_254_740_993u64),
            json!(18_446_744_073_709_551_615u64),
            json!("12"),
            json!("Ünï 東京 🎉"),
            json!(""),
            json!(true),
            json!(false),
            json!({"a": 1}),
            json!([1]),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut direct, mut declined) = (0, 0);
        for _ in 0..3_000 {
            let len = 1 + next(4);
            let mut rows: Vec<Map<String, Value>> = (0..len)
                .map(|_| {
                    let mut row = Map::new();
                    // mostly values of the column's own type (pool ranges below), sometimes any
                    for (name, own) in [("x", 0..8), ("n", 0..4), ("s", 8..11), ("b", 11..13)] {
                        let pick = match next(8) {
                            0 => continue,
                            1 => next(pool.len()),
                            _ => own.start + next(own.len()),
                        };
                        row.insert(name.into(), pool[pick].clone());
                    }
                    row
                })
                .collect();
            let rows: Vec<&mut Map<String, Value>> = rows.iter_mut().collect();
            match decode_exact(&schema, &rows) {
                Some(batch) => {
                    direct += 1;
                    assert_eq!(Some(batch), decode(&schema, &rows).ok(), "{rows:?}");
                }
                None => declined += 1,
            }
        }
        assert!(direct > 100 && declined > 100, "both paths exercised: {direct} direct, {declined} declined");
    }

    fn transform() -> Transform {
        let mut t = Transform::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("status", DataType::Utf8, true),
            Field::new("qty", DataType::Utf8, true),
        ]));
        t.select("amount_usd", "amount * 2").unwrap();
        t.select("units", "CAST(qty AS BIGINT)").unwrap();
        t.condition("feature_sets.x.where", "__x", "status = 'declined'", None).unwrap();
        t.condition("feature_sets.x.aggregations[0].where", "__y", "amount_usd > 10", Some("amount")).unwrap();
        t
    }

    #[test]
    fn selects_nothing_reads_are_evaluated_but_not_written() {
        let mut t = transform();
        t.write_only(|name| name == "units");
        let mut rows: Vec<Map<String, Value>> =
            [json!({"amount": 6, "status": "ok", "qty": "3"}), json!({"amount": 1, "status": "ok", "qty": "x"})]
                .into_iter()
                .map(|v| v.as_object().unwrap().clone())
                .collect();
        let mut refs: Vec<&mut Map<String, Value>> = rows.iter_mut().collect();
        let failed = t.apply(&mut refs);
        // the unwritten select still feeds the condition over it, and a failure still fails
        assert_eq!(rows[0].get("amount_usd"), None);
        assert_eq!((&rows[0]["units"], &rows[0]["__y"]), (&json!(3), &json!(6)));
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
    }

    #[test]
    fn writes_selects_and_conditions_into_the_fields() {
        let mut rows: Vec<Map<String, Value>> = [
            json!({"amount": 6, "status": "declined", "qty": "3", "other": 1}),
            json!({"amount": 4, "status": "ok", "qty": "2"}),
            json!({"status": "declined"}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let mut refs: Vec<&mut Map<String, Value>> = rows.iter_mut().collect();
        assert!(transform().apply(&mut refs).is_empty());
        assert_eq!(rows[0]["amount_usd"], json!(12.0));
        assert_eq!(rows[0]["units"], json!(3));
        assert_eq!(rows[0]["__x"], json!(true));
        assert_eq!(rows[0]["__y"], json!(6));
        assert_eq!(rows[0]["other"], json!(1));
        assert_eq!((&rows[1]["__x"], &rows[1]["__y"]), (&json!(false), &Value::Null));
        assert_eq!(
            (&rows[2]["amount_usd"], &rows[2]["__x"], &rows[2]["__y"]),
            (&Value::Null, &json!(true), &Value::Null)
        );
    }

    #[test]
    fn a_record_that_fails_is_reported_and_left_alone() {
        let mut rows: Vec<Map<String, Value>> = [
            json!({"amount": 6, "qty": "three"}),
            json!({"amount": "lots", "qty": "1"}),
            json!({"amount": 1, "qty": 1}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let mut refs: Vec<&mut Map<String, Value>> = rows.iter_mut().collect();
        let failed = transform().apply(&mut refs);
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(failed[0].0, 0);
        assert!(matches!(&failed[0].1, Failure::Expression { name, .. } if name == "select.units"), "{failed:?}");
        assert_eq!(failed[1].0, 1);
        assert!(matches!(&failed[1].1, Failure::Decode(m) if m.contains("amount")), "{failed:?}");
        assert!(!rows[0].contains_key("amount_usd"));
        assert_eq!(rows[2]["units"], json!(1), "a number in a string column is read as its text");
    }

    #[test]
    fn a_row_filter_holds_only_where_true() {
        let schema = Schema::new(vec![
            Field::new("status", DataType::Utf8, true),
            Field::new("balance", DataType::Float64, true),
        ]);
        let filter = RowFilter::compile("status = 'active' AND balance > 1", schema.clone()).unwrap();
        let row = |v: Value| v.as_object().unwrap().clone();
        assert!(filter.holds(&row(json!({"status": "active", "balance": 2, "other": [1]}))));
        assert!(!filter.holds(&row(json!({"status": "active", "balance": 1}))));
        assert!(!filter.holds(&row(json!({"status": "active"}))), "NULL is not true");
        assert!(!filter.holds(&row(json!({"status": "active", "balance": "lots"}))), "undecodable");
        assert!(RowFilter::compile("balance + 1", schema).is_err());
    }

    #[test]
    fn a_condition_must_be_boolean() {
        let mut t = transform();
        let e = t.condition("where", "__z", "amount + 1", None).unwrap_err();
        assert!(e.message.contains("true or false"), "{e:?}");
    }

    #[test]
    fn nested_fields_and_timestamp_parts() {
        let merchant = DataType::Struct(vec![Field::new("country", DataType::Utf8, true)].into());
        let mut t = Transform::new(Schema::new(vec![
            Field::new("merchant", merchant, true),
            Field::new("ts", sql_type("timestamp").unwrap(), true),
        ]));
        t.select("abroad", "merchant.country <> 'DE'").unwrap();
        t.select("country", "merchant['country']").unwrap();
        t.select("hour", "extract(hour FROM ts)").unwrap();
        let mut rows: Vec<Map<String, Value>> = [
            json!({"merchant": {"country": "FR"}, "ts": "2026-12-02T23:30:00+02:00"}),
            json!({"merchant": {"country": "DE"}, "ts": 1764719400000_i64}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let mut refs: Vec<&mut Map<String, Value>> = rows.iter_mut().collect();
        assert!(t.apply(&mut refs).is_empty());
        assert_eq!(
            (&rows[0]["abroad"], &rows[0]["country"], &rows[0]["hour"]),
            (&json!(true), &json!("FR"), &json!(21))
        );
        assert_eq!((&rows[1]["abroad"], &rows[1]["hour"]), (&json!(false), &json!(23)));
    }
}
