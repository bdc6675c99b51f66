use super::*;
use std::path::Path;

fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(_) => Vec::new(),
        Err(Parsed::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        Err(Parsed::Syntax(e)) => vec![format!("syntax: {e}")],
    }
}

#[test]
fn every_example_config_in_the_repo_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let mut seen = 0;
    for dir in ["examples", "deploy"] {
        let Ok(files) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let named = path.file_name().is_some_and(|n| n.to_string_lossy().contains("fathom"));
            if path.extension().is_some_and(|e| e == "yaml") && named {
                load(&path).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 1, "no example configs found");
}

#[test]
fn reports_every_problem_at_once_with_paths() {
    let found = problems(
        r#"
project: payments
colour: blue
stores:
  online: { redis: {} }
sources:
  tx: { kafka: { topic: tx }, key: card_id, timestamp: ts, extra: 1 }
  ok: { key: card_id }
entities:
  card: { key: card_id }
feature_sets:
  a:
    entity: cardd
    source: ok
    aggregations:
      - { column: amount, functions: [sum, median], windows: [10m, 24x] }
  b:
    entity: card
    source: nope
    features: [x]
"#,
    );
    let expected = [
        "colour: unknown key",
        "stores.online.redis: set exactly one of `url`",
        "sources.tx.extra: unknown field `extra`",
        "feature_sets.a.entity: unknown entity \"cardd\" (declared: card)",
        "feature_sets.a.aggregations[0].functions[1]: unknown function \"median\"",
        "feature_sets.a.aggregations[0].windows[1]: \"24x\" is not a duration (use",
        "feature_sets.b.source: unknown source \"nope\" (declared: ok)",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f.starts_with(e)), "missing {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn kafka_sources_need_a_broker() {
    let found = problems(
        "project: p\nsources:\n  tx: { kafka: { topic: tx }, key: card_id }\nentities:\n  acct: { key: account_id }\nfeature_sets:\n  f: { entity: acct, source: tx, features: [a] }\n",
    );
    // a feature set may group by another field than the source's key (here account_id)
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("sources.tx.kafka: a Kafka source needs"));
}

