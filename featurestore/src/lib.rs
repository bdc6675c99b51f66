//! Fathom's feature store: definitions, the window aggregation engine, and the stores.
//!
//! The flow, in module order: [`definition`] (what to compute) → [`engine`] (buckets per entity,
//! values as of a read time).

pub mod definition;
pub mod duration;
pub mod engine;
pub mod lookup;
pub mod offline;
pub mod online;
pub mod processor;
