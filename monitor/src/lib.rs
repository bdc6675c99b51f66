//! Fathom's model monitoring. For now: [`profile`], the reference profiles built from a model's
//! training set that drift is measured against (the prediction/label join, drift and
//! performance windows, the InfluxDB writer and alerts come next, in that order of the flow).

pub mod profile;
