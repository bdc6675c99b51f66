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
mod redis;

use serde::{Deserialize, Serialize};

pub use self::embedded::{EmbeddedStore, SnapshotError};
pub use self::redis::{RedisStore, RedisTopology};

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
    /// Redis single node or cluster.
    Redis(RedisStore),
}

impl OnlineStore {
    /// Encoded states of `keys`, `None` where absent or expired; one round trip.
    pub async fn load(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, OnlineError> {
        match self {
            OnlineStore::Embedded(store) => Ok(store.load(keys)),
            OnlineStore::Redis(store) => store.load(keys).await,
        }
    }

    /// Writes entity states and the applied offsets, pipelined.
    pub async fn write(&self, writes: &[Write], offsets: &[(String, i64)]) -> Result<(), OnlineError> {
        match self {
            OnlineStore::Embedded(store) => {
                store.write(writes);
                Ok(())
            }
            OnlineStore::Redis(store) => store.write(writes, offsets).await,
        }
    }

    /// Keys in the store (`DBSIZE` on a single Redis node; `None` for a cluster).
    pub async fn key_count(&self) -> Result<Option<u64>, OnlineError> {
        match self {
            OnlineStore::Embedded(store) => Ok(Some(store.len() as u64)),
            OnlineStore::Redis(store) => store.key_count().await,
        }
    }

    /// Takes or renews the lease `key` for `holder` for `ttl_ms`, unless another holder has it:
    /// then returns that holder. The embedded store lives in one process: always granted.
    pub async fn lease(&self, key: &str, holder: &str, ttl_ms: u64) -> Result<Option<String>, OnlineError> {
        match self {
            OnlineStore::Embedded(_) => Ok(None),
            OnlineStore::Redis(store) => store.lease(key, holder, ttl_ms).await,
        }
    }

    /// Gives the lease up if `holder` has it.
    pub async fn release(&self, key: &str, holder: &str) -> Result<(), OnlineError> {
        match self {
            OnlineStore::Embedded(_) => Ok(()),
            OnlineStore::Redis(store) => store.release(key, holder).await,
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
            OnlineStore::Redis(store) => store.write_fenced(lease, holder, ttl_ms, write).await,
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), OnlineError> {
        match self {
            OnlineStore::Embedded(_) => Ok(()),
            OnlineStore::Redis(store) => store.ping().await,
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

const FORMAT_VERSION: u8 = 1;

#[derive(Deserialize)]
struct Stored {
    version: u8,
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
/// another shape is not reused.
pub fn plan_fingerprint(plan: &FeatureSetPlan) -> u64 {
    use std::hash::Hasher;
    let mut h = wyhash::WyHash::with_seed(0);
    h.write(format!("{:?}|{:?}|{:?}", plan.columns, plan.specs, plan.latest).as_bytes());
    h.finish()
}

/// Encodes a state for storage.
pub fn encode(plan: &FeatureSetPlan, state: &EntityState) -> Vec<u8> {
    let stored = StoredRef { version: FORMAT_VERSION, plan: plan_fingerprint(plan), state };
    postcard::to_allocvec(&stored).expect("state encodes")
}

/// Decodes a stored state; `None` when it was written by another format or plan (the caller
/// starts fresh and logs it).
pub fn decode(plan: &FeatureSetPlan, bytes: &[u8]) -> Option<EntityState> {
    let stored: Stored = postcard::from_bytes(bytes).ok()?;
    let fits = stored.version == FORMAT_VERSION
        && stored.plan == plan_fingerprint(plan)
        && stored.state.rings.len() == plan.specs.len()
        && stored.state.latest.len() == plan.latest.len();
    fits.then_some(stored.state)
}
