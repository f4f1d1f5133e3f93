//! The pieces a config is built into, shared by start-up (`assemble.rs`) and reload
//! (`reload.rs`): the sinks with their batchers and slots, the webhook routes, the metric
//! series a config implies, and the set of sinks `/readyz` answers for. Builds; starts and
//! swaps nothing.

use super::outcome::Outcome;
use super::rejections::Rejections;
use super::webhook::Route;
use crate::config::Config;
use crate::ingest::Source;
use crate::metrics::Metrics;
use crate::pipeline::{self, Built, LiveSink, SinkHandle, SinkWorker};
use crate::spool::Spool;
use crate::verify::Checker;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::Arc;

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A sink could not be built.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS settings could not be loaded.
    #[error("server.tls: {0}")]
    Tls(String),
    /// The dedupe backend could not be set up.
    #[error("{0}")]
    Dedupe(String),
    /// The spool could not be opened.
    #[error("spool.dir: {0}")]
    Spool(String),
    /// The SIGHUP handler could not be installed.
    #[error("cannot watch SIGHUP: {0}")]
    Signal(String),
    /// A listen address cannot be bound (in use, not local, no permission).
    #[error("{key} {addr}: {reason}")]
    Bind {
        /// Config key.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        reason: String,
    },
}

/// One sink as built: its batcher's handle (forward mode), the slot the drainers and the
/// admin API read it from, and the fingerprint of its keys.
#[derive(Clone)]
pub(super) struct SinkEntry {
    pub handle: SinkHandle,
    pub live: LiveSink,
    pub fingerprint: [u8; 32],
}

/// The sinks of one config, built; what a reload must still do to put them in force.
pub(super) struct BuiltSinks {
    pub by_name: HashMap<String, SinkEntry>,
    /// The new batchers, to be started by the next request.
    pub workers: Vec<SinkWorker>,
    /// Slots of running sinks and what they are to hold (stored only when the whole new
    /// config is ready, so a failed reload changes nothing).
    pub swaps: Vec<(LiveSink, Built)>,
    /// Running sinks kept as they are (sorted).
    pub kept: Vec<String>,
}

impl BuiltSinks {
    /// The slots by sink name, for the admin API's replays.
    pub fn live(&self) -> HashMap<String, LiveSink> {
        self.by_name
            .iter()
            .map(|(k, e)| (k.clone(), e.live.clone()))
            .collect()
    }
}

/// Builds every sink of `config`. With `running` (a reload), a sink that must not run twice
/// ([`crate::sinks::Sink::exclusive`]) and whose keys are unchanged is kept as it runs, a
/// change to one is refused; every other sink is built anew (so rotated secret files take
/// effect), and a running sink of the same name gets the new one in its slot (the spool
/// drainers and their cursors stay).
pub(super) fn build_sinks(
    config: &Config,
    running: Option<&HashMap<String, SinkEntry>>,
) -> Result<BuiltSinks, ServeError> {
    let mut out = BuiltSinks {
        by_name: HashMap::new(),
        workers: Vec::new(),
        swaps: Vec::new(),
        kept: Vec::new(),
    };
    for spec in &config.sinks {
        let name = &spec.common.name;
        let old = running.and_then(|r| r.get(name));
        if let Some(old) = old {
            let now = old.live.load();
            if now.sink.exclusive() && now.common.kind == spec.common.kind {
                if old.fingerprint == spec.fingerprint {
                    out.by_name.insert(name.clone(), old.clone());
                    out.kept.push(name.clone());
                    continue;
                }
                return Err(ServeError::Config(crate::config::ConfigError::invalid(
                    spec.key(),
                    format!(
                        "a {} sink's keys change only with a restart (two writers would share its output)",
                        spec.common.kind
                    ),
                )));
            }
        }
        let sink = crate::sinks::build(spec)?;
        let live = match old {
            Some(old) => {
                out.swaps.push((
                    old.live.clone(),
                    Built {
                        common: spec.common.clone(),
                        sink: sink.clone(),
                    },
                ));
                old.live.clone()
            }
            None => pipeline::live(spec.common.clone(), sink.clone()),
        };
        let (handle, worker) = pipeline::channel(spec.common.clone(), sink);
        out.workers.push(worker);
        out.by_name.insert(
            name.clone(),
            SinkEntry {
                handle,
                live,
                fingerprint: spec.fingerprint,
            },
        );
    }
    Ok(out)
}

