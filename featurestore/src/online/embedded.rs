//! The embedded online store: an in-process map with the Redis layout, so `fathom serve` and
//! `fathom demo` need no infrastructure.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::Write;

/// An encoded state and when it expires.
type Entry = (Vec<u8>, Option<Instant>);

/// Keys to encoded states with optional expiry.
#[derive(Default)]
pub struct EmbeddedStore {
    // A std lock, not a tokio one: nothing awaits while it is held.
    map: RwLock<HashMap<String, Entry>>,
}

impl EmbeddedStore {
    /// An empty store.
    pub fn new() -> EmbeddedStore {
        EmbeddedStore::default()
    }

    pub(super) fn load(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        keys.iter()
            .map(|k| map.get(k).filter(|(_, expiry)| expiry.is_none_or(|e| e > now)).map(|(v, _)| v.clone()))
            .collect()
    }

    pub(super) fn write(&self, writes: &[Write]) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for w in writes {
            let expiry = w.ttl_ms.map(|ms| now + Duration::from_millis(ms.max(0) as u64));
            map.insert(w.key.clone(), (w.state.clone(), expiry));
        }
    }

    /// Number of keys held (expired ones included until overwritten).
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
