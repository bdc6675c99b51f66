//! The project file, `fathom.yaml`, as plain values: its types, loading and the cross-checks
//! ([`parse`]). A leaf: it depends only on the libraries' definition types, and nothing at run
//! time depends back on it except through the [`Project`] value.

pub mod auth;
pub mod models;
pub mod monitoring;
mod parse;
pub mod tls;
mod transforms;

pub use parse::{load, parse, Parsed};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use fathom_featurestore::definition::{FeatureSetPlan, Problem, TablePlan};
use fathom_featurestore::duration::Span;
use fathom_featurestore::offline::ParquetConfig;
use fathom_featurestore::online::{RedisAuth, RedisTopology};
use fathom_featurestore::table::Join;
use fathom_featurestore::vector::Catalog;
use fathom_ingest::config::{Format, KafkaConfig, SourceConfig};
use serde::Deserialize;

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
    /// Per source (same order): its row transform (`select`s and its feature sets' `where`s);
    /// empty when it has none.
    pub transforms: Vec<fathom_transform::Transform>,
    /// (feature set, its source, the conditions that read its joins' columns), run on the
    /// source's events after the joins.
    pub after_joins: Vec<(String, usize, fathom_transform::Transform)>,
    /// On-demand feature views.
    pub on_demand: Vec<fathom_featurestore::on_demand::OnDemandView>,
    /// Named feature vectors: feature references, as written.
    pub vectors: BTreeMap<String, Vec<String>>,
    /// Models served by `/v1/models/{model}/predict`.
    pub models: BTreeMap<String, crate::models::ModelConfig>,
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
    /// Redis 6+ ACL user to log in as (`AUTH <username> <password>`), for the server or every
    /// cluster node. Default: the one in the URL, else `default`.
    #[serde(default)]
    pub username: Option<String>,
    /// Its password, `env:NAME` or `file:/path` (a literal works but belongs in neither the file
    /// nor the logs). Default: the one in the URL.
    #[serde(default)]
    pub password: Option<String>,
    /// Keep the entity states this process writes in memory too, so its lookups of them need
    /// no Redis round trip (`docs/online-store.md`, "Near cache"). Costs about the encoded size
    /// of every entity written (bounded by `processing.max_cached_entities`). Default: true.
    #[serde(default = "yes")]
    pub near_cache: bool,
}

fn yes() -> bool {
    true
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
    /// Longest a stop waits for the offline store, ms.
    pub stop_timeout_ms: i64,
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

impl Project {
    /// A model's timeout in ms (checked at load; default 2 s).
    pub fn model_timeout_ms(&self, model: &crate::models::ModelConfig) -> u64 {
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
        let password = match &redis.password {
            Some(secret) => Some(
                fathom_ingest::config::resolve_secret(secret)
                    .map_err(|e| anyhow::anyhow!("stores.online.redis.password: {e}"))?,
            ),
            None => None,
        };
        let auth = RedisAuth { username: redis.username.clone(), password };
        Ok(Some(match (&redis.url, &redis.cluster) {
            (Some(url), _) => RedisTopology::Single { url: resolve(url)?, ca, auth },
            (None, Some(nodes)) => {
                RedisTopology::Cluster { nodes: nodes.iter().map(resolve).collect::<anyhow::Result<_>>()?, ca, auth }
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
        Catalog {
            project: &self.name,
            plans: &self.plans,
            table_plans: &self.table_plans,
            tables: &self.tables,
            on_demand: &self.on_demand,
        }
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

    /// Per source: a CDC table's `select`s (computed into its rows), `None` for the rest.
    pub fn table_selects(&self) -> Vec<Option<fathom_transform::Transform>> {
        self.sources
            .iter()
            .zip(&self.transforms)
            .map(|((_, s), t)| (s.format == Format::Debezium && !s.select.is_empty()).then(|| t.clone()))
            .collect()
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
