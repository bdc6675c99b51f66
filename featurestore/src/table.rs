//! Entity tables: the current row per key of a change-data-capture source, kept in the online
//! store beside the feature sets.
//!
//! Each change carries its version — (commit time µs, LSN) — and a change not newer than the
//! stored one is skipped, so Kafka redelivery and out-of-order partitions never bring back an
//! old row. A delete keeps the version and the deletion time with no row, so lookups answer
//! `NOT_FOUND` rather than stale data. Keys: `fathom:{<project>:@<source>:<key>}`.

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// Commit time of the change applied, µs since the epoch.
    pub commit_us: i64,
    /// Log sequence number of the change applied (0 when the connector has none).
    pub lsn: i64,
}

const FORMAT_VERSION: u8 = 1;

/// One change to apply: source index, key, and the row after it (`None` for a delete).
#[derive(Debug, Clone)]
pub struct RowChange {
    /// Source index.
    pub source: usize,
    /// Primary key as text.
    pub key: String,
    /// Row after the change; `None` deletes.
    pub row: Option<Map<String, Value>>,
    /// Commit time, µs.
    pub commit_us: i64,
    /// LSN (0 if none).
    pub lsn: i64,
}

/// What a batch of changes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableOutcome {
    /// Changes applied.
    pub applied: u64,
    /// Changes not newer than the stored row (redelivered or out of order), skipped.
    pub stale: u64,
}

/// The store key of a table row.
pub fn row_key(project: &str, source: &str, key: &str) -> String {
    online::entity_key(project, &format!("@{source}"), key)
}

/// Decodes a stored row; `None` if it was written by another format.
pub fn decode(bytes: &[u8]) -> Option<TableRow> {
    postcard::from_bytes::<TableRow>(bytes).ok().filter(|r| r.version == FORMAT_VERSION)
}

