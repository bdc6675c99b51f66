use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::aggregate::{group_values, GroupState};
use super::*;
use crate::definition::FeatureSetConfig;
use crate::online::EmbeddedStore;

fn change(key: &str, row: Option<Value>, commit_us: i64, lsn: i64) -> RowChange {
    RowChange {
        source: 0,
        key: key.into(),
        row: row.map(|r| r.as_object().unwrap().clone()),
        unavailable: Vec::new(),
        order: at_time(commit_us, lsn),
        at: Coordinates { partition: None, offset: 0 },
        snapshot: false,
    }
}

/// The order of a PostgreSQL change committed at `commit_us` at `lsn` (no position for 0).
fn at_time(commit_us: i64, lsn: i64) -> ChangeOrder {
    let position = (lsn > 0).then_some(LogPosition { connector: Connector::Postgres, parts: [lsn as u128, 0, 0] });
    ChangeOrder { position, kafka: None, commit_us }
}

fn embedded() -> OnlineStore {
    OnlineStore::Embedded(Arc::new(EmbeddedStore::new()))
}

fn tables(store: &OnlineStore, history_ms: i64, plans: Vec<TablePlan>) -> TableProcessor {
    TableProcessor::new("p", vec!["customers".into(), "tx".into()], vec![history_ms, 0], plans, store.clone(), 1 << 20)
}

async fn lookup(store: &OnlineStore, key: &str) -> Vec<(String, Value, Status)> {
    let bytes = store.load(&[row_key("p", "customers", key)]).await.unwrap();
    let row = bytes[0].as_deref().and_then(decode);
    row_values(row.as_ref()).into_iter().map(|v| (v.name, v.value, v.status)).collect()
}

/// A select that fails on a row (a declared double holding text) does not drop the change:
/// the row is applied, its selected column is null, and the failure is counted; the next good
/// change computes it again.
#[tokio::test]
async fn a_failing_select_applies_the_row_with_the_selected_column_null() {
    let store = embedded();
    let mut t = tables(&store, 0, vec![]).with_selects(vec![Some(selected()), None]);
    let outcome = t
        .apply(&mut [
            change("7", Some(json!({"id": 7, "status": "active", "balance": 4.5})), 1_000, 10),
            change("8", Some(json!({"id": 8, "status": "active", "balance": "n/a"})), 1_000, 11),
        ])
        .await
        .unwrap();
    assert_eq!(outcome, TableOutcome { applied: 2, expression_errors: 1, ..TableOutcome::default() });
    t.flush().await.unwrap();
    let value = |row: &[(String, Value, Status)], column: &str| {
        row.iter().find(|(c, _, _)| c == column).map(|(_, v, _)| v.clone())
    };
    assert_eq!(value(&lookup(&store, "7").await, "double_balance"), Some(json!(9.0)));
    let failed = lookup(&store, "8").await;
    assert_eq!((value(&failed, "double_balance"), value(&failed, "balance")), (Some(Value::Null), Some(json!("n/a"))));
    let outcome =
        t.apply(&mut [change("8", Some(json!({"id": 8, "status": "active", "balance": 2})), 2_000, 12)]).await.unwrap();
    assert_eq!(outcome.expression_errors, 0);
    t.flush().await.unwrap();
    assert_eq!(value(&lookup(&store, "8").await, "double_balance"), Some(json!(4.0)));
}

