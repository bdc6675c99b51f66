//! `fathom bench …`: one module per benchmark (figures and commands in BENCHMARKS.md).

mod dataset;
mod drift;
mod e2e;
mod engine;
mod freshness;
mod lookup;
mod monitor;
mod server;
mod soak;

pub(crate) use dataset::{dataset, DatasetOptions};
pub(crate) use drift::drift;
pub(crate) use e2e::{e2e, E2eOptions, Scenario};
pub(crate) use engine::{rss_kib, run, Options};
pub(crate) use freshness::{freshness, FreshnessOptions};
pub(crate) use lookup::{lookup, LookupOptions};
pub(crate) use monitor::monitor;
pub(crate) use soak::{soak, SoakOptions};
