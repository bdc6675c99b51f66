//! The embedded online store: an in-process map with the Redis layout, so `fathom serve` and
//! `fathom demo` need no infrastructure. Optionally snapshotted to a file at every checkpoint
//! (written to a temporary name, fsync'd, renamed) and loaded at start, so a restart keeps the
//! features — and, since each state carries its applied offsets, Kafka replays stay exact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::Write;

/// An encoded state and when it expires (wall-clock ms since the epoch).
type Entry = (Vec<u8>, Option<i64>);

/// Failures reading or writing the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Filesystem failure.
    #[error("embedded store snapshot {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot of this version.
    #[error("embedded store snapshot {path} is unreadable: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Keys to encoded states with optional expiry.
#[derive(Default)]
pub struct EmbeddedStore {
    // A std lock, not a tokio one: nothing awaits while it is held.
    map: RwLock<HashMap<String, Entry>>,
    snapshot: Option<PathBuf>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl EmbeddedStore {
    /// An empty store that lives as long as the process.
    pub fn new() -> EmbeddedStore {
        EmbeddedStore::default()
    }

    /// A store backed by a snapshot file, loaded now if it exists.
    pub fn with_snapshot(path: &Path) -> Result<EmbeddedStore, SnapshotError> {
        let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
        let mut map = HashMap::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                let entries: Vec<(String, Vec<u8>, Option<i64>)> = postcard::from_bytes(&bytes)
                    .map_err(|e| SnapshotError::Corrupt { path: path.to_path_buf(), message: e.to_string() })?;
                let now = now_ms();
                map.extend(
                    entries.into_iter().filter(|(_, _, exp)| exp.is_none_or(|e| e > now)).map(|(k, v, e)| (k, (v, e))),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok(EmbeddedStore { map: RwLock::new(map), snapshot: Some(path.to_path_buf()) })
    }

    /// Writes the snapshot, if this store has one; atomic (temporary file, fsync, rename).
    pub fn save(&self) -> Result<(), SnapshotError> {
        let Some(path) = &self.snapshot else { return Ok(()) };
        let io = |source| SnapshotError::Io { path: path.clone(), source };
        let bytes = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            let now = now_ms();
            let live: Vec<(&String, &Vec<u8>, &Option<i64>)> =
                map.iter().filter(|(_, (_, exp))| exp.is_none_or(|e| e > now)).map(|(k, (v, e))| (k, v, e)).collect();
            postcard::to_allocvec(&live).expect("plain data encodes")
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut &file, &bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub(super) fn load(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        keys.iter()
            .map(|k| map.get(k).filter(|(_, expiry)| expiry.is_none_or(|e| e > now)).map(|(v, _)| v.clone()))
            .collect()
    }

    /// Stores each write's state with its expiry. Copies are made, and the states they replace
    /// freed, outside the lock: lookups wait only for the inserts.
    pub(super) fn write(&self, writes: &[Write]) {
        let now = now_ms();
        let entries: Vec<(String, Entry)> = writes
            .iter()
            .map(|w| (w.key.clone(), (w.state.clone(), w.ttl_ms.map(|ms| now.saturating_add(ms.max(0))))))
            .collect();
        let mut replaced = Vec::with_capacity(entries.len());
        {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            replaced.extend(entries.into_iter().filter_map(|(k, e)| map.insert(k, e)));
        }
        drop(replaced);
    }

    pub(super) fn remove(&self, keys: impl Iterator<Item = impl AsRef<str>>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            map.remove(key.as_ref());
        }
    }

    /// Drops every key; the old map is freed after the lock is released.
    pub(super) fn clear(&self) {
        let old = std::mem::take(&mut *self.map.write().unwrap_or_else(|e| e.into_inner()));
        drop(old);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, state: &[u8], ttl_ms: Option<i64>) -> Write {
        Write { key: key.into(), state: state.to_vec(), ttl_ms }
    }

    #[test]
    fn a_snapshot_survives_a_restart_without_expired_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online/embedded.snapshot");
        let store = EmbeddedStore::with_snapshot(&path).unwrap();
        assert!(store.is_empty());
        store.write(&[write("a", b"1", None), write("b", b"2", Some(60_000)), write("gone", b"3", Some(-1))]);
        store.save().unwrap();
        let reopened = EmbeddedStore::with_snapshot(&path).unwrap();
        assert_eq!(
            reopened.load(&["a".into(), "b".into(), "gone".into(), "x".into()]),
            vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None, None]
        );
        assert_eq!(reopened.len(), 2);
    }

    #[test]
    fn a_corrupt_snapshot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embedded.snapshot");
        std::fs::write(&path, [0xff; 7]).unwrap();
        let err = EmbeddedStore::with_snapshot(&path).err().unwrap().to_string();
        assert!(err.contains("is unreadable"), "{err}");
    }
}
