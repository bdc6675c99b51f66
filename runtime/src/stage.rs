//! One run loop for both stages, the ingest pipeline and the monitor, after Arroyo's operator
//! (`arroyo-operator/src/operator.rs`): the loop owns the `select!` over shutdown, Kafka batches,
//! pushes, results of work the stage started and a tick; the stage supplies the hooks
//! ([`Stage::process_batch`], [`Stage::handle_tick`], [`Stage::handle_checkpoint`], …). Between
//! two events the loop asks whether a checkpoint is due, and on shutdown it calls
//! [`Stage::finish`] for the final one.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use fathom_ingest::record::Record;

use crate::consumer::Fetched;
use tokio::sync::{mpsc, watch};

/// How often a quiet loop wakes up (idle windows, lease renewal, due checkpoints).
pub(crate) const TICK: Duration = Duration::from_millis(200);

/// A stage's hooks. Every hook runs on the loop's task, one at a time, so a stage owns its state
/// without locks.
pub(crate) trait Stage {
    /// A push request (records with a channel for the answer).
    type Push: Send;
    /// The outcome of work the stage started on other tasks (the monitor's deliveries).
    type Result: Send;
    /// What ends the loop early.
    type Error;

    /// Before [`Stage::process_batch`]: the group's rebalance count before its batch was read.
    fn fetched(&mut self, _rebalances: u64) {}

    /// Applies one batch from the Kafka consumer.
    fn process_batch(&mut self, records: Vec<Record>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies pushed records and answers the request.
    fn handle_push(&mut self, push: Self::Push) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Takes in the outcome of work started earlier.
    fn handle_result(&mut self, result: Self::Result);

    /// Every [`TICK`].
    fn handle_tick(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// After every event, before the checkpoint check (the monitor starts due deliveries).
    fn after_event(&mut self) {}

    /// Whether to checkpoint now.
    fn checkpoint_due(&self) -> bool;

    /// A checkpoint while running.
    fn handle_checkpoint(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The final checkpoint, after shutdown was asked for.
    fn finish(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The inputs of one loop.
pub(crate) struct Inputs<'a, S: Stage> {
    /// Batches from the Kafka consumer, when the stage consumes Kafka.
    pub(crate) kafka: Option<mpsc::Receiver<Fetched>>,
    /// Push requests.
    pub(crate) push: &'a mut mpsc::Receiver<S::Push>,
    /// Results of the stage's own work, when it starts any.
    pub(crate) results: Option<mpsc::Receiver<S::Result>>,
    /// Asks the loop to finish.
    pub(crate) shutdown: &'a mut watch::Receiver<bool>,
}

/// Runs `stage` until shutdown (then [`Stage::finish`]) or until a hook fails.
pub(crate) async fn run<S: Stage>(stage: &mut S, inputs: Inputs<'_, S>) -> Result<(), S::Error> {
    let Inputs { mut kafka, push, mut results, shutdown } = inputs;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(result) = async { results.as_mut()?.recv().await } => stage.handle_result(result),
            Some(batch) = async { kafka.as_mut()?.recv().await } => {
                stage.fetched(batch.rebalances);
                stage.process_batch(batch.records).await?
            }
            Some(request) = push.recv() => stage.handle_push(request).await?,
            _ = tick.tick() => stage.handle_tick().await?,
        }
        stage.after_event();
        if stage.checkpoint_due() {
            stage.handle_checkpoint().await?;
        }
    }
    stage.finish().await
}

/// The results channel of a stage that starts no work of its own.
pub(crate) type NoResults = Option<mpsc::Receiver<Infallible>>;
