//! Duplicate detection by `(source, event_id)`.
//!
//! Lifecycle of an id: [`Dedupe::begin`] marks it *in flight* atomically (or reports that it is
//! already delivered or in flight); [`Dedupe::commit`] turns it into *delivered* for the TTL once
//! every sink accepted the event; [`Dedupe::release`] forgets it when forwarding failed, so
//! the sender's retry goes through. An in-flight mark also expires by itself (a crashed request
//! must not block an id forever).
//!
//! Backends are one enum; the atomicity of "mark if absent" lives in each backend's `begin`.
//!
//! Owns: the id lifecycle and the choice of backend. Uses only `config` (the backends add
//! `time` and `fsutil`; the tests and `model.rs` also use `verify`, beside it); knows
//! nothing of requests, sinks, the spool or HTTP.

pub mod journal;
pub mod memory;
#[cfg(test)]
mod model;
pub mod redis;

use crate::config::{DedupeBackend, DedupeConfig};
use std::time::Duration;

/// The key of `(source, event_id)`: SHA-256 over `seed (8 bytes LE, when given) | source |
/// 0x00 | event_id`, truncated to 128 bits. Source names cannot hold a 0 byte, so the input
/// is unambiguous; SHA-256 makes it infeasible for whoever holds one source's secret to craft
/// event ids whose keys collide with another source's (and suppress them as duplicates).
/// The memory backend seeds it (a random seed kept in its journal dir); Redis does not, so
/// that every replica computes the same key.
pub fn hash_key(seed: Option<u64>, source: &str, event_id: &str) -> DedupeKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    if let Some(s) = seed {
        h.update(s.to_le_bytes());
    }
    h.update(source.as_bytes());
    h.update([0u8]);
    h.update(event_id.as_bytes());
    let d = h.finalize();
    let w = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes"));
    DedupeKey([w(0), w(8)])
}

/// A fixed-size key: 128 bits of [`hash_key`].
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
    /// `max_entries` reached with `on_full = "reject"`: not marked, nothing to commit.
    Full,
}

/// A backend failure (Redis unreachable, timed out). Never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dedupe backend error: {0}")]
pub struct DedupeError(pub String);

