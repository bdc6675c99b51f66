//! The `fathom` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fathom::config::{self, ConfigError};
use fathom::{bench, demo, pipeline, replay, serve, training};

/// Memory gauges every 5 s: `fathom_process_resident_bytes` (the process's RSS, C libraries
/// included), `fathom_memory_heap_bytes` (live allocations) and
/// `fathom_memory_allocator_resident_bytes` (what the allocator holds: the live heap plus freed
/// memory it has not given back).
#[cfg(target_os = "linux")]
fn memory_gauges() {
    serve::metrics(); // the recorder first, or the first readings are lost
    let spawned = std::thread::Builder::new().name("memory-gauges".into()).spawn(move || loop {
        if let Some((heap, held)) = heap_stats() {
            metrics::gauge!("fathom_memory_heap_bytes").set(heap as f64);
            metrics::gauge!("fathom_memory_allocator_resident_bytes").set(held as f64);
        }
        metrics::gauge!("fathom_process_resident_bytes").set(bench::rss_kib("self") as f64 * 1024.0);
        std::thread::sleep(Duration::from_secs(5));
    });
    if let Err(e) = spawned {
        tracing::warn!("memory gauges not started: {e}");
    }
}

/// Live heap and what the allocator holds, in bytes: glibc's `mallinfo2`, summed over its arenas
/// (C libraries such as librdkafka included). In use: `uordblks` in the arenas plus `hblkhd` in
/// mmapped chunks; held: the arenas' `arena` bytes plus the mmapped ones.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // an FFI call into glibc; no safe crate exposes its counters
fn heap_stats() -> Option<(u64, u64)> {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters, under its
    // arena locks
    let info = unsafe { libc::mallinfo2() };
    Some(((info.uordblks + info.hblkhd) as u64, (info.arena + info.hblkhd) as u64))
}

#[cfg(all(target_os = "linux", not(target_env = "gnu")))]
fn heap_stats() -> Option<(u64, u64)> {
    None
}

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

fn load(path: Option<&PathBuf>) -> anyhow::Result<Arc<config::Project>> {
    let project = match path {
        Some(path) => config::load(path)?,
        None => {
            let project = config::parse(demo::CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e:?}"))?;
            demo::prepare(&project)?;
            project
        }
    };
    Ok(Arc::new(project))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format, &cli.log);
    if let Command::Validate { config } = &cli.command {
        return validate(config);
    }
    if let Command::Dataset {
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
    } = &cli.command
    {
        let options = training::DatasetOptions {
            input: input.clone(),
            timestamp: timestamp.clone(),
            features: features_of(features, vector, model),
            output: output.clone(),
            assume_utc: *assume_utc,
            statuses: *statuses,
            shards: *shards,
            progress: true,
        };
        return report(config::load(config).map_err(Into::into).and_then(|project| {
            let started = std::time::Instant::now();
            let summary = training::dataset(&project, &options)?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}: {} rows from {} offline events and changes in {secs:.1}s ({:.0} rows/s)",
                output.display(),
                summary.rows,
                summary.events,
                summary.rows as f64 / secs
            );
            Ok(())
        }));
    }
    if let Command::Drift { reference, current, profile, columns, json, html, possible, detected } = &cli.command {
        let options = DriftOptions { columns, json, html, thresholds: (*possible, *detected) };
        return report(drift(reference, current, profile.as_deref(), &options));
    }
    if let Command::Profile { config, model, training_set, output, top_k, prediction } = &cli.command {
        let options = ProfileOptions { output: output.as_deref(), top_k: *top_k, prediction: prediction.as_deref() };
        return report(profile(config, model, training_set, &options));
    }
    if let Command::Bench { which: BenchCommand::Drift { rows, features, numpy_python } } = &cli.command {
        return report(bench::drift(*rows, *features, numpy_python.as_deref()));
    }
    if let Command::Bench { which: BenchCommand::Dataset { rows, events, keys, dir, pandas_python } } = &cli.command {
        let options = bench::DatasetOptions {
            rows: *rows,
            events: *events,
            keys: *keys,
            dir: dir.clone(),
            pandas_python: pandas_python.clone(),
        };
        return report(bench::dataset(&options));
    }
    if let Command::Bench { which: BenchCommand::Engine { events, keys, storey_python, storey_events } } = cli.command {
        let options = bench::Options { events, keys, storey_python, storey_events };
        return report(bench::run(&options));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return report(Err(e.into())),
    };
    #[cfg(target_os = "linux")]
    if matches!(
        cli.command,
        Command::Serve { .. } | Command::Replay { serve: true, .. } | Command::Demo { serve: true, .. }
    ) {
        memory_gauges();
    }
    report(runtime.block_on(async move {
        match cli.command {
            Command::Serve { config, roles } => {
                let roles = pipeline::Roles::parse(&roles).map_err(|e| anyhow::anyhow!("--roles: {e}"))?;
                let project = load(config.as_ref())?;
                let running = pipeline::start_with(project.clone(), roles).await?;
                serve::serve_roles(project, running, roles.api).await
            }
            Command::Replay { file, source, config, serve } => {
                replay::run(load(config.as_ref())?, &file, &source, serve).await.map(|_| ())
            }
            Command::DemoProducer { brokers, rate, period_minutes, wave_minutes } => {
                let minutes = |m: u64| Duration::from_secs(m.max(1) * 60);
                demo::produce(&brokers, rate, minutes(period_minutes), minutes(wave_minutes)).await
            }
            Command::Demo { cards, history, rounds, serve, listen } => {
                let pause = Duration::from_secs(2);
                let options = demo::Options { cards: cards.max(43), history, rounds, pause, serve, listen };
                demo::run(options).await
            }
            Command::Bench { which: BenchCommand::E2e { brokers, redis, events, keys, partitions, scenario } } => {
                bench::e2e(&bench::E2eOptions { brokers, redis, events, keys, partitions, scenario }).await
            }
            Command::Bench { which: BenchCommand::Soak(options) } => bench::soak(&options).await,
            Command::Bench { which: BenchCommand::Monitor { predictions, features, batch } } => {
                bench::monitor(predictions, features, batch).await
            }
            Command::Consistency { config, features, vector, model, sample } => {
                let project = load(Some(&config))?;
                let at = chrono::Utc::now().timestamp_millis();
                let report =
                    training::consistency(project, &features_of(&features, &vector, &model), sample, at).await?;
                let mut mismatches = 0;
                for (feature, r) in &report {
                    mismatches += r.mismatches;
                    println!("{feature}: {} compared, {} mismatches", r.compared, r.mismatches);
                    if let Some((key, online, offline)) = &r.worst {
                        println!("  worst: {key}: online {online}, offline {offline}");
                    }
                }
                anyhow::ensure!(mismatches == 0, "{mismatches} mismatches between online and offline values");
                Ok(())
            }
            Command::Validate { .. }
            | Command::Profile { .. }
            | Command::Dataset { .. }
            | Command::Bench { .. }
            | Command::Drift { .. } => {
                unreachable!("handled above")
            }
        }
    }))
}

