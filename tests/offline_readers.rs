//! `fathom replay` writes Parquet that independent readers — pyarrow and DuckDB, installed by
//! the test command — read with the expected schema and values.

use std::process::Command;

mod common;

/// Runs `fathom replay FILE --source tx -c fathom.yaml` in `root`; returns its stdout.
fn replay(root: &std::path::Path, file: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(["replay", file, "--source", "tx", "-c", "fathom.yaml"])
        .current_dir(root)
        .env("FATHOM_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn replayed_ndjson_lands_as_parquet_that_pyarrow_and_duckdb_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("fathom.yaml"),
        format!(
            "project: {}\nstores:\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  dead_letters: {{ path: \"{d}/dlq\" }}\nsources:\n  tx: {{ key: card_id, timestamp: ts }}\nentities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards:\n    entity: card\n    source: tx\n    features: [merchant]\n    aggregations:\n      - {{ column: amount, functions: [sum], windows: [1h], period: 1m }}\n",
            common::unique("offline"),
            d = root.display()
        ),
    )
    .unwrap();
    // two UTC dates, one bad line, amounts summing to a known total
    let mut lines = Vec::new();
    let mut total = 0.0;
    for i in 0..1_000 {
        let ts = if i < 400 {
            format!("2026-03-01T23:{:02}:00+00:00", i % 60)
        } else {
            format!("2026-03-02T01:{:02}:00Z", i % 60)
        };
        let amount = (i % 17) as f64 + 0.25;
        total += amount;
        lines.push(serde_json::json!({"card_id": format!("c{}", i % 25), "ts": ts, "amount": amount, "merchant": format!("m{}", i % 3)}).to_string());
    }
    lines.insert(500, "{broken".into());
    std::fs::write(root.join("events.ndjson"), lines.join("\n")).unwrap();
    let stdout = replay(root, "events.ndjson");
    assert!(stdout.contains("replayed 1001 records") && stdout.contains("1000 accepted, 1 dead-lettered"), "{stdout}");

    let script = r#"
import sys, json, pyarrow.parquet as pq, pyarrow.dataset as ds, duckdb
root = sys.argv[1]
dataset = ds.dataset(root, format="parquet", partitioning="hive")
table = dataset.to_table()
schema = {f.name: str(f.type) for f in table.schema}
con = duckdb.connect()
rows, total, dates, keys = con.execute(
    f"select count(*), sum(amount), count(distinct date), count(distinct card_id) from read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
).fetchone()
dupes = con.execute(f"select count(*) - count(distinct (_partition, _offset)) from read_parquet('{root}/**/*.parquet')").fetchone()[0]
tz = con.execute(f"select typeof(_event_time) from read_parquet('{root}/**/*.parquet') limit 1").fetchone()[0]
print(json.dumps({"schema": schema, "rows": rows, "total": total, "dates": dates, "keys": keys, "dupes": dupes, "duck_ts": tz}))
"#;
    let out = Command::new(common::python())
        .args(["-c", script])
        .arg(root.join("offline/tx"))
        .output()
        .expect("python from the test command's virtualenv");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["rows"], 1000);
    assert!((got["total"].as_f64().unwrap() - total).abs() < 1e-9, "{got}");
    assert_eq!(got["dates"], 2);
    assert_eq!(got["keys"], 25);
    assert_eq!(got["dupes"], 0);
    assert_eq!(got["duck_ts"], "TIMESTAMP WITH TIME ZONE");
    let schema = &got["schema"];
    assert_eq!(schema["_event_time"], "timestamp[us, tz=UTC]");
    assert_eq!(schema["_partition"], "int32");
    assert_eq!(schema["_offset"], "int64");
    assert_eq!(schema["card_id"], "string");
    assert_eq!(schema["amount"], "double");
    assert_eq!(schema["merchant"], "string");
    assert_eq!(schema["_raw"], "string");
}

#[test]
fn a_parquet_file_written_by_pyarrow_replays_like_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let script = r#"
import sys, datetime as dt, pyarrow as pa, pyarrow.parquet as pq
base = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
rows = 300
pq.write_table(pa.table({
    "card_id": [f"c{i % 7}" for i in range(rows)],
    "ts": pa.array([base + dt.timedelta(seconds=i) for i in range(rows)], type=pa.timestamp("us", tz="UTC")),
    "amount": [float(i % 5) for i in range(rows)],
}), sys.argv[1])
"#;
    let file = root.join("events.parquet");
    let out = Command::new(common::python()).args(["-c", script]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        root.join("fathom.yaml"),
        format!(
            "project: p\nstores:\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  dead_letters: {{ path: \"{d}/dlq\" }}\nsources:\n  tx: {{ key: card_id, timestamp: ts }}\nentities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards:\n    entity: card\n    source: tx\n    aggregations:\n      - {{ column: amount, functions: [sum], windows: [1h], period: 1m }}\n",
            d = root.display()
        ),
    )
    .unwrap();
    let stdout = replay(root, "events.parquet");
    assert!(stdout.contains("replayed 300 records") && stdout.contains("300 accepted, 0 dead-lettered"), "{stdout}");
    assert!(root.join("offline/tx/date=2026-03-01").is_dir(), "event time kept from the Parquet timestamp");
}
