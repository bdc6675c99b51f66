//! The project file, `fathom.yaml`: loading, and validation that reports *every* problem with its
//! path and a hint, not just the first.
//!
//! Each section and each named entry is deserialized on its own (serde with
//! `deny_unknown_fields`, paths from `serde_path_to_error`), then cross-references and durations
//! are checked; feature sets compile into the engine's plans here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fathom_featurestore::definition::{FeatureSetConfig, FeatureSetPlan, Problem, TablePlan};
use fathom_featurestore::duration::Span;
use fathom_featurestore::offline::ParquetConfig;
use fathom_featurestore::online::RedisTopology;
use fathom_featurestore::table::Join;
use fathom_featurestore::vector::Catalog;
use fathom_ingest::config::{Format, KafkaConfig, SourceConfig};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;

/// A loaded, checked project.
#[derive(Debug, Clone)]
pub struct Project {
    /// Project name (prefixes store keys).
    pub name: String,
    /// Stores.
    pub stores: Stores,
    /// Sources, in file order; events refer to them by index.
    pub sources: Vec<(String, SourceConfig)>,
    /// Feature-set plans, in file order.
    pub plans: Vec<FeatureSetPlan>,
    /// Source index of each plan.
    pub plan_sources: Vec<usize>,
    /// Aggregations over CDC tables, in file order.
    pub table_plans: Vec<TablePlan>,
    /// CDC tables as (source name, key column), in source order.
    pub tables: Vec<(String, String)>,
    /// Named feature vectors: feature references, as written.
    pub vectors: BTreeMap<String, Vec<String>>,
    /// Models served by `/v1/models/{model}/predict`.
    pub models: BTreeMap<String, crate::serving::ModelConfig>,
    /// Directory relative paths in the file are resolved against (the file's own).
    pub base_dir: PathBuf,
    /// HTTP server.
    pub server: ServerConfig,
    /// Batching and checkpoints.
    pub processing: Processing,
}

/// The `stores` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stores {
    /// Online store. Default: embedded (in-process).
    #[serde(default)]
    pub online: OnlineConfig,
    /// Offline store. Default: Parquet under `./data/offline`.
    #[serde(default)]
    pub offline: OfflineConfig,
    /// Kafka connection, needed by sources with a `kafka` topic.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Where dead letters go when Kafka is not configured. Default: `./data/dead_letters`.
    #[serde(default)]
    pub dead_letters: DeadLetterConfig,
    /// Where monitoring results go. Default: line protocol appended to
    /// `./data/monitoring/points.lp`.
    #[serde(default)]
    pub influxdb: Option<fathom_monitor::influx::InfluxConfig>,
}

/// `stores.online`: `redis`, or the embedded store (the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    /// Redis; omit for the embedded store.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Options of the embedded store.
    #[serde(default)]
    pub embedded: Option<EmbeddedConfig>,
}

/// `stores.online.embedded`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// File the store is saved to at every checkpoint and loaded from at start. Default: none
    /// (state lives as long as the process).
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
}

/// `stores.online.redis`: exactly one of `url` and `cluster`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user][:password@]host:port[/db]`, or `rediss://…` for TLS (rustls); `env:NAME`
    /// reads it from the environment (where a password belongs).
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster seed node URLs.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// PEM file of the CA that signed the servers' certificates, for `rediss://` with a private
    /// CA (default: the system's roots).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
}

/// `stores.offline`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineConfig {
    /// Parquet files.
    #[serde(default)]
    pub parquet: ParquetConfig,
}

/// `stores.dead_letters`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Directory of `<topic>.dlq` NDJSON files (embedded mode). Default: `./data/dead_letters`.
    #[serde(default = "default_dead_letter_path")]
    pub path: PathBuf,
}

fn default_dead_letter_path() -> PathBuf {
    PathBuf::from("data/dead_letters")
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { path: default_dead_letter_path() }
    }
}

/// An `entities` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// Event field holding the entity's key.
    pub key: String,
}

