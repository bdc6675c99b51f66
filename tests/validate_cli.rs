//! `fathom validate`: every problem with its path, exit 1; shipped configs pass.

use std::process::Command;

fn validate(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fathom")).args(["validate", "-c"]).arg(path).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `fathom validate` on `yaml`, which must fail: its report.
fn problems_in(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fathom.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1, "{stderr}");
    stderr
}

/// The report's line about `path`.
fn line<'a>(report: &'a str, path: &str) -> &'a str {
    report.lines().find(|l| l.contains(&format!("{path}: "))).unwrap_or_else(|| panic!("no {path} in {report}"))
}

#[test]
fn reports_every_problem_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fathom.yaml");
    std::fs::write(
        &path,
        "project: p\nsources:\n  tx: { key: card_id, timestmap: ts }\n  ok: { key: card_id }\nentities:\n  card: { key: card_id }\nfeature_sets:\n  f:\n    entity: card\n    source: ok\n    ttl: 7y\n    aggregations:\n      - { column: amount, functions: [sum], windows: [10m, 1h, 24x], period: 1m }\n",
    )
    .unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(stderr.contains("sources.tx.timestmap: unknown field `timestmap`, expected one of"), "{stderr}");
    assert!(stderr.contains("feature_sets.f.ttl: \"7y\" is not a duration (use"), "{stderr}");
    assert!(stderr.contains("feature_sets.f.aggregations[0].windows[2]: \"24x\" is not a duration"), "{stderr}");
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fathom.yaml");
    std::fs::write(&path, "project: p\nsources: [\n").unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1);
    assert!(stderr.contains("not valid YAML") && stderr.contains("line"), "{stderr}");
}

#[test]
fn every_shipped_config_validates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in std::fs::read_dir(examples).unwrap().flatten() {
        let (code, stdout, stderr) = validate(&file.path());
        assert_eq!(code, 0, "{}: {stderr}", file.path().display());
        assert!(stdout.contains(": ok"), "{stdout}");
    }
}

#[test]
fn every_expression_problem_has_its_path_message_and_hint() {
    let stderr = problems_in(
        r#"project: p
sources:
  tx:
    key: card_id
    columns: { amount: double, status: string, merchant: { country: string }, seen: datetime }
    select:
      amount_usd: "amount * "
      is_big: "amont > 100"
      country: "merchant.country"
      label: "upper(status)"
      mixed: "amount AND status"
  accounts:
    format: debezium
    key: id
    columns: { balance: double, status: string }
    select:
      tier: "CASE WHEN balance > 200 THEN 'gold' ELSE 'basic' END"
      doubled: "balanse * 2"
entities:
  card: { key: card_id }
  branch: { key: branch }
feature_sets:
  branches:
    entity: branch
    source: accounts
    aggregations:
      - { column: balance, name: gold, where: "tier = 'gold'", functions: [sum] }
      - { column: balance, name: odd, where: "tier = 'x' AND nope", functions: [sum] }
      - { column: balance, where: "status = 'open'", functions: [count] }
  card_activity:
    entity: card
    source: tx
    where: "amount + 1"
    aggregations:
      - { column: amount, functions: [sum], windows: [1h] }
      - { column: amount, name: declined, where: "status = 1 AND nope", functions: [count], windows: [1h] }
      - { column: label, functions: [mean], windows: [1h] }
      - { column: amount, where: "status = 'declined'", functions: [count], windows: [1d] }
"#,
    );
    let line = |path: &str| line(&stderr, path);
    // an unknown type, with the types there are
    assert!(line("sources.tx.columns.seen").contains("unknown type \"datetime\" (use double, bigint"), "{stderr}");
    // a syntax error, with an example of an expression
    assert!(line("sources.tx.select.amount_usd").contains("hint: write one SQL expression"), "{stderr}");
    // an unknown column, with the columns there are and where to declare more
    let unknown = line("sources.tx.select.is_big");
    assert!(unknown.contains("amont") && unknown.contains("the source's columns: amount (Float64)"), "{stderr}");
    // a type mismatch, with the columns' types
    let mixed = line("sources.tx.select.mixed");
    assert!(mixed.contains("Float64 AND Utf8") && mixed.contains("status (Utf8)"), "{stderr}");
    assert!(unknown.contains("declare others under sources.tx.columns"), "{stderr}");
    // a condition that is not a condition, a type mismatch, an unknown column in a condition
    assert!(line("feature_sets.card_activity.where").contains("must be true or false"), "{stderr}");
    assert!(line("feature_sets.card_activity.aggregations[1].where").contains("nope"), "{stderr}");
    // an aggregation over a non-numeric expression
    let label = line("feature_sets.card_activity.aggregations[2].column");
    assert!(
        label.contains("label is Utf8, but mean needs numbers") && label.contains("CAST(label AS DOUBLE)"),
        "{stderr}"
    );
    // a filtered aggregation needs a name for its features
    assert!(line("feature_sets.card_activity.aggregations[3].name").contains("needs a `name`"), "{stderr}");
    assert!(!stderr.contains("select.country") && !stderr.contains("select.label"), "valid ones pass: {stderr}");
    // over a CDC table: its selects, and an aggregation's own where over a selected column
    assert!(line("sources.accounts.select.doubled").contains("balanse"), "{stderr}");
    assert!(line("feature_sets.branches.aggregations[1].where").contains("nope"), "{stderr}");
    assert!(line("feature_sets.branches.aggregations[2].name").contains("needs a `name`"), "{stderr}");
    assert!(
        !stderr.contains("branches.aggregations[0]") && !stderr.contains("select.tier"),
        "valid ones pass: {stderr}"
    );
}

#[test]
fn on_demand_features_are_checked_against_the_request_and_the_stored_features() {
    let stderr = problems_in(
        r#"project: p
sources:
  tx: { key: card_id }
entities:
  card: { key: card_id }
feature_sets:
  cards:
    entity: card
    source: tx
    aggregations: [{ column: amount, functions: [count, mean], windows: [1h] }]
on_demand_features:
  risk:
    request: { amount: double, when: datetime }
    features:
      ratio: "request.amount / cards.amount_mean_1h"
      typo: "request.amount / cards.amount_mean_24h"
      absent: "request.country = 'DE'"
  cards:
    features: { x: "1" }
"#,
    );
    let line = |path: &str| line(&stderr, path);
    assert!(line("on_demand_features.risk.request.when").contains("unknown type"), "{stderr}");
    let typo = line("on_demand_features.risk.features.typo");
    assert!(typo.contains("amount_mean_24h") && typo.contains("<feature_set>.<feature>"), "{stderr}");
    assert!(line("on_demand_features.risk.features.absent").contains("country"), "{stderr}");
    assert!(line("on_demand_features.cards").contains("a feature set, a table or `request` has this name"), "{stderr}");
    assert!(!stderr.contains("features.ratio"), "the valid one passes: {stderr}");
}