/// Every column of a row as of now: `PRESENT`/`NULL_VALUE` with the commit time, or
/// `NOT_FOUND` for a deleted or unknown key.
pub fn row_values(row: Option<&TableRow>) -> Vec<FeatureValue> {
    let Some(stored) = row else { return Vec::new() };
    let event_time_ms = Some(stored.commit_us.div_euclid(1000));
    match stored.row.as_deref().and_then(|r| serde_json::from_str::<Map<String, Value>>(r).ok()) {
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

/// Applies changes to the rows of every CDC source through a write-back cache.
pub struct TableProcessor {
    project: String,
    names: Vec<String>,
    cache: FxHashMap<(usize, CompactString), (Option<TableRow>, bool)>,
    store: OnlineStore,
}

impl TableProcessor {
    /// A processor over the project's sources (`names[i]` is source `i`'s name).
    pub fn new(project: &str, names: Vec<String>, store: OnlineStore) -> TableProcessor {
        TableProcessor { project: project.to_string(), names, cache: FxHashMap::default(), store }
    }

    /// Applies changes in order, loading missing rows first (one round trip).
    pub async fn apply(&mut self, changes: &[RowChange]) -> Result<TableOutcome, OnlineError> {
        let mut missing: Vec<(usize, CompactString)> = changes
            .iter()
            .map(|c| (c.source, CompactString::from(c.key.as_str())))
            .filter(|k| !self.cache.contains_key(k))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let keys: Vec<String> = missing.iter().map(|(s, k)| row_key(&self.project, &self.names[*s], k)).collect();
            for (key, bytes) in missing.into_iter().zip(self.store.load(&keys).await?) {
                self.cache.insert(key, (bytes.as_deref().and_then(decode), false));
            }
        }
        let mut outcome = TableOutcome::default();
        for change in changes {
            let slot =
                self.cache.get_mut(&(change.source, CompactString::from(change.key.as_str()))).expect("loaded above");
            let newer = slot.0.as_ref().is_none_or(|r| (change.commit_us, change.lsn) > (r.commit_us, r.lsn));
            if !newer {
                outcome.stale += 1;
                continue;
            }
            let columns = match (&change.row, &slot.0) {
                (Some(row), _) => row.keys().cloned().collect(),
                (None, Some(old)) => old.columns.clone(),
                (None, None) => Vec::new(),
            };
            let row = change.row.as_ref().map(|r| Value::Object(r.clone()).to_string());
            slot.0 =
                Some(TableRow { version: FORMAT_VERSION, row, columns, commit_us: change.commit_us, lsn: change.lsn });
            slot.1 = true;
            outcome.applied += 1;
        }
        Ok(outcome)
    }

    /// Writes changed rows; returns how many.
    pub async fn flush(&mut self) -> Result<usize, OnlineError> {
        let writes: Vec<Write> = self
            .cache
            .iter()
            .filter(|(_, (_, dirty))| *dirty)
            .filter_map(|((s, k), (row, _))| {
                let row = row.as_ref()?;
                Some(Write {
                    key: row_key(&self.project, &self.names[*s], k),
                    state: postcard::to_allocvec(row).expect("plain data encodes"),
                    ttl_ms: None,
                })
            })
            .collect();
        if writes.is_empty() {
            return Ok(0);
        }
        self.store.write(&writes, &[]).await?;
        self.cache.values_mut().for_each(|(_, dirty)| *dirty = false);
        Ok(writes.len())
    }

    /// Drops cached rows (after a rebalance).
    pub fn forget(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::online::EmbeddedStore;

    fn change(key: &str, row: Option<Value>, commit_us: i64, lsn: i64) -> RowChange {
        RowChange { source: 0, key: key.into(), row: row.map(|r| r.as_object().unwrap().clone()), commit_us, lsn }
    }

    async fn lookup(store: &OnlineStore, key: &str) -> Vec<(String, Value, Status)> {
        let bytes = store.load(&[row_key("p", "customers", key)]).await.unwrap();
        let row = bytes[0].as_deref().and_then(decode);
        row_values(row.as_ref()).into_iter().map(|v| (v.name, v.value, v.status)).collect()
    }

    #[tokio::test]
    async fn newest_change_wins_and_deletes_answer_not_found() {
        let store = OnlineStore::Embedded(Arc::new(EmbeddedStore::new()));
        let mut tables = TableProcessor::new("p", vec!["customers".into()], store.clone());
        let outcome = tables
            .apply(&[
                change("7", Some(json!({"id": 7, "segment": "gold"})), 1_000, 10),
                change("7", Some(json!({"id": 7, "segment": "platinum"})), 3_000, 30),
                change("7", Some(json!({"id": 7, "segment": "bronze"})), 2_000, 20), // out of order
                change("7", Some(json!({"id": 7, "segment": "platinum"})), 3_000, 30), // redelivered
                change("8", Some(json!({"id": 8, "segment": null})), 1_000, 11),
            ])
            .await
            .unwrap();
        assert_eq!(outcome, TableOutcome { applied: 3, stale: 2 });
        tables.flush().await.unwrap();
        assert_eq!(
            lookup(&store, "7").await,
            vec![("id".into(), json!(7), Status::Present), ("segment".into(), json!("platinum"), Status::Present)]
        );
        assert_eq!(lookup(&store, "8").await[1], ("segment".into(), Value::Null, Status::NullValue));
        assert!(lookup(&store, "9").await.is_empty());

        // a fresh processor (restart): the stored version still guards against old changes
        let mut tables = TableProcessor::new("p", vec!["customers".into()], store.clone());
        let outcome = tables
            .apply(&[change("7", None, 4_000, 40), change("7", Some(json!({"id": 7})), 3_500, 35)])
            .await
            .unwrap();
        assert_eq!(outcome, TableOutcome { applied: 1, stale: 1 });
        tables.flush().await.unwrap();
        assert_eq!(
            lookup(&store, "7").await,
            vec![("id".into(), Value::Null, Status::NotFound), ("segment".into(), Value::Null, Status::NotFound)]
        );
    }
}
