//! `fathom serve`: the pipeline, the monitor and the HTTP API until SIGINT/SIGTERM, then the final
//! checkpoints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use fathom_api::serve;
use fathom_featurestore::online::{OnlineStore, RedisStore};
use fathom_runtime::{pipeline, Roles};

/// Runs the roles `--roles` names with the project (the embedded demo without one).
///
/// The pipeline and the monitor run on threads of their own (`fathom-pipeline`), the HTTP API on
/// the caller's runtime with a Redis connection of its own: a batch is CPU work (decoding,
/// transforms, aggregation, Parquet) that lookups must not queue behind, and a connection's
/// replies are read by a task of the runtime it was made on.
pub(crate) async fn run(config: Option<&PathBuf>, roles: &str) -> anyhow::Result<()> {
    let roles = Roles::parse(roles).map_err(|e| anyhow::anyhow!("--roles: {e}"))?;
    let project = super::load(config)?;
    if !serve::until_online_store_answers(&project).await? {
        return Ok(());
    }
    let workers = tokio::runtime::Builder::new_multi_thread().thread_name("fathom-pipeline").enable_all().build()?;
    let served = async {
        let mut running = workers.spawn(pipeline::start_with(project.clone(), roles)).await??;
        if let OnlineStore::Redis(_, near) = &running.store {
            // a connection of its own, the pipeline's near cache
            let topology = project.redis()?.expect("a Redis online store");
            let redis = RedisStore::connect(&topology).await.context("connecting to Redis")?;
            running.store = OnlineStore::Redis(redis, near.clone());
        }
        serve::serve_roles(project, running, roles.api).await
    }
    .await;
    // the pipeline and the monitor have finished (their final checkpoints are done), or never
    // started; a runtime is not dropped inside another
    workers.shutdown_background();
    served
}

/// Memory gauges every 5 s: `fathom_process_resident_bytes` (the process's RSS, C libraries
/// included), `fathom_memory_heap_bytes` (live allocations) and
/// `fathom_memory_allocator_resident_bytes` (what the allocator holds: the live heap plus freed
/// memory it has not given back).
#[cfg(target_os = "linux")]
pub(crate) fn memory_gauges() {
    serve::metrics(); // the recorder first, or the first readings are lost
    let spawned = std::thread::Builder::new().name("memory-gauges".into()).spawn(move || loop {
        fathom_runtime::telemetry::memory(heap_stats(), crate::bench::rss_kib("self") * 1024);
        std::thread::sleep(Duration::from_secs(5));
    });
    if let Err(e) = spawned {
        tracing::warn!("memory gauges not started: {e}");
    }
}

/// Live heap and what the allocator holds, in bytes, from jemalloc's counters (C libraries such
/// as librdkafka included: they allocate through it too): `stats.allocated` and `stats.resident`
/// (pages mapped for the heap and its metadata, freed pages not yet returned included). None when
/// the counters cannot be read.
#[cfg(target_os = "linux")]
fn heap_stats() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?; // the counters are cached until the epoch advances
    Some((stats::allocated::read().ok()? as u64, stats::resident::read().ok()? as u64))
}
