//! Row expressions and filters as a user configures them (`columns`, `select`, `where` on a
//! feature set and on one aggregation, a composite key from a select), through `fathom replay`,
//! `fathom dataset` and `fathom consistency`: the features equal DuckDB's answer to the same SQL
//! over the same records, online equals offline, and a record an expression fails on is a dead
//! letter naming the expression.

mod common;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use common::fathom_cli as fathom;

fn project(project: &str) -> String {
    format!(
        r#"project: {project}
stores:
  online: {{ redis: {{ url: "{redis}" }} }}
  offline: {{ parquet: {{ path: offline }} }}
  dead_letters: {{ path: dlq }}
sources:
  tx:
    key: card_id
    timestamp: ts
    columns:
      card_id: string
      amount: double
      currency: string
      status: string
      quantity: string
      merchant: {{ country: string }}
    select:
      amount_eur: "CASE WHEN currency = 'USD' THEN amount * 0.9 ELSE amount END"
      abroad: "merchant.country <> 'DE'"
      card_merchant: "card_id || ':' || merchant['country']"
      units: "CAST(quantity AS BIGINT)"
  accounts:
    format: debezium
    key: id
    columns: {{ status: string, balance: double }}
    # computed into each row after unavailable (TOAST) columns are filled
    select:
      balance_k: "balance / 1000"
      tier: "CASE WHEN balance > 200 THEN 'gold' ELSE 'basic' END"
entities:
  card: {{ key: card_id }}
  card_merchant: {{ key: card_merchant }}
  branch: {{ key: branch }}
feature_sets:
  cards:
    entity: card
    source: tx
    features: [abroad]
    aggregations:
      - {{ column: amount_eur, functions: [sum, max], windows: [1d] }}
      - {{ column: amount, name: declined, where: "status = 'declined'", functions: [count, sum], windows: [1d] }}
      - {{ column: units, functions: [sum], windows: [1d] }}
    derived:
      declined_mean_1d: "declined_sum_1d / declined_count_1d"
      declined_share_1d: "CAST(declined_count_1d AS DOUBLE) / amount_eur_max_1d > 0.1"
  foreign:
    entity: card
    source: tx
    where: "abroad AND amount_eur > 10"
    aggregations:
      - {{ column: amount_eur, functions: [count, sum], windows: [1d] }}
  # conditions over joined columns (one of them selected on the table), run after the join
  gold_cards:
    entity: card
    source: tx
    join:
      - {{ table: accounts, on: account, columns: [tier, balance] }}
    where: "tier = 'gold'"
    aggregations:
      - {{ column: amount, functions: [count, sum], windows: [1d] }}
      - {{ column: amount, name: rich, where: "balance > 250 AND amount > 10", functions: [count], windows: [1d] }}
  pairs:
    entity: card_merchant
    source: tx
    aggregations:
      - {{ column: amount, functions: [count], windows: [1d] }}
  rich_branches:
    entity: branch
    source: accounts
    where: "status = 'active' AND balance > 100"
    aggregations:
      - {{ column: balance, functions: [count, sum] }}
      # one aggregation's own where, over a selected column, aggregating a selected column
      - {{ column: balance_k, name: gold, where: "tier = 'gold'", functions: [count, sum] }}
on_demand_features:
  risk:
    request: {{ amount: double }}
    features:
      amount_vs_max_1d: "request.amount / cards.amount_eur_max_1d"
      alarming: "cards.declined_count_1d > 1 AND request.amount > 30"
models:
  scorer: {{ features: [cards.amount_eur_max_1d, risk.amount_vs_max_1d] }}
feature_vectors:
  risky: {{ features: [cards.amount_eur_max_1d, risk.amount_vs_max_1d] }}
  by_branch: {{ features: [rich_branches.*] }}
  by_card: {{ features: [cards.*, foreign.*] }}
  by_pair: {{ features: [pairs.*] }}
  by_gold: {{ features: [gold_cards.*] }}
"#,
        redis = common::redis_url()
    )
}

