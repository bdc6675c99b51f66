//! `fathom replay FILE`: a file's records through the same pipeline as Kafka and push, with a
//! progress bar and a final summary.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;

use fathom_api::serve;
use fathom_project::Project;
use fathom_runtime::pipeline::{self, Push, PushSummary};

/// Replays `file` into `source`; serves the API afterwards when `then_serve`.
pub(crate) async fn run(
    project: Arc<Project>,
    file: &Path,
    source: &str,
    then_serve: bool,
) -> anyhow::Result<PushSummary> {
    let index = project.source_index(source).with_context(|| {
        let known: Vec<_> = project.sources.iter().map(|(n, _)| n.as_str()).collect();
        format!("no source named {source:?} (declared: {})", known.join(", "))
    })?;
    let input = super::Input::fetch(file, &project.stores.offline.parquet.options)?;
    let local = input.path.as_path();
    let total = fathom_ingest::replay::count(local)?;
    let running = pipeline::start(project.clone()).await?;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records, {per_sec}, ETA {eta}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut summary = PushSummary::default();
    let mut records = fathom_ingest::replay::records(local, index)?;
    loop {
        let chunk: Vec<_> = records.by_ref().take(project.processing.batch_size).collect::<Result<_, _>>()?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len() as u64;
        let (done, answer) = oneshot::channel();
        running.push.send(Push { source: index, records: chunk, done }).await.context("pipeline stopped")?;
        let part = answer.await.context("pipeline stopped")?;
        summary.accepted += part.accepted;
        summary.dead_lettered += part.dead_lettered;
        bar.inc(n);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let records = summary.accepted + summary.dead_lettered;
    println!(
        "replayed {records} records from {} into {source:?} in {secs:.2}s ({:.0} records/s): {} accepted, {} dead-lettered",
        file.display(),
        records as f64 / secs.max(1e-9),
        summary.accepted,
        summary.dead_lettered,
    );
    if summary.dead_lettered > 0 && project.stores.kafka.is_none() {
        println!("dead letters: {}/{}.dlq", project.stores.dead_letters.path.display(), project.stream_name(index));
    }
    println!("offline store: {}/{source}/", project.stores.offline.parquet.path.display());
    if then_serve {
        serve::serve_until_signal(project, running).await?;
    } else {
        serve::stop(running).await?;
    }
    Ok(summary)
}
