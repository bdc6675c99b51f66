//! Applies decoded events to every feature set of their source, through a write-back cache of
//! entity states in front of the online store.
//!
//! A batch first loads, in one pipelined round trip, the state of every entity it touches that
//! is not cached; then it folds events in with [`engine::apply`]. [`Processor::flush`] writes
//! the states that changed. The applied offsets travel inside each entity's state, so replayed
//! records after a crash are recognised per entity and never counted twice.

use std::borrow::Cow;

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde_json::Value;

use fathom_ingest::event::Event;

use crate::definition::FeatureSetPlan;
use crate::engine::{self, Applied, EntityState, Position};
use crate::online::{self, OnlineError, OnlineStore, Write};

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// (event, feature set) applications.
    pub applied: u64,
    /// Applications skipped because the entity already holds that record.
    pub duplicates: u64,
    /// (index of the event in the batch, feature-set index) for late events.
    pub late: Vec<(usize, usize)>,
    /// Applications skipped because the event has no value in the feature set's key field (a
    /// set keyed by another field than the source's key, e.g. a joined column).
    pub unkeyed: u64,
    /// Applications skipped because the feature set's `where` is not true for the event.
    pub filtered: u64,
}

struct Slot {
    state: EntityState,
    dirty: bool,
}

/// The feature sets of a project, their cached entity states and the online store.
pub struct Processor {
    project: String,
    plans: Vec<FeatureSetPlan>,
    by_source: Vec<Vec<usize>>,
    /// Per plan: whether it is keyed by the source's key (else by its own `key_column` field).
    by_source_key: Vec<bool>,
    /// Per plan: entity key → state. Keys are inline strings: no pointer to chase per lookup.
    cache: Vec<FxHashMap<CompactString, Slot>>,
    store: OnlineStore,
    max_cached: usize,
}

impl Processor {
    /// A processor; `source_keys[s]` is source `s`'s key field (plans name their source by
    /// index in `source_of`). Clean states are dropped from the cache after a flush once more
    /// than `max_cached` are held.
    pub fn new(
        project: &str,
        plans: Vec<FeatureSetPlan>,
        source_of: &[usize],
        source_keys: &[String],
        store: OnlineStore,
        max_cached: usize,
    ) -> Processor {
        let mut by_source = vec![Vec::new(); source_keys.len()];
        for (plan, &source) in source_of.iter().enumerate() {
            by_source[source].push(plan);
        }
        let by_source_key = plans.iter().zip(source_of).map(|(p, &s)| p.key_column == source_keys[s]).collect();
        let cache = plans.iter().map(|_| FxHashMap::default()).collect();
        Processor { project: project.to_string(), plans, by_source, by_source_key, cache, store, max_cached }
    }

    /// The key an event has in feature set `p`: the event's key, or the plan's key field as
    /// text (`None` when absent or null).
    fn key_of<'e>(&self, p: usize, event: &'e Event) -> Option<Cow<'e, str>> {
        if self.by_source_key[p] {
            return Some(Cow::Borrowed(event.key.as_str()));
        }
        match event.fields.get(&self.plans[p].key_column)? {
            Value::Null => None,
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            other => Some(Cow::Owned(other.to_string())),
        }
    }

    /// The plans, indexed as in [`Outcome::late`].
    pub fn plans(&self) -> &[FeatureSetPlan] {
        &self.plans
    }

    /// Folds a batch of events into the cached states, loading missing ones first.
    pub async fn process(&mut self, events: &[Event]) -> Result<Outcome, OnlineError> {
        self.load_missing(events).await?;
        let mut outcome = Outcome::default();
        let mut columns: Vec<Option<&Value>> = Vec::new();
        let mut latest: Vec<Option<&Value>> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let position = event.at.partition.map(|partition| Position { partition, offset: event.at.offset });
            for &p in &self.by_source[event.source] {
                let plan = &self.plans[p];
                if !plan.admits(&event.fields) {
                    outcome.filtered += 1;
                    continue;
                }
                let field = |name: &String| event.fields.get(name).filter(|v| !v.is_null());
                columns.clear();
                columns.extend(plan.columns.iter().map(field));
                latest.clear();
                latest.extend(plan.latest.iter().map(field));
                let Some(key) = self.key_of(p, event) else {
                    outcome.unkeyed += 1;
                    continue;
                };
                let slot = self.cache[p].get_mut(key.as_ref()).expect("loaded above");
                match engine::apply(plan, &mut slot.state, event.time_ms, &columns, &latest, position) {
                    Applied::Applied => {
                        slot.dirty = true;
                        outcome.applied += 1;
                    }
                    Applied::Duplicate => outcome.duplicates += 1,
                    Applied::Late => outcome.late.push((i, p)),
                }
            }
        }
        Ok(outcome)
    }

    async fn load_missing(&mut self, events: &[Event]) -> Result<(), OnlineError> {
        let mut wanted: Vec<(usize, Cow<'_, str>)> = Vec::new();
        for event in events {
            for &p in self.by_source[event.source].iter().filter(|&&p| self.plans[p].admits(&event.fields)) {
                if let Some(key) = self.key_of(p, event).filter(|k| !self.cache[p].contains_key(k.as_ref())) {
                    wanted.push((p, key));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let keys: Vec<String> =
            wanted.iter().map(|(p, key)| online::entity_key(&self.project, &self.plans[*p].name, key)).collect();
        let stored = self.store.load(&keys).await?;
        for ((p, key), bytes) in wanted.into_iter().zip(stored) {
            let plan = &self.plans[p];
            let state = match bytes.as_deref().map(|b| online::decode(plan, b)) {
                Some(Some(state)) => state,
                Some(None) => {
                    tracing::warn!(feature_set = %plan.name, key = %key, "stored state was written by another definition, or by an older format that cannot be converted (docs/online-store.md); starting fresh");
                    EntityState::new(plan)
                }
                None => EntityState::new(plan),
            };
            self.cache[p].insert(CompactString::from(key.as_ref()), Slot { state, dirty: false });
        }
        Ok(())
    }

    /// Writes every changed state, plus `offsets` (store key, offset), to the online store.
    /// Returns the number of entities written.
    pub async fn flush(&mut self, offsets: &[(String, i64)]) -> Result<usize, OnlineError> {
        let mut writes = Vec::new();
        for (plan, cache) in self.plans.iter().zip(&self.cache) {
            for (key, slot) in cache.iter().filter(|(_, s)| s.dirty) {
                writes.push(Write {
                    key: online::entity_key(&self.project, &plan.name, key),
                    state: online::encode(plan, &slot.state),
                    ttl_ms: plan.ttl_ms,
                });
            }
        }
        if writes.is_empty() && offsets.is_empty() {
            return Ok(0);
        }
        self.store.write(&writes, offsets).await?;
        let cached: usize = self.cache.iter().map(FxHashMap::len).sum();
        for cache in &mut self.cache {
            if cached > self.max_cached {
                cache.clear();
            } else {
                cache.values_mut().for_each(|s| s.dirty = false);
            }
        }
        Ok(writes.len())
    }

    /// Drops every cached state; the next batch reloads what it touches from the store. Call
    /// between batches (after a flush, when nothing is dirty) once partitions have moved: another
    /// group member may have written their entities meanwhile.
    pub fn forget(&mut self) {
        self.cache.iter_mut().for_each(FxHashMap::clear);
    }

    /// The online store written to.
    pub fn store(&self) -> &OnlineStore {
        &self.store
    }

    /// Entities held in the cache.
    pub fn cached(&self) -> usize {
        self.cache.iter().map(FxHashMap::len).sum()
    }
}

#[cfg(test)]
mod tests;
