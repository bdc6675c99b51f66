//! `fathom dataset` and `fathom consistency` as a user runs them: events and CDC changes replayed
//! into Redis and the offline store, a training set built from a CSV of entity rows and read by
//! DuckDB, and online values recomputed offline with zero mismatches.

mod common;

use std::process::Command;

use serde_json::{json, Value};

use common::fathom_cli as fathom;

#[test]
fn training_sets_are_point_in_time_and_match_the_online_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let project = common::unique("training");
    std::fs::write(
        root.join("fathom.yaml"),
        format!(
            r#"project: {project}
stores:
  online: {{ redis: {{ url: "{redis}" }} }}
  offline: {{ parquet: {{ path: offline }} }}
  dead_letters: {{ path: dlq }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
  customers: {{ format: debezium, key: customer_id }}
entities:
  card: {{ key: card_id }}
  segment: {{ key: segment }}
feature_sets:
  segment_sizes:
    entity: segment
    source: customers
    aggregations: [{{ column: customer_id, functions: [count, sum] }}]
  segments:
    entity: segment
    source: tx
    join: [{{ table: customers, on: customer_id, columns: [segment] }}]
    aggregations:
      - {{ column: amount, functions: [count, sum], windows: [1h, 1d], period: 5m }}
  cards:
    entity: card
    source: tx
    ttl: 1d
    features: [merchant]
    aggregations:
      - {{ column: amount, functions: [count, sum, mean, max, stddev], windows: [10m, 1h, 1d], period: 1m }}
feature_vectors:
  training: {{ features: [cards.*, customers.segment] }}
  by_segment: {{ features: [segments.*, segment_sizes.*] }}
"#,
            redis = common::redis_url()
        ),
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - 6 * 3_600_000;
    // 3,000 events over six hours for 40 cards, in time order, plus late ones for card c0
    let mut lines = Vec::new();
    let mut per_card: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 40];
    for i in 0..3_000i64 {
        let card = (i * 7) % 40;
        let ts = start + i * 7_000;
        let amount = ((i * 37) % 500) as f64 / 4.0;
        per_card[card as usize].push((ts, amount));
        lines.push(
            json!({"card_id": format!("c{card}"), "customer_id": card % 3, "ts": ts, "amount": amount, "merchant": format!("m{}", i % 9)})
                .to_string(),
        );
    }
    lines.push(json!({"card_id": "c0", "ts": start - 2 * 86_400_000, "amount": 999.0}).to_string()); // late: dead-lettered
    let change = |id: i64, segment: &str, at: i64, lsn: i64| {
        json!({"before": null, "after": {"customer_id": id, "segment": segment}, "op": "u", "source": {"ts_ms": at, "lsn": lsn}}).to_string()
    };
    let changes =
        [change(1, "basic", start, 1), change(1, "gold", start + 3 * 3_600_000, 2), change(2, "silver", start, 3)];
    std::fs::write(root.join("customers.ndjson"), changes.join("\n")).unwrap();
    let (ok, out) = fathom(root, &["replay", "customers.ndjson", "--source", "customers", "-c", "fathom.yaml"]);
    assert!(ok, "{out}");

    std::fs::write(root.join("events.ndjson"), lines.join("\n")).unwrap();
    let (ok, out) = fathom(root, &["replay", "events.ndjson", "--source", "tx", "-c", "fathom.yaml"]);
    assert!(ok && out.contains("3000 accepted, 1 dead-lettered"), "{out}");
    // entity rows: card, customer, a time (with zone), a label
    let rfc = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339();
    let rows = [
        ("c3", 1, start + 3_600_000, 1),     // an hour in: basic
        ("c3", 1, start + 4 * 3_600_000, 0), // after the upgrade: gold
        ("c5", 2, now, 1),                   // now
        ("c99", 3, now, 0),                  // unknown card and customer
        ("c7", 1, start - 1, 1),             // before any event
    ];
    let mut csv = String::from("card_id,customer_id,event_time,label\n");
    for (card, customer, at, label) in rows {
        csv.push_str(&format!("{card},{customer},{},{label}\n", rfc(at)));
    }
    std::fs::write(root.join("rows.csv"), csv).unwrap();
    let (ok, out) = fathom(
        root,
        &[
            "dataset",
            "-c",
            "fathom.yaml",
            "--input",
            "rows.csv",
            "--timestamp",
            "event_time",
            "--vector",
            "training",
            "--output",
            "train.parquet",
            "--statuses",
            "--shards",
            "3",
        ],
    );
    assert!(ok && out.contains("train.parquet: 5 rows"), "{out}");

    // DuckDB reads it: the input's columns, then each feature and its status
    let script = r#"
import sys, json, duckdb
con = duckdb.connect()
rel = con.execute("select * from read_parquet('train.parquet')")
names = [d[0] for d in rel.description]
types = dict(con.execute("select column_name, column_type from (describe select * from read_parquet('train.parquet'))").fetchall())
rows = con.execute("select card_id, cards__amount_count_1h, cards__amount_sum_1d, cards__merchant, customers__segment, customers__segment__status, cards__amount_count_1h__status from read_parquet('train.parquet')").fetchall()
print(json.dumps({"names": names, "types": types, "rows": rows}))
"#;
    let out = Command::new(common::python()).args(["-c", script]).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = read["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&names[..4], ["card_id", "customer_id", "event_time", "label"]);
    assert!(names.contains(&"cards__amount_stddev_1d") && names.contains(&"cards__merchant__status"), "{names:?}");
    assert_eq!(read["types"]["cards__amount_count_1h"], "BIGINT");
    assert_eq!(read["types"]["cards__amount_sum_1d"], "DOUBLE");
    let expected_count = |card: usize, at: i64| {
        per_card[card].iter().filter(|(ts, _)| *ts <= at && ts.div_euclid(60_000) > at.div_euclid(60_000) - 60).count()
    };
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows[0][1], json!(expected_count(3, start + 3_600_000)), "{rows:?}");
    assert_eq!(rows[0][4], "basic");
    assert_eq!(rows[1][4], "gold");
    assert_eq!(rows[2][1], json!(expected_count(5, now)));
    let sum_1d: f64 = per_card[5].iter().map(|(_, a)| a).sum();
    assert!((rows[2][2].as_f64().unwrap() - sum_1d).abs() < 1e-6);
    assert_eq!(
        (rows[3][4].clone(), rows[3][5].clone(), rows[3][6].clone()),
        (Value::Null, json!("NOT_FOUND"), json!("NOT_FOUND"))
    );
    assert_eq!((rows[4][1].clone(), rows[4][6].clone()), (Value::Null, json!("NOT_FOUND")), "no event before its time");

    // online values (Redis, written by the replays) against the same recomputed offline
    let (ok, out) = fathom(root, &["consistency", "-c", "fathom.yaml", "--vector", "training", "--sample", "50"]);
    assert!(ok, "{out}");
    assert!(out.contains("cards.amount_stddev_1h: 40 compared, 0 mismatches"), "{out}");
    assert!(out.contains("customers.segment: 40 compared, 0 mismatches"), "{out}");
    // a feature set keyed by a joined column: the online stream-table join against the offline one
    let (ok, out) = fathom(root, &["consistency", "-c", "fathom.yaml", "--vector", "by_segment", "--sample", "10"]);
    assert!(ok, "{out}");
    assert!(out.contains("segments.amount_count_1d: 3 compared, 0 mismatches"), "{out}");
    assert!(out.contains("segment_sizes.customer_id_count: 3 compared, 0 mismatches"), "{out}");
    // and the offline join's values themselves, against a brute force: customer 1 was basic for
    // three hours, then gold; customer 2 silver; customer 0 has no row (its events count nowhere)
    std::fs::write(root.join("segments.csv"), format!("segment,t\nbasic,{0}\ngold,{0}\nsilver,{0}\n", rfc(now)))
        .unwrap();
    let (ok, out) = fathom(
        root,
        &[
            "dataset",
            "-c",
            "fathom.yaml",
            "--input",
            "segments.csv",
            "--timestamp",
            "t",
            "--vector",
            "by_segment",
            "--output",
            "segments.parquet",
        ],
    );
    assert!(ok, "{out}");
    let script = "import duckdb, json; print(json.dumps(duckdb.sql(\"select segment, segments__amount_count_1d from read_parquet('segments.parquet')\").fetchall()))";
    let out = Command::new(common::python()).args(["-c", script]).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let upgrade = start + 3 * 3_600_000;
    let count = |customer: i64, from: i64, to: i64| {
        per_card
            .iter()
            .enumerate()
            .filter(|(c, _)| *c as i64 % 3 == customer)
            .flat_map(|(_, e)| e)
            .filter(|(ts, _)| *ts >= from && *ts < to)
            .count()
    };
    assert_eq!(
        got,
        json!([
            ["basic", count(1, start, upgrade)],
            ["gold", count(1, upgrade, i64::MAX)],
            ["silver", count(2, start, i64::MAX)]
        ])
    );
}
