//! The online store: the current bucket state of every (feature set, entity), where lookups read.
//!
//! Layout (the same in Redis and the embedded store; see `docs/online-store.md`):
//! - `fathom:{<project>:<feature_set>:<entity key>}` — a hash whose `state` field holds the
//!   entity's [`EntityState`] (buckets, latest values, newest event time and applied offsets per
//!   partition), versioned and tied to the plan that wrote it, and `updated_ms` the wall-clock
//!   time of the write. The hash tag keeps one entity in one Redis Cluster slot. TTL = the
//!   feature set's `ttl`, refreshed on every write.
//! - `fathom:offsets:{<group>}:<topic>:<partition>` — highest offset applied by the last flush.
//!
//! Each entity's state and its applied offsets are one `HSET`, so a crash at any point leaves
//! every entity either before or after a record, never half-way; replays are skipped per entity.

mod embedded;
mod near;
mod redis;

use serde::{Deserialize, Serialize};

pub use self::embedded::{EmbeddedStore, SnapshotError};
pub use self::near::NearCache;
pub use self::redis::{RedisAuth, RedisStore, RedisTopology};

use crate::definition::FeatureSetPlan;
use crate::engine::EntityState;

/// Failures of the online store.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// Redis refused or dropped a command.
    #[error("redis {what}")]
    Redis {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: ::redis::RedisError,
    },
}

/// One entity's new state.
#[derive(Debug, Clone)]
pub struct Write {
    /// Store key ([`entity_key`]).
    pub key: String,
    /// Encoded state ([`encode`]).
    pub state: Vec<u8>,
    /// Expiry, ms.
    pub ttl_ms: Option<i64>,
}

/// Redis or in-process.
#[derive(Clone)]
pub enum OnlineStore {
    /// In-process map; state lives as long as the process.
    Embedded(std::sync::Arc<EmbeddedStore>),
    /// Redis single node or cluster, with the [`NearCache`] of what this process wrote (shared
    /// by the pipeline's and the API's connections) unless turned off.
    Redis(RedisStore, Option<std::sync::Arc<NearCache>>),
}

impl OnlineStore {
    /// Encoded states of `keys`, `None` where absent or expired; at most one round trip (none
    /// when the near cache holds them all).
    pub async fn load(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, OnlineError> {
        match self {
            OnlineStore::Embedded(store) => Ok(store.load(keys)),
            OnlineStore::Redis(store, None) => store.load(keys).await,
            OnlineStore::Redis(store, Some(near)) => {
                let mut found = near.load(keys);
                let missing: Vec<String> =
                    keys.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(k, _)| k.clone()).collect();
                if missing.is_empty() {
                    return Ok(found);
                }
                let mut loaded = store.load(&missing).await?.into_iter();
                for slot in found.iter_mut().filter(|f| f.is_none()) {
                    *slot = loaded.next().expect("one per missing key");
                }
                Ok(found)
            }
        }
    }

    /// Writes entity states and the applied offsets, pipelined.
    pub async fn write(&self, writes: &[Write], offsets: &[(String, i64)]) -> Result<(), OnlineError> {
        match self {
            OnlineStore::Embedded(store) => {
                store.write(writes);
                Ok(())
            }
            OnlineStore::Redis(store, near) => {
                let written = store.write(writes, offsets).await;
                if let Some(near) = near {
                    match &written {
                        Ok(()) => near.wrote(writes),
                        Err(_) => near.failed(writes),
                    }
                }
                written
            }
        }
    }

    /// The near cache, when this is Redis with one.
    pub fn near_cache(&self) -> Option<&std::sync::Arc<NearCache>> {
        match self {
            OnlineStore::Redis(_, near) => near.as_ref(),
            OnlineStore::Embedded(_) => None,
        }
    }

    /// Keys in the store (`DBSIZE` on a single Redis node; `None` for a cluster).
    pub async fn key_count(&self) -> Result<Option<u64>, OnlineError> {
        match self {
            OnlineStore::Embedded(store) => Ok(Some(store.len() as u64)),
            OnlineStore::Redis(store, _) => store.key_count().await,
        }
    }

    /// Takes or renews the lease `key` for `holder` for `ttl_ms`, unless another holder has it:
    /// then returns that holder. The embedded store lives in one process: always granted.
    pub async fn lease(&self, key: &str, holder: &str, ttl_ms: u64) -> Result<Option<String>, OnlineError> {
        match self {
            OnlineStore::Embedded(_) => Ok(None),
            OnlineStore::Redis(store, _) => store.lease(key, holder, ttl_ms).await,
        }
    }

