//! Every default value of the configuration, in one place: each constant names the key it
//! fills in when the file leaves that key out (`server.listen`, `sink.*.batch.max_events`,
//! ...), plus the bounds other modules share (`MAX_BATCH_EVENTS`). Only constants live here,
//! no parsing or checks; it imports nothing from the crate, so every layer (config
//! validation, the CLI's clap defaults, the sink types) can read it without a cycle.

use std::time::Duration;

/// `log.format`.
pub const LOG_FORMAT: &str = "text";
/// `log.level` (`RUST_LOG` overrides it).
pub const LOG_LEVEL: &str = "info";
/// `server.listen`.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `admin.listen`.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `admin.failed_dir`, and the default store of `vfgate send` / `vfgate failed`.
pub const FAILED_DIR: &str = "data/failed";
/// `server.grace_period`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// `server.max_body_bytes`: 1 MiB.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// `server.body_timeout`.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `server.header_timeout`.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.keepalive_timeout`.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// `server.max_inflight_body_bytes`: 256 MiB.
pub const MAX_INFLIGHT_BODY_BYTES: u64 = 256 << 20;
/// `dedupe.ttl`.
pub const DEDUPE_TTL: Duration = Duration::from_secs(24 * 3600);
/// `dedupe.max_entries`.
pub const DEDUPE_MAX_ENTRIES: u64 = 10_000_000;
/// `source.max_future_skew`.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);
/// `source.require_version`.
pub const REQUIRE_VERSION: bool = true;
/// `sink.*.batch.max_events`.
pub const BATCH_MAX_EVENTS: usize = 1;
/// `sink.*.batch.max_bytes`: 1 MiB.
pub const BATCH_MAX_BYTES: u64 = 1024 * 1024;
/// `sink.*.batch.linger`.
pub const BATCH_LINGER: Duration = Duration::ZERO;
/// `sink.*.timeout`.
pub const SINK_TIMEOUT: Duration = Duration::from_secs(10);
/// `sink.*.retry.budget`.
pub const RETRY_BUDGET: Duration = Duration::from_secs(10);
/// `sink.*.concurrency`: batches in flight per sink.
pub const SINK_CONCURRENCY: usize = 8;
/// Largest `batch.max_events` any sink accepts.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// `spool.max_bytes`.
pub const SPOOL_MAX_BYTES: u64 = 10 << 30;
/// `spool.max_age`.
pub const SPOOL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// `spool.segment_bytes` (also capped at an eighth of `max_bytes`).
pub const SPOOL_SEGMENT_BYTES: u64 = 64 << 20;
/// `dedupe.dir` without a spool (with one: `<spool.dir>/dedupe`).
pub const DEDUPE_DIR: &str = "data/dedupe";
/// `dedupe.persist`.
pub const DEDUPE_PERSIST: bool = true;

/// `source.tolerance` of a `standard-webhooks` source (the specification's 5 minutes).
pub const TOLERANCE: Duration = Duration::from_secs(300);
