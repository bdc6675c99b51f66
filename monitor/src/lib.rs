//! Fathom's model monitoring. So far: [`profile`], the reference profiles built from a model's
//! training set, and [`drift`], the statistics comparing a live window to them (the
//! prediction/label join, windows, the InfluxDB writer and alerts come next, in that order of
//! the flow).

pub mod drift;
pub mod profile;