    /// Gives the lease up if `holder` has it.
    pub async fn release(&self, key: &str, holder: &str) -> Result<(), OnlineError> {
        match self {
            OnlineStore::Embedded(_) => Ok(()),
            OnlineStore::Redis(store, _) => store.release(key, holder).await,
        }
    }

    /// Writes one state (no TTL) only while `holder` has the lease `lease` (renewing it), in
    /// one atomic step: a process that lost its lease cannot overwrite its successor's state.
    /// Returns the other holder when the write was refused. Both keys must share a slot.
    pub async fn write_fenced(
        &self,
        lease: &str,
        holder: &str,
        ttl_ms: u64,
        write: &Write,
    ) -> Result<Option<String>, OnlineError> {
        match self {
            OnlineStore::Embedded(store) => {
                store.write(std::slice::from_ref(write));
                Ok(None)
            }
            OnlineStore::Redis(store, _) => store.write_fenced(lease, holder, ttl_ms, write).await,
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), OnlineError> {
        match self {
            OnlineStore::Embedded(_) => Ok(()),
            OnlineStore::Redis(store, _) => store.ping().await,
        }
    }
}

/// The store key of an entity.
pub fn entity_key(project: &str, feature_set: &str, entity: &str) -> String {
    format!("fathom:{{{project}:{feature_set}:{entity}}}")
}

/// The store key of a partition's applied offset.
pub fn offsets_key(group: &str, topic: &str, partition: i32) -> String {
    format!("fathom:offsets:{{{group}}}:{topic}:{partition}")
}

/// Version 3 (December 2026) stores distinct-count sketches in Apache DataSketches' HLL format
/// ([`crate::engine::Distinct`]); version 2 added per-bucket state for percentiles, last_k,
/// first_k and top_k ([`crate::engine::Kept`]); version 1 states are read by [`v1`]. States of
/// versions 1 and 2 with distinct-count sketches are not read (see [`decode`]).
const FORMAT_VERSION: u8 = 3;

#[derive(Deserialize)]
struct Stored {
    _version: u8,
    plan: u64,
    state: EntityState,
}

/// [`Stored`] by reference, so encoding copies nothing but the bytes out.
#[derive(Serialize)]
struct StoredRef<'a> {
    version: u8,
    plan: u64,
    state: &'a EntityState,
}

/// A fingerprint of what shapes the state (rings and latest features): state written under
/// another shape is not reused. A ring that keeps nothing beyond moments prints as it did in
/// format 1, so states written before format 2 keep their fingerprint.
pub fn plan_fingerprint(plan: &FeatureSetPlan) -> u64 {
    use std::hash::Hasher;
    let specs: Vec<String> = plan
        .specs
        .iter()
        .map(|s| match s.keep.any() {
            true => format!("{s:?}"),
            false => format!(
                "{:?}",
                v1::BucketSpec { column: s.column, period_ms: s.period_ms, horizon: s.horizon, distinct: s.distinct }
            ),
        })
        .collect();
    let mut h = wyhash::WyHash::with_seed(0);
    h.write(format!("{:?}|[{}]|{:?}", plan.columns, specs.join(", "), plan.latest).as_bytes());
    h.finish()
}

/// Encodes a state for storage.
pub fn encode(plan: &FeatureSetPlan, state: &EntityState) -> Vec<u8> {
    let stored = StoredRef { version: FORMAT_VERSION, plan: plan.fingerprint(), state };
    postcard::to_allocvec(&stored).expect("state encodes")
}

/// Decodes a stored state of this format, format 2 or format 1; `None` when it was written by
/// another format or plan (the caller starts fresh and logs it).
///
/// Formats 1 and 2 stored distinct-count sketches as cardinality-estimator's serde tuple, which
/// cannot be turned into DataSketches' sketch (other hashes, other registers), and whose
/// deserializer frees memory with the wrong size (cloudflare/cardinality-estimator#12): a plan
/// with a distinct_count does not read them.
pub fn decode(plan: &FeatureSetPlan, bytes: &[u8]) -> Option<EntityState> {
    let (version, _) = postcard::take_from_bytes::<u8>(bytes).ok()?;
    if version < FORMAT_VERSION && plan.specs.iter().any(|s| s.distinct) {
        return None;
    }
    let (fingerprint, state) = match version {
        // format 2 differs only in the distinct sketch, absent here
        2 | FORMAT_VERSION => {
            let stored: Stored = postcard::from_bytes(bytes).ok()?;
            (stored.plan, stored.state)
        }
        1 => v1::decode(bytes)?,
        _ => return None,
    };
    let fits = fingerprint == plan.fingerprint()
        && state.rings.len() == plan.specs.len()
        && state.latest.len() == plan.latest.len();
    fits.then_some(state)
}

