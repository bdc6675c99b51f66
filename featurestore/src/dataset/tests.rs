//! Point-in-time values against a brute-force reference written from the definitions (bucket-
//! aligned windows, TTL, latest values, CDC rows as of a time), over Parquet written by the
//! offline writer: duplicates from replays, late events, unknown entities, queries exactly at
//! event times.

use std::collections::BTreeMap;

use arrow_array::{Int64Array, StringArray, TimestampMillisecondArray};
use fathom_ingest::debezium::{Change, Op};
use fathom_ingest::event::Event;
use fathom_ingest::record::Coordinates;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::definition::FeatureSetConfig;
use crate::offline::{ColumnType, Layout, LoggedChange, OfflineWriter, SourceSchema};
use crate::storage::Storage;

struct Silent;

impl Progress for Silent {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

const PERIOD: i64 = 60_000;
const T0: i64 = 1_767_225_600_000;

fn plan() -> FeatureSetPlan {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(
        "entity: card\nsource: tx\nttl: 30m\nfeatures: [merchant]\naggregations:\n  - { column: amount, functions: [count, sum, max, mean, time_since_last], windows: [10m, 1h], period: 1m }\n",
    )
    .unwrap();
    config.compile("cards", "card", "feature_sets.cards", &mut Vec::new()).unwrap()
}

/// (card, minute offset, amount, merchant, partition, offset, late)
type RawEvent = (u8, i64, u32, u8, i32, i64, bool);

/// `late_for_plan`: whether the events flagged late were refused by this plan (only `cards` is).
fn reference(
    plan: &FeatureSetPlan,
    events: &[RawEvent],
    card: u8,
    at: i64,
    late_for_plan: bool,
) -> BTreeMap<String, (Value, &'static str)> {
    let mut seen = std::collections::BTreeSet::new();
    let mine: Vec<&RawEvent> = events
        .iter()
        .filter(|e| e.0 == card && !(e.6 && late_for_plan) && T0 + e.1 * 7_000 <= at)
        .filter(|e| seen.insert((e.4, e.5)))
        .collect();
    let mut out = BTreeMap::new();
    if mine.is_empty() {
        for name in plan.feature_names() {
            out.insert(name.to_string(), (Value::Null, "NOT_FOUND"));
        }
        return out;
    }
    let newest = mine.iter().map(|e| T0 + e.1 * 7_000).max().unwrap();
    let expired = at - newest > 30 * 60_000;
    for (window, buckets) in [("10m", 10), ("1h", 60)] {
        let inside: Vec<f64> = mine
            .iter()
            .filter(|e| (T0 + e.1 * 7_000).div_euclid(PERIOD) > at.div_euclid(PERIOD) - buckets)
            .map(|e| f64::from(e.2))
            .collect();
        let n = inside.len();
        let put = |out: &mut BTreeMap<String, (Value, &'static str)>, f: &str, v: Value| {
            let status = if expired {
                "OUTSIDE_MAX_AGE"
            } else if v.is_null() {
                "NULL_VALUE"
            } else {
                "PRESENT"
            };
            out.insert(format!("amount_{f}_{window}"), (if expired { Value::Null } else { v }, status));
        };
        put(&mut out, "count", json!(n));
        put(&mut out, "sum", json!(inside.iter().sum::<f64>()));
        let max = inside.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        put(&mut out, "max", if n == 0 { Value::Null } else { json!(max) });
        put(&mut out, "mean", if n == 0 { Value::Null } else { json!(inside.iter().sum::<f64>() / n as f64) });
        let newest_inside = mine
            .iter()
            .map(|e| T0 + e.1 * 7_000)
            .filter(|ts| ts.div_euclid(PERIOD) > at.div_euclid(PERIOD) - buckets)
            .max();
        put(&mut out, "time_since_last", newest_inside.map_or(Value::Null, |ts| json!((at - ts) as f64 / 1000.0)));
    }
    let last = mine.iter().max_by_key(|e| (T0 + e.1 * 7_000, e.4, e.5)).unwrap();
    let merchant = json!(format!("m{}", last.3));
    out.insert("merchant".into(), if expired { (Value::Null, "OUTSIDE_MAX_AGE") } else { (merchant, "PRESENT") });
    out
}

fn write_events(root: &Path, events: &[RawEvent]) {
    let schema = SourceSchema {
        name: "tx".into(),
        key: "card".into(),
        layout: Layout::Events(vec![("amount".into(), ColumnType::Float), ("merchant".into(), ColumnType::Text)]),
    };
    let mut writer = OfflineWriter::new(Storage::local(root), vec![schema]).unwrap();
    for chunk in events.chunks(17) {
        let decoded: Vec<Event> = chunk
            .iter()
            .map(|&(card, minute, amount, merchant, partition, offset, _)| {
                let fields = json!({"card": format!("c{card}"), "amount": amount, "merchant": format!("m{merchant}")});
                Event {
                    source: 0,
                    key: format!("c{card}"),
                    time_ms: T0 + minute * 7_000,
                    raw: fields.to_string().into_bytes(),
                    fields: fields.as_object().unwrap().clone(),
                    at: Coordinates { partition: Some(partition), offset },
                }
            })
            .collect();
        let late: Vec<Option<String>> = chunk.iter().map(|e| e.6.then(|| "cards".to_string())).collect();
        writer.append(&decoded, &late);
        writer.commit().unwrap(); // many small files, as checkpoints make them
    }
}

fn write_input(path: &Path, queries: &[(u8, i64)]) {
    let batch = RecordBatch::try_from_iter([
        ("card", Arc::new(StringArray::from_iter_values(queries.iter().map(|q| format!("c{}", q.0)))) as ArrayRef),
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from_iter_values(queries.iter().map(|q| q.1)).with_timezone("UTC"))
                as _,
        ),
        ("label", Arc::new(Int64Array::from_iter_values((0..queries.len() as i64).map(|i| i % 2))) as _),
    ])
    .unwrap();
    let mut writer = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn read_output(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn run(
    root: &Path,
    vector_refs: &[&str],
    plans: &[FeatureSetPlan],
    tables: &[(String, String)],
    shards: usize,
) -> PathBuf {
    let catalog = Catalog { project: "p", plans, table_plans: &[], tables, on_demand: &[] };
    let refs: Vec<String> = vector_refs.iter().map(|s| s.to_string()).collect();
    let vector = catalog.resolve(&refs).unwrap();
    let output = root.join("out.parquet");
    let sources =
        [("tx".to_string(), "card".to_string(), false), ("customers".to_string(), "customer_id".to_string(), true)];
    let request = Request {
        catalog,
        vector: &vector,
        sources: &sources,
        transforms: &[],
        after_joins: &[],
        offline: &Storage::local(root.join("offline")),
        input: &root.join("input.parquet"),
        timestamp: "ts",
        assume_utc: false,
        output: &output,
        statuses: true,
        shards,
        scratch: &root.join("scratch"),
    };
    build(&request, &Silent).unwrap();
    output
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn values_as_of_each_row_match_a_brute_force_reference(
        raw in proptest::collection::vec((0u8..5, 0i64..600, 1u32..500, 0u8..4, any::<bool>()), 1..150),
        queries in proptest::collection::vec((0u8..7, 0i64..700, any::<bool>()), 1..60),
        shards in 1usize..5,
    ) {
        // offsets per partition; one in seven events replayed (same coordinates, written again)
        let mut next = [0i64; 2];
        let mut events: Vec<RawEvent> = Vec::new();
        for (i, &(card, minute, amount, merchant, late_flag)) in raw.iter().enumerate() {
            let partition = i32::from(card % 2);
            let offset = next[partition as usize];
            next[partition as usize] += 1;
            let late = late_flag && i % 5 == 0;
            events.push((card, minute, amount, merchant, partition, offset, late));
            if i % 7 == 3 {
                events.push((card, minute, amount, merchant, partition, offset, late));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        write_events(&dir.path().join("offline"), &events);
        // query times: arbitrary, or exactly at an event's time
        let queries: Vec<(u8, i64)> = queries
            .iter()
            .map(|&(card, minute, exact)| match (exact, events.get(minute as usize % events.len())) {
                (true, Some(e)) => (e.0, T0 + e.1 * 7_000),
                _ => (card, T0 + minute * 7_000 + 123),
            })
            .collect();
        write_input(&dir.path().join("input.parquet"), &queries);
        // two feature sets over the same source share one read of it; only `cards` refused the
        // late events
        let plan = plan();
        let twin = FeatureSetPlan { name: "twin".into(), ..plan.clone() };
        let output = run(dir.path(), &["cards.*", "twin.*"], &[plan.clone(), twin], &[], shards);
        let batches = read_output(&output);
        let mut row = 0;
        for batch in &batches {
            prop_assert_eq!(batch.column_by_name("label").unwrap().data_type(), &DataType::Int64, "input columns kept");
            for i in 0..batch.num_rows() {
                let (card, at) = queries[row];
                let wanted = [("cards", reference(&plan, &events, card, at, true)), ("twin", reference(&plan, &events, card, at, false))];
                for (set, (name, (value, status))) in wanted.iter().flat_map(|(set, want)| want.iter().map(move |w| (set, w))) {
                    let column = batch.column_by_name(&format!("{set}__{name}")).unwrap();
                    let got = if column.is_null(i) {
                        Value::Null
                    } else {
                        match column.data_type() {
                            DataType::Int64 => json!(column.as_primitive::<Int64Type>().value(i)),
                            DataType::Float64 => json!(column.as_primitive::<Float64Type>().value(i)),
                            _ => json!(column.as_string::<i32>().value(i)),
                        }
                    };
                    let close = match (&got, value) {
                        (Value::Number(a), Value::Number(b)) => (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9,
                        (a, b) => a == b,
                    };
                    prop_assert!(close, "row {} ({}, {}): {}.{} = {} want {}", row, card, at, set, name, got, value);
                    let got_status = batch.column_by_name(&format!("{set}__{name}__status")).unwrap().as_string::<i32>().value(i);
                    prop_assert_eq!(got_status, *status, "row {} {}", row, name);
                }
                row += 1;
            }
        }
        prop_assert_eq!(row, queries.len());
    }
}

/// Writes `changes` of customer 7 to the `customers` change log under `root` (Kafka partition
/// 0, offsets in order).
fn log_customer_changes(root: &Path, changes: &[Change]) {
    let schema = SourceSchema { name: "customers".into(), key: "customer_id".into(), layout: Layout::ChangeLog };
    let mut writer = OfflineWriter::new(
        Storage::local(root),
        vec![SourceSchema { name: "tx".into(), key: "card".into(), layout: Layout::Events(vec![]) }, schema],
    )
    .unwrap();
    let logged: Vec<LoggedChange<'_>> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| LoggedChange {
            source: 1,
            at: Coordinates { partition: Some(0), offset: i as i64 },
            key: "7",
            change: c,
            after: c.after.as_ref(),
        })
        .collect();
    writer.append_changes(&logged);
    writer.commit().unwrap();
}

/// Entity rows `(customer_id, ts)` as `input.parquet` in `dir`.
fn write_customer_rows(dir: &Path, ids: Vec<i64>, times: Vec<&str>) {
    let batch = RecordBatch::try_from_iter([
        ("customer_id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("ts", Arc::new(StringArray::from(times)) as _),
    ])
    .unwrap();
    let mut input =
        ArrowWriter::try_new(File::create(dir.join("input.parquet")).unwrap(), batch.schema(), None).unwrap();
    input.write(&batch).unwrap();
    input.close().unwrap();
}

#[test]
fn cdc_columns_are_the_newest_change_committed_at_or_before_each_row() {
    let dir = tempfile::tempdir().unwrap();
    let change = |op: Op, segment: Option<&str>, at_ms: i64, lsn: i64| Change {
        op,
        key: json!({"customer_id": 7}).as_object().unwrap().clone(),
        before: None,
        after: segment.map(|s| json!({"customer_id": 7, "segment": s}).as_object().unwrap().clone()),
        commit_ms: at_ms,
        commit_us: at_ms * 1000 + 500,
        lsn: Some(lsn),
        position: Some(pg(lsn)),
        unavailable: Vec::new(),
        tx_id: None,
        snapshot: None,
        table: None,
    };
    let changes = [
        change(Op::Read, Some("basic"), T0, 1),
        change(Op::Update, Some("gold"), T0 + 10_000, 3),
        change(Op::Update, Some("silver"), T0 + 10_000, 2), // same ms, lower LSN: gold wins
        change(Op::Delete, None, T0 + 20_000, 4),
        change(Op::Create, Some("platinum"), T0 + 30_000, 5),
    ];
    log_customer_changes(&dir.path().join("offline"), &changes);
    let times = [
        "2025-12-31T23:59:59Z",
        "2026-01-01T00:00:05Z",
        "2026-01-01T00:00:10Z",
        "2026-01-01T00:00:25Z",
        "2026-01-01T01:00:00+01:00",
        "2026-01-01T00:00:05Z",
    ];
    write_customer_rows(dir.path(), vec![7, 7, 7, 7, 7, 8], times.to_vec());
    let tables = [("customers".to_string(), "customer_id".to_string())];
    let output = run(dir.path(), &["customers.segment"], &[], &tables, 2);
    let out = &read_output(&output)[0];
    let segment = out.column_by_name("customers__segment").unwrap().as_string::<i32>();
    let got: Vec<Option<&str>> = segment.iter().collect();
    // before the first change, a snapshot read stands for the past (as the online join does)
    assert_eq!(got, [Some("basic"), Some("basic"), Some("gold"), None, Some("basic"), None]);
    let status = out.column_by_name("customers__segment__status").unwrap().as_string::<i32>();
    let statuses: Vec<Option<&str>> = status.iter().collect();
    assert_eq!(statuses, ["PRESENT", "PRESENT", "PRESENT", "NOT_FOUND", "PRESENT", "NOT_FOUND"].map(Some));
}

#[test]
fn cdc_rows_follow_the_log_position_and_keep_unavailable_columns_as_the_online_table_does() {
    use fathom_ingest::debezium::{Connector, LogPosition};
    let dir = tempfile::tempdir().unwrap();
    // MySQL positions: binlog 3; the snapshot read (stamped 30 s, when it read the row) is at
    // the snapshot's position, before an update committed at 5 s and streamed afterwards
    let change = |op: Op, segment: &str, notes: &str, at_ms: i64, pos: u128| Change {
        op,
        key: json!({"customer_id": 7}).as_object().unwrap().clone(),
        before: None,
        after: Some(json!({"customer_id": 7, "segment": segment, "notes": notes}).as_object().unwrap().clone()),
        commit_ms: at_ms,
        commit_us: at_ms * 1000,
        lsn: None,
        position: Some(LogPosition { connector: Connector::MySql, parts: [3, pos, 0] }),
        unavailable: Vec::new(),
        tx_id: None,
        snapshot: Some(if op == Op::Read { "last" } else { "false" }.into()),
        table: None,
    };
    let marker = fathom_ingest::debezium::UNAVAILABLE_VALUE;
    let changes = [
        change(Op::Read, "bronze", "a long text", T0 + 30_000, 100),
        change(Op::Update, "gold", "a long text", T0 + 5_000, 200),
        change(Op::Read, "bronze", "a long text", T0 + 30_000, 100), // redelivered: the same change
        change(Op::Update, "platinum", marker, T0 + 40_000, 300),    // TOAST column left alone
    ];
    log_customer_changes(&dir.path().join("offline"), &changes);
    let times = ["2026-01-01T00:00:01Z", "2026-01-01T00:00:10Z", "2026-01-01T00:00:35Z", "2026-01-01T00:00:45Z"];
    write_customer_rows(dir.path(), vec![7; times.len()], times.to_vec());
    let tables = [("customers".to_string(), "customer_id".to_string())];
    let output = run(dir.path(), &["customers.segment", "customers.notes"], &[], &tables, 2);
    let out = &read_output(&output)[0];
    let column = |name: &str| -> Vec<Option<String>> {
        let c = out.column_by_name(name).unwrap().as_string::<i32>();
        c.iter().map(|v| v.map(String::from)).collect()
    };
    let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    // 1 s: before the update, the snapshot row stands for the past; 10 s and 35 s: the update
    // committed at 5 s, which the database held from then on (the snapshot's 30 s stamp is when
    // it read the row, not when the row was so); 45 s: the TOAST column keeps its value
    assert_eq!(column("customers__segment"), some(&["bronze", "gold", "gold", "platinum"]));
    assert_eq!(column("customers__notes"), some(&["a long text"; 4]));
}

#[test]
fn timestamps_without_a_zone_and_missing_columns_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("offline")).unwrap();
    // written by a tool that starts its text with a byte order mark: `card` is still `card`
    let rows = "\u{feff}card,ts,label\nc1,2026-01-01T00:00:00Z,1\nc2,2026-01-01 00:00:00,0\n";
    std::fs::write(dir.path().join("rows.csv"), rows).unwrap();
    let plans = [plan()];
    let catalog = Catalog { project: "p", plans: &plans, table_plans: &[], tables: &[], on_demand: &[] };
    let vector = catalog.resolve(&["cards.merchant".to_string()]).unwrap();
    let sources = [("tx".to_string(), "card".to_string(), false)];
    let mut request = Request {
        catalog,
        vector: &vector,
        sources: &sources,
        transforms: &[],
        after_joins: &[],
        offline: &Storage::local(dir.path().join("offline")),
        input: &dir.path().join("rows.csv"),
        timestamp: "ts",
        assume_utc: false,
        output: &dir.path().join("out.parquet"),
        statuses: false,
        shards: 2,
        scratch: &dir.path().join("scratch"),
    };
    let error = build(&request, &Silent).unwrap_err().to_string();
    assert!(error.contains("row 1, column \"ts\": \"2026-01-01 00:00:00\" has no time zone"), "{error}");
    request.assume_utc = true;
    build(&request, &Silent).unwrap();
    let out = &read_output(&dir.path().join("out.parquet"))[0];
    assert_eq!(out.num_rows(), 2);
    assert_eq!(out.column_by_name("label").unwrap().as_string::<i32>().value(0), "1", "CSV columns kept as text");
    request.timestamp = "when";
    let error = build(&request, &Silent).unwrap_err().to_string();
    assert!(error.contains("no column \"when\" (the timestamp column)"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Aggregations over a table, as of each row's time, equal a recomputation from the rows
    /// current at that time (updates moving rows between groups and out of the filter, deletes).
    #[test]
    fn table_aggregations_as_of_each_row_match_a_recomputation(
        ops in proptest::collection::vec((0u8..6, 0u8..3, any::<bool>(), 0u32..1000, 0u8..8), 1..80),
        queries in proptest::collection::vec((0u8..4, 0i64..100), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("offline");
        let schema = SourceSchema { name: "accounts".into(), key: "id".into(), layout: Layout::ChangeLog };
        let mut writer = OfflineWriter::new(Storage::local(&root), vec![schema]).unwrap();
        // (key, commit ms, row after or None)
        let mut history: Vec<(String, i64, Option<Value>)> = Vec::new();
        let changes: Vec<Change> = ops
            .iter()
            .enumerate()
            .map(|(i, &(key, branch, active, cents, kind))| {
                let at = T0 + i as i64 * 1_000;
                let row = (kind != 0).then(|| json!({"id": key, "branch": format!("b{branch}"), "status": if active { "active" } else { "closed" }, "balance": f64::from(cents) / 4.0}));
                history.push((key.to_string(), at, row.clone()));
                Change {
                    op: if row.is_some() { Op::Update } else { Op::Delete },
                    key: json!({"id": key}).as_object().unwrap().clone(),
                    before: None,
                    after: row.map(|r| r.as_object().unwrap().clone()),
                    commit_ms: at,
                    commit_us: at * 1000,
                    lsn: Some(i as i64),
                    position: Some(pg(i as i64)),
                    unavailable: Vec::new(),
                    tx_id: None,
                    snapshot: None,
                    table: None,
                }
            })
            .collect();
        let keys: Vec<String> = history.iter().map(|h| h.0.clone()).collect();
        let logged: Vec<LoggedChange<'_>> = changes
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (c, k))| LoggedChange { source: 0, at: Coordinates { partition: Some(0), offset: i as i64 }, key: k, change: c, after: c.after.as_ref() })
            .collect();
        writer.append_changes(&logged);
        writer.commit().unwrap();
        let config: FeatureSetConfig = serde_yaml_ng::from_str(
            "entity: branch\nsource: accounts\nfilter: { status: active }\naggregations:\n  - { column: balance, functions: [count, sum] }\n",
        ).unwrap();
        let plan = config.compile_table("branches", "branch", "feature_sets.branches", &mut Vec::new(), &mut |_, _| None).unwrap();
        let batch = RecordBatch::try_from_iter([
            ("branch", Arc::new(StringArray::from_iter_values(queries.iter().map(|q| format!("b{}", q.0)))) as ArrayRef),
            ("ts", Arc::new(TimestampMillisecondArray::from_iter_values(queries.iter().map(|q| T0 + q.1 * 1_000 - 500)).with_timezone("UTC")) as _),
        ]).unwrap();
        let mut input = ArrowWriter::try_new(File::create(dir.path().join("input.parquet")).unwrap(), batch.schema(), None).unwrap();
        input.write(&batch).unwrap();
        input.close().unwrap();
        let plans = [plan];
        let catalog = Catalog { project: "p", plans: &[], table_plans: &plans, tables: &[], on_demand: &[] };
        let vector = catalog.resolve(&["branches.*".to_string()]).unwrap();
        let sources = [("accounts".to_string(), "id".to_string(), true)];
        let output = dir.path().join("out.parquet");
        let request = Request {
            catalog, vector: &vector, sources: &sources, transforms: &[],
        after_joins: &[], offline: &Storage::local(&root), input: &dir.path().join("input.parquet"),
            timestamp: "ts", assume_utc: false, output: &output, statuses: true, shards: 3, scratch: &dir.path().join("scratch"),
        };
        build(&request, &Silent).unwrap();
        let out = &read_output(&output)[0];
        let count = out.column_by_name("branches__balance_count").unwrap().as_primitive::<Int64Type>();
        let sum = out.column_by_name("branches__balance_sum").unwrap().as_primitive::<Float64Type>();
        let status = out.column_by_name("branches__balance_count__status").unwrap().as_string::<i32>();
        for (i, &(branch, second)) in queries.iter().enumerate() {
            let at = T0 + second * 1_000 - 500;
            let group = json!(format!("b{branch}"));
            let mut current: BTreeMap<&str, &Option<Value>> = BTreeMap::new();
            for (key, _, row) in history.iter().filter(|h| h.1 <= at) {
                current.insert(key, row);
            }
            let members: Vec<f64> = current.values().filter_map(|r| r.as_ref()).filter(|r| r["branch"] == group && r["status"] == "active").map(|r| r["balance"].as_f64().unwrap()).collect();
            let touched = history.iter().any(|(_, commit, row)| *commit <= at && row.as_ref().is_some_and(|r| r["branch"] == group && r["status"] == "active"));
            if touched {
                prop_assert_eq!(status.value(i), "PRESENT");
                prop_assert_eq!(count.value(i), members.len() as i64, "query {}", i);
                prop_assert!((sum.value(i) - members.iter().sum::<f64>()).abs() < 1e-6, "query {}", i);
            } else {
                prop_assert_eq!(status.value(i), "NOT_FOUND", "query {}", i);
            }
        }
    }
}

/// A PostgreSQL log position at `lsn`.
fn pg(lsn: i64) -> fathom_ingest::debezium::LogPosition {
    fathom_ingest::debezium::LogPosition {
        connector: fathom_ingest::debezium::Connector::Postgres,
        parts: [lsn as u128, 0, 0],
    }
}

#[test]
fn a_change_log_written_before_positions_orders_by_its_lsn() {
    // the change-log columns of the previous version: no `_position`; two updates of customer 7
    // in one millisecond whose LSNs disagree with their Kafka order
    use arrow_array::{Int32Array, TimestampMicrosecondArray};
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("offline/customers/date=2026-01-01");
    std::fs::create_dir_all(&day).unwrap();
    let commit = (T0 + 10_000) * 1000;
    let utc = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let batch = RecordBatch::try_from_iter([
        ("_partition", Arc::new(Int32Array::from(vec![0, 0])) as ArrayRef),
        ("_offset", Arc::new(Int64Array::from(vec![5, 6])) as _),
        ("_event_time", utc(vec![commit, commit])),
        ("_ingest_time", utc(vec![commit, commit])),
        ("customer_id", text(vec![Some("7"), Some("7")])),
        ("_op", text(vec![Some("u"), Some("u")])),
        ("_lsn", Arc::new(Int64Array::from(vec![30, 20])) as _),
        ("_tx_id", Arc::new(Int64Array::from(vec![None::<i64>, None])) as _),
        ("_snapshot", text(vec![None, None])),
        ("_before", text(vec![None, None])),
        (
            "_after",
            text(vec![Some(r#"{"customer_id":7,"segment":"gold"}"#), Some(r#"{"customer_id":7,"segment":"silver"}"#)]),
        ),
    ])
    .unwrap();
    let mut file =
        ArrowWriter::try_new(File::create(day.join("part-0.parquet")).unwrap(), batch.schema(), None).unwrap();
    file.write(&batch).unwrap();
    file.close().unwrap();
    write_customer_rows(dir.path(), vec![7], vec!["2026-01-01T00:00:20Z"]);
    let tables = [("customers".to_string(), "customer_id".to_string())];
    let output = run(dir.path(), &["customers.segment"], &[], &tables, 2);
    let out = &read_output(&output)[0];
    let segment = out.column_by_name("customers__segment").unwrap().as_string::<i32>();
    assert_eq!(segment.value(0), "gold", "the higher LSN wins, as it did when the file was written");
}
