//! The `fathom` binary's library: the project file, the processing loop, the HTTP API and the
//! commands that wire them.
//!
//! In flow order: [`config`] (what the project declares) → [`pipeline`] (records to stores) →
//! [`http`] (push in, features out; [`auth`] guards it; [`serving`] calls models) →
//! [`training`] (point-in-time datasets and the online/offline consistency check) → [`demo`], [`replay`] and [`bench`] (commands built on them).

pub mod auth;
pub mod bench;
pub mod config;
pub mod demo;
pub mod http;
pub mod monitoring;
pub mod pipeline;
pub mod replay;
pub mod serve;
pub mod serving;
pub mod tls;
pub mod training;
