//! The webhook listener: HTTP framing, routing, limits and the reply. A request is routed
//! by path, refused early for its method, its declared or actual body size, a slow body or
//! too many bodies held at once, and otherwise read whole and handed to the ingest core
//! ([`crate::ingest`]); whatever comes back becomes a reply through `outcome.rs`, and is
//! counted there. This file owns bytes on the wire and the connection's keep-alive; it does
//! not verify, dedupe or deliver anything itself (Okta's verification `GET` is checked by the
//! source's checker, called from here because it has no body).

use super::connections::{read_request, respond_and_finish, HeadDeadlines};
use super::outcome::{Outcome, Reply};
use super::rejections::{self, Peer, Rejections};
use crate::config::Handshake;
use crate::ingest::{Ingest, Ingested, Source};
use crate::metrics::Metrics;
use crate::pipeline::SinkWorker;
use crate::verify::{self, RequestParts};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::Method;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use prometheus::{Histogram, IntCounter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A webhook path: its source and its pre-resolved metric handles.
pub struct Route {
    /// The source the ingest core runs.
    pub source: Source,
    /// `vfgate_requests_total{source, scheme, outcome}`, indexed by [`Outcome`].
    pub outcomes: Vec<IntCounter>,
    /// `vfgate_request_duration_seconds{source}`.
    pub timer: Histogram,
    /// The log of this source's refusals.
    pub rejections: Rejections,
    /// `vfgate_received_bytes_total{source}`.
    pub received: IntCounter,
}

/// Body limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.max_body_bytes`.
    pub max_body: u64,
    /// `server.body_timeout`.
    pub body_timeout: Duration,
    /// `server.max_inflight_body_bytes`.
    pub max_inflight: u64,
}

/// The sources by path, as one value a config reload swaps whole: a request keeps the set it
/// started with.
pub type Routes = Arc<arc_swap::ArcSwap<HashMap<String, Arc<Route>>>>;

/// The forward-mode batchers not started yet: started on the listener's runtime by the next
/// request, so that with one worker thread handing an event to its sink and getting the
/// answer back never crosses threads. With several (one single-threaded runtime each), the
/// batchers run on the thread of that request, and events from the others cross to it. A
/// reload adds the batchers of the sinks it built.
#[derive(Default)]
pub struct Workers {
    queue: Mutex<Vec<SinkWorker>>,
    pending: AtomicBool,
}

impl Workers {
    /// Queues `workers` to be started by the next request.
    pub fn add(&self, workers: Vec<SinkWorker>) {
        let mut q = self.queue.lock();
        q.extend(workers);
        self.pending.store(!q.is_empty(), Ordering::Release);
    }

    /// Starts the queued batchers on the calling runtime.
    fn start_pending(&self, metrics: &Arc<Metrics>) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        let mut q = self.queue.lock();
        for worker in q.drain(..) {
            tokio::spawn(worker.run(metrics.clone()));
        }
        self.pending.store(false, Ordering::Release);
    }
}

/// Shared state of the webhook listener.
pub struct Gateway {
    /// Sources by path (swapped by a reload).
    pub routes: Routes,
    /// The request counters of paths no source serves (`source="none"`).
    pub unknown: Vec<IntCounter>,
    /// The log of refusals at paths no source serves.
    pub unknown_rejections: Rejections,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The transport-free core.
    pub ingest: Ingest,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Body limits.
    pub limits: Limits,
    /// Unverified body bytes held now (against `limits.max_inflight`).
    pub inflight_bytes: AtomicU64,
    /// The forward-mode batchers waiting to be started.
    pub workers: Arc<Workers>,
}

/// Unverified body bytes this request holds against `server.max_inflight_body_bytes`,
/// given back when dropped (once the signature is checked, or the request ends).
struct BodyPermit<'a> {
    held: &'a std::sync::atomic::AtomicU64,
    bytes: u64,
}

