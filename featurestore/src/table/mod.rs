//! Entity tables: the rows of change-data-capture sources, kept in the online store beside the
//! feature sets, joined into event streams, and aggregated with retraction.
//!
//! Each change carries its [`ChangeOrder`] — the connector's log position, then the Kafka
//! (partition, offset), then the commit time — and a change not greater than the stored one is
//! skipped, so Kafka redelivery and out-of-order partitions never bring back an old row, and a
//! snapshot read never outranks a change streamed at a later position. A column the connector
//! sent as unavailable (Debezium's placeholder) keeps the stored row's value. A delete keeps the
//! version and the deletion time with no row, so lookups answer `NOT_FOUND` rather than stale
//! data. Keys: `fathom:{<project>:@<source>:<key>}`.
//!
//! A row also keeps the versions it replaced for as long as a join needs them ([`TableRow::as_of`]),
//! so an event is enriched with the row as it was at the event's time. Aggregations over a table
//! ([`aggregate`]) retract the old row and add the new one on every applied change; their group
//! states are written before the rows, so after a crash a change whose row was written is in
//! every group, and a change whose row was not is replayed against the old row (groups skip
//! what they already hold by offset).

pub mod aggregate;
#[cfg(test)]
mod tests;

use std::borrow::{Borrow, BorrowMut};

use compact_str::CompactString;
use fathom_ingest::debezium::{ChangeOrder, Connector, LogPosition};
use fathom_ingest::event::Event;
use fathom_ingest::record::Coordinates;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::aggregate::GroupState;
use fathom_transform::Transform;

use crate::definition::TablePlan;
use crate::engine::Position;
use crate::lookup::{FeatureValue, Status};
use crate::online::{self, OnlineError, OnlineStore, Write};

/// The stored state of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// Format version.
    pub version: u8,
    /// Current row as a JSON object, `None` after a delete.
    pub row: Option<String>,
    /// Column names last seen, so a deleted key still lists them as `NOT_FOUND`.
    pub columns: Vec<String>,
    /// The order of the change applied (its commit time is `order.commit_us`).
    pub order: ChangeOrder,
    /// Versions the current one replaced, oldest first, kept for as-of joins.
    pub history: Vec<Version>,
    /// Whether older versions were dropped: before the oldest kept one, the row is unknown.
    pub pruned: bool,
}

/// A replaced version of a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Commit time, µs.
    pub commit_us: i64,
    /// The row, `None` if it was deleted.
    pub row: Option<String>,
}

const FORMAT_VERSION: u8 = 3;

/// Format 2: ordered by (commit time, LSN); read so that an upgrade keeps every stored row.
#[derive(Deserialize)]
struct TableRowV2 {
    version: u8,
    row: Option<String>,
    columns: Vec<String>,
    commit_us: i64,
    lsn: i64,
    history: Vec<VersionV2>,
    pruned: bool,
}

#[derive(Deserialize)]
struct VersionV2 {
    commit_us: i64,
    #[allow(dead_code)]
    lsn: i64,
    row: Option<String>,
}

impl From<TableRowV2> for TableRow {
    fn from(old: TableRowV2) -> TableRow {
        // format 2 kept PostgreSQL's LSN (0 for other connectors)
        let position =
            (old.lsn > 0).then_some(LogPosition { connector: Connector::Postgres, parts: [old.lsn as u128, 0, 0] });
        TableRow {
            version: FORMAT_VERSION,
            row: old.row,
            columns: old.columns,
            order: ChangeOrder { position, kafka: None, commit_us: old.commit_us },
            history: old.history.into_iter().map(|v| Version { commit_us: v.commit_us, row: v.row }).collect(),
            pruned: old.pruned,
        }
    }
}
/// Most replaced versions kept per row, whatever the join history: a hot row must not grow
/// without bound.
pub const MAX_HISTORY: usize = 64;

impl TableRow {
    /// The row as of `at_ms` (changes whose commit time, in ms, is ≤ `at_ms`): the row or
    /// `None` if it did not exist or was deleted, and whether the answer is exact (`false`
    /// when `at_ms` is before the oldest version kept).
    pub fn as_of(&self, at_ms: i64) -> (Option<&str>, bool) {
        let ms = |us: i64| us.div_euclid(1000);
        if ms(self.order.commit_us) <= at_ms {
            return (self.row.as_deref(), true);
        }
        if let Some(v) = self.history.iter().rev().find(|v| ms(v.commit_us) <= at_ms) {
            return (v.row.as_deref(), true);
        }
        if self.pruned {
            let oldest = self.history.first().map_or(self.row.as_deref(), |v| v.row.as_deref());
            return (oldest, false);
        }
        (None, true)
    }

