//! Config reload: on SIGHUP or `POST /admin/reload`, re-read the config file (and every
//! `{ file = ... }` secret it names), validate the whole of it, and put its sources and
//! sinks in force at once. Requests in flight finish on the set they started with (each
//! holds its route); new ones get the new set; none is refused because of a reload. Sinks are
//! built anew (a rotated secret file takes effect) and the old batchers drain and stop once
//! the last request that holds them is answered; a spooled sink keeps its slot, so its
//! drainer and cursor stay. What the running process cannot change without a restart (the
//! listeners and everything under `[server]`, `[admin]`, `[dedupe]`, `[spool]`, `[log]`, which
//! sources spool and to which sinks, a file sink's keys) is refused with its key path, and
//! the running config stays, as it does for any invalid config.
//!
//! Owns: the running config and the order of a reload (check, build, then swap). It uses
//! `assemble.rs`'s builders; it holds no request logic.

use super::build::{build_routes, build_sinks, forward_sinks, init_metrics, ServeError, SinkEntry};
use super::webhook::{Routes, Workers};
use crate::config::{Ack, Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::LiveSink;
use crate::secret::Secret;
use crate::spool::Spool;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What a reload swaps, shared with the listeners.
pub struct Swapped {
    /// The webhook routes.
    pub routes: Routes,
    /// Batchers waiting for the listener's runtime.
    pub workers: Arc<Workers>,
    /// The sinks the admin API replays to.
    pub admin_sinks: Arc<ArcSwap<HashMap<String, LiveSink>>>,
    /// The spool (its sources' logs are looked up by name).
    pub spool: Option<Arc<Spool>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The sinks whose health `/readyz` answers for.
    pub forward_sinks: super::build::ForwardSinks,
}

/// Why a reload did not take effect (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The new config changes what only a restart can.
    #[error("{}", .0.iter().map(|k| format!("{k}: changes only with a restart")).collect::<Vec<_>>().join("; "))]
    NeedsRestart(Vec<String>),
    /// A sink could not be built.
    #[error(transparent)]
    Build(#[from] ServeError),
}

/// What a reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Sources.
    pub sources: usize,
    /// Sinks built anew.
    pub rebuilt: Vec<String>,
    /// Sinks kept as they run (unchanged file sinks).
    pub kept: Vec<String>,
}

struct Running {
    config: Config,
    sinks: HashMap<String, SinkEntry>,
}

/// Reloads the config file in place; one reload at a time.
pub struct Reloader {
    path: PathBuf,
    running: Mutex<Running>,
    swapped: Swapped,
}