/// The `server` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP API. Default: `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens; without them every route is open.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    /// Most entity rows in one lookup request. Default: 10000.
    #[serde(default = "default_max_rows")]
    pub max_lookup_rows: usize,
    /// Most features in one lookup request (after `set.*` is expanded). Default: 1000.
    #[serde(default = "default_max_features")]
    pub max_lookup_features: usize,
    /// Longest entity key in a lookup request, bytes. Default: 512.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Time a request may take before it is answered 503 `timeout`. Default: `10s`.
    #[serde(default)]
    pub request_timeout: Option<String>,
    /// Serve HTTPS with this certificate and key (PEM); without it, plain HTTP.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

fn default_max_rows() -> usize {
    10_000
}

fn default_max_features() -> usize {
    1_000
}

fn default_max_key_bytes() -> usize {
    512
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            auth: None,
            max_lookup_rows: default_max_rows(),
            max_lookup_features: default_max_features(),
            max_key_bytes: default_max_key_bytes(),
            request_timeout: None,
            tls: None,
        }
    }
}

/// The `processing` section, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessingConfig {
    /// Records per batch. Default: 10000.
    #[serde(default)]
    batch_size: Option<usize>,
    /// How long a batch waits to fill after its first record. Default: `50ms`.
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
}

/// Batching and checkpoint settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processing {
    /// Records per batch.
    pub batch_size: usize,
    /// Batch fill wait, ms.
    pub linger_ms: i64,
    /// Checkpoint interval, ms.
    pub checkpoint_ms: i64,
    /// Parquet rows forcing a checkpoint.
    pub max_buffered_rows: usize,
    /// Cache size.
    pub max_cached_entities: usize,
}

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML.
    #[error("{path}: not valid YAML: {source}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: serde_yaml_ng::Error,
    },
    /// YAML, but not a valid project.
    #[error("{path}: {} problem(s)", .problems.len())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