    /// Replaces the current version, keeping the old one while a read `history_ms` before the
    /// newest change could still need it.
    fn replace(&mut self, row: Option<String>, columns: Vec<String>, order: ChangeOrder, history_ms: i64) {
        let old = Version { commit_us: self.order.commit_us, row: self.row.take() };
        self.history.push(old);
        (self.row, self.columns, self.order) = (row, columns, order);
        let cutoff_us = order.commit_us.saturating_sub(history_ms.saturating_mul(1000));
        // version i answers reads in [its commit, the next one's): drop it once that interval
        // lies entirely before the cutoff
        let mut keep_from = 0;
        while keep_from < self.history.len() {
            let next = self.history.get(keep_from + 1).map_or(self.order.commit_us, |v| v.commit_us);
            if next > cutoff_us && self.history.len() - keep_from <= MAX_HISTORY {
                break;
            }
            keep_from += 1;
        }
        if keep_from > 0 {
            self.history.drain(..keep_from);
            self.pruned = true;
        }
    }
}

/// One change to apply: source index, key, and the row after it (`None` for a delete).
#[derive(Debug, Clone)]
pub struct RowChange {
    /// Source index.
    pub source: usize,
    /// Primary key as text.
    pub key: String,
    /// Row after the change; `None` deletes. Applying the change fills in the `unavailable`
    /// columns from the stored row.
    pub row: Option<Map<String, Value>>,
    /// Columns the connector did not have (its placeholder was sent): the stored value stays.
    pub unavailable: Vec<String>,
    /// Where the change stands among the row's changes.
    pub order: ChangeOrder,
    /// Position in the source.
    pub at: Coordinates,
    /// A snapshot read (`op: r`): the row's state when the snapshot ran, not when it was made.
    pub snapshot: bool,
}

/// What a batch of changes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableOutcome {
    /// Changes applied.
    pub applied: u64,
    /// Changes not newer than the stored row (redelivered or out of order), skipped.
    pub stale: u64,
    /// Unavailable columns with no stored value to keep (set to null).
    pub unavailable_unknown: u64,
    /// Group updates skipped because the group already held the change (replay after a crash).
    pub duplicates: u64,
    /// Applied changes whose source `select` failed on the row (its selected columns are null).
    pub expression_errors: u64,
}

/// Runs `select` over one row, adding its columns; on a failure they are null. Returns whether
/// it failed.
pub(crate) fn select_row(select: &Transform, row: &mut Map<String, Value>) -> bool {
    let failed = !select.apply(&mut [&mut *row]).is_empty();
    if failed {
        for name in select.selected() {
            row.insert(name.to_string(), Value::Null);
        }
    }
    failed
}

/// What a join pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// (event, join) pairs that found a row.
    pub matched: u64,
    /// Pairs with no row at the event's time (or no join key in the event).
    pub missed: u64,
    /// Pairs answered with the oldest kept version because the event was older than the
    /// row's kept history.
    pub approximate: u64,
}

/// The columns one source's events take from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The table's source index.
    pub table: usize,
    /// Event field holding the table key.
    pub on: String,
    /// Columns added.
    pub columns: Vec<String>,
}

/// The store key of a table row.
pub fn row_key(project: &str, source: &str, key: &str) -> String {
    online::entity_key(project, &format!("@{source}"), key)
}

/// Decodes a stored row (this format or the previous one); `None` if it was written by another.
pub fn decode(bytes: &[u8]) -> Option<TableRow> {
    match bytes.first() {
        Some(&FORMAT_VERSION) => postcard::from_bytes::<TableRow>(bytes).ok(),
        Some(2) => postcard::from_bytes::<TableRowV2>(bytes).ok().filter(|r| r.version == 2).map(TableRow::from),
        _ => None,
    }
}

fn parse(row: Option<&str>) -> Option<Map<String, Value>> {
    row.and_then(|r| serde_json::from_str(r).ok())
}