/// Format 1, as written before December 2026: buckets without [`crate::engine::Kept`].
mod v1 {
    use std::collections::VecDeque;

    use serde::Deserialize;

    use crate::engine::{Bucket, EntityState};

    /// Format 1's ring shape; its `Debug` text is what format 1 fingerprinted.
    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug
    pub(super) struct BucketSpec {
        pub column: usize,
        pub period_ms: i64,
        pub horizon: i64,
        pub distinct: bool,
    }

    #[derive(Deserialize)]
    struct Stored {
        _version: u8,
        plan: u64,
        state: State,
    }

    #[derive(Deserialize)]
    struct State {
        rings: Vec<VecDeque<OldBucket>>,
        latest: Vec<Option<(i64, String)>>,
        newest_ms: i64,
        offsets: Vec<(i32, i64)>,
    }

    #[derive(Deserialize)]
    struct OldBucket {
        index: i64,
        count: u32,
        n: u32,
        sum: f64,
        m2: f64,
        min: f64,
        max: f64,
        first: (i64, f64),
        last: (i64, f64),
        /// cardinality-estimator's serde tuple (data, array), kept as plain data: read only to
        /// refuse the state when present
        distinct: Option<(usize, Option<Vec<u32>>)>,
    }

    /// The plan fingerprint and state of a format-1 encoding.
    pub(super) fn decode(bytes: &[u8]) -> Option<(u64, EntityState)> {
        let stored: Stored = postcard::from_bytes(bytes).ok()?;
        let s = stored.state;
        if s.rings.iter().flatten().any(|b| b.distinct.is_some()) {
            return None;
        }
        let rings = s
            .rings
            .into_iter()
            .map(|ring| {
                ring.into_iter()
                    .map(|b| Bucket {
                        index: b.index,
                        count: b.count,
                        n: b.n,
                        sum: b.sum,
                        m2: b.m2,
                        min: b.min,
                        max: b.max,
                        first: b.first,
                        last: b.last,
                        distinct: None,
                        kept: None,
                    })
                    .collect()
            })
            .collect();
        Some((stored.plan, EntityState { rings, latest: s.latest, newest_ms: s.newest_ms, offsets: s.offsets }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::definition::{FeatureSetConfig, FeatureSetPlan};
    use crate::engine::{apply, read, EntityState, Position};

    /// A state encoded by format 1 (commit 1e35c06, before percentiles and last_k), for the plan
    /// and events below.
    const FORMAT_1: &str = "01a3eae7c0bcb7ccd2fd01020480b78b1c0101000000000000294000000000000000000000000000002940000000000000294080a0d5edee66000000000000294080a0d5edee6600000000000029400082b78b1c010100000000000008c0000000000000000000000000000008c000000000000008c090d9dcedee6600000000000008c090d9dcedee6600000000000008c00084b78b1c0101000000000020444000000000000000000000000000204440000000000020444090c1e4edee66000000000020444090c1e4edee660000000000204440009eb78b1c01010000000000001c4000000000000000000000000000001c400000000000001c40c08ec3eeee660000000000001c40c08ec3eeee660000000000001c400002c0c5e702030000000000000000000000000000000000000000000000f07f000000000000f0fffeffffffffffffffff01000000000000f87fffffffffffffffffff01000000000000f87f01889afafa8fc1fefa7c00c2c5e702010000000000000000000000000000000000000000000000f07f000000000000f0fffeffffffffffffffff01000000000000f87fffffffffffffffffff01000000000000f87f0184fcecb117000101c08ec3eeee6604226d3322c08ec3eeee66010006";

    fn plan(functions: &str) -> FeatureSetPlan {
        plan_of(functions, true)
    }

    /// The plan of the fixtures: `functions` of amount, and with `distinct` a distinct_count of
    /// merchant.
    fn plan_of(functions: &str, distinct: bool) -> FeatureSetPlan {
        let merchant = match distinct {
            true => "  - { column: merchant, functions: [distinct_count], windows: [1h], period: 10m }\n",
            false => "",
        };
        let yaml = format!("entity: card\nsource: tx\nfeatures: [merchant]\naggregations:\n  - {{ column: amount, functions: [{functions}], windows: [10m, 1h], period: 1m }}\n{merchant}");
        let config: FeatureSetConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let mut problems = Vec::new();
        config.compile("fs", "id", "fs", &mut problems).unwrap()
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    fn fed(plan: &FeatureSetPlan) -> EntityState {
        let mut state = EntityState::new(plan);
        let t0 = 1_767_225_600_000i64;
        let events = [(0, 12.5, "m1"), (61_000, -3.0, "m2"), (125_000, 40.25, "m1"), (900_000, 7.0, "m3")];
        for (i, (dt, amount, merchant)) in events.into_iter().enumerate() {
            let (a, m) = (json!(amount), json!(merchant));
            let columns: Vec<_> =
                plan.columns.iter().map(|c| if c == "amount" { Some(&a) } else { Some(&m) }).collect();
            let at = Some(Position { partition: 0, offset: i as i64 });
            apply(plan, &mut state, t0 + dt, &columns, &[Some(&m)], at);
        }
        state
    }

    /// Reads `fixture`, written by an older format for `plan`, checks it against feeding the same
    /// events now, and that it is written back in the current format.
    fn reads_like_a_fresh_state(plan: &FeatureSetPlan, fixture: &[u8]) {
        let old = super::decode(plan, fixture).expect("an older state is read");
        let fresh = fed(plan);
        // (compared encoded: an empty bucket's first/last are NaN, never equal to themselves)
        assert_eq!(super::encode(plan, &old), super::encode(plan, &fresh), "the state of feeding the same events now");
        let at = 1_767_225_600_000 + 1_000_000;
        assert_eq!(read(plan, &old, at), read(plan, &fresh, at));
        let again = super::encode(plan, &old);
        assert_eq!(again[0], super::FORMAT_VERSION);
        assert_eq!(super::decode(plan, &again).map(|s| super::encode(plan, &s)), Some(again));
    }

    #[test]
    fn states_written_by_formats_1_and_2_are_read_and_rewritten_in_the_current_format() {
        // format 1 without a distinct ring, in format 1's layout (the v1 module)
        let plan = plan_of("count, sum, mean, max, stddev", false);
        let format_1 = unhex(include_str!("fixtures/format-1-without-distinct.hex"));
        assert_eq!(format_1[0], 1, "the fixture is format 1");
        reads_like_a_fresh_state(&plan, &format_1);
        // a plan that now keeps more per bucket does not reuse it
        assert_eq!(super::decode(&plan_of("count, sum, mean, max, stddev, p50", false), &format_1), None);
        // format 2 with percentiles, last_k and top_k, as commit da3f390 wrote it
        let plan = plan_of("count, sum, mean, max, stddev, p50, last_3, top_2", false);
        let format_2 = unhex(include_str!("fixtures/format-2-without-distinct.hex"));
        assert_eq!(format_2[0], 2, "the fixture is format 2");
        reads_like_a_fresh_state(&plan, &format_2);
    }

    /// Formats 1 and 2 held cardinality-estimator sketches: a plan with a distinct_count starts
    /// fresh rather than run that crate's deserializer or guess a conversion.
    #[test]
    fn older_states_with_distinct_count_sketches_are_not_reused() {
        let plan = plan("count, sum, mean, max, stddev");
        let format_1 = unhex(FORMAT_1);
        assert_eq!(format_1[0], 1, "the fixture is format 1");
        assert_eq!(super::decode(&plan, &format_1), None);
        // nor by a plan without one that happens to share the fingerprint's other parts
        assert_eq!(super::decode(&plan_of("count, sum, mean, max, stddev", false), &format_1), None);
        // the current format round-trips the same plan
        let fresh = fed(&plan);
        let bytes = super::encode(&plan, &fresh);
        let back = super::decode(&plan, &bytes).expect("the current format is read");
        let at = 1_767_225_600_000 + 1_000_000;
        assert_eq!(read(&plan, &back, at), read(&plan, &fresh, at));
    }

    #[test]
    fn states_with_sketches_and_lists_round_trip() {
        let plan = plan("count, p50, p99, last_3, first_2, top_2");
        let state = fed(&plan);
        let back = super::decode(&plan, &super::encode(&plan, &state)).expect("decodes");
        let at = 1_767_225_600_000 + 1_000_000;
        assert_eq!(read(&plan, &back, at), read(&plan, &state, at));
        assert_eq!(super::encode(&plan, &back), super::encode(&plan, &state));
    }
}
