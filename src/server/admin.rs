//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and, with `admin.token`, the
//! failed-deliveries API (`GET /admin/failed`, `POST /admin/failed/{id}/replay`) and
//! `POST /admin/reload` (what SIGHUP does, `reload.rs`); the failed-deliveries routes are in
//! `failed_api.rs`. It reads the dedupe store, the spool and the health board; it never
//! touches the webhook path. Hand-written on Pingora's
//! session (see [`AdminApp`]) so that no request bytes are ever logged. Owns: the admin
//! routes and the token check. It uses the layers below, `crate::sender::replay`
//! for sender-mode entries among them.

use super::connections::{read_request, respond_and_finish};
use super::outcome::{error_body, respond, status_body, HttpResponse};
use crate::dedupe::Dedupe;
use crate::metrics::Metrics;
use crate::spool::Spool;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::Method;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, and, with `admin.token`, the
/// failed-deliveries routes `GET /admin/failed` and `POST /admin/failed/{id}/replay`.
pub struct Admin {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// For the dedupe gauges.
    pub dedupe: Arc<Dedupe>,
    /// Set once every listener accepts connections.
    pub ready: Arc<AtomicBool>,
    /// `admin.token`: the failed-deliveries API is off without one.
    pub token: Option<crate::secret::Secret>,
    /// The dead-letter store.
    pub failed: crate::deadletter::FailedStore,
    /// For `/readyz` and the spool gauges.
    pub spool: Option<Arc<Spool>>,
    /// Every configured sink as built now, for replays of spool dead letters.
    pub sinks: Arc<arc_swap::ArcSwap<HashMap<String, crate::pipeline::LiveSink>>>,
    /// `POST /admin/reload`.
    pub reloader: Arc<super::reload::Reloader>,
    /// The sinks of forward-mode sources (`ack = "forward"`): while one is down, its
    /// senders' requests fail, so `/readyz` says not ready. A down sink that only spooled
    /// sources use is reported as degraded (the spool absorbs it; `spool_full` covers the end).
    /// Swapped by a reload.
    pub forward_sinks: super::build::ForwardSinks,
}

impl Admin {
    /// Whether the request carries the admin bearer token (compared in constant time).
    fn authorized(&self, s: &ServerSession) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return false;
        };
        let given = s
            .get_header("authorization")
            .map(|v| v.as_bytes())
            .and_then(|v| {
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            })
            .unwrap_or(b"");
        // Fixed-size digests: the compare takes the same time whatever the lengths.
        use sha2::Digest;
        let (a, b) = (
            sha2::Sha256::digest(given),
            sha2::Sha256::digest(token.expose()),
        );
        bool::from(a.as_slice().ct_eq(b.as_slice()))
    }

    /// The refusal of an `/admin/...` request without the token, if it has none.
    pub(super) fn refuse_unauthorized(&self, s: &ServerSession) -> Option<HttpResponse> {
        if self.token.is_none() {
            return Some(respond(
                404,
                error_body("not_found", "the admin API is off (set admin.token)"),
                &[],
            ));
        }
        if !self.authorized(s) {
            return Some(respond(
                401,
                error_body("unauthorized", "a valid bearer token is required"),
                &[("www-authenticate", "Bearer".into())],
            ));
        }
        None
    }

    /// `POST /admin/reload`: what SIGHUP does, with the outcome in the answer (the detail
    /// names key paths and reasons, never a secret's value).
    async fn reload_route(&self, s: &ServerSession, method: &Method) -> HttpResponse {
        if let Some(refused) = self.refuse_unauthorized(s) {
            return refused;
        }
        if method != Method::POST {
            return respond(
                405,
                error_body("method_not_allowed", "use POST"),
                &[("allow", "POST".into())],
            );
        }
        let r = self.reloader.clone();
        match tokio::task::spawn_blocking(move || r.reload_logged("POST /admin/reload")).await {
            Ok(Ok(done)) => respond(
                200,
                serde_json::to_vec(&serde_json::json!({
                    "status": "reloaded",
                    "sources": done.sources,
                    "rebuilt": done.rebuilt,
                    "kept": done.kept,
                }))
                .expect("json"),
                &[],
            ),
            Ok(Err(e)) => respond(
                422,
                error_body("reload_failed", &format!("{e}; the running config stays")),
                &[],
            ),
            Err(_) => respond(500, error_body("reload_failed", "cancelled"), &[]),
        }
    }
}

