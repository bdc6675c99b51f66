//! Where the offline store's files live: a local directory, or a prefix in a bucket on object
//! storage (`s3://bucket/prefix`, `gs://…`, `az://…`) through the `object_store` crate.
//!
//! Paths are relative to the root, `/`-separated (`<source>/date=YYYY-MM-DD/part-….parquet`). A
//! file becomes visible only once complete: locally it is written to a `.tmp` name, fsync'd and
//! renamed; on object storage it is one PUT, which the store makes visible atomically when it
//! has all the bytes (never a partial object under the final name). The API is blocking: the
//! object store's requests run on a runtime of its own, so callers on any thread (an async
//! worker, a blocking pool thread, a CLI's main thread) may use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};

/// A failure reading or writing the offline store, naming the file or prefix.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Filesystem failure.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Object storage failure (unreachable, refused credentials, missing bucket).
    #[error("{path}")]
    Object {
        /// The object or prefix, as a URL.
        path: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A location or option that cannot be used.
    #[error("{0}")]
    Config(String),
}

/// The offline store's root.
#[derive(Clone)]
pub enum Storage {
    /// A local directory.
    Local(PathBuf),
    /// A prefix in a bucket.
    Object(Arc<Bucket>),
}

/// A bucket prefix and the client that reaches it.
pub struct Bucket {
    /// `s3://bucket/prefix` as configured (without a trailing `/`).
    url: String,
    store: Box<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Bucket {
    fn drop(&mut self) {
        // the last clone may go on an async worker, where a runtime must not block to stop
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.root())
    }
}

impl Storage {
    /// A local directory.
    pub fn local(root: impl Into<PathBuf>) -> Storage {
        Storage::Local(root.into())
    }

    /// Opens `location`: a local path, or `s3://bucket/prefix` (`gs://`, `az://`) with
    /// credentials from the environment as each cloud's SDK reads them (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`; `GOOGLE_SERVICE_ACCOUNT`;
    /// `AZURE_STORAGE_ACCOUNT_NAME`, …), overridden by `options` (object_store's keys, e.g.
    /// `endpoint`, `region`, `allow_http`, `access_key_id`, `secret_access_key`; values may be
    /// `env:NAME` or `file:/path`). Nothing is contacted yet.
    pub fn open(location: &Path, options: &BTreeMap<String, String>) -> Result<Storage, StorageError> {
        let text = location.to_string_lossy();
        let Some((scheme, _)) = text.split_once("://") else {
            if !options.is_empty() {
                return Err(StorageError::Config("`options` apply to object storage URLs only".into()));
            }
            return Ok(Storage::local(location));
        };
        let url = url::Url::parse(&text).map_err(|e| StorageError::Config(format!("{text}: {e}")))?;
        let mut resolved = Vec::new();
        for (key, value) in options {
            let value = fathom_ingest::config::resolve_secret(value)
                .map_err(|e| StorageError::Config(format!("options.{key}: {e}")))?;
            resolved.push((key.clone(), value));
        }
        let config = |e: object_store::Error| StorageError::Config(format!("{text}: {e}"));
        let store: Box<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(retry());
                for (key, value) in resolved {
                    builder = builder.with_config(key.parse().map_err(config)?, value);
                }
                Box::new(builder.build().map_err(config)?)
            }
            "gs" => {
                let mut builder =
                    object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str()).with_retry(retry());
                for (key, value) in resolved {
                    builder = builder.with_config(key.parse().map_err(config)?, value);
                }
                Box::new(builder.build().map_err(config)?)
            }
            "az" | "abfs" | "abfss" => {
                let mut builder =
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str()).with_retry(retry());
                for (key, value) in resolved {
                    builder = builder.with_config(key.parse().map_err(config)?, value);
                }
                Box::new(builder.build().map_err(config)?)
            }
            other => {
                return Err(StorageError::Config(format!(
                    "{text}: `{other}://` is not supported (s3, gs, az or a path)"
                )))
            }
        };
        let prefix = ObjectPath::from(url.path().trim_matches('/'));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fathom-object-store")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Config(format!("starting the object store's runtime: {e}")))?;
        let url = text.trim_end_matches('/').to_string();
        Ok(Storage::Object(Arc::new(Bucket { url, store, prefix, runtime: Some(runtime) })))
    }

    /// The root as configured (a path or a URL).
    pub fn root(&self) -> String {
        match self {
            Storage::Local(root) => root.display().to_string(),
            Storage::Object(bucket) => bucket.url.clone(),
        }
    }

    /// Where `relative` is, for messages (a path or a URL).
    pub fn show(&self, relative: &str) -> String {
        match self {
            Storage::Local(root) => root.join(relative).display().to_string(),
            Storage::Object(bucket) => format!("{}/{relative}", bucket.url),
        }
    }

    /// Writes `bytes` as `relative`, visible only once complete and durable (see the module).
    pub fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        match self {
            Storage::Local(root) => put_local(&root.join(relative), &bytes),
            Storage::Object(bucket) => {
                let path = bucket.path(relative);
                bucket
                    .run(|| async { bucket.store.put(&path, bytes.into()).await.map(drop) })
                    .map_err(|source| StorageError::Object { path: self.show(relative), source })
            }
        }
    }

    /// The whole file `relative`.
    pub fn get(&self, relative: &str) -> Result<Bytes, StorageError> {
        match self {
            Storage::Local(root) => {
                let path = root.join(relative);
                std::fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|source| StorageError::Io { path: path.display().to_string(), source })
            }
            Storage::Object(bucket) => {
                let path = bucket.path(relative);
                bucket
                    .run(|| async { bucket.store.get(&path).await?.bytes().await })
                    .map_err(|source| StorageError::Object { path: self.show(relative), source })
            }
        }
    }

    /// The files under `dir` (relative, at any depth) whose names end with `suffix`, as
    /// relative paths in byte order. A directory that does not exist holds none.
    pub fn list(&self, dir: &str, suffix: &str) -> Result<Vec<String>, StorageError> {
        let mut found = match self {
            Storage::Local(root) => list_local(root, dir, suffix)?,
            Storage::Object(bucket) => {
                let prefix = bucket.path(dir);
                let objects = bucket
                    .run(|| async { bucket.store.list(Some(&prefix)).try_collect::<Vec<_>>().await })
                    .map_err(|source| StorageError::Object { path: self.show(dir), source })?;
                let root = bucket.prefix.as_ref();
                objects
                    .into_iter()
                    .map(|o| {
                        o.location.as_ref().strip_prefix(root).unwrap_or_default().trim_start_matches('/').to_string()
                    })
                    .filter(|p| p.ends_with(suffix))
                    .collect()
            }
        };
        found.sort();
        Ok(found)
    }
}