impl BodyPermit<'_> {
    /// Takes `n` more bytes, unless that would pass `cap`.
    fn take(&mut self, n: u64, cap: u64) -> bool {
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        if before + n > cap {
            self.held.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for BodyPermit<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Gateway {
    /// Reads the body, enforcing the cap from Content-Length and while reading.
    async fn read_body(
        &self,
        s: &mut ServerSession,
        permit: &mut BodyPermit<'_>,
    ) -> Result<Bytes, (Outcome, String)> {
        let overloaded = || {
            (
                Outcome::Overloaded,
                "too many request bodies are being received at once; retry shortly".to_string(),
            )
        };
        let too_large = || {
            (
                Outcome::BodyTooLarge,
                format!("body exceeds {} bytes", self.limits.max_body),
            )
        };
        let declared = s
            .get_header("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body) {
            return Err(too_large());
        }
        // A declared length is taken whole before reading, so that slow senders cannot hold
        // more than the cap between them.
        if let Some(n) = declared {
            if !permit.take(n, self.limits.max_inflight) {
                return Err(overloaded());
            }
        }
        if s.get_header("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            // Pingora would mark the connection close because the body is not read yet when
            // the interim response goes out; that rule is for final responses only.
            s.set_close_on_response_before_downstream_finish(false);
            let sent = s.write_continue_response().await;
            s.set_close_on_response_before_downstream_finish(true);
            sent.map_err(|e| {
                (
                    Outcome::BadRequest,
                    format!("cannot answer 100-continue: {e}"),
                )
            })?;
        }
        // Keep the first chunk as-is: most bodies arrive in one, and then nothing is copied.
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut total: u64 = 0;
        loop {
            match s.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    if total > permit.bytes
                        && !permit.take(total - permit.bytes, self.limits.max_inflight)
                    {
                        s.set_keepalive(None);
                        return Err(overloaded());
                    }
                    if total > self.limits.max_body {
                        Self::discard_rest(s, self.limits.max_body.saturating_mul(4)).await;
                        return Err(too_large());
                    }
                    match (&mut first, &mut more) {
                        (None, None) => first = Some(chunk),
                        (Some(f), None) => {
                            let mut m = BytesMut::with_capacity(
                                declared.unwrap_or(total * 2).min(self.limits.max_body) as usize,
                            );
                            m.extend_from_slice(f);
                            m.extend_from_slice(&chunk);
                            more = Some(m);
                        }
                        (_, Some(m)) => m.extend_from_slice(&chunk),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err((
                        Outcome::BadRequest,
                        format!("cannot read the request body: {e}"),
                    ))
                }
            }
        }
        Ok(match (first, more) {
            (_, Some(m)) => m.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        })
    }

    /// Reads and drops what is left of an oversized body, for at most one second and `cap`
    /// bytes, so that the client reads our 413 instead of a connection reset. Keep-alive
    /// stays on only if the body was fully read.
    async fn discard_rest(s: &mut ServerSession, cap: u64) {
        let mut seen = 0u64;
        let drained = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(Some(chunk)) = s.read_request_body().await {
                seen += chunk.len() as u64;
                if seen > cap {
                    return false;
                }
            }
            true
        })
        .await;
        if drained != Ok(true) || !s.is_body_done() {
            s.set_keepalive(None);
        }
    }

    /// One request: route, method, body, then the ingest core; the reply is counted, and a
    /// refusal noted in the source's refusal log.
    async fn handle(&self, s: &mut ServerSession) -> Reply {
        let route = self.routes.load().get(s.req_header().uri.path()).cloned();
        // After the route is loaded: a reload queues its batchers before it swaps the routes,
        // so a request that got a new route starts them before it hands an event on.
        self.workers.start_pending(&self.metrics);
        let Some(route) = route else {
            s.set_keepalive(None);
            let reply = Reply::refused(
                Outcome::NotFound,
                "no webhook source is configured at this path",
            );
            self.note_refusal(s, &self.unknown_rejections, reply.outcome);
            return count(&self.unknown, reply);
        };
        let _timer = route.timer.start_timer();
        let reply = self.handle_route(s, &route).await;
        self.note_refusal(s, &route.rejections, reply.outcome);
        count(&route.outcomes, reply)
    }

    /// Notes a refused request (a 4xx other than `in_flight`, which is a sender's normal
    /// retry racing its first attempt).
    fn note_refusal(&self, s: &ServerSession, log: &Rejections, outcome: Outcome) {
        if outcome.status() / 100 != 4 || outcome == Outcome::InFlight {
            return;
        }
        let addr = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let forwarded_for = rejections::trusted(addr, &self.trusted_proxies)
            .then(|| s.get_header("x-forwarded-for").map(|v| v.as_bytes()))
            .flatten();
        let peer = Peer {
            addr,
            forwarded_for,
        };
        log.note(outcome, peer, std::time::Instant::now());
    }

    /// Counts and logs a handshake answered for `route`'s source.
    fn note_handshake(&self, route: &Route, kind: Handshake) {
        let source = route.source.name.as_str();
        self.metrics
            .handshakes
            .with_label_values(&[source, kind.as_str()])
            .inc();
        tracing::info!(
            source,
            kind = kind.as_str(),
            "answered the sender's handshake"
        );
    }

    /// Counts a verification refusal of `route`'s source by its reason.
    fn note_rejection(&self, route: &Route, r: &crate::verify::Reject) {
        self.metrics
            .rejections
            .with_label_values(&[route.source.name.as_str(), r.reason()])
            .inc();
    }

    async fn handle_route(&self, s: &mut ServerSession, route: &Route) -> Reply {
        if s.req_header().method == Method::GET {
            // Whatever the answer, a GET's body (if it had one) is not read: the connection
            // is not reused, as for any other refused method.
            s.set_keepalive(None);
            let parts = request_parts(s.req_header());
            let now = crate::time::now_ms();
            match route.source.checker.okta_verification(parts, now) {
                Some(Ok((secret, body))) => {
                    route.source.secret_matches[secret].inc();
                    self.note_handshake(route, Handshake::Okta);
                    return Ingested::Handshake(Handshake::Okta, body).into();
                }
                Some(Err(r)) => {
                    self.note_rejection(route, &r);
                    return Ingested::Rejected(r).into();
                }
                None => {}
            }
        }
        if s.req_header().method != Method::POST {
            s.set_keepalive(None);
            return Reply::refused(
                Outcome::MethodNotAllowed,
                "webhooks are delivered with POST",
            );
        }
        let mut permit = BodyPermit {
            held: &self.inflight_bytes,
            bytes: 0,
        };
        let timeout = self.limits.body_timeout;
        let read = tokio::time::timeout(timeout, self.read_body(s, &mut permit)).await;
        let read = read.unwrap_or_else(|_| {
            Err((
                Outcome::BodyTimeout,
                format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(timeout)
                ),
            ))
        });
        let body = match read {
            Ok(b) => {
                route.received.inc_by(b.len() as u64);
                b
            }
            Err((o, detail)) => {
                // An oversized body was drained (bounded) by read_body; anything else closes.
                if o != Outcome::BodyTooLarge || !s.is_body_done() {
                    s.set_keepalive(None);
                }
                return Reply::refused(o, &detail);
            }
        };
        let parts = request_parts(s.req_header());
        let now = crate::time::now_ms();
        let ingested = self
            .ingest
            .handle(&route.source, parts, body, now, permit)
            .await;
        match &ingested {
            Ingested::Handshake(kind, _) => self.note_handshake(route, *kind),
            Ingested::Rejected(r) => self.note_rejection(route, r),
            _ => {}
        }
        ingested.into()
    }
}

