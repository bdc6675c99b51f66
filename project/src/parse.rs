//! Loading `fathom.yaml`: each section and each named entry deserialized on its own (serde with
//! `deny_unknown_fields`, paths from `serde_path_to_error`), then cross-references and durations
//! checked; feature sets compile into the engine's plans here. Every problem is reported with its
//! path and a hint, not just the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fathom_featurestore::definition::{FeatureSetConfig, FeatureSetPlan, Problem, TablePlan};
use fathom_featurestore::duration::Span;
use fathom_featurestore::on_demand::{OnDemandConfig, OnDemandView};
use fathom_featurestore::vector::Catalog;
use fathom_ingest::config::{Format, SourceConfig};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::models::ModelConfig;
use crate::{ConfigError, EntityConfig, Processing, Project, ServerConfig, Stores};

/// The `processing` section, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessingConfig {
    /// Records per batch. Default: 10000.
    #[serde(default)]
    batch_size: Option<usize>,
    /// How long a batch waits to fill after its first record. Default: `0ms` — a batch is what
    /// the consumer holds when the pipeline is ready for it, so it grows with load by itself.
    #[serde(default)]
    linger: Option<String>,
    /// Interval between checkpoints (Parquet files committed, dead letters flushed, Kafka
    /// offsets committed). Default: `10s`.
    #[serde(default)]
    checkpoint_interval: Option<String>,
    /// Rows buffered for Parquet that force an early checkpoint. Default: 500000.
    #[serde(default)]
    max_buffered_rows: Option<usize>,
    /// Entity states cached in memory before clean ones are dropped. Default: 1000000.
    #[serde(default)]
    max_cached_entities: Option<usize>,
    /// Longest a stop (SIGTERM) waits for the offline store to take the last checkpoint before
    /// spilling its rows to `stores.offline.parquet.spill_dir` and exiting with an error.
    /// Default: `30s`.
    #[serde(default)]
    stop_timeout: Option<String>,
}

const SECTIONS: [&str; 10] = [
    "project",
    "stores",
    "sources",
    "entities",
    "feature_sets",
    "on_demand_features",
    "feature_vectors",
    "models",
    "server",
    "processing",
];

/// A `feature_vectors` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorConfig {
    /// Feature references: `<feature_set>.<feature>`, `<feature_set>.*`, `<table>.<column>`.
    features: Vec<String>,
}

/// Reads and checks a project file.
pub fn load(path: &Path) -> Result<Project, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
    let mut project = parse(&text).map_err(|e| match e {
        Parsed::Syntax(source) => ConfigError::Syntax { path: path.into(), source },
        Parsed::Invalid(problems) => ConfigError::Invalid { path: path.into(), problems },
    })?;
    project.base_dir =
        path.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok(project)
}

/// Why [`parse`] failed.
#[derive(Debug)]
pub enum Parsed {
    /// Not YAML.
    Syntax(serde_yaml_ng::Error),
    /// Every problem found.
    Invalid(Vec<Problem>),
}

fn problem(problems: &mut Vec<Problem>, path: impl Into<String>, message: impl Into<String>) {
    problems.push(Problem { path: path.into(), message: message.into() });
}

/// Deserializes one piece, recording a problem with its full path on failure.
fn typed<T: DeserializeOwned>(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize(value.clone()) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let at = if inner == "." { path.to_string() } else { format!("{path}.{inner}") };
            problem(problems, at, e.into_inner().to_string());
            None
        }
    }
}

/// A named map section as (name, raw value) in file order.
fn entries(root: &serde_yaml_ng::Mapping, section: &str, problems: &mut Vec<Problem>) -> Vec<(String, Value)> {
    match root.get(section) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .filter_map(|(k, v)| match k.as_str() {
                Some(name) => Some((name.to_string(), v.clone())),
                None => {
                    problem(problems, section, format!("names must be strings, got {k:?}"));
                    None
                }
            })
            .collect(),
        Some(_) => {
            problem(problems, section, "must be a mapping of names to definitions");
            Vec::new()
        }
    }
}

fn check_name(kind: &str, name: &str, path: &str, problems: &mut Vec<Problem>) {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        problem(problems, path, format!("{kind} name {name:?} may only use letters, digits, '_', '-' and '.'"));
    }
}

fn span_or(text: &Option<String>, default: i64, path: &str, problems: &mut Vec<Problem>) -> i64 {
    match text.as_deref().map(Span::parse) {
        None => default,
        Some(Ok(s)) => s.millis(),
        Some(Err(e)) => {
            problem(problems, path, e.to_string());
            default
        }
    }
}

