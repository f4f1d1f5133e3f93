//! Duplicate detection by `(source, event_id)`.
//!
//! Lifecycle of an id: [`Dedupe::begin`] marks it *in flight* atomically (or reports that it is
//! already delivered or in flight); [`Dedupe::commit`] turns it into *delivered* for the TTL once
//! every sink accepted the event; [`Dedupe::release`] forgets it when forwarding failed, so
//! the sender's retry goes through. An in-flight mark also expires by itself (a crashed request
//! must not block an id forever).
//!
//! Backends are one enum; the atomicity of "mark if absent" lives in each backend's `begin`.

pub mod journal;
pub mod memory;
pub mod redis;

use crate::config::{DedupeBackend, DedupeConfig};
use std::time::Duration;

/// A fixed-size key: 128-bit keyed hash of source name and event_id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupeKey(pub [u64; 2]);

/// What [`Dedupe::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Not seen: now marked in flight; the caller must commit or release.
    New,
    /// Delivered within the TTL.
    Duplicate,
    /// Another request is forwarding it right now.
    InFlight,
}

/// A backend failure (Redis unreachable, timed out). Never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dedupe backend error: {0}")]
pub struct DedupeError(pub String);

/// The configured dedupe store.
pub enum Dedupe {
    /// In-process table.
    Memory(memory::MemoryDedupe),
    /// Shared Redis.
    Redis(Box<redis::RedisDedupe>),
}

impl Dedupe {
    /// Builds the configured backend. `in_flight_ttl` bounds how long an in-flight mark lives
    /// if nobody commits or releases it.
    /// The memory backend persists delivered ids in `cfg.journal` (when set), durable per
    /// `durability`.
    pub fn new(
        cfg: &DedupeConfig,
        in_flight_ttl: Duration,
        durability: journal::Durability,
    ) -> Result<Dedupe, DedupeError> {
        Ok(match &cfg.backend {
            DedupeBackend::Memory => Dedupe::Memory(match &cfg.journal {
                None => memory::MemoryDedupe::new(cfg.ttl, in_flight_ttl, cfg.max_entries),
                Some(dir) => memory::MemoryDedupe::with_journal(
                    cfg.ttl,
                    in_flight_ttl,
                    cfg.max_entries,
                    dir,
                    durability,
                )
                .map_err(|e| DedupeError(e.to_string()))?,
            }),
            DedupeBackend::Redis(r) => Dedupe::Redis(Box::new(redis::RedisDedupe::new(
                r,
                cfg.ttl,
                in_flight_ttl,
            )?)),
        })
    }

    /// The key of an event of `source`.
    pub fn key(&self, source: &str, event_id: &str) -> DedupeKey {
        match self {
            Dedupe::Memory(m) => m.key(source, event_id),
            Dedupe::Redis(r) => r.key(source, event_id),
        }
    }

    /// Marks `key` in flight if absent (atomically), at unix time `now`.
    pub async fn begin(&self, key: DedupeKey, now: u64) -> Result<Begin, DedupeError> {
        match self {
            Dedupe::Memory(m) => Ok(m.begin(key, now)),
            Dedupe::Redis(r) => r.begin(key).await,
        }
    }

    /// Marks `key` delivered for the TTL.
    pub async fn commit(&self, key: DedupeKey, now: u64) -> Result<(), DedupeError> {
        match self {
            Dedupe::Memory(m) => {
                m.commit(key, now);
                Ok(())
            }
            Dedupe::Redis(r) => r.commit(key).await,
        }
    }

    /// Forgets an in-flight `key`.
    pub async fn release(&self, key: DedupeKey) -> Result<(), DedupeError> {
        match self {
            Dedupe::Memory(m) => {
                m.release(key);
                Ok(())
            }
            Dedupe::Redis(r) => r.release(key).await,
        }
    }

    /// Forgets an in-flight `key` without waiting (for drop guards): at once in memory, in a
    /// spawned task for Redis (the in-flight expiry covers a lost release).
    pub fn release_now(self: &std::sync::Arc<Self>, key: DedupeKey) {
        match &**self {
            Dedupe::Memory(m) => m.release(key),
            Dedupe::Redis(_) => {
                let me = self.clone();
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let _ = me.release(key).await;
                    });
                }
            }
        }
    }

    /// Number of remembered ids (for the gauge).
    pub fn entries(&self) -> u64 {
        match self {
            Dedupe::Memory(m) => m.len(),
            Dedupe::Redis(_) => 0,
        }
    }

    /// Ids evicted before their TTL because of `max_entries`.
    pub fn evictions(&self) -> u64 {
        match self {
            Dedupe::Memory(m) => m.evictions(),
            Dedupe::Redis(_) => 0,
        }
    }

    /// Failed backend calls (Redis).
    pub fn errors(&self) -> u64 {
        match self {
            Dedupe::Memory(_) => 0,
            Dedupe::Redis(r) => r.errors(),
        }
    }
}
