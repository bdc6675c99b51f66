//! One module per command; `main.rs` parses the command line and calls them.

pub(crate) mod consistency;
pub(crate) mod dataset;
pub(crate) mod demo;
pub(crate) mod drift;
pub(crate) mod profile;
pub(crate) mod replay;
pub(crate) mod serve;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use fathom_featurestore::storage::Storage;
use fathom_project::Project;

/// A file a command reads: a local path as is, or an object (`s3://bucket/key`, `gs://…`,
/// `az://…`) copied to a temporary directory first (deleted when the guard drops), with
/// credentials from the environment overridden by `options` (a project's
/// `stores.offline.parquet.options`, or none).
pub(crate) struct Input {
    /// Where to read it locally.
    pub(crate) path: PathBuf,
    _copy: Option<tempfile::TempDir>,
}

impl Input {
    pub(crate) fn fetch(location: &Path, options: &BTreeMap<String, String>) -> anyhow::Result<Input> {
        let text = location.to_string_lossy();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Input { path: location.to_path_buf(), _copy: None });
        };
        let (bucket, key) = rest.split_once('/').with_context(|| format!("{text}: no object key after the bucket"))?;
        let storage = Storage::open(Path::new(&format!("{scheme}://{bucket}")), options)?;
        let bytes = storage.get(key).with_context(|| format!("reading {text}"))?;
        let dir = tempfile::tempdir().context("a temporary directory for the download")?;
        let name = key.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("object");
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(Input { path, _copy: Some(dir) })
    }
}

/// The project file at `path`, or the embedded demo project (its data prepared) without one.
pub(crate) fn load(path: Option<&PathBuf>) -> anyhow::Result<Arc<Project>> {
    let project = match path {
        Some(path) => fathom_project::load(path)?,
        None => {
            let project =
                fathom_project::parse(demo::CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e:?}"))?;
            demo::prepare(&project)?;
            project
        }
    };
    Ok(Arc::new(project))
}