/// A request's own retries (on connection errors, 5xx and throttling; backoff from 100 ms
/// doubling, with jitter): few and short, because a failed write is retried by the next
/// checkpoint anyway — with its rows spilled meanwhile — and a stop must end in bounded time.
/// object_store's default (10 retries within 3 minutes) would hold a checkpoint for minutes
/// before its rows could spill.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    }
}

impl Bucket {
    fn path(&self, relative: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// Runs a request on the bucket's runtime and waits for it (from any thread: the request
    /// is made and awaited on a thread of its own, outside the caller's runtime).
    fn run<T: Send, F: std::future::Future<Output = object_store::Result<T>>>(
        &self,
        request: impl FnOnce() -> F + Send,
    ) -> object_store::Result<T> {
        std::thread::scope(|scope| {
            scope.spawn(|| self.runtime.as_ref().expect("until dropped").block_on(request())).join().unwrap_or_else(
                |_| Err(object_store::Error::Generic { store: "offline", source: "request panicked".into() }),
            )
        })
    }
}

/// `.tmp`, fsync, rename, fsync of the directory.
fn put_local(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write as _;
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| StorageError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("parquet.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // a half-written file would only take space the retry needs
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn list_local(root: &Path, dir: &str, suffix: &str) -> Result<Vec<String>, StorageError> {
    let mut found = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else { continue };
        for entry in entries {
            let path = entry.map_err(|source| StorageError::Io { path: next.display().to_string(), source })?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                found.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_root_puts_lists_and_gets() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &BTreeMap::new()).unwrap();
        storage.put("tx/date=2026-01-02/part-2.parquet", b"two".to_vec()).unwrap();
        storage.put("tx/date=2026-01-01/part-1.parquet", b"one".to_vec()).unwrap();
        storage.put("other/date=2026-01-01/part-3.parquet", b"three".to_vec()).unwrap();
        std::fs::write(dir.path().join("tx/date=2026-01-01/part-9.parquet.tmp"), b"partial").unwrap();
        let files = storage.list("tx", ".parquet").unwrap();
        assert_eq!(files, ["tx/date=2026-01-01/part-1.parquet", "tx/date=2026-01-02/part-2.parquet"]);
        assert_eq!(storage.get(&files[1]).unwrap().as_ref(), b"two");
        assert!(storage.list("missing", ".parquet").unwrap().is_empty());
    }

    #[test]
    fn locations_and_options_are_checked() {
        let e = |location: &str, options: &[(&str, &str)]| {
            let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Storage::open(Path::new(location), &options).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(e("ftp://host/x", &[]).contains("`ftp://` is not supported"), "{}", e("ftp://host/x", &[]));
        assert!(e("data/offline", &[("region", "x")]).contains("object storage URLs only"));
        assert!(e("s3://bucket/p", &[("no_such_option", "1")]).starts_with("s3://bucket/p:"));
        assert!(e("s3://bucket/p", &[("secret_access_key", "env:FATHOM_STORAGE_TEST_UNSET")]).contains("not set"));
        let ok = Storage::open(Path::new("s3://bucket/some/prefix/"), &BTreeMap::new()).unwrap();
        assert_eq!(ok.show("tx/a.parquet"), "s3://bucket/some/prefix/tx/a.parquet");
    }
}
