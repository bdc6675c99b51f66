//! Row expressions against DuckDB as the oracle: the same SQL over the same rows — random
//! numbers with nulls and negatives, unicode strings, timestamps written in several zones — must
//! give the same values in Fathom (DataFusion, with Fathom's division semantics) and in DuckDB.

mod common;

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use common::Xorshift;
use fathom_transform::RowExpr;
use serde_json::{json, Value};

/// Expressions both dialects read the same way.
const EXPRESSIONS: &[&str] = &[
    "amount * 0.92",
    "amount + n",
    "amount / n",
    "n / 4",
    "n % 3",
    "-amount",
    "abs(amount)",
    "CASE WHEN status = 'declined' THEN 1 ELSE 0 END",
    "CASE WHEN amount > 100 THEN 'high' WHEN amount > 0 THEN 'low' ELSE 'refund' END",
    "COALESCE(amount, 0)",
    "COALESCE(status, 'none')",
    "amount > 10 AND status <> 'ok'",
    "amount IS NULL OR n < 0",
    "nullif(n, 0)",
    "upper(status)",
    "lower(status)",
    "length(status)",
    "substr(status, 2, 3)",
    "status || '-' || CAST(n AS VARCHAR)",
    "CAST(n AS DOUBLE) * 2",
    "date_part('hour', ts)",
    "extract(dow FROM ts)",
    "date_part('day', ts)",
    "amount / NULLIF(n, 0) > 1",
];

const STATUSES: &[&str] = &["ok", "declined", "Ünïcode", "東京", "déclined", "", "émoji 🎉"];
const ZONES: &[&str] = &["Z", "+05:30", "-08:00", "+09:00", "-03:30"];

struct Row {
    amount: Option<f64>,
    n: Option<i64>,
    status: Option<&'static str>,
    ts: String,
}

fn rows(seed: u64, count: usize) -> Vec<Row> {
    let mut rng = Xorshift(seed);
    (0..count)
        .map(|_| {
            let amount = (rng.below(7) != 0).then(|| ((rng.uniform() - 0.3) * 400.0 * 100.0).round() / 100.0);
            let n = (rng.below(8) != 0).then(|| rng.below(21) as i64 - 10);
            let status = (rng.below(9) != 0).then(|| STATUSES[rng.below(STATUSES.len() as u64) as usize]);
            let zone = ZONES[rng.below(ZONES.len() as u64) as usize];
            let (day, hour, minute) = (1 + rng.below(28), rng.below(24), rng.below(60));
            let ts = format!("2026-03-{day:02}T{hour:02}:{minute:02}:07{zone}");
            Row { amount, n, status, ts }
        })
        .collect()
}

fn batch(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("amount", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
    ]));
    let ts = rows.iter().map(|r| chrono::DateTime::parse_from_rfc3339(&r.ts).unwrap().timestamp_millis());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.amount).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.n).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.status).collect::<StringArray>()),
        Arc::new(TimestampMillisecondArray::from(ts.collect::<Vec<_>>()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// One value of an Arrow array as JSON.
fn json_at(values: &dyn Array, i: usize) -> Value {
    if values.is_null(i) {
        return Value::Null;
    }
    let text = arrow_cast::display::ArrayFormatter::try_new(values, &Default::default()).unwrap().value(i).to_string();
    match values.data_type() {
        DataType::Boolean => json!(text == "true"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!(text),
        _ => text.parse::<f64>().map_or(json!(text), |x| json!(x)),
    }
}

const DUCKDB: &str = r#"
import json, sys, decimal, duckdb
data = json.load(sys.stdin)
db = duckdb.connect()
db.execute("SET TimeZone = 'UTC'")
db.execute("CREATE TABLE t (i INTEGER, amount DOUBLE, n BIGINT, status VARCHAR, ts TIMESTAMPTZ)")
db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, CAST(? AS TIMESTAMPTZ))",
               [[i, r["amount"], r["n"], r["status"], r["ts"]] for i, r in enumerate(data["rows"])])
def plain(v):
    if isinstance(v, decimal.Decimal):
        v = float(v)
    # Fathom's documented difference: a result that is not a finite number is NULL
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v
out = []
for e in data["expressions"]:
    out.append([plain(r[0]) for r in db.execute(f"SELECT {e} FROM t ORDER BY i").fetchall()])
print(json.dumps(out))
"#;

fn same(ours: &Value, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
        }
        (a, b) => a == b,
    }
}

