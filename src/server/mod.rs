//! `vfgate serve`: the Pingora server. The webhook listener (`webhook.rs`) frames, limits
//! and reads each request and hands it to the ingest core ([`crate::ingest`]); its answer
//! becomes a reply through the one status table (`outcome.rs`). The forward-mode batchers run
//! on the listener's own runtime; the admin listener (`admin.rs`) serves metrics, health and
//! the failed-deliveries API; the spool drainers run as a background service. `assemble.rs`
//! wires it all from the config, `reload.rs` swaps a new config in on SIGHUP or
//! `POST /admin/reload`, `shutdown.rs` owns readiness, signals and the exit.
//!
//! This module may use every module below it; nothing but `cmd` may import it.

pub mod admin;
pub mod assemble;
pub mod build;
pub mod connections;
pub mod failed_api;
pub mod outcome;
pub mod rejections;
pub mod reload;
pub mod shutdown;
pub mod webhook;

pub use assemble::{assemble, Assembled, ServeError};
pub use outcome::Outcome;

use crate::config::Config;
use admin::AdminApp;
use connections::{HeadDeadlines, Limited};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use webhook::WebhookApp;

/// Runs the gateway in the foreground until SIGTERM/SIGINT and the grace period; `config`
/// was read from `path`, which SIGHUP and `POST /admin/reload` read again.
pub fn run(config: Config, path: &std::path::Path) -> Result<(), ServeError> {
    let started = Instant::now();
    let hup = shutdown::watch_hup().map_err(|e| ServeError::Signal(e.to_string()))?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // Pingora retries a failed bind forever, and the readiness probe would then reach whoever
    // holds the port: refuse to start instead, naming the address.
    let binds = config
        .server
        .listen
        .iter()
        .map(|a| ("server.listen", *a))
        .chain([("admin.listen", config.admin.listen)]);
    for (key, addr) in binds {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(ServeError::Bind {
                key,
                addr,
                reason: e.to_string(),
            });
        }
    }
    let parts = assemble(config.clone(), path)?;
    let _ = hup.set(parts.reloader.clone());
    let in_flight = parts.gateway.metrics.in_flight.clone();

    let grace = config.server.grace_period;
    let run_dir = std::env::temp_dir();
    let pid = std::process::id();
    let conf = ServerConf {
        threads: config.server.threads,
        // One single-threaded runtime per worker thread, each connection on one of them
        // (Pingora's NoSteal): with `threads = 2` on two shared cores this served 8-15 %
        // more requests per CPU-second than a work-stealing runtime (no stealing, no
        // cross-thread wake-ups for a connection's own tasks); the same with one thread.
        work_stealing: false,
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: run_dir
            .join(format!("vfgate-{pid}.pid"))
            .display()
            .to_string(),
        upgrade_sock: run_dir
            .join(format!("vfgate-{pid}.sock"))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut options = pingora::apps::HttpServerOptions::default();
    options.keepalive_request_limit = Some(100_000);
    let head = HeadDeadlines {
        header: config.server.header_timeout,
        keepalive: config.server.keepalive_timeout,
        closed: parts.gateway.metrics.connections_closed.clone(),
    };
    let app = WebhookApp {
        gateway: parts.gateway,
        options,
        head: head.clone(),
    };
    let refused = app.gateway.metrics.connections_refused.clone();
    let app = Limited::new(Arc::new(app), config.server.max_connections, refused);
    let mut gw = Service::new("vfgate webhooks".to_string(), app);
    for addr in &config.server.listen {
        let a = addr.to_string();
        match &config.server.tls {
            None => gw.add_tcp(&a),
            Some((cert, key)) => {
                let settings = pingora::listeners::tls::TlsSettings::intermediate(
                    &cert.display().to_string(),
                    &key.display().to_string(),
                )
                .map_err(|e| ServeError::Tls(e.to_string()))?;
                gw.add_tls_with_settings(&a, None, settings);
            }
        }
    }
    gw.threads = Some(config.server.threads);
    let mut admin = Service::new(
        "vfgate admin".to_string(),
        AdminApp {
            admin: parts.admin,
            head,
        },
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    let mut bg = GenBackgroundService::new("vfgate spool".to_string(), Arc::new(parts.pipeline));
    bg.threads = Some(1);
    server.add_service(gw);
    server.add_service(admin);
    server.add_service(bg);

    // Ready once every listener accepts connections.
    let mut listening = config.server.listen.clone();
    listening.push(config.admin.listen);
    shutdown::spawn_ready_probe(&listening, parts.ready.clone(), started);
    let stopping = Arc::new(AtomicBool::new(false));
    shutdown::spawn_exit_when_drained(stopping.clone(), in_flight, grace);

    server.run(RunArgs {
        shutdown_signal: Box::new(shutdown::Signals { stopping }),
    });
    Ok(())
}