/// Every column of a row as of now: `PRESENT`/`NULL_VALUE` with the commit time, or
/// `NOT_FOUND` for a deleted or unknown key.
pub fn row_values(row: Option<&TableRow>) -> Vec<FeatureValue> {
    let Some(stored) = row else { return Vec::new() };
    let event_time_ms = Some(stored.order.commit_us.div_euclid(1000));
    match parse(stored.row.as_deref()) {
        Some(map) => map
            .into_iter()
            .map(|(name, value)| {
                let status = if value.is_null() { Status::NullValue } else { Status::Present };
                FeatureValue { name, value, status, event_time_ms }
            })
            .collect(),
        None => stored
            .columns
            .iter()
            .map(|name| FeatureValue {
                name: name.clone(),
                value: Value::Null,
                status: Status::NotFound,
                event_time_ms,
            })
            .collect(),
    }
}

/// A key as text: strings as is, integral numbers as the integer (as ingest keys them), other
/// JSON values as JSON.
fn key_text(value: &Value) -> Option<CompactString> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(CompactString::from(s.as_str())),
        Value::Number(n) => {
            Some(CompactString::from(fathom_ingest::decode::number_key(n).unwrap_or_else(|_| n.to_string())))
        }
        other => Some(CompactString::from(other.to_string())),
    }
}

struct RowSlot {
    row: Option<TableRow>,
    dirty: bool,
}

struct GroupSlot {
    state: GroupState,
    dirty: bool,
}

/// The tables of a project: rows and aggregation groups through write-back caches.
pub struct TableProcessor {
    project: String,
    names: Vec<String>,
    /// Per source: how long replaced versions are kept (the longest join history over it).
    history_ms: Vec<i64>,
    plans: Vec<TablePlan>,
    plans_by_source: Vec<Vec<usize>>,
    rows: FxHashMap<(usize, CompactString), RowSlot>,
    groups: Vec<FxHashMap<CompactString, GroupSlot>>,
    store: OnlineStore,
    max_cached: usize,
    /// Per source: its `select`s, run over each row after unavailable columns are filled.
    selects: Vec<Option<Transform>>,
}

impl TableProcessor {
    /// A processor over the project's sources (`names[i]` is source `i`'s name) with the
    /// history each keeps for joins and the aggregations over them.
    pub fn new(
        project: &str,
        names: Vec<String>,
        history_ms: Vec<i64>,
        plans: Vec<TablePlan>,
        store: OnlineStore,
        max_cached: usize,
    ) -> TableProcessor {
        let mut plans_by_source = vec![Vec::new(); names.len()];
        for (i, plan) in plans.iter().enumerate() {
            if let Some(s) = names.iter().position(|n| *n == plan.source) {
                plans_by_source[s].push(i);
            }
        }
        let groups = plans.iter().map(|_| FxHashMap::default()).collect();
        TableProcessor {
            project: project.to_string(),
            names,
            history_ms,
            plans,
            plans_by_source,
            rows: FxHashMap::default(),
            groups,
            store,
            max_cached,
            selects: Vec::new(),
        }
    }

    /// Computes each source's `select` columns (`selects[i]` for source `i`) into its rows, after
    /// the columns a change sent as unavailable are filled from the stored row, so a selected
    /// column sees the row as it is. A row the select fails on is applied with the selected
    /// columns null (a table's change cannot be dropped without leaving the row stale) and
    /// counted in [`TableOutcome::expression_errors`].
    pub fn with_selects(mut self, selects: Vec<Option<Transform>>) -> TableProcessor {
        self.selects = selects;
        self
    }