/// DuckDB's answer to the project's expressions over `good.ndjson`, per card and per pair.
const ORACLE: &str = r#"
import json, duckdb
con = duckdb.connect()
con.execute("""create view t as select *,
    case when currency = 'USD' then amount * 0.9 else amount end as amount_eur,
    merchant.country <> 'DE' as abroad,
    card_id || ':' || merchant['country'] as card_merchant,
    cast(quantity as bigint) as units
  from read_json('good.ndjson', format = 'newline_delimited', columns = {card_id: 'VARCHAR', ts: 'BIGINT',
    amount: 'DOUBLE', currency: 'VARCHAR', status: 'VARCHAR', quantity: 'VARCHAR', merchant: 'STRUCT(country VARCHAR)'})""")
cards = con.execute("""select card_id, sum(amount_eur), max(amount_eur),
    count(amount) filter (where status = 'declined'), sum(amount) filter (where status = 'declined'),
    sum(units),
    count(amount_eur) filter (where abroad and amount_eur > 10), sum(amount_eur) filter (where abroad and amount_eur > 10),
    sum(amount) filter (where status = 'declined') / nullif(count(amount) filter (where status = 'declined'), 0)
  from t group by card_id""").fetchall()
pairs = con.execute("select card_merchant, count(amount) from t where card_merchant is not null group by card_merchant").fetchall()
print(json.dumps({"cards": cards, "pairs": pairs}))
"#;

/// DuckDB's rows for `sql`, run in `root`.
fn duckdb(root: &std::path::Path, sql: &str) -> Value {
    let script = format!(
        "import os, json, duckdb; os.chdir({:?}); print(json.dumps(duckdb.sql({sql:?}).fetchall()))",
        root.display().to_string()
    );
    common::python_json(&script, &[], "")
}

