//! Debezium change events through the real broker into entity tables: creates, updates with and
//! without `before`, redelivery, an out-of-order older change, delete + tombstone, snapshot
//! reads, truncate, schema-wrapped and bare payloads, and a malformed envelope dead-lettered;
//! the change log in Parquet read by DuckDB as of past instants; stream–table joins (aggregating
//! by a joined column) and retracting aggregations over a table against brute-force references.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{create_topics, free_port, produce, unique, Fathom};
use serde_json::{json, Value};

fn source(ts_ms: i64, lsn: i64, snapshot: &str) -> Value {
    json!({"version": "2.5.0.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms, "ts_us": ts_ms * 1000,
           "snapshot": snapshot, "db": "shop", "schema": "public", "table": "customers", "txId": lsn / 8, "lsn": lsn})
}

fn envelope(op: &str, before: Value, after: Value, ts_ms: i64, lsn: i64) -> Value {
    json!({"before": before, "after": after, "source": source(ts_ms, lsn, "false"), "op": op, "ts_ms": ts_ms + 50})
}

fn key(id: i64) -> String {
    json!({"id": id}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changes_maintain_the_current_row_per_key() {
    let topic = unique("pg.public.customers");
    let orders = unique("pg.public.orders");
    create_topics(&[&topic, &orders], 2).await;
    let t = 1_767_225_600_000i64;
    let gold = json!({"id": 1, "segment": "gold", "country": "NL"});
    let platinum = json!({"id": 1, "segment": "platinum", "country": "NL"});
    let mut snapshot =
        envelope("r", Value::Null, json!({"id": 3, "segment": "silver", "country": "DE"}), t - 10_000, 5);
    snapshot["source"]["snapshot"] = json!("last");
    let records: Vec<(String, Vec<u8>)> = vec![
        (key(3), snapshot.to_string()),
        (
            key(1),
            json!({"schema": {"type": "struct"}, "payload": envelope("c", Value::Null, gold.clone(), t, 10)})
                .to_string(),
        ),
        (
            key(2),
            envelope("c", Value::Null, json!({"id": 2, "segment": "basic", "country": "FR"}), t + 1, 11).to_string(),
        ),
        (key(1), envelope("u", gold.clone(), platinum.clone(), t + 2_000, 20).to_string()),
        // redelivered, then an older update arriving late: neither may win
        (key(1), envelope("u", gold.clone(), platinum.clone(), t + 2_000, 20).to_string()),
        (
            key(1),
            envelope("u", Value::Null, json!({"id": 1, "segment": "bronze", "country": "NL"}), t + 1_000, 15)
                .to_string(),
        ),
        (key(2), envelope("d", json!({"id": 2}), Value::Null, t + 3_000, 30).to_string()),
        (key(2), String::new()), // tombstone
        (
            key(9),
            json!({"before": null, "after": null, "source": source(t + 4_000, 40, "false"), "op": "t"}).to_string(),
        ),
        (key(4), json!({"after": {"id": 4}, "source": source(t, 41, "false")}).to_string()), // no op
    ]
    .into_iter()
    .map(|(k, v)| (k, v.into_bytes()))
    .collect();
    let last = produce(&topic, &records).await;
    // a composite primary key, only in the record key (schema-wrapped key envelope; looked up
    // as its values in column-name order, `5:acme`), with a
    // truncate that this source sends to the dead letters
    let order_key = json!({"schema": {"type": "struct"}, "payload": {"tenant": "acme", "id": 5}}).to_string();
    let order = envelope("c", Value::Null, json!({"tenant": "acme", "id": 5, "total": 12.5}), t, 50).to_string();
    let truncate = json!({"before": null, "after": null, "source": source(t + 1, 51, "false"), "op": "t"}).to_string();
    let last_order = produce(&orders, &[(order_key, order.into_bytes()), (String::new(), truncate.into_bytes())]).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let project = unique("cdc");
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            "project: {project}\nstores:\n  online: {{ redis: {{ url: \"{redis}\" }} }}\n  offline: {{ parquet: {{ path: \"{d}/offline\" }} }}\n  kafka: {{ bootstrap_servers: \"{kafka}\", group_id: \"{project}\" }}\nsources:\n  customers: {{ kafka: {{ topic: \"{topic}\" }}, format: debezium, key: id }}\n  orders: {{ kafka: {{ topic: \"{orders}\" }}, format: debezium, key: order, key_from: record, on_truncate: dead_letter }}\nserver: {{ listen: \"127.0.0.1:{port}\" }}\n",
            redis = common::redis_url(),
            kafka = common::kafka(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut fathom = Fathom::start(&["serve", "-c", config.to_str().unwrap()], port, &dir.path().join("fathom.log"));
    fathom.wait_ready().await;
    common::wait_applied(&project, &topic, &last, &fathom.log).await;
    common::wait_applied(&project, &orders, &last_order, &fathom.log).await;

    let row = |id: i64| {
        let url = fathom.url(&format!("/v1/features/customers/{id}"));
        async move {
            let body: Value = common::get_json(url).await;
            body["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f["name"].as_str().unwrap().to_string(), f.clone()))
                .collect::<BTreeMap<_, _>>()
        }
    };
    let one = row(1).await;
    assert_eq!(
        (one["segment"]["value"].clone(), one["segment"]["status"].clone()),
        (json!("platinum"), json!("PRESENT"))
    );
    assert_eq!(
        one["segment"]["event_timestamp"],
        json!("2026-01-01T00:00:02.000Z"),
        "commit time of the newest change"
    );
    let two = row(2).await;
    assert_eq!(two["segment"]["status"], json!("NOT_FOUND"), "deleted rows are not served: {two:?}");
    assert_eq!(two["segment"]["value"], Value::Null);
    assert_eq!(row(3).await["country"]["value"], json!("DE"), "snapshot read");
    assert!(row(9).await.is_empty(), "truncate skipped, nothing invented");
    let order: Value = common::get_json(fathom.url("/v1/features/orders/5:acme")).await;
    assert!(
        order["features"].as_array().unwrap().iter().any(|f| f["name"] == "total" && f["value"] == 12.5),
        "{order}"
    );
    let truncates = common::dead_letter_headers(&format!("{orders}.dlq"), 1).await;
    assert_eq!(truncates[0]["fathom.reason"], "truncate");

    let letters = common::dead_letter_headers(&format!("{topic}.dlq"), 1).await;
    assert_eq!(letters[0]["fathom.reason"], "malformed_envelope");
    let metrics =
        fathom_monitor::https::default_client().get(fathom.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("fathom_table_changes_stale_total 2"), "{metrics}");
    assert!(metrics.contains("fathom_tombstones_total{source=\"customers\"} 1"), "{metrics}");
    fathom.stop();

    // the change log: every change with before/after, answering "what was the row at t"
    let asked = [("1", t + 500), ("1", t + 2_500), ("2", t + 2_500), ("2", t + 3_500), ("3", t - 20_000)];
    let answers = duckdb_as_of(&dir.path().join("offline/customers"), &asked);
    assert_eq!(
        answers,
        vec![
            json!(["c", "gold", false]),
            json!(["u", "platinum", true]),
            json!(["c", "basic", false]),
            json!(["d", null, true]),
            Value::Null
        ],
        "(op, segment, before present) as of each instant"
    );
}

/// Asks DuckDB, for each (key, instant ms), the last change of that key in log order
/// (`_position`) committed at or before the instant: `[op, after.segment, before is not null]`,
/// or null without one.
fn duckdb_as_of(root: &Path, asked: &[(&str, i64)]) -> Vec<Value> {
    let script = r#"
import sys, json, duckdb
root, asked = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
con.execute("set TimeZone = 'UTC'")
files = f"{root}/**/*.parquet"
types = dict(con.execute(f"select column_name, column_type from (describe select * from read_parquet('{files}'))").fetchall())
assert types["_event_time"] == "TIMESTAMP WITH TIME ZONE" and types["_lsn"] == "BIGINT" and types["_position"] == "VARCHAR", types
out = []
for key, ms in asked:
    row = con.execute(
        f"""select _op, json_extract_string(_after, '$.segment'), _before is not null
            from read_parquet('{files}')
            where id = ? and _event_time <= make_timestamptz(? * 1000)
            order by _position desc limit 1""",
        [key, ms],
    ).fetchone()
    out.append(list(row) if row else None)
print(json.dumps(out))
"#;
    let asked = serde_json::to_string(asked).unwrap();
    let out = std::process::Command::new(common::python())
        .args(["-c", script, root.to_str().unwrap(), &asked])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A deterministic pseudo-random sequence (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One accepted version of a customer row: commit time (ms) and the row (`None`: deleted).
type History = Vec<(i64, Option<Value>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_table_aggregations_match_brute_force_references() {
    let customers_topic = unique("pg.public.accounts");
    let tx_topic = unique("tx");
    create_topics(&[&customers_topic, &tx_topic], 2).await;
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 2 * 3_600_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (countries, statuses) = (["NL", "DE", "FR", "PL"], ["active", "active", "closed"]);
    let row = |rng: &mut Rng, id: u64| {
        json!({"id": id, "country": countries[rng.below(4) as usize], "branch": format!("b{}", rng.below(3)),
               "status": statuses[rng.below(3) as usize], "balance": rng.below(100_000) as f64 / 100.0})
    };

    // every customer: a snapshot read an hour before t0, then up to four later changes
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut histories: BTreeMap<u64, History> = BTreeMap::new();
    let mut lsn = 100;
    for id in 1..=30u64 {
        let first = row(&mut rng, id);
        let mut snapshot = envelope("r", Value::Null, first.clone(), t0 - 3_600_000, lsn);
        snapshot["source"]["snapshot"] = json!(if id == 30 { "last" } else { "true" });
        records.push((key(id as i64), snapshot.to_string().into_bytes()));
        let mut history = vec![(t0 - 3_600_000, Some(first))];
        let mut at = t0;
        for _ in 0..rng.below(5) {
            at += 1 + rng.below(900_000) as i64;
            lsn += 8;
            let before = history.last().unwrap().1.clone().unwrap_or(Value::Null);
            let (op, after) = match (history.last().unwrap().1.is_some(), rng.below(5)) {
                (true, 0) => ("d", None),
                (true, _) => ("u", Some(row(&mut rng, id))),
                (false, _) => ("c", Some(row(&mut rng, id))),
            };
            // PostgreSQL sends `before` only with REPLICA IDENTITY FULL: half the updates lack it
            let before = if op == "u" && rng.below(2) == 0 { Value::Null } else { before };
            let change = envelope(op, before, after.clone().unwrap_or(Value::Null), at, lsn).to_string();
            records.push((key(id as i64), change.clone().into_bytes()));
            if op == "d" {
                records.push((key(id as i64), Vec::new())); // tombstone
            }
            if rng.below(4) == 0 {
                records.push((key(id as i64), change.into_bytes())); // redelivered
            }
            history.push((at, after));
        }
        // an older change arriving after newer ones never wins
        if history.len() > 2 {
            let stale = envelope("u", Value::Null, row(&mut rng, id), history[1].0 - 1, 1).to_string();
            records.push((key(id as i64), stale.into_bytes()));
        }
        histories.insert(id, history);
    }
    let last_change = produce(&customers_topic, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let project = unique("join");
    let config = dir.path().join("fathom.yaml");
    std::fs::write(
        &config,
        format!(
            r#"project: {project}
stores:
  online: {{ redis: {{ url: "{redis}" }} }}
  offline: {{ parquet: {{ path: "{d}/offline" }} }}
  kafka: {{ bootstrap_servers: "{kafka}", group_id: "{project}" }}
sources:
  accounts: {{ kafka: {{ topic: "{customers_topic}" }}, format: debezium, key: id }}
  tx: {{ kafka: {{ topic: "{tx_topic}" }}, key: card, timestamp: ts }}
entities:
  country: {{ key: country }}
  branch: {{ key: branch }}
feature_sets:
  by_country:
    entity: country
    source: tx
    join: [{{ table: accounts, on: customer, columns: [country] }}]
    aggregations: [{{ column: amount, functions: [count, sum], windows: [1d] }}]
  by_branch:
    entity: branch
    source: accounts
    filter: {{ status: active }}
    aggregations: [{{ column: balance, functions: [count, sum, mean, variance] }}]
server: {{ listen: "127.0.0.1:{port}" }}
"#,
            redis = common::redis_url(),
            kafka = common::kafka(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut fathom = Fathom::start(&["serve", "-c", config.to_str().unwrap()], port, &dir.path().join("fathom.log"));
    fathom.wait_ready().await;
    common::wait_applied(&project, &customers_topic, &last_change, &fathom.log).await;

    // transactions over the same hour, some of customers that never existed
    let mut events = Vec::new();
    let mut expected: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for i in 0..3_000 {
        let customer = 1 + rng.below(32);
        let ts = t0 + rng.below(3_600_000) as i64;
        let amount = rng.below(10_000) as f64 / 100.0;
        let event = json!({"card": format!("card{}", i % 97), "customer": customer, "ts": ts, "amount": amount});
        events.push((format!("card{}", i % 97), event.to_string().into_bytes()));
        let as_of = histories.get(&customer).and_then(|h| h.iter().rev().find(|(at, _)| *at <= ts));
        if let Some((_, Some(row))) = as_of {
            let entry = expected.entry(row["country"].as_str().unwrap().to_string()).or_default();
            entry.0 += 1;
            entry.1 += amount;
        }
    }
    let last_tx = produce(&tx_topic, &events).await;
    common::wait_applied(&project, &tx_topic, &last_tx, &fathom.log).await;

    let features = |set: &str, key: String| {
        let url = fathom.url(&format!("/v1/features/{set}/{key}"));
        async move {
            let body: Value = common::get_json(url).await;
            body["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f["name"].as_str().unwrap().to_string(), f["value"].clone()))
                .collect::<BTreeMap<_, _>>()
        }
    };
    let close = |got: &Value, want: f64| got.as_f64().is_some_and(|g| (g - want).abs() <= 1e-6 * want.abs().max(1.0));
    assert_eq!(expected.len(), 4, "the reference reaches every country");
    for (country, (count, sum)) in &expected {
        let got = features("by_country", country.clone()).await;
        assert_eq!(got["amount_count_1d"], json!(count), "{country}: {got:?}");
        assert!(close(&got["amount_sum_1d"], *sum), "{country}: {got:?} vs {sum}");
    }

    // the table aggregation against a recomputation from the final rows
    for branch in ["b0", "b1", "b2"] {
        let balances: Vec<f64> = histories
            .values()
            .filter_map(|h| h.last().unwrap().1.as_ref())
            .filter(|r| r["branch"] == branch && r["status"] == "active")
            .map(|r| r["balance"].as_f64().unwrap())
            .collect();
        let n = balances.len() as f64;
        let mean = balances.iter().sum::<f64>() / n;
        let variance = balances.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let got = features("by_branch", branch.to_string()).await;
        assert_eq!(got["balance_count"], json!(balances.len()), "{branch}: {got:?}");
        assert!(close(&got["balance_sum"], balances.iter().sum()), "{branch}: {got:?}");
        assert!(close(&got["balance_mean"], mean), "{branch}: {got:?}");
        assert!(close(&got["balance_variance"], variance), "{branch}: {got:?} vs {variance}");
    }
    let metrics =
        fathom_monitor::https::default_client().get(fathom.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let missed: u64 = events
        .iter()
        .filter(|(_, e)| {
            let e: Value = serde_json::from_slice(e).unwrap();
            let h = histories.get(&e["customer"].as_u64().unwrap());
            !matches!(
                h.and_then(|h| h.iter().rev().find(|(at, _)| *at <= e["ts"].as_i64().unwrap())),
                Some((_, Some(_)))
            )
        })
        .count() as u64;
    assert!(metrics.contains(&format!("fathom_join_missed_total {missed}")), "{missed} missed: {metrics}");
    fathom.stop();
}
