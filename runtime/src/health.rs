//! Readiness as the HTTP layer reports it, and the roles a process runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Readiness as the HTTP layer reports it.
#[derive(Default)]
pub struct Health {
    /// The loop has started and its last store operation succeeded.
    pub ready: AtomicBool,
    /// Why it is not ready, if it says so.
    pub problem: Mutex<Option<String>>,
    /// Dependencies that are failing without stopping the work (InfluxDB: points wait on disk;
    /// `model:<name>`: its endpoint times out or fails), by name: reported by `/readyz`, which
    /// stays ready.
    pub warnings: Mutex<BTreeMap<String, String>>,
}

impl Health {
    /// Reports a dependency failing without stopping the work.
    pub fn warn(&self, what: &str, message: String) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).insert(what.to_string(), message);
    }

    /// The dependency works again.
    pub fn clear(&self, what: &str) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).remove(what);
    }

    /// The current warnings.
    pub fn warnings(&self) -> BTreeMap<String, String> {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn degraded(&self, what: &str, error: &anyhow::Error) {
        tracing::warn!(error = format!("{error:#}"), "{what}; retrying");
        self.ready.store(false, Ordering::Relaxed);
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{what}: {error:#}"));
    }

    pub(crate) fn recovered(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// What a process does: consume the sources (`ingest`), serve the HTTP API (`api`), monitor
/// models (`monitor`). One process does all three by default; in a cluster each role runs as its
/// own deployment and scales on its own (health and metrics are served by every role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Consume the Kafka sources into the stores.
    pub ingest: bool,
    /// Serve lookups, enrichment, predictions and push.
    pub api: bool,
    /// Run the model monitor.
    pub monitor: bool,
}

impl Roles {
    /// Every role.
    pub const ALL: Roles = Roles { ingest: true, api: true, monitor: true };

    /// Parses `ingest,api,monitor` (any subset, or `all`).
    pub fn parse(text: &str) -> Result<Roles, String> {
        let mut roles = Roles { ingest: false, api: false, monitor: false };
        for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "all" => roles = Roles::ALL,
                "ingest" => roles.ingest = true,
                "api" => roles.api = true,
                "monitor" => roles.monitor = true,
                other => return Err(format!("unknown role {other:?}: use ingest, api, monitor or all")),
            }
        }
        if roles == (Roles { ingest: false, api: false, monitor: false }) {
            return Err("no role given: use ingest, api, monitor or all".into());
        }
        Ok(roles)
    }
}

#[cfg(test)]
mod tests {
    use super::Roles;

    #[test]
    fn roles_parse_subsets_and_refuse_unknown_ones() {
        assert_eq!(Roles::parse("all").unwrap(), Roles::ALL);
        assert_eq!(Roles::parse("ingest, monitor").unwrap(), Roles { ingest: true, api: false, monitor: true });
        assert!(Roles::parse("api,web").unwrap_err().contains("\"web\""));
        assert!(Roles::parse("").is_err());
    }
}
