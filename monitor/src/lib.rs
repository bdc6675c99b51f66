//! Fathom's model monitoring. So far: [`profile`], the reference profiles built from a model's
//! training set; [`drift`], the statistics comparing a live window to them; [`performance`], the
//! metrics once labels arrive; [`alerts`], the rule state machine and webhook signatures; and
//! [`influx`], the writer that stores results in InfluxDB without losing them during an outage.
//! The prediction/label join, the windows, webhook delivery and retraining triggers come next,
//! in that order of the flow.

pub mod alerts;
pub mod drift;
pub mod influx;
pub mod performance;
pub mod profile;
