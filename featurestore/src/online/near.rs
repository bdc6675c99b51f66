//! A near cache: the entity states this process wrote to Redis, kept in memory so a lookup in the
//! same process reads them without a Redis round trip (what Hazelcast and Ignite call a near
//! cache; Redis's own client-side caching does the same with server-pushed invalidations).
//!
//! It holds exactly the bytes of the last successful write of each key, with the write's expiry,
//! so a lookup served from it sees what Redis holds. It is only right while this process is the
//! one writing those keys — the pipeline's own assumption for its write-back cache — so an
//! entry is served only if no consumer group rebalance has happened since the records that
//! wrote it were read: after a rebalance another member may write the same entities, and a lookup reads
//! Redis until this process writes the key again. A failed write drops its keys (part of it may
//! have reached Redis). Bounded: past `max` keys it is emptied, like the pipeline's cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::{EmbeddedStore, Write};

/// No generation: set while the cache is being emptied for a new one.
const EMPTYING: u64 = u64::MAX;

/// States this process wrote, by store key.
pub struct NearCache {
    /// The states with their expiry; all written by batches read at `held`'s rebalance count.
    store: EmbeddedStore,
    /// The rebalance count when the records that wrote everything in `store` were read: what it
    /// holds is served only while the count is still this.
    held: AtomicU64,
    /// Rebalances of the consumer group so far (the Kafka consumer counts them); none without one.
    rebalances: OnceLock<Arc<AtomicU64>>,
    /// The rebalance count when the records of the pipeline's current batch were read.
    batch: AtomicU64,
    max: usize,
    /// Keys served from it and keys it sent to Redis, since the last [`NearCache::take_counts`].
    hits: AtomicU64,
    misses: AtomicU64,
}

impl NearCache {
    /// An empty cache that empties itself past `max` keys.
    pub fn new(max: usize) -> NearCache {
        NearCache {
            store: EmbeddedStore::new(),
            held: AtomicU64::new(0),
            rebalances: OnceLock::new(),
            batch: AtomicU64::new(0),
            max,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Follows a consumer group's rebalance count (incremented after each rebalance callback).
    /// Only the first call takes effect.
    pub fn follow(&self, rebalances: Arc<AtomicU64>) {
        let _ = self.rebalances.set(rebalances);
    }

    /// The rebalance count now.
    pub fn generation(&self) -> u64 {
        self.rebalances.get().map_or(0, |r| r.load(Ordering::Acquire))
    }

    /// Marks the start of a batch whose records were read when the rebalance count was
    /// `rebalances`: what it writes is served only if no rebalance happened since (records read
    /// before a rebalance may be from partitions it took away; another member now writes those
    /// entities).
    pub fn begin_batch(&self, rebalances: u64) {
        self.batch.store(rebalances, Ordering::Release);
    }

    /// Per key, the state last written if it may be served (`None`: read Redis); counted as
    /// hits and misses.
    pub fn load(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let found = match self.held.load(Ordering::Acquire) == self.generation() {
            true => self.store.load(keys),
            false => vec![None; keys.len()],
        };
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(keys.len() as u64 - hits, Ordering::Relaxed);
        found
    }

    /// Keys served from it and keys sent to Redis since the last call: (hits, misses).
    pub fn take_counts(&self) -> (u64, u64) {
        (self.hits.swap(0, Ordering::Relaxed), self.misses.swap(0, Ordering::Relaxed))
    }

    /// Keeps what a successful write wrote, unless the batch's records were read before a
    /// rebalance (then its keys are dropped: another member may write them now). Called by the
    /// pipeline only, one batch at a time.
    pub fn wrote(&self, writes: &[Write]) {
        let (batch, now) = (self.batch.load(Ordering::Acquire), self.generation());
        if batch != now {
            return self.failed(writes);
        }
        if self.held.load(Ordering::Acquire) != now {
            // nothing held may be served any more; a reader that sees `now` sees it emptied
            self.held.store(EMPTYING, Ordering::Release);
            self.store.clear();
            self.held.store(now, Ordering::Release);
        }
        if self.store.len() + writes.len() > self.max {
            self.store.clear();
        } else {
            self.store.write(writes);
        }
    }

    /// Drops what a failed write may have changed.
    pub fn failed(&self, writes: &[Write]) {
        self.store.remove(writes.iter().map(|w| &w.key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, state: &[u8], ttl_ms: Option<i64>) -> Write {
        Write { key: key.into(), state: state.to_vec(), ttl_ms }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn serves_the_last_write_until_it_expires() {
        let near = NearCache::new(10);
        near.wrote(&[write("a", b"1", None), write("b", b"2", Some(60_000)), write("gone", b"3", Some(-1))]);
        near.wrote(&[write("a", b"4", None)]);
        assert_eq!(near.load(&keys(&["a", "b", "gone", "x"])), [Some(b"4".to_vec()), Some(b"2".to_vec()), None, None]);
        assert_eq!(near.take_counts(), (2, 2));
        assert_eq!(near.take_counts(), (0, 0), "taken");
    }

    #[test]
    fn a_rebalance_stops_serving_what_was_written_before_it() {
        let near = NearCache::new(10);
        let rebalances = Arc::new(AtomicU64::new(0));
        near.follow(rebalances.clone());
        near.begin_batch(near.generation());
        near.wrote(&[write("a", b"1", None)]);
        assert_eq!(near.load(&keys(&["a"])), [Some(b"1".to_vec())]);
        // a batch read before the rebalance and written after it: not served either
        near.begin_batch(near.generation());
        rebalances.fetch_add(1, Ordering::AcqRel);
        near.wrote(&[write("b", b"2", None)]);
        assert_eq!(near.load(&keys(&["a", "b"])), [None, None]);
        // the next batch's writes are
        near.begin_batch(near.generation());
        near.wrote(&[write("a", b"3", None)]);
        assert_eq!(near.load(&keys(&["a", "b"])), [Some(b"3".to_vec()), None]);
    }

    #[test]
    fn a_failed_write_drops_its_keys_and_the_bound_empties_it() {
        let near = NearCache::new(3);
        near.wrote(&[write("a", b"1", None), write("b", b"2", None)]);
        near.failed(&[write("a", b"9", None)]);
        assert_eq!(near.load(&keys(&["a", "b"])), [None, Some(b"2".to_vec())]);
        near.wrote(&[write("c", b"3", None), write("d", b"4", None)]);
        assert_eq!(near.store.len(), 3, "up to its bound");
        near.wrote(&[write("e", b"5", None)]);
        assert!(near.store.is_empty(), "past its bound it holds nothing");
        near.wrote(&[write("e", b"5", None)]);
        assert_eq!(near.load(&keys(&["b", "e"])), [None, Some(b"5".to_vec())]);
    }
}
