//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and, with `admin.token`, the
//! failed-deliveries API (`GET /admin/failed`, `POST /admin/failed/{id}/replay`) and
//! `POST /admin/reload` (what SIGHUP does, `reload.rs`). It reads
//! the dedupe store, the spool and the dead-letter store and replays through the sinks
//! `assemble.rs` built; it never touches the webhook path. Hand-written on Pingora's
//! session (see [`AdminApp`]) so that no request bytes are ever logged. Owns: the admin
//! routes and the token check. It uses the layers below, `crate::sender::replay`
//! for sender-mode entries among them.

use super::outcome::{error_body, respond, status_body, HttpResponse};
use super::webhook::{read_request, respond_and_finish};
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
    fn refuse_unauthorized(&self, s: &ServerSession) -> Option<HttpResponse> {
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

    async fn failed_routes(&self, s: &ServerSession, method: &Method, path: &str) -> HttpResponse {
        if let Some(refused) = self.refuse_unauthorized(s) {
            return refused;
        }
        let rest = path.strip_prefix("/admin/failed").unwrap_or_default();
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        match (method, segments.as_slice()) {
            (&Method::GET, [] | [""]) => self.list_failed(s).await,
            (&Method::POST, ["", "replay"]) => respond(
                400,
                error_body("invalid_id", "the entry id is empty"),
                &[],
            ),
            (&Method::POST, [id, "replay"]) => self.replay_failed(id).await,
            _ => respond(
                404,
                error_body(
                    "not_found",
                    "admin routes: GET /admin/failed[?limit=N&after=ID], POST /admin/failed/{id}/replay, POST /admin/reload",
                ),
                &[],
            ),
        }
    }

    /// `GET /admin/failed?limit=&after=`: one page of entries, oldest first (file I/O on a
    /// blocking thread, not the admin runtime).
    async fn list_failed(&self, s: &ServerSession) -> HttpResponse {
        let mut limit = 100usize;
        let mut after: Option<String> = None;
        for pair in s.req_header().uri.query().unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("limit", v)) => match v.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => limit = n,
                    _ => {
                        return respond(
                            400,
                            error_body("invalid_query", "limit must be a number from 1 to 1000"),
                            &[],
                        )
                    }
                },
                Some(("after", v)) => after = Some(v.to_string()),
                _ => {}
            }
        }
        let store = self.failed.clone();
        let listing =
            tokio::task::spawn_blocking(move || store.list_page(after.as_deref(), limit)).await;
        match listing {
            Ok(Ok(l)) => {
                let next = if l.more {
                    l.entries.last().map(|e| e.id.clone())
                } else {
                    None
                };
                respond(
                    200,
                    serde_json::to_vec(&serde_json::json!({
                        "entries": l.entries,
                        "skipped": l.skipped,
                        "next": next,
                    }))
                    .expect("json"),
                    &[],
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "admin: cannot list the failed-deliveries store");
                respond(
                    500,
                    error_body("store_error", "the store cannot be read (see the log)"),
                    &[],
                )
            }
            Err(_) => respond(500, error_body("store_error", "listing was cancelled"), &[]),
        }
    }

    /// `POST /admin/failed/{id}/replay`: a spool dead letter goes to its sink only, straight
    /// through it; any other entry to its recorded target. The entry is claimed first (see
    /// [`crate::deadletter`]): a replay of it already in progress answers 409
    /// `replay_in_progress`, so only one caller is ever told `delivered`.
    async fn replay_failed(&self, id: &str) -> HttpResponse {
        use crate::deadletter::StoreError;
        let (store, key) = (self.failed.clone(), id.to_string());
        let claim = match tokio::task::spawn_blocking(move || store.claim(&key)).await {
            Ok(Ok(c)) => c,
            Ok(Err(StoreError::NotFound(_))) => {
                return respond(
                    404,
                    error_body("not_found", "no failed delivery with that id"),
                    &[],
                )
            }
            Ok(Err(StoreError::InProgress(_))) => {
                return respond(
                    409,
                    error_body(
                        "replay_in_progress",
                        "another replay of this entry is in progress",
                    ),
                    &[],
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "admin: cannot read a failed delivery");
                return respond(
                    500,
                    error_body("store_error", "the entry cannot be read (see the log)"),
                    &[],
                );
            }
            Err(_) => return respond(500, error_body("store_error", "cancelled"), &[]),
        };
        if let Some(sink) = claim.entry().sink_route().map(|(_, s)| s.to_string()) {
            let built = self.sinks.load().get(&sink).map(|l| l.load().sink.clone());
            let Some(built) = built else {
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || claim.release()).await {
                    tracing::error!(error = %e, "admin: cannot hand a claimed entry back");
                }
                return respond(
                    409,
                    error_body(
                        "unknown_sink",
                        "the entry's sink is not in the running config; entry kept",
                    ),
                    &[],
                );
            };
            return match crate::spool::drain::replay_to_sink(claim, &*built, &self.metrics).await {
                Ok(r) if r.delivered => respond(
                    200,
                    serde_json::to_vec(&serde_json::json!({"status": "delivered", "id": id, "sink": sink, "upstream_status": r.status})).expect("json"),
                    &[],
                ),
                Ok(r) => respond(
                    502,
                    error_body("upstream_error", &format!("sink {sink} did not take it (status {}); entry kept", r.status)),
                    &[],
                ),
                Err(e) => {
                    tracing::error!(error = %e, "admin: replay failed");
                    respond(500, error_body("replay_error", "the entry cannot be replayed (see the log)"), &[])
                }
            };
        }
        match crate::sender::replay::replay_entry(claim, None, &[], crate::sender::DEFAULT_TIMEOUT, &crate::config::RawClientTls::default()).await {
            Ok(a) if a.ok() => respond(200, serde_json::to_vec(&serde_json::json!({"status": "delivered", "id": id, "upstream_status": a.status})).expect("json"), &[]),
            Ok(a) => respond(502, error_body("upstream_error", &format!("replay failed: {}; entry kept", a.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()))), &[]),
            Err(e) => {
                tracing::error!(error = %e, "admin: replay failed");
                respond(500, error_body("replay_error", "the entry cannot be replayed (see the log)"), &[])
            }
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