const SECTIONS: [&str; 9] =
    ["project", "stores", "sources", "entities", "feature_sets", "feature_vectors", "models", "server", "processing"];

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
    let name = match root.get("project") {
        Some(Value::String(s)) => {
            check_name("project", s, "project", &mut problems);
            s.clone()
        }
        _ => {
            problem(&mut problems, "project", "required: the project name, e.g. `project: payments`");
            String::new()
        }
    };
    let stores: Stores = root.get("stores").and_then(|v| typed(v, "stores", &mut problems)).unwrap_or_default();
    if stores.online.redis.is_some() && stores.online.embedded.is_some() {
        problem(&mut problems, "stores.online", "choose one online store: `redis` or `embedded`");
    }
    if let Some(redis) = &stores.online.redis {
        if redis.url.is_some() == redis.cluster.is_some() {
            problem(
                &mut problems,
                "stores.online.redis",
                "set exactly one of `url` (single node) and `cluster` (seed node URLs)",
            );
        }
    }
    if let Some(kafka) = &stores.kafka {
        for (key, message) in fathom_ingest::kafka::check_options(kafka) {
            let field =
                if key.is_empty() { "stores.kafka.options".to_string() } else { format!("stores.kafka.options.{key}") };
            problem(&mut problems, field, format!("librdkafka refuses it: {message}"));
        }
    }
    let server: ServerConfig = root.get("server").and_then(|v| typed(v, "server", &mut problems)).unwrap_or_default();
    for (i, token) in server.auth.iter().flat_map(|a| &a.tokens).enumerate() {
        for (field, message) in crate::auth::check(token) {
            problem(&mut problems, format!("server.auth.tokens[{i}].{field}"), message);
        }
    }
    span_or(&server.request_timeout, 0, "server.request_timeout", &mut problems);
    let processing = processing(&root, &mut problems);

    let mut sources: Vec<(String, SourceConfig)> = Vec::new();
    for (source, value) in entries(&root, "sources", &mut problems) {
        let path = format!("sources.{source}");
        check_name("source", &source, &path, &mut problems);
        if let Some(config) = typed::<SourceConfig>(&value, &path, &mut problems) {
            if config.kafka.is_some() && stores.kafka.is_none() {
                problem(
                    &mut problems,
                    format!("{path}.kafka"),
                    "a Kafka source needs `stores.kafka.bootstrap_servers`",
                );
            }
            if config.format == Format::Debezium && config.timestamp.is_some() {
                problem(
                    &mut problems,
                    format!("{path}.timestamp"),
                    "a Debezium source's event time is the commit time (source.ts_ms); remove `timestamp`",
                );
            }
            if config.key.is_empty() {
                problem(&mut problems, format!("{path}.key"), "must name the event field holding the entity key");
            }
            sources.push((source, config));
        }
    }
    let mut entities: BTreeMap<String, EntityConfig> = BTreeMap::new();
    for (entity, value) in entries(&root, "entities", &mut problems) {
        let path = format!("entities.{entity}");
        check_name("entity", &entity, &path, &mut problems);
        if let Some(config) = typed(&value, &path, &mut problems) {
            entities.insert(entity, config);
        }
    }
    let mut plans = Vec::new();
    let mut plan_sources = Vec::new();
    let mut table_plans = Vec::new();
    for (set, value) in entries(&root, "feature_sets", &mut problems) {
        let path = format!("feature_sets.{set}");
        check_name("feature set", &set, &path, &mut problems);
        let Some(config) = typed::<FeatureSetConfig>(&value, &path, &mut problems) else {
            continue;
        };
        let entity = entities.get(&config.entity);
        if entity.is_none() {
            let known: Vec<_> = entities.keys().cloned().collect();
            problem(
                &mut problems,
                format!("{path}.entity"),
                format!("unknown entity {:?} (declared: {})", config.entity, known.join(", ")),
            );
        }
        let source = sources.iter().position(|(n, _)| *n == config.source);
        if source.is_none() {
            let known: Vec<_> = sources.iter().map(|(n, _)| n.clone()).collect();
            problem(
                &mut problems,
                format!("{path}.source"),
                format!("unknown source {:?} (declared: {})", config.source, known.join(", ")),
            );
        }
        let key = entity.map_or("", |e| e.key.as_str());
        if source.is_some_and(|s| sources[s].1.format == Format::Debezium) {
            if let Some(plan) = config.compile_table(&set, key, &path, &mut problems) {
                table_plans.push(plan);
            }
            continue;
        }
        for (i, join) in config.join.iter().enumerate() {
            if !sources.iter().any(|(n, s)| *n == join.table && s.format == Format::Debezium) {
                let tables: Vec<_> =
                    sources.iter().filter(|(_, s)| s.format == Format::Debezium).map(|(n, _)| n.clone()).collect();
                problem(
                    &mut problems,
                    format!("{path}.join[{i}].table"),
                    format!("{:?} is not a CDC table (format: debezium sources: {})", join.table, tables.join(", ")),
                );
            }
        }
        if let (Some(plan), Some(s)) = (config.compile(&set, key, &path, &mut problems), source) {
            plans.push(plan);
            plan_sources.push(s);
        }
    }
    let tables: Vec<(String, String)> =
        sources.iter().filter(|(_, s)| s.format == Format::Debezium).map(|(n, s)| (n.clone(), s.key.clone())).collect();
    let mut vectors = BTreeMap::new();
    for (vector, value) in entries(&root, "feature_vectors", &mut problems) {
        let path = format!("feature_vectors.{vector}");
        check_name("feature vector", &vector, &path, &mut problems);
        let Some(config) = typed::<VectorConfig>(&value, &path, &mut problems) else {
            continue;
        };
        let catalog = Catalog { project: &name, plans: &plans, table_plans: &table_plans, tables: &tables };
        for (i, reference) in config.features.iter().enumerate() {
            if let Err(message) = catalog.resolve(std::slice::from_ref(reference)) {
                problem(&mut problems, format!("{path}.features[{i}]"), message);
            }
        }
        vectors.insert(vector, config.features);
    }
    let mut models = BTreeMap::new();
    for (model, value) in entries(&root, "models", &mut problems) {
        let path = format!("models.{model}");
        check_name("model", &model, &path, &mut problems);
        let Some(config) = typed::<crate::serving::ModelConfig>(&value, &path, &mut problems) else {
            continue;
        };
        let catalog = Catalog { project: &name, plans: &plans, table_plans: &table_plans, tables: &tables };
        let mut names = config.request_fields.clone();
        for (i, reference) in config.features.iter().enumerate() {
            match catalog.resolve(std::slice::from_ref(reference)) {
                Ok(vector) => names.extend(vector.names),
                Err(message) => problem(&mut problems, format!("{path}.features[{i}]"), message),
            }
        }
        for (feature, value) in &config.impute {
            if let Err(message) = crate::serving::Imputation::parse(value) {
                problem(&mut problems, format!("{path}.impute.{feature}"), message);
            }
            if !names.contains(feature) {
                problem(
                    &mut problems,
                    format!("{path}.impute.{feature}"),
                    "not one of the model's features (write <feature_set>.<feature> or a request field)",
                );
            }
        }
        if let Some(endpoint) = &config.endpoint {
            if !endpoint.url.starts_with("http://") {
                let hint = "must be an http:// URL (TLS to model servers is not built in yet: keep the call inside the cluster or behind a sidecar)";
                problem(&mut problems, format!("{path}.endpoint.url"), hint);
            }
            span_or(&endpoint.timeout, 0, &format!("{path}.endpoint.timeout"), &mut problems);
        }
        for (field, message) in crate::monitoring::check(&config) {
            problem(&mut problems, format!("{path}.{field}"), message);
        }
        models.insert(model, config);
    }
    if problems.is_empty() {
        Ok(Project {
            name,
            stores,
            sources,
            plans,
            plan_sources,
            table_plans,
            tables,
            vectors,
            models,
            base_dir: PathBuf::from("."),
            server,
            processing,
        })
    } else {
        Err(Parsed::Invalid(problems))
    }
}