#[test]
fn syntax_errors_carry_a_line() {
    let Err(Parsed::Syntax(e)) = parse("project: [unclosed\n") else { panic!("expected a syntax error") };
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn kafka_options_are_checked_by_librdkafka() {
    let found = problems(
        "project: p\nstores:\n  kafka:\n    bootstrap_servers: 127.0.0.1:9092\n    options: { security.protocl: plaintext, security.protocol: carrier-pigeon, sasl.password: env:NOPE, fetch.min.bytes: '1' }\n",
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found.iter().any(|f| f.starts_with("stores.kafka.options.security.protocl: librdkafka refuses it")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("stores.kafka.options.security.protocol: librdkafka refuses it")),
        "{found:#?}"
    );
}

#[test]
fn kafka_options_that_only_make_sense_together_are_checked_together() {
    // SASL_SSL alone would mean GSSAPI, which this librdkafka lacks; with SCRAM it is fine
    let sasl = "project: p\nstores:\n  kafka:\n    bootstrap_servers: 127.0.0.1:9092\n    options: { security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, sasl.username: u, sasl.password: env:NOPE }\n";
    assert_eq!(problems(sasl), Vec::<String>::new());
    // a mechanism this build lacks is refused, naming it
    let found = problems(
        "project: p\nstores:\n  kafka:\n    bootstrap_servers: 127.0.0.1:9092\n    options: { security.protocol: SASL_PLAINTEXT, sasl.mechanism: GSSAPI }\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("stores.kafka.options.") && found[0].contains("GSSAPI"), "{found:#?}");
}

#[test]
fn cdc_tables_take_the_commit_time_and_only_retractable_window_less_aggregations() {
    let found = problems(
        "project: p\nsources:\n  customers: { format: debezium, key: id, timestamp: updated_at }\n  tx: { key: card }\nentities:\n  customer: { key: id }\n  card: { key: card }\nfeature_sets:\n  f: { entity: customer, source: customers, ttl: 1d, features: [segment], aggregations: [{ column: balance, functions: [sum, max], windows: [1h] }] }\n  g: { entity: card, source: tx, features: [x], join: [{ table: tx, on: customer, columns: [segment] }] }\n",
    );
    let expected = [
        "sources.customers.timestamp: a Debezium source's event time is the commit time",
        "feature_sets.f.ttl: aggregations over a CDC table hold its current rows",
        "feature_sets.f.features: a CDC table's columns are looked up",
        "feature_sets.f.aggregations[0].windows: aggregations over a CDC table cover its current rows",
        "feature_sets.f.aggregations[0].functions[1]: max cannot be retracted",
        "feature_sets.g.join[0].table: \"tx\" is not a CDC table (format: debezium sources: customers)",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f.starts_with(e)), "missing {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn joins_and_table_aggregations_compile() {
    let project = parse(
        "project: p\nsources:\n  customers: { format: debezium, key: id }\n  tx: { key: card }\nentities:\n  branch: { key: branch }\n  card: { key: card }\n  country: { key: country }\nfeature_sets:\n  by_branch: { entity: branch, source: customers, filter: { status: active }, aggregations: [{ column: balance, functions: [count, sum] }] }\n  cards: { entity: card, source: tx, aggregations: [{ column: amount, functions: [sum], windows: [1h] }], join: [{ table: customers, on: customer, columns: [segment] }] }\n  countries: { entity: country, source: tx, aggregations: [{ column: amount, functions: [count], windows: [1d] }], join: [{ table: customers, on: customer, columns: [country], history: 2d }] }\n",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(project.table_plans.len(), 1);
    assert_eq!(project.table_plans[0].aggregations[1].0, "balance_sum");
    assert_eq!(project.plans.len(), 2);
    let joins = project.joins();
    assert_eq!(joins[1].len(), 1, "one join per (table, key field), columns merged");
    assert_eq!(joins[1][0].columns, ["segment", "country"]);
    assert_eq!(project.table_history_ms()[0], 2 * 86_400_000, "the longest history of the joins");
}

#[test]
fn feature_vectors_name_what_does_not_resolve() {
    let found = problems(
        "project: p\nsources:\n  customers: { format: debezium, key: id }\n  tx: { key: card }\nentities:\n  card: { key: card }\nfeature_sets:\n  cards: { entity: card, source: tx, features: [m] }\nfeature_vectors:\n  ok: { features: [cards.*, cards.m, customers.segment] }\n  bad: { features: [cards.x, nope.y, customers.*, plain] }\n",
    );
    let expected = [
        "feature_vectors.bad.features[0]: \"cards.x\": feature set \"cards\" has no feature \"x\" (it has m)",
        "feature_vectors.bad.features[1]: \"nope.y\": no feature set or CDC table named \"nope\"",
        "feature_vectors.bad.features[2]: \"customers.*\": a CDC table's columns must be named one by one",
        "feature_vectors.bad.features[3]: \"plain\" is not a feature reference",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f.starts_with(e)), "missing {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn auth_tokens_are_hashes_or_secrets_from_env_or_files() {
    let found = problems(
        "project: p\nserver:\n  request_timeout: 5x\n  auth:\n    tokens:\n      - { name: a, token: plain-text, scopes: [] }\n      - { name: b, sha256: abc, scopes: [read] }\n      - { name: c, token: env:TOKEN, scopes: [push, admin] }\n",
    );
    let expected = [
        "server.auth.tokens[0].token: must be env:NAME or file:/path",
        "server.auth.tokens[0].scopes: list at least one",
        "server.auth.tokens[1].sha256: must be 64 hex digits",
        "server.request_timeout: \"5x\" is not a duration",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f.starts_with(e)), "missing {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn models_resolve_features_and_check_imputation_and_endpoints() {
    let found = problems(
        "project: p\nsources:\n  tx: { key: card }\nentities:\n  card: { key: card }\nfeature_sets:\n  cards: { entity: card, source: tx, features: [m] }\nmodels:\n  fraud:\n    features: [cards.m, cards.x]\n    request_fields: [channel]\n    impute: { cards.m: { reference: average }, channel: web, other: 1 }\n    endpoint: { url: \"grpc://model:8443/infer\", timeout: 2q }\n  https:\n    features: [cards.m]\n    endpoint: { url: \"https://model:8443/infer\", tls: { ca: /nonexistent/ca.pem } }\n  plain:\n    features: [cards.m]\n    endpoint: { url: \"http://model:8080/infer\", tls: { cert: /c.pem } }\n",
    );
    let expected = [
        "models.fraud.features[1]: \"cards.x\": feature set \"cards\" has no feature \"x\"",
        "models.fraud.impute.cards.m: `reference` must be mean, median or mode",
        "models.fraud.impute.other: not one of the model's features",
        "models.fraud.endpoint.url: \"grpc://model:8443/infer\" must be an http:// or https:// URL",
        "models.https.endpoint.tls.ca: reading /nonexistent/ca.pem",
        "models.plain.endpoint.tls: `tls` applies to https:// URLs only",
        "models.fraud.endpoint.timeout: \"2q\" is not a duration",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f.starts_with(e)), "missing {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn monitoring_settings_are_checked_with_paths() {
    let found = problems(
        r#"
project: p
models:
  fraud:
    features: []
    labels: { max_delay: 7x }
    monitoring: { window: 10m, sliding: 25m, drift: { possible: 0.8, detected: 0.7 } }
    alerts:
      - { metric: accurcy, op: "<", threshold: 0.9, webhook: "http://hooks.internal/a" }
      - { when: drift_detected, webhook: "hooks.slack.com/x" }
      - { when: drift_detected, webhook: "https://hooks.slack.com/x" }
      - { when: drift_detected, webhook: "https://hooks.internal/x", tls: { cert: /c.pem } }
    retrain: { when: drift_detected }
  quiet:
    features: []
    alerts: [ { when: drift_detected, webhook: "http://x" } ]
"#,
    );
    let has = |path: &str, needle: &str| found.iter().any(|p| p.starts_with(path) && p.contains(needle));
    assert!(has("models.fraud.labels.max_delay", "not a duration"), "{found:#?}");
    assert!(has("models.fraud.alerts[1].webhook", "must be an http:// or https:// URL"), "{found:#?}");
    assert!(!found.iter().any(|p| p.starts_with("models.fraud.alerts[2]")), "https:// is fine: {found:#?}");
    assert!(has("models.fraud.alerts[3].tls", "both `cert` and `key`"), "{found:#?}");
    assert!(has("models.fraud.retrain", "kubeflow` or `webhook"), "{found:#?}");
    assert!(has("models.quiet.monitoring", "need `monitoring:`"), "{found:#?}");
    // the first settings problem stops the rest of that model's settings check
    assert!(has("models.fraud.", "sliding") || has("models.fraud.", "multiple"), "{found:#?}");
    let fixed = problems(
        "project: p\nmodels:\n  fraud:\n    features: []\n    monitoring: { sliding: 1h, drift: { possible: 0.6 } }\n    alerts:\n      - { metric: accurcy, op: \"<\", threshold: 0.9, webhook: \"http://a\" }\n",
    );
    assert!(
        fixed.iter().any(|p| p.starts_with("models.fraud.alerts[0]") && p.contains("unknown metric \"accurcy\"")),
        "{fixed:#?}"
    );
}

#[test]
fn alerts_of_one_model_need_distinct_names() {
    // the name is the `rule` tag of the alert's points: two alike would overwrite each other
    let alike = "project: p\nmodels:\n  fraud:\n    features: []\n    monitoring: {}\n    alerts:\n      - { metric: accuracy, op: \"<\", threshold: 0.9, webhook: \"http://a\" }\n      - { metric: accuracy, op: \"<\", threshold: 0.9, webhook: \"http://b\" }\n";
    let found = problems(alike);
    assert!(
        found.iter().any(|p| p.starts_with("models.fraud.alerts[1]") && p.contains("like alerts[0]")),
        "{found:#?}"
    );
    let named = alike.replace(
        "{ metric: accuracy, op: \"<\", threshold: 0.9, webhook: \"http://b\" }",
        "{ name: pager, metric: accuracy, op: \"<\", threshold: 0.9, webhook: \"http://b\" }",
    );
    assert!(problems(&named).is_empty(), "{:#?}", problems(&named));
}

/// With no `processing` section a batch is what the consumer holds (no linger: freshness,
/// issue 21); a positive linger is still taken.
#[test]
fn batches_do_not_linger_unless_asked() {
    let yaml = "project: p\nstores:\n  kafka: { bootstrap_servers: \"127.0.0.1:9092\" }\nsources:\n  tx: { kafka: { topic: tx }, key: card_id }\nentities:\n  card: { key: card_id }\nfeature_sets:\n  f: { entity: card, source: tx, features: [a] }\n";
    let project = parse(yaml).ok().unwrap_or_else(|| panic!("{:#?}", problems(yaml)));
    assert_eq!(project.processing.linger_ms, 0);
    let lingering = format!("{yaml}processing: {{ linger: 50ms }}\n");
    let lingering = parse(&lingering).ok().unwrap_or_else(|| panic!("{:#?}", problems(&lingering)));
    assert_eq!(lingering.processing.linger_ms, 50);
}
