//! `fathom dataset`: point-in-time training sets from the offline store, wired to the project file
//! and a progress bar.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use fathom_featurestore::dataset::{self, Progress};
use fathom_featurestore::vector::Vector;
use indicatif::{ProgressBar, ProgressStyle};

use fathom_project::Project;

/// What the features are: references, a feature vector or a model.
#[derive(Debug, Clone)]
pub(crate) enum Features {
    /// References (`set.feature`, `set.*`, `table.column`).
    List(Vec<String>),
    /// A `feature_vectors` entry.
    Vector(String),
    /// A model's stored features.
    Model(String),
}

/// The features a command names: `--vector`, else `--model`, else the references.
pub(crate) fn features_of(list: &[String], vector: &Option<String>, model: &Option<String>) -> Features {
    match (vector, model) {
        (Some(v), _) => Features::Vector(v.clone()),
        (None, Some(m)) => Features::Model(m.clone()),
        (None, None) => Features::List(list.to_vec()),
    }
}

pub(crate) fn resolve(project: &Project, features: &Features) -> anyhow::Result<Vector> {
    let references = match features {
        Features::List(list) if list.is_empty() => anyhow::bail!("name the features: --features, --vector or --model"),
        Features::List(list) => list.clone(),
        Features::Vector(name) => project
            .vectors
            .get(name)
            .cloned()
            .with_context(|| format!("no feature vector named {name:?} under `feature_vectors`"))?,
        Features::Model(name) => project
            .models
            .get(name)
            .with_context(|| format!("no model named {name:?} under `models`"))?
            .features
            .clone(),
    };
    project.catalog().resolve(&references).map_err(anyhow::Error::msg)
}

/// An indicatif bar per phase.
struct Bar(Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = current.take() {
            bar.finish();
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg:>24} [{elapsed_precise}] {wide_bar} {pos}/{len}, {per_sec}, ETA {eta}",
                )
                .expect("valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg:>24} [{elapsed_precise}] {spinner} {pos} rows, {per_sec}")
                    .expect("valid template"),
            ),
        };
        bar.set_message(name.to_string());
        *current = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.inc(n);
        }
    }
}

impl Bar {
    fn finish(&self) {
        if let Some(bar) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish();
        }
    }
}

/// Options of `fathom dataset`.
#[derive(Debug, Clone)]
pub(crate) struct DatasetOptions {
    /// Entity rows (Parquet or CSV).
    pub input: PathBuf,
    /// Their timestamp column.
    pub timestamp: String,
    /// The features.
    pub features: Features,
    /// Output Parquet.
    pub output: PathBuf,
    /// Read zone-less timestamps as UTC.
    pub assume_utc: bool,
    /// Add status columns.
    pub statuses: bool,
    /// Hash partitions.
    pub shards: usize,
    /// Show a progress bar.
    pub progress: bool,
}

fn sources(project: &Project) -> Vec<(String, String, bool)> {
    project
        .sources
        .iter()
        .map(|(n, s)| (n.clone(), s.key.clone(), s.format == fathom_ingest::config::Format::Debezium))
        .collect()
}

/// Builds a training set; returns its summary.
pub(crate) fn dataset(project: &Project, options: &DatasetOptions) -> anyhow::Result<dataset::Summary> {
    let vector = resolve(project, &options.features)?;
    let scratch = options.output.with_extension("fathom-scratch");
    let sources = sources(project);
    let offline = project.stores.offline.parquet.storage()?; // as the pipeline writes it
    let input = super::Input::fetch(&options.input, &project.stores.offline.parquet.options)?;
    let request = dataset::Request {
        catalog: project.catalog(),
        vector: &vector,
        sources: &sources,
        transforms: &project.transforms,
        after_joins: &project.after_joins,
        offline: &offline,
        input: &input.path,
        timestamp: &options.timestamp,
        assume_utc: options.assume_utc,
        output: &options.output,
        statuses: options.statuses,
        shards: options.shards,
        scratch: &scratch,
    };
    let bar = Bar(Mutex::new(None));
    let silent = Silent;
    let progress: &dyn Progress = if options.progress { &bar } else { &silent };
    let summary = dataset::build(&request, progress);
    bar.finish();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(summary?)
}

pub(crate) struct Silent;

impl Progress for Silent {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// `fathom dataset`: builds the training set and prints its size and speed.
pub(crate) fn run(config: &Path, options: &DatasetOptions) -> anyhow::Result<()> {
    let project = fathom_project::load(config)?;
    let started = std::time::Instant::now();
    let summary = dataset(&project, options)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: {} rows from {} offline events and changes in {secs:.1}s ({:.0} rows/s)",
        options.output.display(),
        summary.rows,
        summary.events,
        summary.rows as f64 / secs
    );
    Ok(())
}
