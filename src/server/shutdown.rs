//! Start-up and shutdown around Pingora's server: the readiness probe that flips `/readyz`
//! once every listener accepts connections, the SIGTERM/SIGINT watch, and the exit as soon
//! as nothing is in flight (Pingora alone would sleep the whole grace period), and the SIGHUP
//! watch that asks `reload.rs` to reload. It owns process lifetime and signals only; it
//! knows no request or sink.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SIGTERM and SIGINT both stop gracefully: stop accepting, finish in-flight requests.
pub struct Signals {
    /// Set when a stop signal arrives.
    pub stopping: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
        }
        self.stopping.store(true, Ordering::Release);
        ShutdownSignal::GracefulTerminate
    }
}

/// Where a SIGHUP goes once the gateway is assembled.
pub type HupTarget = Arc<std::sync::OnceLock<Arc<super::reload::Reloader>>>;

/// Installs the SIGHUP handler now (before it, a SIGHUP would end the process) on a thread of
/// its own; each SIGHUP reloads through the reloader set in the returned cell later (one
/// during start-up is logged and ignored: the config being started is the file's).
pub fn watch_hup() -> std::io::Result<HupTarget> {
    let target: HupTarget = Arc::default();
    let t = target.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vfgate-sighup".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                while hup.recv().await.is_some() {
                    match t.get() {
                        // Reading files and building sinks may block: not on a worker
                        // thread of the listeners, but here, where nothing else runs.
                        Some(r) => {
                            let _ = r.reload_logged("SIGHUP");
                        }
                        None => tracing::warn!("SIGHUP during start-up: ignored"),
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the SIGHUP thread ended"))??;
    Ok(target)
}

/// The address a local probe connects to for a listen address (`0.0.0.0` → loopback).
fn probe_addr(a: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut a = a;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// Sets `ready` once every address in `listen` accepts a TCP connection (for at most 30 s),
/// and logs the start-up time.
pub fn spawn_ready_probe(listen: &[SocketAddr], ready: Arc<AtomicBool>, started: Instant) {
    let probes: Vec<SocketAddr> = listen.iter().copied().map(probe_addr).collect();
    std::thread::Builder::new()
        .name("vfgate-ready".into())
        .spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if probes.iter().all(|a| {
                    std::net::TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok()
                }) {
                    ready.store(true, Ordering::Release);
                    tracing::info!(
                        startup_ms = started.elapsed().as_millis() as u64,
                        "vfgate ready"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            tracing::error!("listeners did not come up within 30s");
        })
        .expect("spawn thread");
}

/// Once `stopping` is set, exits the process as soon as `in_flight` reaches zero (after a
/// short pause so that the listeners have closed), or when `grace` has passed.
pub fn spawn_exit_when_drained(
    stopping: Arc<AtomicBool>,
    in_flight: prometheus::IntGauge,
    grace: Duration,
) {
    std::thread::Builder::new()
        .name("vfgate-drain".into())
        .spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_millis(100));
            loop {
                if in_flight.get() == 0 {
                    tracing::info!(
                        drain_ms = t0.elapsed().as_millis() as u64,
                        "drained; exiting"
                    );
                    std::process::exit(0);
                }
                if t0.elapsed() >= grace {
                    tracing::warn!(in_flight = in_flight.get(), "grace period over; exiting");
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .expect("spawn thread");
}