/// Checks a project file's text.
pub fn parse(text: &str) -> Result<Project, Parsed> {
    let root: Value = serde_yaml_ng::from_str(text).map_err(Parsed::Syntax)?;
    let mut problems = Vec::new();
    let Value::Mapping(root) = root else {
        return Err(Parsed::Invalid(vec![Problem {
            path: "(root)".into(),
            message: "the project file must be a mapping with `project`, `sources`, `entities`, `feature_sets`".into(),
        }]));
    };
    for key in root.keys() {
        let name = key.as_str().unwrap_or("?");
        if !SECTIONS.contains(&name) {
            problem(&mut problems, name, format!("unknown key (expected one of {})", SECTIONS.join(", ")));
        }
    }
    let name = project_name(&root, &mut problems);
    let stores = stores(&root, &mut problems);
    let server = server(&root, &mut problems);
    let processing = processing(&root, &mut problems);
    let sources = sources(&root, &stores, &mut problems);
    let mut transforms = crate::transforms::selects(&sources, &mut problems);
    let entities = entities(&root, &mut problems);
    let FeatureSets { plans, plan_sources, table_plans, after_joins } =
        feature_sets(&root, &entities, &sources, &mut transforms, &mut problems);
    crate::transforms::write_only_what_is_read(&sources, &plans, &plan_sources, &after_joins, &mut transforms);
    let tables: Vec<(String, String)> =
        sources.iter().filter(|(_, s)| s.format == Format::Debezium).map(|(n, s)| (n.clone(), s.key.clone())).collect();
    let stored = crate::transforms::stored_features(&plans, &plan_sources, &table_plans, &sources, &transforms);
    let on_demand = on_demand(&root, &stored, &mut problems);
    let catalog =
        Catalog { project: &name, plans: &plans, table_plans: &table_plans, tables: &tables, on_demand: &on_demand };
    let vectors = vectors(&root, &catalog, &mut problems);
    let models = models(&root, &catalog, &mut problems);
    if !problems.is_empty() {
        return Err(Parsed::Invalid(problems));
    }
    Ok(Project {
        name,
        stores,
        sources,
        plans,
        plan_sources,
        table_plans,
        tables,
        transforms,
        after_joins,
        on_demand,
        vectors,
        models,
        base_dir: PathBuf::from("."),
        server,
        processing,
    })
}

fn project_name(root: &serde_yaml_ng::Mapping, problems: &mut Vec<Problem>) -> String {
    match root.get("project") {
        Some(Value::String(s)) => {
            check_name("project", s, "project", problems);
            s.clone()
        }
        _ => {
            problem(problems, "project", "required: the project name, e.g. `project: payments`");
            String::new()
        }
    }
}

/// `stores`: one online store, a Redis deployment named once, Kafka options librdkafka accepts.
fn stores(root: &serde_yaml_ng::Mapping, problems: &mut Vec<Problem>) -> Stores {
    let stores: Stores = root.get("stores").and_then(|v| typed(v, "stores", problems)).unwrap_or_default();
    if stores.online.redis.is_some() && stores.online.embedded.is_some() {
        problem(problems, "stores.online", "choose one online store: `redis` or `embedded`");
    }
    if let Some(redis) = &stores.online.redis {
        if redis.url.is_some() == redis.cluster.is_some() {
            problem(
                problems,
                "stores.online.redis",
                "set exactly one of `url` (single node) and `cluster` (seed node URLs)",
            );
        }
    }
    if let Some(kafka) = &stores.kafka {
        for (key, message) in fathom_ingest::kafka::check_options(kafka) {
            let field =
                if key.is_empty() { "stores.kafka.options".to_string() } else { format!("stores.kafka.options.{key}") };
            problem(problems, field, format!("librdkafka refuses it: {message}"));
        }
    }
    stores
}

/// `server`: its tokens and timeout checked.
fn server(root: &serde_yaml_ng::Mapping, problems: &mut Vec<Problem>) -> ServerConfig {
    let server: ServerConfig = root.get("server").and_then(|v| typed(v, "server", problems)).unwrap_or_default();
    for (i, token) in server.auth.iter().flat_map(|a| &a.tokens).enumerate() {
        for (field, message) in crate::auth::check(token) {
            problem(problems, format!("server.auth.tokens[{i}].{field}"), message);
        }
    }
    span_or(&server.request_timeout, 0, "server.request_timeout", problems);
    server
}