#[test]
fn expressions_give_what_duckdb_gives_on_the_same_rows() {
    for seed in [7, 1_234_567, 987_654_321] {
        let rows = rows(seed, 300);
        let batch = batch(&rows);
        let input = json!({
            "rows": rows.iter().map(|r| json!({"amount": r.amount, "n": r.n, "status": r.status, "ts": r.ts})).collect::<Vec<_>>(),
            "expressions": EXPRESSIONS,
        });
        let oracle = common::python_json(DUCKDB, &[], &input.to_string());
        for (e, sql) in EXPRESSIONS.iter().enumerate() {
            let expr =
                RowExpr::compile(sql, &batch.schema()).unwrap_or_else(|err| panic!("{sql}: {err} {:?}", err.hint));
            let evaluated = expr.evaluate(&batch);
            assert!(evaluated.failed.is_empty(), "{sql}: {:?}", evaluated.failed);
            for (i, row) in rows.iter().enumerate() {
                let ours = json_at(evaluated.values.as_ref(), i);
                let theirs = &oracle[e][i];
                assert!(
                    same(&ours, theirs),
                    "seed {seed}, {sql} on (amount {:?}, n {:?}, status {:?}, ts {}): Fathom {ours}, DuckDB {theirs}",
                    row.amount,
                    row.n,
                    row.status,
                    row.ts
                );
            }
        }
    }
}

#[test]
fn a_row_the_expression_fails_on_is_named_and_the_others_are_evaluated() {
    let rows = rows(42, 20);
    let batch = batch(&rows);
    let expr = RowExpr::compile("CAST(status AS DOUBLE)", &batch.schema()).unwrap();
    let evaluated = expr.evaluate(&batch);
    let failing: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| r.status.is_some()).map(|(i, _)| i).collect();
    let failed: Vec<usize> = evaluated.failed.iter().map(|(i, _)| *i).collect();
    // "" does not cast either; only the null statuses give NULL without failing
    assert_eq!(failed, failing);
    assert!(evaluated.failed[0].1.contains("Cannot cast"), "{:?}", evaluated.failed[0]);
    assert_eq!(evaluated.values.len(), rows.len());
    assert_eq!(evaluated.values.null_count(), rows.len());
}

#[test]
fn unknown_columns_syntax_and_type_errors_are_named_with_a_hint() {
    let batch = batch(&rows(1, 1));
    let schema = batch.schema();
    let unknown = RowExpr::compile("amont * 2", &schema).unwrap_err();
    assert!(unknown.message.contains("amont"), "{unknown:?}");
    assert!(
        unknown.hint.as_deref().is_some_and(|h| h.contains("the source's columns: amount (Float64), n (Int64)")),
        "{unknown:?}"
    );
    let syntax = RowExpr::compile("amount *", &schema).unwrap_err();
    assert!(syntax.hint.is_some(), "{syntax:?}");
    let types = RowExpr::compile("amount - status", &schema).unwrap_err();
    assert!(!types.message.is_empty(), "{types:?}");
    assert!(types.hint.as_deref().is_some_and(|h| h.contains("status (Utf8)")), "the types named: {types:?}");
    let division = RowExpr::compile("n / 0", &schema).unwrap();
    assert_eq!(division.evaluate(&batch).values.null_count(), 1, "division by zero is NULL");
}