/// The unix second a delivered mark's TTL counts from: the later of the commit time and the
/// event's own timestamp, rounded up (see [`Dedupe::commit`]).
pub fn mark_from_s(now_ms: i64, event_ms: i64) -> u64 {
    (now_ms.max(event_ms).max(0) / 1000) as u64 + 1
}

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
                None => memory::MemoryDedupe::new(cfg.ttl, in_flight_ttl, cfg.max_entries)
                    .reject_when_full(cfg.reject_when_full),
                Some(dir) => memory::MemoryDedupe::with_journal(
                    cfg.ttl,
                    in_flight_ttl,
                    cfg.max_entries,
                    dir,
                    durability,
                )
                .map_err(|e| DedupeError(e.to_string()))?
                .reject_when_full(cfg.reject_when_full),
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

    /// Marks `key` delivered, at wall time `now_ms`, for an event dated `event_ms`. The mark
    /// lasts a TTL past the later of the two (plus a second for rounding), so an event dated
    /// ahead (within `max_future_skew`) stays a duplicate until it is too old to be accepted
    /// at all: with `max_event_age <= ttl` (enforced by the config), a signed event is
    /// accepted at most once.
    pub async fn commit(
        &self,
        key: DedupeKey,
        now_ms: i64,
        event_ms: i64,
    ) -> Result<(), DedupeError> {
        let until_ms = now_ms.max(event_ms).max(0);
        match self {
            Dedupe::Memory(m) => {
                m.commit(key, mark_from_s(now_ms, event_ms));
                Ok(())
            }
            Dedupe::Redis(r) => {
                r.commit(key, (until_ms - now_ms.max(0)) as u64 + 1000)
                    .await
            }
        }
    }

    /// Extends an in-flight `key` by the in-flight lifetime from unix time `now`: a request
    /// still waiting for its sinks (queued behind a slow one) keeps its claim, so a resend
    /// is answered `in_flight` rather than handed on a second time.
    pub async fn renew(&self, key: DedupeKey, now: u64) -> Result<(), DedupeError> {
        match self {
            Dedupe::Memory(m) => {
                m.renew(key, now);
                Ok(())
            }
            Dedupe::Redis(r) => r.renew(key).await,
        }
    }

    /// How long an in-flight mark lives unless renewed.
    pub fn in_flight_ttl(&self) -> Duration {
        match self {
            Dedupe::Memory(m) => m.in_flight_ttl(),
            Dedupe::Redis(r) => r.in_flight_ttl(),
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

    /// Damaged journal records found at start-up (memory backend).
    pub fn journal_corrupt(&self) -> u64 {
        match self {
            Dedupe::Memory(m) => m.journal_corrupt(),
            Dedupe::Redis(_) => 0,
        }
    }

    /// For `/readyz`: an error when the backend is unreachable and its failures refuse
    /// requests (Redis with `on_error = "reject"`); the memory backend is always ready.
    pub async fn probe(&self) -> Result<(), DedupeError> {
        match self {
            Dedupe::Memory(_) => Ok(()),
            Dedupe::Redis(r) => r.probe().await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Checker, RequestParts};
    use proptest::prelude::*;

    #[test]
    fn keys_are_sha256_of_source_and_id_deterministic_without_a_seed() {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"syvault\0evt_1");
        let want = DedupeKey([
            u64::from_le_bytes(d[0..8].try_into().unwrap()),
            u64::from_le_bytes(d[8..16].try_into().unwrap()),
        ]);
        assert_eq!(
            hash_key(None, "syvault", "evt_1"),
            want,
            "every replica agrees"
        );
        assert_ne!(hash_key(None, "other", "evt_1"), want);
        assert_ne!(
            hash_key(None, "syvaul", "tevt_1"),
            want,
            "the separator counts"
        );
        assert_ne!(
            hash_key(Some(7), "syvault", "evt_1"),
            want,
            "the seed counts"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// For every valid config (max_event_age <= ttl to the millisecond, any skew), an
        /// event dated anywhere relative to its arrivals is accepted at most once, however
        /// often it is replayed (once at the last millisecond of its window).
        #[test]
        fn a_signed_event_is_accepted_at_most_once(
            ttl in 1u64..120,
            ttl_frac_ms in prop_oneof![Just(0u64), 1u64..1000],
            age_per_mille in 0u64..=1000,
            skew in 0u64..400,
            offset_ms in -500_000i64..500_000,
            mut arrivals in proptest::collection::vec(0i64..700_000, 1..16),
        ) {
            let ttl_ms = ttl * 1000 + ttl_frac_ms;
            let age_ms = (ttl_ms * age_per_mille / 1000).max(1);
            let toml = format!(
                "[dedupe]\nttl = \"{ttl_ms}ms\"\n[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"0123456789abcdef0123\" }}]\nsinks = [\"f\"]\nmax_event_age = \"{age_ms}ms\"\nmax_future_skew = \"{skew}s\"\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n"
            );
            let cfg = crate::config::Config::parse(&toml, &crate::config::AnySinkType).unwrap();
            let checker = Checker::new(&cfg.sources[0]);
            let d = memory::MemoryDedupe::new(cfg.dedupe.ttl, Duration::from_secs(60), 1000);
            let t0: i64 = 1_700_000_000_000;
            let ts = t0 + offset_ms;
            let body = bytes::Bytes::from(format!(
                "{{\"event_id\":\"e1\",\"timestamp\":\"{}\"}}",
                crate::time::rfc3339_ms(ts)
            ));
            let parts = RequestParts {
                signature: None,
                version: Some(b"1"),
                content_type: Some(b"application/json"),
                headers: None,
            };
            let key = d.key("s", "e1");
            // And a resend at the last millisecond max_event_age lets in.
            arrivals.push(offset_ms + age_ms as i64);
            arrivals.sort();
            let mut accepted = Vec::new();
            for a in arrivals {
                let now = t0 + a;
                if checker.after_signature(parts, body.clone(), now).is_err() {
                    continue;
                }
                if d.begin(key, (now / 1000) as u64) == Begin::New {
                    d.commit(key, mark_from_s(now, ts));
                    accepted.push(a);
                }
            }
            prop_assert!(accepted.len() <= 1, "accepted at {accepted:?} (ts offset {offset_ms} ms)");
        }
    }
}