struct DriftOptions<'a> {
    columns: &'a [String],
    json: &'a std::path::Path,
    html: &'a std::path::Path,
    thresholds: (f64, f64),
}

/// `fathom drift`: the report to JSON and HTML, and a summary on stdout.
fn drift(
    reference: &std::path::Path,
    current: &std::path::Path,
    profile: Option<&std::path::Path>,
    options: &DriftOptions<'_>,
) -> anyhow::Result<()> {
    use fathom_monitor::report;
    let (possible, detected) = options.thresholds;
    if !(0.0..=1.0).contains(&possible) || !(0.0..=1.0).contains(&detected) || possible > detected {
        anyhow::bail!("thresholds must satisfy 0 ≤ --possible ≤ --detected ≤ 1");
    }
    let profile = profile.map(fathom_monitor::profile::Profile::load).transpose()?;
    let columns = (!options.columns.is_empty()).then_some(options.columns);
    let started = std::time::Instant::now();
    let result = report::run(reference, current, profile.as_ref(), columns, options.thresholds)?;
    let elapsed = started.elapsed();
    std::fs::write(options.json, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", options.json.display()))?;
    std::fs::write(options.html, report::html(&result))
        .with_context(|| format!("writing {}", options.html.display()))?;
    let name = |s| fathom_monitor::window::status_name(s);
    println!("{:<32} {:>8} {:>8} {:>8} {:>10}  status", "feature", "score", "tvd", "ks", "ks_p");
    let nan = f64::NAN;
    for f in &result.features {
        let d = f.drift.as_ref();
        println!(
            "{:<32} {:>8.4} {:>8.4} {:>8.4} {:>10.3e}  {}",
            f.name,
            f.score.unwrap_or(nan),
            d.map_or(nan, |d| d.tvd),
            d.and_then(|d| d.ks).unwrap_or(nan),
            d.and_then(|d| d.ks_p.or(d.chi2_p)).unwrap_or(nan),
            name(f.status)
        );
    }
    for s in &result.skipped {
        println!("{:<32} skipped: {}", s.name, s.reason);
    }
    println!(
        "overall {} (score {:.4}) over {} features in {:.2} s → {}, {}",
        name(result.status),
        result.score.unwrap_or(nan),
        result.features.len(),
        elapsed.as_secs_f64(),
        options.json.display(),
        options.html.display()
    );
    Ok(())
}

fn features_of(list: &[String], vector: &Option<String>, model: &Option<String>) -> training::Features {
    match (vector, model) {
        (Some(v), _) => training::Features::Vector(v.clone()),
        (None, Some(m)) => training::Features::Model(m.clone()),
        (None, None) => training::Features::List(list.to_vec()),
    }
}

struct ProfileOptions<'a> {
    output: Option<&'a std::path::Path>,
    top_k: usize,
    prediction: Option<&'a str>,
}

fn profile(
    config: &std::path::Path,
    model: &str,
    training_set: &std::path::Path,
    options: &ProfileOptions<'_>,
) -> anyhow::Result<()> {
    let project = config::load(config)?;
    let mut features = project.model_features(model)?;
    if let Some(column) = options.prediction {
        features.push(column.to_string());
    }
    let mut profile = fathom_monitor::profile::build(model, &features, training_set, options.top_k)?;
    if let Some(column) = options.prediction {
        let entry = profile.features.remove(column).expect("profiled above");
        profile.features.insert("prediction".into(), entry);
    }
    let path = options.output.map_or_else(|| project.reference_path(model), std::path::Path::to_path_buf);
    profile.save(&path)?;
    println!(
        "{}: reference profile of {model:?}: {} rows, {} features",
        path.display(),
        profile.rows,
        profile.features.len()
    );
    Ok(())
}

fn validate(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(project) => {
            let features: usize = project.plans.iter().map(|p| p.feature_names().count()).sum::<usize>()
                + project.table_plans.iter().map(|p| p.aggregations.len()).sum::<usize>();
            println!(
                "{}: ok — project {:?}, {} sources ({} CDC tables), {} feature sets, {features} features, {} feature vectors, {} models",
                path.display(),
                project.name,
                project.sources.len(),
                project.tables.len(),
                project.plans.len() + project.table_plans.len(),
                project.vectors.len(),
                project.models.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid { path, problems }) => {
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::from(1)
        }
        Err(e) => report(Err(e.into())),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