impl Reloader {
    /// The reloader of a gateway assembled from `config` (read from `path`).
    pub(super) fn new(
        path: PathBuf,
        config: Config,
        sinks: HashMap<String, SinkEntry>,
        swapped: Swapped,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(Running { config, sinks }),
            swapped,
        }
    }

    /// Reloads and counts the result in `vfgate_config_reloads_total`, logging it (an error
    /// at ERROR: the file on disk is not what runs, someone must look).
    pub fn reload_logged(&self, why: &str) -> Result<Reloaded, ReloadError> {
        let m = &self.swapped.metrics;
        match self.reload() {
            Ok(r) => {
                m.config_reloads.with_label_values(&["ok"]).inc();
                m.config_last_reload_success
                    .set(crate::time::now_ms() as f64 / 1000.0);
                tracing::info!(
                    trigger = why,
                    path = %self.path.display(),
                    sources = r.sources,
                    rebuilt = ?r.rebuilt,
                    kept = ?r.kept,
                    "config reloaded"
                );
                Ok(r)
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(trigger = why, path = %self.path.display(), error = %e, "config reload failed; the running config stays");
                Err(e)
            }
        }
    }

    /// Reads, checks and builds the new config, then swaps it in; on any error nothing
    /// changes.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock();
        let new = Config::load(&self.path, crate::sinks::TYPES)?;
        let refused = needs_restart(&running.config, &new);
        if !refused.is_empty() {
            return Err(ReloadError::NeedsRestart(refused));
        }
        let built = build_sinks(&new, Some(&running.sinks))?;
        let routes = build_routes(
            &new,
            &self.swapped.metrics,
            &built.by_name,
            self.swapped.spool.as_ref(),
        );
        let kept = built.kept.clone();
        let mut rebuilt: Vec<String> = built
            .by_name
            .keys()
            .filter(|n| !kept.contains(n))
            .cloned()
            .collect();
        rebuilt.sort();
        // Everything is built: put it in force. Slots first (drainers and the admin API),
        // then the batchers, then the routes that hand events to them.
        self.swapped.admin_sinks.store(Arc::new(built.live()));
        for (slot, b) in built.swaps {
            slot.store(Arc::new(b));
        }
        init_metrics(&new, &self.swapped.metrics);
        let health = &self.swapped.metrics.health;
        let names: Vec<&str> = built.by_name.keys().map(String::as_str).collect();
        health.retain(&names);
        for name in &rebuilt {
            health.reset(name);
        }
        self.swapped
            .forward_sinks
            .store(Arc::new(forward_sinks(&new)));
        self.swapped.workers.add(built.workers);
        self.swapped.routes.store(Arc::new(routes));
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let sources = new.sources.len();
        *running = Running {
            config: new,
            sinks: built.by_name,
        };
        Ok(Reloaded {
            sources,
            rebuilt,
            kept,
        })
    }
}

/// The key paths `new` changes that the running process cannot take without a restart.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    macro_rules! same {
        ($section:literal, $a:expr, $b:expr, [$($field:ident),*]) => {
            $(if $a.$field != $b.$field {
                keys.push(format!("{}.{}", $section, stringify!($field)));
            })*
        };
    }
    same!(
        "server",
        old.server,
        new.server,
        [
            listen,
            grace_period,
            max_body_bytes,
            body_timeout,
            max_inflight_body_bytes,
            max_connections,
            header_timeout,
            keepalive_timeout,
            trusted_proxies,
            tls,
            threads
        ]
    );
    same!("admin", old.admin, new.admin, [listen, failed_dir]);
    if !same_secret(old.admin.token.as_ref(), new.admin.token.as_ref()) {
        keys.push("admin.token".into());
    }
    // Debug shows no secret (they print redacted); the Redis URL and password are compared
    // apart, in constant time.
    if format!("{:?}", old.dedupe) != format!("{:?}", new.dedupe) || !same_redis(old, new) {
        keys.push("dedupe".into());
    }
    if format!("{:?}", old.spool) != format!("{:?}", new.spool) {
        keys.push("spool".into());
    }
    if old.log != new.log {
        keys.push("log".into());
    }
    let spooled = |c: &Config| -> HashMap<String, Vec<String>> {
        c.sources
            .iter()
            .filter(|s| s.ack == Ack::Spool)
            .map(|s| (s.name.clone(), s.sinks.clone()))
            .collect()
    };
    let (a, b) = (spooled(old), spooled(new));
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if a.get(name) != b.get(name) {
            keys.push(format!(
                "source {name:?} (ack = \"spool\" and its sinks: the spool keeps a cursor per sink)"
            ));
        }
    }
    keys
}

fn same_secret(a: Option<&Secret>, b: Option<&Secret>) -> bool {
    use subtle::ConstantTimeEq;
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => bool::from(a.expose().ct_eq(b.expose())),
        _ => false,
    }
}

fn same_redis(old: &Config, new: &Config) -> bool {
    use crate::config::DedupeBackend::Redis;
    match (&old.dedupe.backend, &new.dedupe.backend) {
        (Redis(a), Redis(b)) => {
            same_secret(Some(&a.url), Some(&b.url))
                && same_secret(a.password.as_ref(), b.password.as_ref())
        }
        _ => true,
    }
}
