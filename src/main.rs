//! The `fathom` command line.

mod bench;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::commands::dataset::{features_of, DatasetOptions};
use crate::commands::demo;
use crate::commands::drift::DriftOptions;
use crate::commands::profile::ProfileOptions;

/// jemalloc: less time in the allocator under many threads than glibc's malloc (BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Fathom: streaming feature store and model monitoring in one binary.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "FATHOM_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (`tracing` directives, e.g. `info,fathom=debug`).
    #[arg(long, global = true, default_value = "info", env = "FATHOM_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline and the HTTP API (embedded demo project without -c).
    Serve {
        /// Project file.
        #[arg(short, long, env = "FATHOM_CONFIG")]
        config: Option<PathBuf>,
        /// What this process does: `ingest` (consume the sources), `api` (lookups, predict,
        /// push), `monitor` (model monitoring), comma-separated, or `all`. Health and metrics are
        /// served by every role.
        #[arg(long, env = "FATHOM_ROLES", default_value = "all")]
        roles: String,
    },
    /// Check a project file; prints every problem with its path and exits 1 if any.
    Validate {
        /// Project file.
        #[arg(short, long, env = "FATHOM_CONFIG")]
        config: PathBuf,
    },
    /// Feed an NDJSON or Parquet file into a source through the same pipeline.
    Replay {
        /// The file (`.parquet` for Parquet, anything else NDJSON).
        file: PathBuf,
        /// Source to feed.
        #[arg(short, long)]
        source: String,
        /// Project file (default: the embedded demo project).
        #[arg(short, long, env = "FATHOM_CONFIG")]
        config: Option<PathBuf>,
        /// Keep serving the API afterwards.
        #[arg(long)]
        serve: bool,
    },
    /// A card-transaction stream through the embedded pipeline, lookups printed as they change.
    Demo {
        /// Cards.
        #[arg(long, default_value_t = 1000)]
        cards: usize,
        /// Transactions of history.
        #[arg(long, default_value_t = 200_000)]
        history: usize,
        /// Live rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Keep serving the API afterwards.
        #[arg(long)]
        serve: bool,
        /// Address of the HTTP API with --serve. Default: 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// The demo's streams into Kafka, live (transactions, the fraud model's predictions and
    /// labels, a fraud wave now and then): the producer of the compose stack.
    DemoProducer {
        /// Kafka bootstrap servers.
        #[arg(long, env = "FATHOM_DEMO_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Transactions (and predictions) per second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Minutes between the starts of two fraud waves.
        #[arg(long, default_value_t = 60)]
        period_minutes: u64,
        /// Minutes a fraud wave lasts.
        #[arg(long, default_value_t = 20)]
        wave_minutes: u64,
    },
    /// Build a model's reference profile from its training set (Parquet): bins, counts and
    /// statistics per feature, written to the model's `reference` path.
    Profile {
        /// Project file.
        #[arg(short, long, env = "FATHOM_CONFIG")]
        config: PathBuf,
        /// Model (under `models`).
        #[arg(short, long)]
        model: String,
        /// Training set: one column per model feature (`set.feature` or `set__feature`).
        #[arg(long)]
        training_set: PathBuf,
        /// Where to write it. Default: the model's `reference`, else `profiles/<model>.json` next
        /// to the project file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Categorical values kept by name; the rest count as "other".
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// A column of the training set that stands for the model's output (its predictions on
        /// the training set, or the label): profiled as `prediction`, the reference of
        /// prediction drift.
        #[arg(long)]
        prediction: Option<String>,
    },
    /// Batch drift report: every column of a current table against a reference table (CSV or
    /// Parquet), with the monitor's statistics, exact KS and Wasserstein on the raw samples, as
    /// JSON and a self-contained HTML page.
    Drift {
        /// Reference table (e.g. the training set).
        #[arg(long)]
        reference: PathBuf,
        /// Current table (e.g. last week's prediction features).
        #[arg(long)]
        current: PathBuf,
        /// A reference profile (`fathom profile`): its bins and categories, and only its features.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Only these columns (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// JSON report.
        #[arg(long, default_value = "drift.json")]
        json: PathBuf,
        /// HTML report.
        #[arg(long, default_value = "drift.html")]
        html: PathBuf,
        /// Possible-drift threshold.
        #[arg(long, default_value_t = 0.5)]
        possible: f64,
        /// Drift-detected threshold.
        #[arg(long, default_value_t = 0.7)]
        detected: f64,
    },
    /// Point-in-time training set: each input row's features as of its timestamp, computed
    /// from the offline store by the online engine.
    Dataset {
        /// Project file.
        #[arg(short, long, env = "FATHOM_CONFIG")]
        config: PathBuf,
        /// Entity rows: Parquet, or CSV with a header (keys, timestamp, anything else kept).
        #[arg(short, long)]
        input: PathBuf,
        /// The input's timestamp column.
        #[arg(long, default_value = "timestamp")]
        timestamp: String,
        /// Feature references, comma-separated (`card_activity.*,customers.segment`).
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["vector", "model"])]
        features: Vec<String>,
        /// A feature vector of the project file.
        #[arg(long, conflicts_with = "model")]
        vector: Option<String>,
        /// A model of the project file (its stored features).
        #[arg(long)]
        model: Option<String>,
        /// Output Parquet file.
        #[arg(short, long)]
        output: PathBuf,
        /// Read timestamps without a time zone as UTC instead of refusing them.
        #[arg(long)]
        assume_utc: bool,
        /// Add a `<feature>__status` column per feature.
        #[arg(long)]
        statuses: bool,
        /// Hash partitions computed one at a time per core (more: less memory each).
        #[arg(long, default_value_t = 64)]
        shards: usize,
    },
    /// Compare online values with the same values recomputed offline, for sampled entities.
    Consistency {
        /// Project file.
        #[arg(short, long, env = "FATHOM_CONFIG")]
        config: PathBuf,
        /// Feature references, comma-separated.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["vector", "model"])]
        features: Vec<String>,
        /// A feature vector.
        #[arg(long, conflicts_with = "model")]
        vector: Option<String>,
        /// A model.
        #[arg(long)]
        model: Option<String>,
        /// Entities sampled per key field.
        #[arg(long, default_value_t = 1000)]
        sample: usize,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Broker → Redis throughput of the whole pipeline (needs a broker and Redis).
    E2e {
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Events.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Keys.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Topic partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// What flows: `events` (transactions), `cdc` (Debezium changes into a table with a
        /// retracting aggregation) or `join` (transactions joined with a preloaded table).
        #[arg(long, value_enum, default_value = "events")]
        scenario: bench::Scenario,
    },
    /// Aggregation engine throughput and memory (one core), optionally against storey.
    Engine {
        /// Events.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Keys.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Python with storey installed (see bench/README.md).
        #[arg(long)]
        storey_python: Option<PathBuf>,
        /// Events given to storey (the first of the same stream; storey is slow).
        #[arg(long, default_value_t = 2_000)]
        storey_events: usize,
    },
    /// Predictions/s through the monitor: parse, join with labels, windows, checkpoints.
    Monitor {
        /// Prediction records (half of them get a label).
        #[arg(long, default_value_t = 200_000)]
        predictions: usize,
        /// Numeric features per prediction.
        #[arg(long, default_value_t = 50)]
        features: usize,
        /// Records per push (one checkpoint each).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// A bounded soak of one `fathom serve` with ingest, lookups and monitoring together (needs
    /// a broker and Redis): sustained rates, lookup latency during ingest, memory over time.
    Soak(bench::SoakOptions),
    /// Produce → visible in a lookup, on a `fathom serve` with default settings while a steady
    /// stream is ingested (needs a broker and Redis): probe percentiles and the server's own.
    Freshness(bench::FreshnessOptions),
    /// Lookup throughput and latency of a `fathom serve` (needs a broker, Redis and the load
    /// generator oha): closed and open loop, single entities and batches, optionally while
    /// ingesting and side by side with `feast serve`.
    Lookup(bench::LookupOptions),
    /// Drift statistics for one window of many predictions, optionally with numpy/scipy.
    Drift {
        /// Live rows in the window.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Numeric features.
        #[arg(long, default_value_t = 50)]
        features: usize,
        /// Python with numpy and scipy.
        #[arg(long)]
        numpy_python: Option<PathBuf>,
    },
    /// Point-in-time training set over a generated offline store (3 feature sets), optionally
    /// with pandas merge_asof on the same files.
    Dataset {
        /// Entity rows.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Events in the offline store.
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        /// Cards (merchants: a tenth).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Working directory (the generated offline store is reused when present).
        #[arg(long, default_value = "/tmp/fathom-bench-dataset")]
        dir: PathBuf,
        /// Python with pandas and pyarrow (see bench/README.md).
        #[arg(long)]
        pandas_python: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format, &cli.log);
    match cli.command {
        Command::Validate { config } => commands::validate::run(&config),
        Command::Dataset {
            config,
            input,
            timestamp,
            features,
            vector,
            model,
            output,
            assume_utc,
            statuses,
            shards,
        } => {
            let options = DatasetOptions {
                input,
                timestamp,
                features: features_of(&features, &vector, &model),
                output,
                assume_utc,
                statuses,
                shards,
                progress: true,
            };
            report(commands::dataset::run(&config, &options))
        }
        Command::Drift { reference, current, profile, columns, json, html, possible, detected } => {
            let options =
                DriftOptions { columns: &columns, json: &json, html: &html, thresholds: (possible, detected) };
            report(commands::drift::run(&reference, &current, profile.as_deref(), &options))
        }
        Command::Profile { config, model, training_set, output, top_k, prediction } => {
            let options = ProfileOptions { output: output.as_deref(), top_k, prediction: prediction.as_deref() };
            report(commands::profile::run(&config, &model, &training_set, &options))
        }
        Command::Bench { which: BenchCommand::Drift { rows, features, numpy_python } } => {
            report(bench::drift(rows, features, numpy_python.as_deref()))
        }
        Command::Bench { which: BenchCommand::Dataset { rows, events, keys, dir, pandas_python } } => {
            report(bench::dataset(&bench::DatasetOptions { rows, events, keys, dir, pandas_python }))
        }
        Command::Bench { which: BenchCommand::Engine { events, keys, storey_python, storey_events } } => {
            report(bench::run(&bench::Options { events, keys, storey_python, storey_events }))
        }
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return report(Err(e.into())),
            };
            #[cfg(target_os = "linux")]
            if matches!(
                command,
                Command::Serve { .. } | Command::Replay { serve: true, .. } | Command::Demo { serve: true, .. }
            ) {
                commands::serve::memory_gauges();
            }
            report(runtime.block_on(run_async(command)))
        }
    }
}

