//! Fathom's feature store: what to compute, the engine that computes it, and where it lives.
//!
//! The flow, in module order: [`definition`] (feature sets compiled into plans; [`duration`]
//! spells their windows) → [`engine`] (bucket rings per entity, values as of a read time) →
//! [`processor`] (decoded events into cached entity states) → [`online`] (Redis or embedded, with
//! applied offsets) and [`offline`] (Parquet) → [`lookup`] (values with statuses for callers) and
//! [`vector`] (feature references across sets and tables, read for many entities at once, with
//! [`on_demand`] features computed from them and the request).
//! [`table`] keeps CDC tables: current rows, as-of joins and retracting aggregations.
//! [`dataset`] computes point-in-time training sets from the offline store with the same engine.

pub mod dataset;
pub mod definition;
pub mod duration;
pub mod engine;
pub mod lookup;
pub mod offline;
pub mod on_demand;
pub mod online;
pub mod processor;
pub mod storage;
pub mod table;
pub mod vector;