fn processing(root: &serde_yaml_ng::Mapping, problems: &mut Vec<Problem>) -> Processing {
    let raw: ProcessingConfig =
        root.get("processing").and_then(|v| typed(v, "processing", problems)).unwrap_or_default();
    Processing {
        batch_size: raw.batch_size.unwrap_or(10_000).max(1),
        linger_ms: span_or(&raw.linger, 50, "processing.linger", problems),
        checkpoint_ms: span_or(&raw.checkpoint_interval, 10_000, "processing.checkpoint_interval", problems),
        max_buffered_rows: raw.max_buffered_rows.unwrap_or(500_000).max(1),
        max_cached_entities: raw.max_cached_entities.unwrap_or(1_000_000),
    }
}

impl Project {
    /// A model's timeout in ms (checked at load; default 2 s).
    pub fn model_timeout_ms(&self, model: &crate::serving::ModelConfig) -> u64 {
        let timeout = model.endpoint.as_ref().and_then(|e| e.timeout.as_deref());
        timeout.and_then(|t| Span::parse(t).ok()).map_or(2_000, |s| s.millis().max(1) as u64)
    }

    /// A model's feature names in order: its features resolved, then its request fields.
    pub fn model_features(&self, model: &str) -> anyhow::Result<Vec<String>> {
        let config =
            self.models.get(model).ok_or_else(|| anyhow::anyhow!("no model named {model:?} under `models`"))?;
        let vector = self.catalog().resolve(&config.features).map_err(anyhow::Error::msg)?;
        Ok(vector.names.into_iter().chain(config.request_fields.iter().cloned()).collect())
    }

    /// Where a model's reference profile lives: its `reference`, else `profiles/<model>.json`,
    /// relative to the project file.
    pub fn reference_path(&self, model: &str) -> PathBuf {
        let configured = self.models.get(model).and_then(|m| m.reference.clone());
        self.base_dir.join(configured.unwrap_or_else(|| PathBuf::from(format!("profiles/{model}.json"))))
    }

    /// A model's prediction topic.
    pub fn predictions_topic(&self, model: &str) -> String {
        self.models
            .get(model)
            .and_then(|m| m.predictions_topic.clone())
            .unwrap_or_else(|| format!("{model}.predictions"))
    }
}