/// The commands that run on the Tokio runtime.
async fn run_async(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, roles } => commands::serve::run(config.as_ref(), &roles).await,
        Command::Replay { file, source, config, serve } => {
            commands::replay::run(commands::load(config.as_ref())?, &file, &source, serve).await.map(|_| ())
        }
        Command::DemoProducer { brokers, rate, period_minutes, wave_minutes } => {
            let minutes = |m: u64| Duration::from_secs(m.max(1) * 60);
            demo::produce(&brokers, rate, minutes(period_minutes), minutes(wave_minutes)).await
        }
        Command::Demo { cards, history, rounds, serve, listen } => {
            let pause = Duration::from_secs(2);
            demo::run(demo::Options { cards: cards.max(43), history, rounds, pause, serve, listen }).await
        }
        Command::Bench { which: BenchCommand::E2e { brokers, redis, events, keys, partitions, scenario } } => {
            bench::e2e(&bench::E2eOptions { brokers, redis, events, keys, partitions, scenario }).await
        }
        Command::Bench { which: BenchCommand::Soak(options) } => bench::soak(&options).await,
        Command::Bench { which: BenchCommand::Freshness(options) } => bench::freshness(&options).await,
        Command::Bench { which: BenchCommand::Lookup(options) } => bench::lookup(&options).await,
        Command::Bench { which: BenchCommand::Monitor { predictions, features, batch } } => {
            bench::monitor(predictions, features, batch).await
        }
        Command::Consistency { config, features, vector, model, sample } => {
            commands::consistency::run(&config, &features_of(&features, &vector, &model), sample).await
        }
        Command::Validate { .. }
        | Command::Profile { .. }
        | Command::Dataset { .. }
        | Command::Bench { .. }
        | Command::Drift { .. } => unreachable!("run without the Tokio runtime"),
    }
}

/// The exit code of a command's result; an error is printed with its causes.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
