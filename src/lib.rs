//! vfgate: a receiver-side gateway for VF audit-event webhooks.
//!
//! Request path: [`server`] (Pingora `ServeHttp`) → [`verify`] (signature, version, shape,
//! age) → [`dedupe`] → [`pipeline`] (batching, retries) → [`sinks`]. Configuration in
//! [`config`], secrets in [`secret`], metrics in [`metrics`], outbound HTTP in [`client`].
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod deadletter;
pub mod dedupe;
pub mod escape;
pub mod event;
pub mod fsutil;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod secret;
pub mod sender;
pub mod server;
pub mod sinks;
pub mod spool;
pub mod time;
pub mod verify;