#[tokio::test]
async fn newest_change_wins_and_deletes_answer_not_found() {
    let store = embedded();
    let mut t = tables(&store, 0, vec![]);
    let outcome = t
        .apply(&mut [
            change("7", Some(json!({"id": 7, "segment": "gold"})), 1_000, 10),
            change("7", Some(json!({"id": 7, "segment": "platinum"})), 3_000, 30),
            change("7", Some(json!({"id": 7, "segment": "bronze"})), 2_000, 20), // out of order
            change("7", Some(json!({"id": 7, "segment": "platinum"})), 3_000, 30), // redelivered
            change("8", Some(json!({"id": 8, "segment": null})), 1_000, 11),
        ])
        .await
        .unwrap();
    assert_eq!(outcome, TableOutcome { applied: 3, stale: 2, ..TableOutcome::default() });
    t.flush().await.unwrap();
    assert_eq!(
        lookup(&store, "7").await,
        vec![("id".into(), json!(7), Status::Present), ("segment".into(), json!("platinum"), Status::Present)]
    );
    assert_eq!(lookup(&store, "8").await[1], ("segment".into(), Value::Null, Status::NullValue));
    assert!(lookup(&store, "9").await.is_empty());

    // a fresh processor (restart): the stored version still guards against old changes
    let mut t = tables(&store, 0, vec![]);
    let outcome =
        t.apply(&mut [change("7", None, 4_000, 40), change("7", Some(json!({"id": 7})), 3_500, 35)]).await.unwrap();
    assert_eq!(outcome, TableOutcome { applied: 1, stale: 1, ..TableOutcome::default() });
    t.flush().await.unwrap();
    assert_eq!(
        lookup(&store, "7").await,
        vec![("id".into(), Value::Null, Status::NotFound), ("segment".into(), Value::Null, Status::NotFound)]
    );
}

#[test]
fn as_of_reads_the_version_current_at_that_time_within_the_history() {
    let v = |segment: &str| Some(json!({"segment": segment}).to_string());
    let mut row = TableRow {
        version: FORMAT_VERSION,
        row: v("a"),
        columns: vec![],
        order: at_time(10_000_000, 1),
        history: vec![],
        pruned: false,
    };
    let history_ms = 5_000;
    row.replace(v("b"), vec![], at_time(20_000_000, 2), history_ms);
    row.replace(None, vec![], at_time(30_000_000, 3), history_ms);
    row.replace(v("d"), vec![], at_time(32_000_000, 4), history_ms);
    // kept: the versions current at any time in [32s − 5s, 32s]: b (from 20s), deleted (30s), d
    assert!(row.pruned);
    assert_eq!(row.history.len(), 2, "{row:?}");
    let at = |ms| {
        let (r, exact) = row.as_of(ms);
        (r.map(|r| r.to_string()), exact)
    };
    assert_eq!(at(32_000), (v("d"), true));
    assert_eq!(at(31_999), (None, true), "deleted at 30s");
    assert_eq!(at(29_999), (v("b"), true));
    assert_eq!(at(20_000), (v("b"), true));
    assert_eq!(at(15_000), (v("b"), false), "before the kept history: the oldest kept, flagged");

    let mut young = TableRow { history: vec![], pruned: false, ..row.clone() };
    young.order.commit_us = 50_000_000;
    assert_eq!(young.as_of(49_999), (None, true), "before the first version: no row");
}

#[test]
fn a_hot_row_keeps_at_most_max_history_versions() {
    let mut row = TableRow {
        version: FORMAT_VERSION,
        row: None,
        columns: vec![],
        order: at_time(0, 0),
        history: vec![],
        pruned: false,
    };
    for i in 1..1_000 {
        row.replace(Some(i.to_string()), vec![], at_time(i * 1000, i), i64::MAX / 2_000);
    }
    assert_eq!(row.history.len(), MAX_HISTORY);
    assert_eq!(row.as_of(998).0, Some("998"));
}

fn table_plan(yaml: &str) -> TablePlan {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let mut problems = Vec::new();
    let plan = config.compile_table("by_branch", "branch", "feature_sets.by_branch", &mut problems, &mut |_, sql| {
        Some(fathom_transform::RowFilter::compile(sql, selected().selected_schema()).unwrap())
    });
    assert!(problems.is_empty(), "{problems:?}");
    plan.unwrap()
}

/// The customers table's columns and its select, `double_balance = balance * 2`.
fn selected() -> fathom_transform::Transform {
    use arrow_schema::{DataType, Field, Schema};
    let columns =
        Schema::new(vec![Field::new("status", DataType::Utf8, true), Field::new("balance", DataType::Float64, true)]);
    let mut transform = fathom_transform::Transform::new(columns);
    transform.select("double_balance", "balance * 2").unwrap();
    transform
}

/// Per-aggregation `where`s, one over the selected column, beside an unfiltered aggregation of
/// the same column.
fn split_plan() -> TablePlan {
    let mut plan = table_plan(
        "entity: branch\nsource: customers\naggregations:\n  - { column: balance, name: large, where: \"balance > 1\", functions: [count, sum] }\n  - { column: balance, functions: [count, sum] }\n  - { column: double_balance, name: doubled_small, where: \"double_balance < 1 AND status = 'active'\", functions: [count, sum, mean] }\n",
    );
    plan.name = "split_by_branch".into();
    plan
}