impl ServerConfig {
    /// `request_timeout` in ms (checked at load).
    pub fn request_timeout_ms(&self) -> u64 {
        self.request_timeout.as_deref().and_then(|t| Span::parse(t).ok()).map_or(10_000, |s| s.millis().max(1) as u64)
    }
}

impl Project {
    /// The Redis deployment, if configured (`env:NAME` URLs resolved).
    pub fn redis(&self) -> anyhow::Result<Option<RedisTopology>> {
        let Some(redis) = &self.stores.online.redis else {
            return Ok(None);
        };
        let resolve = |url: &String| -> anyhow::Result<String> {
            match url.strip_prefix("env:") {
                Some(name) => std::env::var(name)
                    .map_err(|_| anyhow::anyhow!("stores.online.redis: environment variable {name} is not set")),
                None => Ok(url.clone()),
            }
        };
        let ca = match &redis.ca {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("stores.online.redis.ca: reading {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Some(match (&redis.url, &redis.cluster) {
            (Some(url), _) => RedisTopology::Single { url: resolve(url)?, ca },
            (None, Some(nodes)) => {
                RedisTopology::Cluster { nodes: nodes.iter().map(resolve).collect::<anyhow::Result<_>>()?, ca }
            }
            (None, None) => unreachable!("checked at load"),
        }))
    }

    /// Kafka consumer group.
    pub fn group_id(&self) -> String {
        self.stores.kafka.as_ref().and_then(|k| k.group_id.clone()).unwrap_or_else(|| format!("fathom-{}", self.name))
    }

    /// Index of a source by name.
    pub fn source_index(&self, name: &str) -> Option<usize> {
        self.sources.iter().position(|(n, _)| n == name)
    }

    /// Index of a CDC (Debezium) source by name.
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.source_index(name).filter(|&i| self.sources[i].1.format == Format::Debezium)
    }

    /// A plan by feature-set name.
    pub fn plan(&self, name: &str) -> Option<&FeatureSetPlan> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// What feature references resolve against.
    pub fn catalog(&self) -> Catalog<'_> {
        Catalog { project: &self.name, plans: &self.plans, table_plans: &self.table_plans, tables: &self.tables }
    }

    /// An aggregation over a CDC table by feature-set name.
    pub fn table_plan(&self, name: &str) -> Option<&TablePlan> {
        self.table_plans.iter().find(|p| p.name == name)
    }

    /// Per source: the tables its events join, columns merged per (table, key field).
    pub fn joins(&self) -> Vec<Vec<Join>> {
        let mut joins: Vec<Vec<Join>> = vec![Vec::new(); self.sources.len()];
        for (plan, &source) in self.plans.iter().zip(&self.plan_sources) {
            for join in &plan.joins {
                let table = self.table_index(&join.table).expect("checked at load");
                let merged = match joins[source].iter_mut().find(|j| j.table == table && j.on == join.on) {
                    Some(merged) => merged,
                    None => {
                        joins[source].push(Join { table, on: join.on.clone(), columns: Vec::new() });
                        joins[source].last_mut().expect("just pushed")
                    }
                };
                for column in &join.columns {
                    if !merged.columns.contains(column) {
                        merged.columns.push(column.clone());
                    }
                }
            }
        }
        joins
    }

    /// Per source: how long a CDC table keeps replaced row versions (its longest join history).
    pub fn table_history_ms(&self) -> Vec<i64> {
        let mut history = vec![0; self.sources.len()];
        for join in self.plans.iter().flat_map(|p| &p.joins) {
            let table = self.table_index(&join.table).expect("checked at load");
            history[table] = history[table].max(join.history_ms);
        }
        history
    }

    /// The name dead letters and Kafka use for a source's stream: its topic, or its name.
    pub fn stream_name(&self, source: usize) -> &str {
        let (name, config) = &self.sources[source];
        config.kafka.as_ref().map_or(name.as_str(), |k| k.topic.as_str())
    }
}

#[cfg(test)]
mod tests;