/// The headers verification reads, borrowed from the request head.
fn request_parts(h: &pingora::http::RequestHeader) -> RequestParts<'_> {
    RequestParts {
        signature: h
            .headers
            .get(verify::SIGNATURE_HEADER)
            .map(|v| v.as_bytes()),
        version: h.headers.get(verify::VERSION_HEADER).map(|v| v.as_bytes()),
        content_type: h.headers.get("content-type").map(|v| v.as_bytes()),
        headers: Some(&h.headers),
    }
}

/// Counts `reply` under its outcome and passes it on.
fn count(counters: &[IntCounter], reply: Reply) -> Reply {
    counters[reply.outcome as usize].inc();
    reply
}

/// The webhook listener as a Pingora HTTP app. It is `HttpServerApp` rather than `ServeHttp`
/// so that a request counts as in flight until its response is written and the connection
/// finished: graceful shutdown waits for exactly that.
pub struct WebhookApp {
    /// Shared state.
    pub gateway: Gateway,
    /// Pingora's HTTP options (keep-alive request limit).
    pub options: pingora::apps::HttpServerOptions,
    /// Deadlines for request heads.
    pub head: HeadDeadlines,
}

#[async_trait]
impl HttpServerApp for WebhookApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !read_request(&mut s, shutdown, &self.head).await {
            return None;
        }
        let metrics = &self.gateway.metrics;
        metrics.in_flight.inc();
        struct Dec<'a>(&'a prometheus::IntGauge);
        impl Drop for Dec<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let _dec = Dec(&metrics.in_flight);
        let (head, body) = self.gateway.handle(&mut s).await.into_parts();
        respond_and_finish(s, head, body).await
    }

    fn server_options(&self) -> Option<&pingora::apps::HttpServerOptions> {
        Some(&self.options)
    }
}