fn branch_plan() -> TablePlan {
    table_plan(
        "entity: branch\nsource: customers\nfilter: { status: active }\naggregations:\n  - { column: balance, functions: [count, sum, mean, variance, stddev] }\n",
    )
}

/// Balances per branch of active rows over 1 by a SQL `where` (rows enter and leave it as their
/// status or balance changes).
fn rich_plan() -> TablePlan {
    use arrow_schema::{DataType, Field, Schema};
    let mut plan = table_plan(
        "entity: branch\nsource: customers\nwhere: \"status = 'active' AND balance > 1\"\naggregations:\n  - { column: balance, functions: [count, sum, mean, variance, stddev] }\n",
    );
    plan.name = "rich_by_branch".into();
    let columns =
        Schema::new(vec![Field::new("status", DataType::Utf8, true), Field::new("balance", DataType::Float64, true)]);
    plan.condition = Some(fathom_transform::RowFilter::compile("status = 'active' AND balance > 1", columns).unwrap());
    plan
}

async fn group(store: &OnlineStore, plan: &TablePlan, key: &str) -> BTreeMap<String, Value> {
    let bytes = store.load(&[online::entity_key("p", &plan.name, key)]).await.unwrap();
    let state = bytes[0].as_deref().and_then(|b| GroupState::decode(plan, b));
    group_values(plan, state.as_ref()).into_iter().map(|v| (v.name, v.value)).collect()
}

#[tokio::test]
async fn updates_retract_the_old_row_and_moves_change_groups() {
    let store = embedded();
    let plan = branch_plan();
    let mut t = tables(&store, 0, vec![plan.clone()]);
    let row = |branch: &str, status: &str, balance: f64| {
        Some(json!({"branch": branch, "status": status, "balance": balance}))
    };
    t.apply(&mut [
        change("a", row("b1", "active", 10.0), 1, 1),
        change("b", row("b1", "active", 30.0), 2, 2),
        change("c", row("b1", "closed", 1000.0), 3, 3), // filtered out
        change("a", row("b2", "active", 10.0), 4, 4),   // moves to b2
        change("b", row("b1", "active", 20.0), 5, 5),   // update in place
        change("d", row("b2", "active", 40.0), 6, 6),
        change("d", None, 7, 7),                      // deleted
        change("c", row("b1", "active", 50.0), 8, 8), // starts matching
    ])
    .await
    .unwrap();
    t.flush().await.unwrap();
    let b1 = group(&store, &plan, "b1").await;
    assert_eq!(b1["balance_count"], json!(2));
    assert_eq!(b1["balance_sum"], json!(70.0));
    assert_eq!(b1["balance_mean"], json!(35.0));
    assert_eq!(b1["balance_variance"], json!(450.0));
    let b2 = group(&store, &plan, "b2").await;
    assert_eq!((b2["balance_count"].clone(), b2["balance_sum"].clone()), (json!(1), json!(10.0)));
    assert_eq!(b2["balance_variance"], Value::Null, "one row has no sample variance");
    assert!(group(&store, &plan, "b9").await.values().all(Value::is_null));
}

#[tokio::test]
async fn replayed_changes_are_not_applied_twice_to_groups_written_before_their_rows() {
    let store = embedded();
    let plan = branch_plan();
    let at = |offset| Coordinates { partition: Some(0), offset };
    let batch = vec![
        RowChange { at: at(0), ..change("a", Some(json!({"branch": "b1", "status": "active", "balance": 5})), 1, 1) },
        RowChange { at: at(1), ..change("a", Some(json!({"branch": "b2", "status": "active", "balance": 7})), 2, 2) },
    ];
    let mut t = tables(&store, 0, vec![plan.clone()]);
    t.apply(&mut batch.clone()).await.unwrap();
    // a crash after the groups were written and before the rows: write only the groups
    let groups: Vec<Write> = t.groups[0]
        .iter()
        .map(|(g, s)| Write { key: online::entity_key("p", &plan.name, g), state: s.state.encode(), ttl_ms: None })
        .collect();
    store.write(&groups, &[]).await.unwrap();
    let mut restarted = tables(&store, 0, vec![plan.clone()]);
    let outcome = restarted.apply(&mut batch.clone()).await.unwrap();
    assert_eq!(outcome.duplicates, 3, "b1 add, b1 retract, b2 add already held");
    restarted.flush().await.unwrap();
    assert_eq!(group(&store, &plan, "b1").await["balance_count"], json!(0));
    assert_eq!(group(&store, &plan, "b2").await["balance_sum"], json!(7.0));
}

