//! Builds the running gateway from a validated [`Config`]: the dedupe store, the spool, one
//! built sink and batcher per `[sink.*]`, one drainer per spooled (source, sink), the routes
//! of the webhook listener and the admin state. Nothing runs yet: `server::run` starts it.
//! This is the only place that wires modules together; it holds no request logic.

use super::admin::Admin;
use super::outcome::Outcome;
use super::webhook::{Gateway, Limits, Route};
use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::ingest::{Ingest, Source};
use crate::metrics::Metrics;
use crate::pipeline::{self, SinkHandle};
use crate::spool::drain::{self, Drainer};
use crate::spool::Spool;
use crate::verify::Checker;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use std::collections::HashMap;
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
}

/// Builds the gateway state from a validated config.
pub fn assemble(config: &Config) -> Result<Assembled, ServeError> {
    let metrics = Arc::new(Metrics::new());
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
    let mut handles: HashMap<String, SinkHandle> = HashMap::new();
    let mut built: HashMap<String, (crate::config::SinkCommon, Arc<dyn crate::sinks::Sink>)> =
        HashMap::new();
    let mut workers = Vec::new();
    for spec in &config.sinks {
        let sink = crate::sinks::build(spec)?;
        built.insert(
            spec.common.name.clone(),
            (spec.common.clone(), sink.clone()),
        );
        let (h, w) = pipeline::channel(spec.common.clone(), sink);
        handles.insert(spec.common.name.clone(), h);
        workers.push(w);
    }
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
                let (common, s) = built[sink].clone();
                drainers.push(Drainer {
                    source: log.clone(),
                    common,
                    sink: s,
                    ctx: ctx.clone(),
                });
            }
        }
    }
    let counters = |source: &str| -> Vec<IntCounter> {
        Outcome::ALL
            .iter()
            .map(|o| metrics.requests.with_label_values(&[source, o.as_str()]))
            .collect()
    };
    let mut routes = HashMap::new();
    for src in &config.sources {
        let source = Source {
            name: src.name.clone(),
            checker: Checker::new(src),
            filter: src.event_types.clone(),
            sinks: src.sinks.iter().map(|n| handles[n].clone()).collect(),
            spool: spool.as_ref().and_then(|s| s.source(&src.name)),
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
            Route {
                source,
                outcomes: counters(&src.name),
                timer: metrics.request_timer(&src.name),
            },
        );
    }
    let ready = Arc::new(AtomicBool::new(false));
    Ok(Assembled {
        gateway: Gateway {
            routes,
            unknown: counters("none"),
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
            workers: Mutex::new(workers),
            workers_started: AtomicBool::new(false),
        },
        admin: Admin {
            metrics: metrics.clone(),
            dedupe,
            ready: ready.clone(),
            token: config.admin.token.clone(),
            failed: crate::deadletter::FailedStore::new(&config.admin.failed_dir),
            spool,
            sinks: built.into_iter().map(|(k, (_, s))| (k, s)).collect(),
        },
        pipeline: PipelineService {
            drainers: Mutex::new(drainers),
        },
        ready,
    })
}