/// `sources`, in file order.
fn sources(root: &serde_yaml_ng::Mapping, stores: &Stores, problems: &mut Vec<Problem>) -> Vec<(String, SourceConfig)> {
    let mut sources = Vec::new();
    for (source, value) in entries(root, "sources", problems) {
        let path = format!("sources.{source}");
        check_name("source", &source, &path, problems);
        let Some(config) = typed::<SourceConfig>(&value, &path, problems) else { continue };
        if config.kafka.is_some() && stores.kafka.is_none() {
            problem(problems, format!("{path}.kafka"), "a Kafka source needs `stores.kafka.bootstrap_servers`");
        }
        if config.format == Format::Debezium && config.timestamp.is_some() {
            problem(
                problems,
                format!("{path}.timestamp"),
                "a Debezium source's event time is the commit time (source.ts_ms); remove `timestamp`",
            );
        }
        if config.key.is_empty() {
            problem(problems, format!("{path}.key"), "must name the event field holding the entity key");
        }
        sources.push((source, config));
    }
    sources
}

fn entities(root: &serde_yaml_ng::Mapping, problems: &mut Vec<Problem>) -> BTreeMap<String, EntityConfig> {
    let mut entities = BTreeMap::new();
    for (entity, value) in entries(root, "entities", problems) {
        let path = format!("entities.{entity}");
        check_name("entity", &entity, &path, problems);
        if let Some(config) = typed(&value, &path, problems) {
            entities.insert(entity, config);
        }
    }
    entities
}

/// The compiled `feature_sets`: over event sources, and over CDC tables.
struct FeatureSets {
    plans: Vec<FeatureSetPlan>,
    plan_sources: Vec<usize>,
    table_plans: Vec<TablePlan>,
    after_joins: Vec<(String, usize, fathom_transform::Transform)>,
}

fn feature_sets(
    root: &serde_yaml_ng::Mapping,
    entities: &BTreeMap<String, EntityConfig>,
    sources: &[(String, SourceConfig)],
    transforms: &mut [fathom_transform::Transform],
    problems: &mut Vec<Problem>,
) -> FeatureSets {
    let mut compiled =
        FeatureSets { plans: Vec::new(), plan_sources: Vec::new(), table_plans: Vec::new(), after_joins: Vec::new() };
    for (set, value) in entries(root, "feature_sets", problems) {
        let path = format!("feature_sets.{set}");
        check_name("feature set", &set, &path, problems);
        let Some(config) = typed::<FeatureSetConfig>(&value, &path, problems) else {
            continue;
        };
        let entity = entities.get(&config.entity);
        if entity.is_none() {
            let known: Vec<_> = entities.keys().cloned().collect();
            let message = format!("unknown entity {:?} (declared: {})", config.entity, known.join(", "));
            problem(problems, format!("{path}.entity"), message);
        }
        let source = sources.iter().position(|(n, _)| *n == config.source);
        if source.is_none() {
            let known: Vec<_> = sources.iter().map(|(n, _)| n.clone()).collect();
            let message = format!("unknown source {:?} (declared: {})", config.source, known.join(", "));
            problem(problems, format!("{path}.source"), message);
        }
        let key = entity.map_or("", |e| e.key.as_str());
        if let Some(s) = source.filter(|&s| sources[s].1.format == Format::Debezium) {
            let condition = crate::transforms::table_condition(&config, &path, &transforms[s], problems);
            let mut where_problems = Vec::new();
            let mut compile_where = |here: &str, sql: &str| {
                crate::transforms::row_filter(sql, here, &config.source, &transforms[s], &mut where_problems)
            };
            let plan = config.compile_table(&set, key, &path, problems, &mut compile_where);
            problems.append(&mut where_problems);
            if let Some(mut plan) = plan {
                plan.condition = condition;
                compiled.table_plans.push(plan);
            }
            continue;
        }
        for (i, join) in config.join.iter().enumerate() {
            if !sources.iter().any(|(n, s)| *n == join.table && s.format == Format::Debezium) {
                let tables: Vec<_> =
                    sources.iter().filter(|(_, s)| s.format == Format::Debezium).map(|(n, _)| n.clone()).collect();
                problem(
                    problems,
                    format!("{path}.join[{i}].table"),
                    format!("{:?} is not a CDC table (format: debezium sources: {})", join.table, tables.join(", ")),
                );
            }
        }
        if let Some(s) = source {
            let joined = crate::transforms::joined_schema(&config, &transforms[s], sources, transforms);
            if let Some(after) =
                crate::transforms::feature_set(&config, &set, &path, &mut transforms[s], joined, problems)
            {
                compiled.after_joins.push((set.clone(), s, after));
            }
        }
        if let (Some(plan), Some(s)) = (config.compile(&set, key, &path, problems), source) {
            compiled.plans.push(plan);
            compiled.plan_sources.push(s);
        }
    }
    compiled
}