#[tokio::test]
async fn joins_take_the_row_as_of_the_event_time() {
    let store = embedded();
    let mut t = tables(&store, 3_600_000, vec![]);
    t.apply(&mut [
        change("c1", Some(json!({"country": "FR", "segment": "gold"})), 1_000_000, 1),
        change("c1", Some(json!({"country": "DE", "segment": "gold"})), 5_000_000, 2),
    ])
    .await
    .unwrap();
    t.flush().await.unwrap();
    let event = |time_ms: i64, customer: Value| Event {
        source: 1,
        key: "card".into(),
        time_ms,
        fields: json!({"customer": customer, "country": "XX"}).as_object().unwrap().clone(),
        at: Coordinates { partition: None, offset: 0 },
        raw: vec![],
    };
    let mut events = vec![
        event(500, json!("c1")),
        event(1_000, json!("c1")),
        event(7_000, json!("c1")),
        event(7_000, json!("c2")),
        event(7_000, Value::Null),
    ];
    let joins =
        vec![vec![], vec![Join { table: 0, on: "customer".into(), columns: vec!["country".into(), "tier".into()] }]];
    let mut fresh = tables(&store, 3_600_000, vec![]);
    let outcome = fresh.enrich(&joins, &mut events).await.unwrap();
    assert_eq!(outcome, JoinOutcome { matched: 2, missed: 3, approximate: 0 });
    let countries: Vec<&Value> = events.iter().map(|e| &e.fields["country"]).collect();
    assert_eq!(countries, [&Value::Null, &json!("FR"), &json!("DE"), &Value::Null, &Value::Null]);
    assert!(events.iter().all(|e| e.fields["tier"].is_null()), "a column the row lacks is null");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of inserts, updates (moving rows between groups, in and out of the filter
    /// and of a SQL `where`) and deletes leaves every group equal to a recomputation from the
    /// final rows.
    #[test]
    fn retraction_equals_recomputation_from_scratch(
        ops in proptest::collection::vec((0..12usize, 0..4usize, any::<bool>(), -1000i32..1000, 0..6u8), 1..120)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = embedded();
            let plans = [branch_plan(), rich_plan()];
            let split = split_plan();
            let mut all = plans.to_vec();
            all.push(split.clone());
            let mut t = tables(&store, 0, all).with_selects(vec![Some(selected()), None]);
            let mut rows: BTreeMap<String, Value> = BTreeMap::new();
            let mut changes = Vec::new();
            for (i, (key, branch, active, cents, kind)) in ops.into_iter().enumerate() {
                let key = format!("k{key}");
                let row = (kind != 0).then(|| {
                    let balance = if kind == 1 { Value::Null } else { json!(f64::from(cents) / 100.0) };
                    json!({"branch": format!("b{branch}"), "status": if active { "active" } else { "closed" }, "balance": balance})
                });
                match &row {
                    Some(r) => rows.insert(key.clone(), r.clone()),
                    None => rows.remove(&key),
                };
                changes.push(change(&key, row, i as i64 + 1, i as i64 + 1));
            }
            for chunk in changes.chunks(7) {
                t.apply(&mut chunk.to_vec()).await.unwrap();
                t.flush().await.unwrap();
            }
            let counts = |plan: &TablePlan, r: &Value| {
                r["status"] == "active" && (plan.condition.is_none() || r["balance"].as_f64().is_some_and(|b| b > 1.0))
            };
            for (plan, b) in plans.iter().flat_map(|p| (0..4).map(move |b| (p, b))) {
                let name = format!("b{b}");
                let members: Vec<&Value> = rows.values().filter(|r| r["branch"] == json!(name) && counts(plan, r)).collect();
                let values: Vec<f64> = members.iter().filter_map(|r| r["balance"].as_f64()).collect();
                let got = group(&store, plan, &name).await;
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let variance = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
                let close = |got: &Value, want: f64| got.as_f64().is_some_and(|g| (g - want).abs() <= 1e-9 * want.abs().max(1.0));
                if got["balance_count"].is_null() {
                    prop_assert!(members.is_empty());
                    continue;
                }
                prop_assert_eq!(&got["balance_count"], &json!(values.len()), "count {}", name);
                prop_assert!(close(&got["balance_sum"], values.iter().sum()), "sum {} {:?} {:?}", name, got, values);
                if values.is_empty() {
                    prop_assert!(got["balance_mean"].is_null());
                } else {
                    prop_assert!(close(&got["balance_mean"], mean), "mean {} {:?} {:?}", name, got, values);
                }
                if values.len() >= 2 {
                    prop_assert!(close(&got["balance_variance"], variance), "variance {} {:?} {:?}", name, got, values);
                } else {
                    prop_assert!(got["balance_variance"].is_null());
                }
            }
            // each filtered aggregation against its own brute force, rows moving in and out
            for b in 0..4 {
                let name = format!("b{b}");
                let members: Vec<&Value> = rows.values().filter(|r| r["branch"] == json!(name)).collect();
                let balances: Vec<f64> = members.iter().filter_map(|r| r["balance"].as_f64()).collect();
                let large: Vec<f64> = balances.iter().copied().filter(|b| *b > 1.0).collect();
                let doubled_small: Vec<f64> = members
                    .iter()
                    .filter(|r| r["status"] == "active")
                    .filter_map(|r| r["balance"].as_f64())
                    .map(|b| b * 2.0)
                    .filter(|d| *d < 1.0)
                    .collect();
                let got = group(&store, &split, &name).await;
                if members.is_empty() && got["balance_count"].is_null() {
                    continue;
                }
                let close = |got: &Value, want: f64| got.as_f64().is_some_and(|g| (g - want).abs() <= 1e-9 * want.abs().max(1.0));
                prop_assert_eq!(&got["balance_count"], &json!(balances.len()), "{} {:?}", name, got);
                prop_assert_eq!(&got["large_count"], &json!(large.len()), "{} {:?}", name, got);
                prop_assert!(close(&got["large_sum"], large.iter().sum()), "{} {:?} {:?}", name, got, large);
                prop_assert_eq!(&got["doubled_small_count"], &json!(doubled_small.len()), "{} {:?}", name, got);
                prop_assert!(close(&got["doubled_small_sum"], doubled_small.iter().sum()), "{} {:?} {:?}", name, got, doubled_small);
            }
            Ok(())
        })?;
    }
}

