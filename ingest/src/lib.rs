//! Fathom's ingest: records in, decoded events or dead letters out.
//!
//! The flow, in module order: [`config`] (what a source is) → [`record`] (raw bytes with their
//! coordinates, from [`kafka`], HTTP push or [`replay`]) → [`decode`] (JSON to [`event::Event`],
//! or a reason; [`debezium`] for change-data-capture envelopes) → [`deadletter`] (bad records kept, with the reason). Ingest knows nothing of
//! stores or monitoring; the featurestore consumes its events.

pub mod config;
pub mod deadletter;
pub mod debezium;
pub mod decode;
pub mod event;
pub mod kafka;
pub mod record;
pub mod replay;