/// `on_demand_features`: each view compiled over its request fields and the stored features;
/// a view may not take the name of a feature set or table.
fn on_demand(
    root: &serde_yaml_ng::Mapping,
    stored: &[(String, arrow_schema::Field)],
    problems: &mut Vec<Problem>,
) -> Vec<OnDemandView> {
    let mut views = Vec::new();
    for (view, value) in entries(root, "on_demand_features", problems) {
        let path = format!("on_demand_features.{view}");
        check_name("on-demand view", &view, &path, problems);
        if view == fathom_featurestore::on_demand::REQUEST || stored.iter().any(|(q, _)| *q == view) {
            problem(problems, path.clone(), "a feature set, a table or `request` has this name; choose another");
            continue;
        }
        let Some(config) = typed::<OnDemandConfig>(&value, &path, problems) else { continue };
        views.extend(config.compile(&view, stored, &path, problems));
    }
    views
}

/// `feature_vectors`: every reference resolves.
fn vectors(
    root: &serde_yaml_ng::Mapping,
    catalog: &Catalog<'_>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Vec<String>> {
    let mut vectors = BTreeMap::new();
    for (vector, value) in entries(root, "feature_vectors", problems) {
        let path = format!("feature_vectors.{vector}");
        check_name("feature vector", &vector, &path, problems);
        let Some(config) = typed::<VectorConfig>(&value, &path, problems) else {
            continue;
        };
        for (i, reference) in config.features.iter().enumerate() {
            if let Err(message) = catalog.resolve(std::slice::from_ref(reference)) {
                problem(problems, format!("{path}.features[{i}]"), message);
            }
        }
        vectors.insert(vector, config.features);
    }
    vectors
}

/// `models`: features resolve, imputations name a feature, endpoints are reachable URLs, the
/// monitoring parts check.
fn models(
    root: &serde_yaml_ng::Mapping,
    catalog: &Catalog<'_>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, ModelConfig> {
    let mut models = BTreeMap::new();
    for (model, value) in entries(root, "models", problems) {
        let path = format!("models.{model}");
        check_name("model", &model, &path, problems);
        let Some(config) = typed::<ModelConfig>(&value, &path, problems) else {
            continue;
        };
        let mut names = config.request_fields.clone();
        for (i, reference) in config.features.iter().enumerate() {
            match catalog.resolve(std::slice::from_ref(reference)) {
                Ok(vector) => names.extend(vector.names),
                Err(message) => problem(problems, format!("{path}.features[{i}]"), message),
            }
        }
        for (feature, value) in &config.impute {
            if let Err(message) = crate::models::Imputation::parse(value) {
                problem(problems, format!("{path}.impute.{feature}"), message);
            }
            if !names.contains(feature) {
                problem(
                    problems,
                    format!("{path}.impute.{feature}"),
                    "not one of the model's features (write <feature_set>.<feature> or a request field)",
                );
            }
        }
        if let Some(endpoint) = &config.endpoint {
            let fields = (format!("{path}.endpoint.url"), format!("{path}.endpoint.tls"));
            if let Some((field, message)) = crate::monitoring::outbound(fields, &endpoint.url, endpoint.tls.as_ref()) {
                problem(problems, field, message);
            }
            span_or(&endpoint.timeout, 0, &format!("{path}.endpoint.timeout"), problems);
        }
        for (field, message) in crate::monitoring::check(&config) {
            problem(problems, format!("{path}.{field}"), message);
        }
        models.insert(model, config);
    }
    models
}

fn processing(root: &serde_yaml_ng::Mapping, problems: &mut Vec<Problem>) -> Processing {
    let raw: ProcessingConfig =
        root.get("processing").and_then(|v| typed(v, "processing", problems)).unwrap_or_default();
    Processing {
        batch_size: raw.batch_size.unwrap_or(10_000).max(1),
        linger_ms: span_or(&raw.linger, 0, "processing.linger", problems),
        checkpoint_ms: span_or(&raw.checkpoint_interval, 10_000, "processing.checkpoint_interval", problems),
        max_buffered_rows: raw.max_buffered_rows.unwrap_or(500_000).max(1),
        max_cached_entities: raw.max_cached_entities.unwrap_or(1_000_000),
        stop_timeout_ms: span_or(&raw.stop_timeout, 30_000, "processing.stop_timeout", problems),
    }
}