    /// Loads rows not cached yet, one round trip.
    async fn load_rows(&mut self, wanted: impl Iterator<Item = (usize, CompactString)>) -> Result<(), OnlineError> {
        let mut missing: Vec<(usize, CompactString)> = wanted.filter(|k| !self.rows.contains_key(k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let keys: Vec<String> = missing.iter().map(|(s, k)| row_key(&self.project, &self.names[*s], k)).collect();
        for (key, bytes) in missing.into_iter().zip(self.store.load(&keys).await?) {
            self.rows.insert(key, RowSlot { row: bytes.as_deref().and_then(decode), dirty: false });
        }
        Ok(())
    }

    /// Loads the group states a batch may touch: the groups of the row before and after each
    /// applied change (`None`: a stale change, skipped).
    async fn load_groups<'c>(
        &mut self,
        changes: impl Iterator<Item = (&'c RowChange, &'c Option<Option<Map<String, Value>>>)>,
    ) -> Result<(), OnlineError> {
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for (change, old) in changes {
            let Some(old) = old else { continue };
            for &p in &self.plans_by_source[change.source] {
                let plan = &self.plans[p];
                for row in [old.as_ref(), change.row.as_ref()].into_iter().flatten() {
                    if let Some(group) = aggregate::group_of(plan, row) {
                        if !self.groups[p].contains_key(group.as_str()) {
                            wanted.push((p, group));
                        }
                    }
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let keys: Vec<String> =
            wanted.iter().map(|(p, g)| online::entity_key(&self.project, &self.plans[*p].name, g)).collect();
        for ((p, group), bytes) in wanted.into_iter().zip(self.store.load(&keys).await?) {
            let plan = &self.plans[p];
            let state = match bytes.as_deref().map(|b| GroupState::decode(plan, b)) {
                Some(Some(state)) => state,
                Some(None) => {
                    tracing::warn!(feature_set = %plan.name, group, "stored group was written by another definition; starting fresh (replay the table's topic from the start to rebuild it)");
                    GroupState::new(plan)
                }
                None => GroupState::new(plan),
            };
            self.groups[p].insert(CompactString::from(group), GroupSlot { state, dirty: false });
        }
        Ok(())
    }

    /// Applies changes in order, loading missing rows and groups first. An applied change's
    /// `row` gets its unavailable columns filled in from the stored row, then its source's
    /// selected columns.
    pub async fn apply<C: BorrowMut<RowChange>>(&mut self, changes: &mut [C]) -> Result<TableOutcome, OnlineError> {
        let keys =
            changes.iter().map(Borrow::borrow).map(|c: &RowChange| (c.source, CompactString::from(c.key.as_str())));
        self.load_rows(keys).await?;
        let mut outcome = TableOutcome::default();
        // rows first, in order (a change's old row is the one the change before it left), then
        // the groups the old and new rows belong to
        let mut olds: Vec<Option<Option<Map<String, Value>>>> = Vec::with_capacity(changes.len());
        for change in changes.iter_mut().map(BorrowMut::borrow_mut) {
            let slot =
                self.rows.get_mut(&(change.source, CompactString::from(change.key.as_str()))).expect("loaded above");
            let newer = slot.row.as_ref().is_none_or(|r| change.order > r.order);
            if !newer {
                outcome.stale += 1;
                olds.push(None);
                continue;
            }
            let old = slot.row.as_ref().and_then(|r| parse(r.row.as_deref()));
            if let Some(row) = change.row.as_mut() {
                for column in change.unavailable.drain(..) {
                    let kept = old.as_ref().and_then(|o| o.get(&column)).cloned();
                    outcome.unavailable_unknown += u64::from(kept.is_none());
                    row.insert(column, kept.unwrap_or(Value::Null));
                }
                if let Some(Some(select)) = self.selects.get(change.source) {
                    outcome.expression_errors += u64::from(select_row(select, row));
                }
            }
            let columns = match (&change.row, &slot.row) {
                (Some(row), _) => row.keys().cloned().collect(),
                (None, Some(old)) => old.columns.clone(),
                (None, None) => Vec::new(),
            };
            let row = change.row.as_ref().map(|r| serde_json::to_string(r).expect("a JSON map encodes"));
            match &mut slot.row {
                Some(stored) => {
                    stored.replace(row, columns, change.order, self.history_ms[change.source]);
                }
                None => {
                    slot.row = Some(TableRow {
                        version: FORMAT_VERSION,
                        row,
                        columns,
                        order: change.order,
                        history: Vec::new(),
                        // a snapshot read says nothing of when the row appeared: reads before
                        // it see it, as an approximation
                        pruned: change.snapshot,
                    });
                }
            }
            slot.dirty = true;
            outcome.applied += 1;
            olds.push(Some(old));
        }
        self.load_groups(changes.iter().map(Borrow::borrow).zip(&olds)).await?;
        for (change, old) in changes.iter().map(Borrow::borrow).zip(&olds) {
            let Some(old) = old else { continue };
            let position = change.at.partition.map(|partition| Position { partition, offset: change.at.offset });
            for &p in &self.plans_by_source[change.source] {
                let plan = &self.plans[p];
                let before = old.as_ref().and_then(|r| aggregate::group_of(plan, r).map(|g| (g, r)));
                let after = change.row.as_ref().and_then(|r| aggregate::group_of(plan, r).map(|g| (g, r)));
                let mut update = |group: &str, old: Option<&Map<String, Value>>, new: Option<&Map<String, Value>>| {
                    let slot = self.groups[p].get_mut(group).expect("loaded above");
                    if slot.state.change(plan, old, new, position, change.order.commit_us) {
                        slot.dirty = true;
                    } else {
                        outcome.duplicates += 1;
                    }
                };
                match (before, after) {
                    (Some((g, old)), Some((h, new))) if g == h => update(&g, Some(old), Some(new)),
                    (before, after) => {
                        if let Some((g, old)) = before {
                            update(&g, Some(old), None);
                        }
                        if let Some((h, new)) = after {
                            update(&h, None, Some(new));
                        }
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Adds the joined table columns to each event, as of the event's time. `joins[s]` lists
    /// the joins of source `s`'s events. An event without a join key, or without a row at its
    /// time, gets `null` columns.
    pub async fn enrich(&mut self, joins: &[Vec<Join>], events: &mut [Event]) -> Result<JoinOutcome, OnlineError> {
        let wanted: Vec<(usize, CompactString)> = events
            .iter()
            .flat_map(|e| joins[e.source].iter().map(move |j| (j, e)))
            .filter_map(|(j, e)| Some((j.table, key_text(e.fields.get(&j.on)?)?)))
            .collect();
        self.load_rows(wanted.into_iter()).await?;
        let mut outcome = JoinOutcome::default();
        for event in events.iter_mut() {
            for join in &joins[event.source] {
                let key = event.fields.get(&join.on).and_then(key_text);
                let stored = key.and_then(|k| self.rows.get(&(join.table, k))).and_then(|s| s.row.as_ref());
                let (row, exact) = stored.map_or((None, true), |r| r.as_of(event.time_ms));
                let mut row = parse(row);
                match (&row, exact) {
                    (None, _) => outcome.missed += 1,
                    (Some(_), true) => outcome.matched += 1,
                    (Some(_), false) => outcome.approximate += 1,
                }
                for column in &join.columns {
                    let value = row.as_mut().and_then(|r| r.remove(column)).unwrap_or(Value::Null);
                    event.fields.insert(column.clone(), value);
                }
            }
        }
        Ok(outcome)
    }

    /// Writes changed groups, then changed rows (that order: see the module docs); returns
    /// how many keys were written.
    pub async fn flush(&mut self) -> Result<usize, OnlineError> {
        let mut groups = Vec::new();
        for (plan, cache) in self.plans.iter().zip(&self.groups) {
            for (group, slot) in cache.iter().filter(|(_, s)| s.dirty) {
                groups.push(Write {
                    key: online::entity_key(&self.project, &plan.name, group),
                    state: slot.state.encode(),
                    ttl_ms: None,
                });
            }
        }
        let rows: Vec<Write> = self
            .rows
            .iter()
            .filter(|(_, slot)| slot.dirty)
            .filter_map(|((s, k), slot)| {
                let row = slot.row.as_ref()?;
                Some(Write {
                    key: row_key(&self.project, &self.names[*s], k),
                    state: postcard::to_allocvec(row).expect("plain data encodes"),
                    ttl_ms: None,
                })
            })
            .collect();
        if !groups.is_empty() {
            self.store.write(&groups, &[]).await?;
            self.groups.iter_mut().flat_map(|g| g.values_mut()).for_each(|s| s.dirty = false);
        }
        if !rows.is_empty() {
            self.store.write(&rows, &[]).await?;
            self.rows.values_mut().for_each(|s| s.dirty = false);
        }
        if self.cached() > self.max_cached {
            self.forget();
        }
        Ok(groups.len() + rows.len())
    }

    /// Drops cached rows and groups (after a rebalance, or when the cache is full; call when
    /// nothing is dirty, i.e. after a flush).
    pub fn forget(&mut self) {
        self.rows.clear();
        self.groups.iter_mut().for_each(FxHashMap::clear);
    }

    /// Rows and groups held in the cache.
    pub fn cached(&self) -> usize {
        self.rows.len() + self.groups.iter().map(FxHashMap::len).sum::<usize>()
    }

    /// The aggregation plans over tables.
    pub fn plans(&self) -> &[TablePlan] {
        &self.plans
    }
}