#[test]
fn rows_stored_by_the_previous_format_are_read_with_their_lsn_as_the_position() {
    // format 2 as it was written: version, row, columns, commit_us, lsn, history (commit_us, lsn,
    // row), pruned
    #[derive(serde::Serialize)]
    struct V2 {
        version: u8,
        row: Option<String>,
        columns: Vec<String>,
        commit_us: i64,
        lsn: i64,
        history: Vec<(i64, i64, Option<String>)>,
        pruned: bool,
    }
    let old = V2 {
        version: 2,
        row: Some(r#"{"id":7,"segment":"gold"}"#.into()),
        columns: vec!["id".into(), "segment".into()],
        commit_us: 2_000_000,
        lsn: 40,
        history: vec![(1_000_000, 30, Some(r#"{"id":7,"segment":"basic"}"#.into()))],
        pruned: false,
    };
    let row = decode(&postcard::to_allocvec(&old).unwrap()).expect("format 2 is still read");
    assert_eq!(row.order, at_time(2_000_000, 40));
    assert_eq!(row.as_of(1_500).0, Some(r#"{"id":7,"segment":"basic"}"#));
    assert_eq!(row.as_of(2_000).0, Some(r#"{"id":7,"segment":"gold"}"#));
    // a redelivered older change is still stale against it; a later one applies
    assert!(at_time(1_500_000, 35) < row.order && at_time(3_000_000, 41) > row.order);
    assert_eq!(decode(&[9, 0, 0]), None, "another format is not guessed at");
}
