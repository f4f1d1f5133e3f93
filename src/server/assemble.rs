//! Builds the running gateway from a validated [`Config`]: the dedupe store, the spool, one
//! built sink and batcher per `[sink.*]`, one drainer per spooled (source, sink), the routes
//! of the webhook listener and the admin state. Nothing runs yet: `server::run` starts it.
//! This is the only place that wires modules together; it holds no request logic.

use super::admin::{forward_sinks, Admin, ForwardSinks};
use super::outcome::Outcome;
use super::rejections::Rejections;
use super::reload::{Reloader, Swapped};
use super::webhook::{Gateway, Limits, Route, Routes, Workers};
use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::ingest::{Ingest, Source};
use crate::metrics::Metrics;
use crate::pipeline::{self, Built, LiveSink, SinkHandle, SinkWorker};
use crate::spool::drain::{self, Drainer};
use crate::spool::Spool;
use crate::verify::Checker;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The spool drainers as a Pingora background service (they run from start-up, requests
/// or not).
pub struct PipelineService {
    drainers: Mutex<Vec<Drainer>>,
}

#[async_trait]
impl BackgroundService for PipelineService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for d in std::mem::take(&mut *self.drainers.lock()) {
            tokio::spawn(d.run());
        }
        let _ = shutdown.changed().await;
    }
}

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

/// The assembled gateway, before it runs.
pub struct Assembled {
    /// The webhook listener's state.
    pub gateway: Gateway,
    /// The admin listener's state.
    pub admin: Admin,
    /// The spool drainers.
    pub pipeline: PipelineService,
    /// Set once every listener accepts connections.
    pub ready: Arc<AtomicBool>,
    /// Re-reads the config file and swaps sources and sinks (SIGHUP, `POST /admin/reload`).
    pub reloader: Arc<Reloader>,
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
                outcomes: outcome_counters(metrics, &src.name),
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
        metrics.init_source(&src.name, &outcome_labels);
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

fn outcome_counters(metrics: &Metrics, source: &str) -> Vec<IntCounter> {
    Outcome::ALL
        .iter()
        .map(|o| metrics.requests.with_label_values(&[source, o.as_str()]))
        .collect()
}

/// Builds the gateway state from a validated config, read from `path` (which a reload
/// reads again).
pub fn assemble(config: Config, path: &Path) -> Result<Assembled, ServeError> {
    let metrics = Arc::new(Metrics::new());
    metrics
        .config_last_reload_success
        .set(crate::time::now_ms() as f64 / 1000.0);
    let max_budget = config
        .sinks
        .iter()
        .map(|s| s.common.retry_budget + s.common.timeout * 2)
        .max()
        .unwrap_or_default();
    use crate::dedupe::journal::Durability;
    let durability = match config.spool.as_ref().map(|s| s.fsync) {
        Some(crate::config::FsyncPolicy::Always) => Durability::Always,
        Some(crate::config::FsyncPolicy::Never) => Durability::Never,
        Some(crate::config::FsyncPolicy::Batch) | None => Durability::Batch,
    };
    let dedupe = Arc::new(
        Dedupe::new(
            &config.dedupe,
            config
                .dedupe
                .in_flight_ttl
                .unwrap_or(max_budget + Duration::from_secs(60)),
            durability,
        )
        .map_err(|e| ServeError::Dedupe(e.to_string()))?,
    );
    metrics
        .dedupe_journal_corrupt
        .inc_by(dedupe.journal_corrupt());
    if let (Dedupe::Memory(m), Some(dir)) = (&*dedupe, &config.dedupe.journal) {
        if !m.is_empty() {
            tracing::info!(
                ids = m.len(),
                dir = %dir.display(),
                "dedupe: delivered ids loaded"
            );
        }
    }
    let spooled: Vec<(String, Vec<String>)> = config
        .sources
        .iter()
        .filter(|s| s.ack == crate::config::Ack::Spool)
        .map(|s| (s.name.clone(), s.sinks.clone()))
        .collect();
    let spool = match &config.spool {
        Some(cfg) if !spooled.is_empty() => Some(
            Spool::open(cfg, &spooled, config.server.max_body_bytes)
                .map_err(|e| ServeError::Spool(e.to_string()))?,
        ),
        _ => None,
    };
    let sinks = build_sinks(&config, None)?;
    init_metrics(&config, &metrics);
    let mut drainers = Vec::new();
    if let (Some(spool), Some(cfg)) = (&spool, &config.spool) {
        let ctx = Arc::new(drain::Context {
            metrics: metrics.clone(),
            dead: spool.dead.clone(),
            max_age: cfg.max_age,
        });
        for src in config
            .sources
            .iter()
            .filter(|s| s.ack == crate::config::Ack::Spool)
        {
            let log = spool.source(&src.name).expect("opened above");
            for sink in &src.sinks {
                drainers.push(Drainer {
                    source: log.clone(),
                    name: sink.clone(),
                    live: sinks.by_name[sink].live.clone(),
                    ctx: ctx.clone(),
                });
            }
        }
    }
    let routes: Routes = Arc::new(ArcSwap::from_pointee(build_routes(
        &config,
        &metrics,
        &sinks.by_name,
        spool.as_ref(),
    )));
    let workers = Arc::new(Workers::default());
    let admin_sinks = Arc::new(ArcSwap::from_pointee(sinks.live()));
    let ready = Arc::new(AtomicBool::new(false));
    let gateway = Gateway {
        routes: routes.clone(),
        unknown: outcome_counters(&metrics, "none"),
        unknown_rejections: Rejections::new("none"),
        trusted_proxies: config.server.trusted_proxies.clone(),
        ingest: Ingest {
            dedupe: dedupe.clone(),
            spool: spool.clone(),
            commit_failures: metrics.dedupe_commit_failures.clone(),
        },
        metrics: metrics.clone(),
        limits: Limits {
            max_body: config.server.max_body_bytes,
            body_timeout: config.server.body_timeout,
            max_inflight: config.server.max_inflight_body_bytes,
        },
        inflight_bytes: Default::default(),
        workers: workers.clone(),
    };
    workers.add(sinks.workers);
    let (token, failed_dir) = (config.admin.token.clone(), config.admin.failed_dir.clone());
    let forward: ForwardSinks = Arc::new(ArcSwap::from_pointee(forward_sinks(&config)));
    let reloader = Arc::new(Reloader::new(
        path.to_path_buf(),
        config,
        sinks.by_name,
        Swapped {
            routes,
            workers,
            admin_sinks: admin_sinks.clone(),
            spool: spool.clone(),
            metrics: metrics.clone(),
            forward_sinks: forward.clone(),
        },
    ));
    let admin = Admin {
        metrics,
        dedupe,
        ready: ready.clone(),
        token,
        failed: crate::deadletter::FailedStore::new(&failed_dir),
        spool,
        sinks: admin_sinks,
        reloader: reloader.clone(),
        forward_sinks: forward,
    };
    Ok(Assembled {
        gateway,
        admin,
        pipeline: PipelineService {
            drainers: Mutex::new(drainers),
        },
        ready,
        reloader,
    })
}
