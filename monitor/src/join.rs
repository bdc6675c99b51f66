//! The prediction–label join by `request_id`.
//!
//! Each request has one entry in the online store (`fathom:{<project>:__monitor:<model>}:<id>`,
//! TTL `max_delay`), holding the prediction, or the label that arrived first, and whether they
//! were joined. Every part carries the *epoch* (checkpoint number) that wrote it. The monitor's
//! checkpoint (its windows, rule states and input offsets) is written after the entries and names
//! its epoch; after a crash, parts written by the epoch that never committed are ignored — the
//! records that wrote them are replayed — so every join counts exactly once. (A restart marks
//! that epoch aborted in its first checkpoint and moves on to new epoch numbers, so a stale part
//! can never pass for a committed one.)

use serde::{Deserialize, Serialize};

use crate::records::Outcome;

/// What the join remembers of a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// Prediction time, ms.
    pub ts_ms: i64,
    /// The answer.
    pub outcome: Outcome,
}

/// What the join remembers of a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labelled {
    /// Label time, ms.
    pub ts_ms: i64,
    /// The label as JSON text.
    pub label: String,
}

/// One request's entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The prediction and the epoch that stored it.
    pub prediction: Option<(u64, Predicted)>,
    /// The label and the epoch that stored it.
    pub label: Option<(u64, Labelled)>,
    /// The epoch that joined them.
    pub joined: Option<u64>,
}

/// What a record did to its entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Joined {
    /// Stored; waits for the other side.
    Waiting,
    /// Both sides are here: count this pair.
    Pair(Predicted, Labelled),
    /// This side was already here (a producer's retry): ignored.
    Duplicate,
}

impl Entry {
    /// The entry as the checkpoints know it: parts written by an epoch that was not committed
    /// (`committed(epoch)` false) are dropped.
    pub fn as_of(mut self, committed: impl Fn(u64) -> bool) -> Entry {
        if self.prediction.as_ref().is_some_and(|(e, _)| !committed(*e)) {
            self.prediction = None;
        }
        if self.label.as_ref().is_some_and(|(e, _)| !committed(*e)) {
            self.label = None;
        }
        if self.joined.is_some_and(|e| !committed(e)) {
            self.joined = None;
        }
        self
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.prediction.is_none() && self.label.is_none()
    }

    /// A prediction arrives in `epoch`.
    pub fn predict(&mut self, predicted: Predicted, epoch: u64) -> Joined {
        if self.prediction.is_some() {
            return Joined::Duplicate;
        }
        self.prediction = Some((epoch, predicted.clone()));
        match &self.label {
            Some((_, label)) if self.joined.is_none() => {
                self.joined = Some(epoch);
                Joined::Pair(predicted, label.clone())
            }
            _ => Joined::Waiting,
        }
    }

    /// A label arrives in `epoch`.
    pub fn label(&mut self, labelled: Labelled, epoch: u64) -> Joined {
        if self.label.is_some() {
            return Joined::Duplicate;
        }
        self.label = Some((epoch, labelled.clone()));
        match &self.prediction {
            Some((_, predicted)) if self.joined.is_none() => {
                self.joined = Some(epoch);
                Joined::Pair(predicted.clone(), labelled)
            }
            _ => Joined::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Predicted {
        Predicted { ts_ms: 1, outcome: Outcome::Value(1.0) }
    }
    fn l() -> Labelled {
        Labelled { ts_ms: 2, label: "1".into() }
    }

    #[test]
    fn joins_either_order_once() {
        let mut a = Entry::default();
        assert_eq!(a.predict(p(), 1), Joined::Waiting);
        assert_eq!(a.label(l(), 2), Joined::Pair(p(), l()));
        assert_eq!(a.label(l(), 2), Joined::Duplicate);
        assert_eq!(a.predict(p(), 3), Joined::Duplicate);
        let mut b = Entry::default();
        assert_eq!(b.label(l(), 1), Joined::Waiting, "a label first waits");
        assert_eq!(b.predict(p(), 1), Joined::Pair(p(), l()));
    }

    #[test]
    fn a_replay_after_a_crash_joins_again_exactly_once() {
        // prediction stored and checkpointed in epoch 1; label joined in epoch 2, whose
        // checkpoint never landed (the entry did)
        let mut stored = Entry::default();
        stored.predict(p(), 1);
        stored.label(l(), 2);
        let mut seen = stored.clone().as_of(|e| e <= 1);
        assert_eq!(seen.joined, None);
        assert_eq!(seen.label(l(), 2), Joined::Pair(p(), l()), "the replayed label counts");
        // had epoch 2 been committed, the same label is a duplicate
        assert_eq!(stored.as_of(|e| e <= 2).label(l(), 3), Joined::Duplicate);
    }
}