/// Two-column rows as an object, first column → second.
fn rows_to_map(rows: Value) -> Value {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

#[test]
fn selects_and_wheres_match_duckdb_online_equals_offline_and_failures_are_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("fathom.yaml"), project(&common::unique("transform"))).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut rng = common::Xorshift(20);
    let (mut all, mut good) = (Vec::new(), Vec::new());
    let (mut wrong_type, mut expression_error) = (0, 0);
    for i in 0..2_000u64 {
        let card = format!("c{}", rng.below(25));
        // out of order, within the last six hours
        let ts = now - 1_000 - rng.below(6 * 3_600_000) as i64;
        let currency = ["EUR", "USD", "GBP"][rng.below(3) as usize];
        let status = ["ok", "ok", "declined", "review"][rng.below(4) as usize];
        let country = ["DE", "FR", "US", "DE"][rng.below(4) as usize];
        let mut event = json!({
            "card_id": card,
            "ts": ts,
            "account": i % 40,
            "amount": (rng.normal(40.0, 30.0) * 100.0).round() / 100.0,
            "currency": currency,
            "status": status,
            "quantity": format!("{}", rng.below(5)),
            "merchant": {"country": country, "mcc": 5411},
        });
        match i % 97 {
            // nulls and absent fields: SQL semantics, not failures
            1 => event["amount"] = Value::Null,
            2 => drop(event.as_object_mut().unwrap().remove("merchant")),
            3 => event["currency"] = Value::Null,
            4 => event["quantity"] = Value::Null,
            // a value of another type than declared: wrong_type
            5 => {
                event["amount"] = json!("n/a");
                wrong_type += 1;
            }
            // a cast that cannot succeed: expression_error
            6 => {
                event["quantity"] = json!("three");
                expression_error += 1;
            }
            _ => {}
        }
        if !matches!(i % 97, 5 | 6) {
            good.push(event.to_string());
        }
        all.push(event.to_string());
    }
    std::fs::write(root.join("events.ndjson"), all.join("\n")).unwrap();
    // account rows moving in and out of the where (status, balance), between branches, deleted
    let mut accounts: BTreeMap<i64, Value> = BTreeMap::new();
    // every version of each account: (commit ms, row), for the joins' brute force
    let mut versions: BTreeMap<i64, Vec<(i64, Value)>> = BTreeMap::new();
    let mut changes = Vec::new();
    for i in 0..600i64 {
        let id = rng.below(40) as i64;
        let at = now - 3_600_000 + i * 1_000;
        let status = ["active", "closed"][rng.below(2) as usize];
        let row = json!({"id": id, "branch": format!("b{}", rng.below(5)), "status": status, "balance": rng.below(300) as f64});
        let (op, before, after) = match (rng.below(10), accounts.get(&id)) {
            (0, Some(old)) => ("d", old.clone(), Value::Null),
            (_, old) => ("u", old.cloned().unwrap_or(Value::Null), row.clone()),
        };
        versions.entry(id).or_default().push((at, after.clone()));
        match op {
            "d" => drop(accounts.remove(&id)),
            _ => drop(accounts.insert(id, row)),
        }
        changes.push(
            json!({"before": before, "after": after, "op": op, "source": {"ts_ms": at, "lsn": i + 1}}).to_string(),
        );
    }
    std::fs::write(root.join("accounts.ndjson"), changes.join("\n")).unwrap();
    let (ok, out) = fathom(root, &["replay", "accounts.ndjson", "--source", "accounts", "-c", "fathom.yaml"]);
    assert!(ok, "{out}");
    std::fs::write(root.join("good.ndjson"), good.join("\n")).unwrap();
    let (ok, out) = fathom(root, &["validate", "-c", "fathom.yaml"]);
    assert!(ok, "{out}");
    let (ok, out) = fathom(root, &["replay", "events.ndjson", "--source", "tx", "-c", "fathom.yaml"]);
    let dead = wrong_type + expression_error;
    assert!(ok && out.contains(&format!("{} accepted, {dead} dead-lettered", good.len())), "{out}");

    // every refused record is a dead letter with its reason, naming the field or the expression
    let letters: Vec<Value> = std::fs::read_dir(root.join("dlq"))
        .unwrap()
        .flat_map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let reasons: BTreeMap<String, usize> = letters.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l["reason"].as_str().unwrap().to_string()).or_default() += 1;
        m
    });
    assert_eq!(reasons.get("wrong_type"), Some(&wrong_type), "{letters:?}");
    assert_eq!(reasons.get("expression_error"), Some(&expression_error), "{letters:?}");
    let expression = letters.iter().find(|l| l["reason"] == "expression_error").unwrap();
    let message = expression["message"].as_str().unwrap();
    assert!(message.contains("select.units") && message.contains("CAST(quantity AS BIGINT)"), "{message}");
    let wrong = letters.iter().find(|l| l["reason"] == "wrong_type").unwrap();
    assert!(wrong["message"].as_str().unwrap().contains("amount"), "{wrong}");

    // offline, at a time after every event, against DuckDB
    let at = chrono::DateTime::from_timestamp_millis(now).unwrap().to_rfc3339();
    let cards: Vec<String> = (0..25).map(|c| format!("c{c}")).collect();
    let csv: String = cards.iter().map(|c| format!("{c},{at}\n")).collect();
    std::fs::write(root.join("cards.csv"), format!("card_id,t\n{csv}")).unwrap();
    let dataset = |input: &str, vector: &str, output: &str| {
        let args = ["dataset", "-c", "fathom.yaml", "--input", input, "--timestamp", "t", "--vector", vector];
        let (ok, out) = fathom(root, &[&args[..], &["--output", output]].concat());
        assert!(ok, "{out}");
    };
    dataset("cards.csv", "by_card", "cards.parquet");
    let oracle =
        common::python_json(&format!("import os; os.chdir({:?})\n{ORACLE}", root.display().to_string()), &[], "");
    let read = duckdb(root, "select card_id, cards__amount_eur_sum_1d, cards__amount_eur_max_1d, cards__declined_count_1d, cards__declined_sum_1d, cards__units_sum_1d, foreign__amount_eur_count_1d, foreign__amount_eur_sum_1d, cards__declined_mean_1d from read_parquet('cards.parquet')");
    let expected: BTreeMap<String, Vec<Value>> = oracle["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r.as_array().unwrap()[1..].to_vec()))
        .collect();
    let mut compared = 0;
    for row in read.as_array().unwrap() {
        let card = row[0].as_str().unwrap();
        let want = &expected[card];
        for (k, (got, want)) in row.as_array().unwrap()[1..].iter().zip(want).enumerate() {
            // a count over nothing is 0 in both; a sum over nothing is NULL in DuckDB
            let want = if want.is_null() && k == 6 { json!(0) } else { want.clone() };
            assert!(close(got, &want) || (want.is_null() && got == &json!(0.0)), "{card} column {k}: {got} vs {want}");
            compared += 1;
        }
    }
    assert_eq!(compared, 25 * 8);

    // on-demand features offline: the request field from each input row, the stored feature
    // as of the row's time — the on-demand input is read even though only its quotient is asked
    let args = ["dataset", "-c", "fathom.yaml", "--input", "cards.csv", "--timestamp", "t", "--vector", "risky"];
    let (ok, out) = fathom(root, &[&args[..], &["--output", "risky.parquet"]].concat());
    assert!(
        !ok && out.contains("\"amount\"") && out.contains("request field"),
        "a missing request column is named: {out}"
    );
    let amounts: Vec<f64> = (0..cards.len()).map(|i| (i * 7 % 50) as f64 - 5.0).collect();
    let csv: String = cards.iter().zip(&amounts).map(|(c, a)| format!("{c},{at},{a}\n")).collect();
    std::fs::write(root.join("requests.csv"), format!("card_id,t,amount\n{csv}")).unwrap();
    dataset("requests.csv", "risky", "risky.parquet");
    let risky = duckdb(root, "select card_id, amount, risk__amount_vs_max_1d from read_parquet('risky.parquet')");
    let mut checked = 0;
    for row in risky.as_array().unwrap() {
        // CSV cells are text; the view declares `amount: double`
        let (card, amount) = (row[0].as_str().unwrap(), row[1].as_str().unwrap().parse::<f64>().unwrap());
        let want = match expected.get(card).and_then(|r| r[1].as_f64()) {
            Some(max) if max != 0.0 => json!(amount / max),
            _ => Value::Null, // no events, or a division by zero: NULL
        };
        assert!(close(&row[2], &want), "{card}: risk.amount_vs_max_1d {} vs {want}", row[2]);
        checked += usize::from(!want.is_null());
    }
    assert!(checked >= 10, "only {checked} rows had a value to compare: {risky}");

    // conditions over joined columns: per card, the events whose account row as of the
    // event's time is gold (a selected column of the table), against a brute force
    dataset("cards.csv", "by_gold", "gold.parquet");
    let read = duckdb(root, "select card_id, gold_cards__amount_count_1d, gold_cards__amount_sum_1d, gold_cards__rich_count_1d from read_parquet('gold.parquet')");
    let mut want: BTreeMap<String, (u64, f64, u64)> = BTreeMap::new();
    for event in &good {
        let event: Value = serde_json::from_str(event).unwrap();
        let ts = event["ts"].as_i64().unwrap();
        let row = versions[&event["account"].as_i64().unwrap()].iter().rev().find(|(at, _)| *at <= ts).map(|v| &v.1);
        let Some(balance) = row.and_then(|r| r["balance"].as_f64()) else { continue };
        let Some(amount) = event["amount"].as_f64().filter(|_| balance > 200.0) else { continue };
        let card = want.entry(event["card_id"].as_str().unwrap().to_string()).or_default();
        card.0 += 1;
        card.1 += amount;
        card.2 += u64::from(balance > 250.0 && amount > 10.0);
    }
    assert!(want.values().map(|w| w.0).sum::<u64>() > 20, "the join must find gold rows: {want:?}");
    for row in read.as_array().unwrap() {
        let Some(&(count, sum, rich)) = want.get(row[0].as_str().unwrap()) else {
            // no gold event: nothing reached the feature set, so the card is not found
            assert!(row[1].is_null() || row[1] == json!(0), "{row}");
            continue;
        };
        assert_eq!(row[1], json!(count), "{row}");
        assert!(close(&row[2], &json!(sum)), "{row} vs {sum}");
        assert_eq!(row[3], json!(rich), "{row}");
    }
    let (ok, out) = fathom(root, &["consistency", "-c", "fathom.yaml", "--vector", "by_gold", "--sample", "25"]);
    for feature in ["amount_count_1d", "amount_sum_1d", "rich_count_1d"] {
        assert!(ok && out.contains(&format!("gold_cards.{feature}: 25 compared, 0 mismatches")), "{out}");
    }

    // the composite key from a select
    let pairs: Vec<(String, i64)> = oracle["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    let csv: String = pairs.iter().map(|(p, _)| format!("{p},{at}\n")).collect();
    std::fs::write(root.join("pairs.csv"), format!("card_merchant,t\n{csv}")).unwrap();
    dataset("pairs.csv", "by_pair", "pairs.parquet");
    let read =
        rows_to_map(duckdb(root, "select card_merchant, pairs__amount_count_1d from read_parquet('pairs.parquet')"));
    assert!(pairs.len() > 50, "{pairs:?}");
    for (pair, count) in &pairs {
        assert_eq!(read[pair], json!(count), "{pair}");
    }

    // online (Redis, written by the replay) against the same recomputed offline
    let (ok, out) = fathom(root, &["consistency", "-c", "fathom.yaml", "--vector", "by_card", "--sample", "25"]);
    assert!(ok, "{out}");
    let features = ["cards.abroad", "cards.declined_count_1d", "cards.units_sum_1d", "foreign.amount_eur_sum_1d"];
    for feature in features.iter().chain(&["cards.declined_mean_1d", "cards.declined_share_1d"]) {
        assert!(out.contains(&format!("{feature}: 25 compared, 0 mismatches")), "{feature}: {out}");
    }
    let (ok, out) = fathom(root, &["consistency", "-c", "fathom.yaml", "--vector", "by_pair", "--sample", "20"]);
    assert!(ok && out.contains("pairs.amount_count_1d: 20 compared, 0 mismatches"), "{out}");

    // a CDC table's where: rows entering and leaving it, offline and online, against the final rows
    let branches: String = (0..5).map(|b| format!("b{b},{at}\n")).collect();
    std::fs::write(root.join("branches.csv"), format!("branch,t\n{branches}")).unwrap();
    dataset("branches.csv", "by_branch", "branches.parquet");
    let read = duckdb(root, "select branch, rich_branches__balance_count, rich_branches__balance_sum, rich_branches__gold_count, rich_branches__gold_sum from read_parquet('branches.parquet')");
    for row in read.as_array().unwrap() {
        let members: Vec<f64> = accounts
            .values()
            .filter(|r| r["branch"] == row[0] && r["status"] == "active" && r["balance"].as_f64().unwrap() > 100.0)
            .map(|r| r["balance"].as_f64().unwrap())
            .collect();
        assert_eq!(row[1], json!(members.len()), "{row}");
        assert!(close(&row[2], &json!(members.iter().sum::<f64>())), "{row}");
        let gold: Vec<f64> = members.iter().filter(|b| **b > 200.0).map(|b| b / 1000.0).collect();
        assert_eq!(row[3], json!(gold.len()), "{row}");
        assert!(close(&row[4], &json!(gold.iter().sum::<f64>())), "{row}");
    }
    let (ok, out) = fathom(root, &["consistency", "-c", "fathom.yaml", "--vector", "by_branch", "--sample", "5"]);
    for feature in ["balance_count", "gold_count", "gold_sum"] {
        assert!(ok && out.contains(&format!("rich_branches.{feature}: 5 compared, 0 mismatches")), "{out}");
    }
}

/// The same project served, with the source on a Kafka topic: records pushed over HTTP and
/// produced to Kafka, of which some fail an expression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_errors_are_dead_letters_through_http_push_and_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let name = common::unique("transform_serve");
    let topic = common::unique("tx");
    common::create_topics(&[&topic], 2).await;
    let port = common::free_port();
    // (paths in the file are the process's: the temporary directory's, not the crate's)
    let offline = format!("offline: {{ parquet: {{ path: \"{}/offline\" }} }}", dir.path().display());
    let yaml = project(&name)
        .replace("offline: { parquet: { path: offline } }", &offline)
        .replace("    key: card_id\n    timestamp: ts\n", &format!("    kafka: {{ topic: \"{topic}\" }}\n    key: card_id\n    timestamp: ts\n"))
        .replace(
            "  dead_letters: { path: dlq }\n",
            &format!(
                "  kafka: {{ bootstrap_servers: \"{}\", group_id: \"{name}\" }}\nserver: {{ listen: \"127.0.0.1:{port}\" }}\nprocessing: {{ checkpoint_interval: 1s }}\n",
                common::kafka()
            ),
        );
    std::fs::write(dir.path().join("fathom.yaml"), &yaml).unwrap();
    let config = dir.path().join("fathom.yaml");
    let mut fathom =
        common::Fathom::start(&["serve", "-c", config.to_str().unwrap()], port, &dir.path().join("fathom.log"));
    fathom.wait_ready().await;
    let now = chrono::Utc::now().timestamp_millis();
    let event = |card: &str, status: &str, quantity: &str| {
        json!({"card_id": card, "ts": now - 1_000, "amount": 20.0, "currency": "EUR", "status": status,
               "quantity": quantity, "merchant": {"country": "FR"}})
        .to_string()
    };
    // over HTTP: the answer names the expression, record by record
    let body = [event("p1", "declined", "1"), event("p1", "ok", "many"), event("p1", "declined", "2")].join("\n");
    let client = fathom_monitor::https::default_client();
    let r = client.post(fathom.url("/v1/push/tx")).body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let summary: Value = r.json().await.unwrap();
    assert_eq!((summary["accepted"].clone(), summary["dead_lettered"].clone()), (json!(2), json!(1)), "{summary}");
    let error = &summary["errors"][0];
    assert_eq!(
        (error["index"].clone(), error["reason"].clone()),
        (json!(2), json!("expression_error")),
        "line 2: {summary}"
    );
    assert!(error["message"].as_str().unwrap().contains("select.units (CAST(quantity AS BIGINT))"), "{summary}");
    // a composite key a select made too long: key_too_long naming it, as for the source's key
    let long = json!({"card_id": "p2", "ts": now - 1_000, "amount": 1.0, "merchant": {"country": "X".repeat(600)}});
    let r = client.post(fathom.url("/v1/push/tx")).body(long.to_string()).send().await.unwrap();
    let summary: Value = r.json().await.unwrap();
    assert_eq!(summary["errors"][0]["reason"], "key_too_long", "{summary}");
    assert!(summary["errors"][0]["message"].as_str().unwrap().contains("\"card_merchant\" is 603 bytes"), "{summary}");
    let features: Value = common::get_json(fathom.url("/v1/features/cards/p1")).await;
    let value = |name: &str| {
        features["features"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap()["value"].clone()
    };
    assert_eq!(
        (value("declined_count_1d"), value("units_sum_1d"), value("abroad")),
        (json!(2), json!(3.0), json!(true))
    );
    assert_eq!(value("declined_mean_1d"), json!(20.0));
    // on-demand features: request fields beside the keys, stored features read with them
    let lookup = json!({"features": ["risk.amount_vs_max_1d", "risk.alarming", "cards.amount_eur_max_1d"],
                        "entities": {"card_id": ["p1", "nobody"], "amount": [50.0, 5.0]}});
    let r = client.post(fathom.url("/v1/features")).json(&lookup).send().await.unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["rows"][0]["values"], json!([2.5, true, 20.0]), "{answer}");
    // an unknown card: NULL where the value needs its features; `NULL AND false` is false (SQL)
    assert_eq!(answer["rows"][1]["values"], json!([null, false, null]), "{answer}");
    assert_eq!(answer["rows"][1]["statuses"], json!(["NOT_FOUND", "PRESENT", "NOT_FOUND"]), "{answer}");
    let missing = json!({"features": ["risk.alarming"], "entities": {"card_id": ["p1"]}});
    let r = client.post(fathom.url("/v1/features")).json(&missing).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "missing_request_field", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("\"amount\""), "{answer}");
    let feast = json!({"features": ["risk:amount_vs_max_1d"], "entities": {"card_id": ["p1"], "amount": [10.0]}});
    let r = client.post(fathom.url("/get-online-features")).json(&feast).send().await.unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["results"][1]["values"], json!([0.5]), "{answer}");
    // a model's vector: the on-demand feature from the model request's `request` fields
    let enrich = json!({"model": "scorer", "entities": {"card_id": "p1"}, "request": {"amount": 30.0}});
    let r = client.post(fathom.url("/v1/enrich")).json(&enrich).send().await.unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["features"]["risk.amount_vs_max_1d"], json!(1.5), "{answer}");
    // Feast's route serves the derived features too
    let feast = json!({"features": ["cards:declined_mean_1d", "cards:declined_count_1d"], "entities": {"card_id": ["p1", "nobody"]}});
    let r = client.post(fathom.url("/get-online-features")).json(&feast).send().await.unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["results"][1]["values"], json!([20.0, null]), "{answer}");
    assert_eq!(answer["results"][1]["statuses"], json!(["PRESENT", "NOT_FOUND"]), "{answer}");

    // over Kafka: on <topic>.dlq with reason expression_error; the stream flows on
    let records: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            let quantity = if i % 5 == 0 { "x" } else { "1" };
            ("k1".to_string(), event("k1", "declined", quantity).into_bytes())
        })
        .collect();
    let last = common::produce(&topic, &records).await;
    common::wait_applied(&name, &topic, &last, &fathom.log).await;
    // (the pushed record's dead letter is there too: the source's dead letters go to its topic's)
    // (with the pushed key_too_long one)
    let letters = common::consume(&format!("{topic}.dlq"), 4).await;
    let mut refused: Vec<(String, String)> = letters
        .iter()
        .map(|(headers, _, payload)| {
            let record = serde_json::from_slice::<Value>(payload).unwrap();
            (headers["fathom.reason"].clone(), record["quantity"].as_str().unwrap_or("-").to_string())
        })
        .collect();
    refused.sort();
    let expected =
        [("expression_error", "many"), ("expression_error", "x"), ("expression_error", "x"), ("key_too_long", "-")];
    assert_eq!(refused, expected.map(|(r, q)| (r.to_string(), q.to_string())));
    let features: Value = common::get_json(fathom.url("/v1/features/cards/k1")).await;
    let count = features["features"].as_array().unwrap().iter().find(|f| f["name"] == "declined_count_1d").unwrap();
    assert_eq!(count["value"], json!(8), "{features}");
    fathom.stop();
}