/// The webhook routes of `config`'s sources, over `sinks`.
pub(super) fn build_routes(
    config: &Config,
    metrics: &Metrics,
    sinks: &HashMap<String, SinkEntry>,
    spool: Option<&Arc<Spool>>,
) -> HashMap<String, Arc<Route>> {
    let mut routes = HashMap::new();
    for src in &config.sources {
        let source = Source {
            name: src.name.clone(),
            checker: Checker::new(src),
            filter: src.event_types.clone(),
            sinks: src.sinks.iter().map(|n| sinks[n].handle.clone()).collect(),
            spool: spool.and_then(|s| s.source(&src.name)),
            secret_matches: (0..src.secrets.len())
                .map(|i| {
                    metrics
                        .secret_matches
                        .with_label_values(&[src.name.as_str(), &i.to_string()])
                })
                .collect(),
        };
        routes.insert(
            src.path.clone(),
            Arc::new(Route {
                source,
                outcomes: outcome_counters(metrics, &src.name, src.scheme.as_str()),
                timer: metrics.request_timer(&src.name),
                rejections: Rejections::new(&src.name),
                received: metrics
                    .received_bytes
                    .with_label_values(&[src.name.as_str()]),
            }),
        );
    }
    routes
}

/// Creates the series of every configured source and sink at 0 (so `rate()` and alerts see
/// them before the first event) and sets the gauges read from the config: secrets'
/// `not_after` (those of a removed or replaced secret are cleared) and the spool's capacity.
pub(super) fn init_metrics(config: &Config, metrics: &Metrics) {
    let outcome_labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    metrics
        .spool_capacity
        .set(config.spool.as_ref().map_or(0, |s| s.max_bytes as i64));
    metrics.secret_not_after.reset();
    for src in &config.sources {
        metrics.init_source(&src.name, src.scheme.as_str(), &outcome_labels);
        for reason in crate::verify::Reject::REASONS {
            metrics
                .rejections
                .with_label_values(&[src.name.as_str(), reason]);
        }
        if let Some(h) = src.handshake {
            metrics
                .handshakes
                .with_label_values(&[src.name.as_str(), h.as_str()]);
        }
        for (i, secret) in src.secrets.iter().enumerate() {
            if let Some(t) = secret.not_after {
                metrics
                    .secret_not_after
                    .with_label_values(&[src.name.as_str(), &i.to_string()])
                    .set(t);
            }
        }
    }
    for sink in &config.sinks {
        metrics.init_sink(&sink.common.name, crate::sinks::FAILURE_REASONS);
    }
}

/// A source's request counters, one per outcome; `scheme` is its scheme's name (`none` for
/// the paths no source serves).
pub(super) fn outcome_counters(metrics: &Metrics, source: &str, scheme: &str) -> Vec<IntCounter> {
    Outcome::ALL
        .iter()
        .map(|o| {
            metrics
                .requests
                .with_label_values(&[source, scheme, o.as_str()])
        })
        .collect()
}

/// The sinks of forward-mode sources, swapped whole by a reload.
pub type ForwardSinks = Arc<arc_swap::ArcSwap<std::collections::BTreeSet<String>>>;

/// The sinks of `config`'s forward-mode sources.
pub fn forward_sinks(config: &crate::config::Config) -> std::collections::BTreeSet<String> {
    config
        .sources
        .iter()
        .filter(|s| s.ack == crate::config::Ack::Forward)
        .flat_map(|s| s.sinks.iter().cloned())
        .collect()
}
