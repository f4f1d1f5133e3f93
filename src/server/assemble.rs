//! Builds the running gateway from a validated [`Config`]: the dedupe store, the spool, one
//! built sink and batcher per `[sink.*]`, one drainer per spooled (source, sink), the routes
//! of the webhook listener and the admin state. Nothing runs yet: `server::run` starts it.
//! This is the only place that wires modules together; it holds no request logic.

use super::admin::Admin;
pub use super::build::ServeError;
use super::build::{
    build_routes, build_sinks, forward_sinks, init_metrics, outcome_counters, ForwardSinks,
};
use super::rejections::Rejections;
use super::reload::{Reloader, Swapped};
use super::webhook::{Gateway, Limits, Routes, Workers};
use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::spool::drain::{self, Drainer};
use crate::spool::Spool;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
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
    // What this process serves, in one line (a sink's destination never holds a credential
    // or a query string).
    let destinations: Vec<String> = config
        .sinks
        .iter()
        .map(|s| {
            let live = sinks.by_name[&s.common.name].live.load();
            format!("{} {}", s.common.name, live.sink.destination())
        })
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.listen_summary(),
        sources = %config.sources_summary(),
        sinks = %destinations.join(", "),
        dedupe = %config.dedupe_summary(),
        "vfgate starting"
    );
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
        unknown: outcome_counters(&metrics, "none", "none"),
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
