//! One module per command; `main.rs` parses the command line and calls them.

pub(crate) mod consistency;
pub(crate) mod dataset;
pub(crate) mod demo;
pub(crate) mod drift;
pub(crate) mod profile;
pub(crate) mod replay;
pub(crate) mod serve;
pub(crate) mod validate;

use std::path::PathBuf;
use std::sync::Arc;

use fathom_project::Project;

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
