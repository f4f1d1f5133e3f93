//! vfgate: a receiver-side gateway for VF audit-event webhooks.
//!
//! Request path: [`server`] (Pingora listeners) → [`ingest`] ([`verify`] → filter →
//! [`dedupe`] → [`spool`] or [`pipeline`] → [`sinks`]). The command line is [`cmd`] (nothing
//! imports it). Configuration in [`config`], secrets in [`secret`], metrics in [`metrics`],
//! outbound HTTP in [`client`], the wall clock in [`time`].
//!
//! Layers, arrows running downward: `cmd` → `server` → `ingest` → `spool` → `pipeline` →
//! `sinks` → `sender` → `client`, `verify`, `dedupe`, `deadletter` → `config`, `event`,
//! `time`, `retry`, `metrics` (with `health`), `escape`, `fsutil`, `secret`; none runs back up (config is
//! handed the catalog of sink types, [`sinks::TYPES`]). Each module's doc says what it owns
//! and what it may not import.
#![warn(missing_docs)]

pub mod client;
pub mod cmd;
pub mod config;
pub mod deadletter;
pub mod dedupe;
pub mod escape;
pub mod event;
pub mod fsutil;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod retry;
pub mod secret;
pub mod sender;
pub mod server;
pub mod sinks;
pub mod spool;
pub mod time;
pub mod verify;