/// The admin listener as a hand-written Pingora app, like the webhook listener: Pingora's
/// generic `HttpServer` logs the raw request buffer on a malformed header, which would put
/// the bearer token in the log. Here a bad request is dropped with a debug line that holds
/// no request bytes.
pub struct AdminApp {
    /// The routes.
    pub admin: Admin,
    /// Deadlines for request heads (the webhook listener's).
    pub head: super::connections::HeadDeadlines,
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !read_request(&mut s, shutdown, &self.head).await {
            return None;
        }
        let resp = self.admin.response(&mut s).await;
        let (parts, body) = resp.into_parts();
        let mut head =
            pingora::http::ResponseHeader::build(parts.status, Some(parts.headers.len()))
                .expect("valid status");
        for (k, v) in parts.headers.iter() {
            head.append_header(k.clone(), v.clone())
                .expect("valid header");
        }
        respond_and_finish(s, head, body.into()).await
    }
}

impl Admin {
    async fn response(&self, s: &mut ServerSession) -> HttpResponse {
        let h = s.req_header();
        let path = h.uri.path().to_string();
        if path == "/admin/failed" || path.starts_with("/admin/failed/") {
            let method = h.method.clone();
            return self.failed_routes(s, &method, &path).await;
        }
        if path == "/admin/reload" {
            let method = h.method.clone();
            return self.reload_route(s, &method).await;
        }
        if h.method != Method::GET && h.method != Method::HEAD {
            return respond(
                405,
                error_body("method_not_allowed", "use GET"),
                &[("allow", "GET, HEAD".into())],
            );
        }
        match h.uri.path() {
            "/metrics" => {
                self.metrics
                    .dedupe_entries
                    .set(self.dedupe.entries() as i64);
                let ev = self.dedupe.evictions();
                let seen = self.metrics.dedupe_evictions.get();
                if ev > seen {
                    self.metrics.dedupe_evictions.inc_by(ev - seen);
                }
                let errs = self.dedupe.errors();
                let seen = self.metrics.dedupe_errors.get();
                if errs > seen {
                    self.metrics.dedupe_errors.inc_by(errs - seen);
                }
                if let Some(spool) = &self.spool {
                    spool.observe(&self.metrics);
                }
                let body = self.metrics.render();
                http::Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len().to_string())
                    .body(body)
                    .expect("valid response")
            }
            "/healthz" => respond(200, status_body("ok"), &[]),
            "/readyz" => self.readiness().await,
            _ => respond(
                404,
                error_body("not_found", "admin paths: /metrics, /healthz, /readyz"),
                &[],
            ),
        }
    }
}

impl Admin {
    /// `/readyz`: 200 `{"status":"ready"}` (with `degraded` listing down spool-only sinks,
    /// if any), or 503 `{"status":"not_ready","failing":[...]}` naming every failing
    /// component: `spool_full`, `spool_unwritable`, `sink_down` (a sink of a forward-mode
    /// source, by the rule of [`crate::health`]), `redis_unreachable` (with
    /// `dedupe.on_error = "reject"`). 503 `{"status":"starting"}` before the listeners are up.
    async fn readiness(&self) -> HttpResponse {
        use serde_json::json;
        if !self.ready.load(Ordering::Acquire) {
            return respond(503, status_body("starting"), &[]);
        }
        let mut failing = Vec::new();
        let mut degraded = Vec::new();
        if let Some(spool) = &self.spool {
            if spool.is_full() {
                failing.push(json!({"component": "spool", "reason": "spool_full"}));
            }
            for source in spool.unwritable() {
                failing.push(
                    json!({"component": "spool", "reason": "spool_unwritable", "source": source}),
                );
            }
        }
        let now = std::time::Instant::now();
        for sink in self.metrics.health.down() {
            let (failures, lasted) = self
                .metrics
                .health
                .sink(&sink)
                .down_for(now)
                .unwrap_or_default();
            let entry = json!({
                "component": "sink",
                "reason": "sink_down",
                "sink": sink,
                "detail": format!("{failures} failed attempts in a row over {}s", lasted.as_secs()),
            });
            if self.forward_sinks.load().contains(&sink) {
                failing.push(entry);
            } else {
                degraded.push(entry);
            }
        }
        if let Err(e) = self.dedupe.probe().await {
            failing.push(json!({"component": "dedupe", "reason": "redis_unreachable", "detail": e.to_string()}));
        }
        let (status, mut body) = if failing.is_empty() {
            (200, json!({"status": "ready"}))
        } else {
            (503, json!({"status": "not_ready", "failing": failing}))
        };
        if !degraded.is_empty() {
            body["degraded"] = degraded.into();
        }
        respond(status, serde_json::to_vec(&body).expect("json"), &[])
    }
}
