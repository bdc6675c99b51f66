//! Fathom's model monitoring: [`profile`], the reference profiles built from a model's training
//! set; [`records`], prediction and label records as they arrive; [`join`], the exactly-once
//! join of the two by `request_id`; [`window`], a model's windows, their drift, performance and
//! serving points and rule transitions; [`drift`] and [`performance`], the statistics; [`alerts`],
//! the rule state machine and webhook signatures; [`https`], the outbound HTTP(S) clients; and [`influx`], the writer that stores results in
//! InfluxDB without losing them during an outage.

pub mod alerts;
pub mod drift;
pub mod https;
pub mod influx;
pub mod join;
pub mod ks;
pub mod performance;
pub mod profile;
pub mod records;
pub mod report;
pub mod window;
