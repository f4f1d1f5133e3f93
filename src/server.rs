//! `vfgate serve`: the Pingora server. The webhook listener (`ServeHttp`) routes, limits,
//! verifies, dedupes and hands events to the pipeline, whose batchers run on the listener's
//! own runtime; the admin listener serves `/metrics`, `/healthz`, `/readyz` and the admin
//! API; the spool drainers run as a background service.
//!
//! Every rejection goes through [`Outcome`]: one place maps it to status, error code and
//! metric label.

use crate::config::Config;
use crate::dedupe::{Begin, Dedupe, DedupeKey};
use crate::metrics::Metrics;
use crate::pipeline::{self, Delivery, FailKind, SinkHandle, SinkWorker};
use crate::spool::drain::{self, Drainer};
use crate::spool::{Spool, SpoolError};
use crate::verify::{self, Checker, Reject, RequestParts};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::Method;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use prometheus::{Histogram, IntCounter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type HttpResponse = http::Response<Vec<u8>>;

/// How a webhook request ended: status, error code, metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// 200 accepted.
    Accepted,
    /// 200 duplicate.
    Duplicate,
    /// 200 filtered.
    Filtered,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 413.
    BodyTooLarge,
    /// 400: the body could not be read (client error or timeout).
    BadRequest,
    /// 401.
    InvalidSignature,
    /// 400.
    UnsupportedVersion,
    /// 415.
    UnsupportedMediaType,
    /// 400.
    InvalidEvent,
    /// 400.
    StaleEvent,
    /// 409.
    InFlight,
    /// 502.
    UpstreamError,
    /// 503.
    UpstreamUnavailable,
    /// 504.
    UpstreamTimeout,
    /// 503: the dedupe store failed.
    DedupeUnavailable,
    /// 202: written to the spool (`ack = "spool"`).
    Spooled,
    /// 503: `spool.max_bytes` reached.
    SpoolFull,
    /// 503: the spool could not be written.
    SpoolError,
    /// 408: the body did not arrive within `server.body_timeout`.
    BodyTimeout,
    /// 503: `dedupe.max_entries` reached with `on_full = "reject"`.
    DedupeFull,
    /// 503: `server.max_inflight_body_bytes` of unverified bodies are already held.
    Overloaded,
}

impl Outcome {
    /// Every outcome, in discriminant order.
    pub const ALL: [Outcome; 23] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Filtered,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::BodyTooLarge,
        Outcome::BadRequest,
        Outcome::InvalidSignature,
        Outcome::UnsupportedVersion,
        Outcome::UnsupportedMediaType,
        Outcome::InvalidEvent,
        Outcome::StaleEvent,
        Outcome::InFlight,
        Outcome::UpstreamError,
        Outcome::UpstreamUnavailable,
        Outcome::UpstreamTimeout,
        Outcome::DedupeUnavailable,
        Outcome::Spooled,
        Outcome::SpoolFull,
        Outcome::SpoolError,
        Outcome::BodyTimeout,
        Outcome::Overloaded,
        Outcome::DedupeFull,
    ];

    /// Metric label and error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Filtered => "filtered",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BadRequest => "bad_request",
            Outcome::InvalidSignature => "invalid_signature",
            Outcome::UnsupportedVersion => "unsupported_version",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::InvalidEvent => "invalid_event",
            Outcome::StaleEvent => "stale_event",
            Outcome::InFlight => "in_flight",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::DedupeUnavailable => "dedupe_unavailable",
            Outcome::Spooled => "spooled",
            Outcome::SpoolFull => "spool_full",
            Outcome::SpoolError => "spool_error",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::Overloaded => "overloaded",
            Outcome::DedupeFull => "dedupe_full",
        }
    }

    /// HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Accepted | Outcome::Duplicate | Outcome::Filtered => 200,
            Outcome::Spooled => 202,
            Outcome::NotFound => 404,
            Outcome::MethodNotAllowed => 405,
            Outcome::BodyTooLarge => 413,
            Outcome::BadRequest
            | Outcome::UnsupportedVersion
            | Outcome::InvalidEvent
            | Outcome::StaleEvent => 400,
            Outcome::InvalidSignature => 401,
            Outcome::UnsupportedMediaType => 415,
            Outcome::InFlight => 409,
            Outcome::UpstreamError => 502,
            Outcome::BodyTimeout => 408,
            Outcome::UpstreamUnavailable
            | Outcome::DedupeUnavailable
            | Outcome::SpoolFull
            | Outcome::SpoolError
            | Outcome::Overloaded
            | Outcome::DedupeFull => 503,
            Outcome::UpstreamTimeout => 504,
        }
    }

    fn from_reject(r: &Reject) -> Outcome {
        match r {
            Reject::InvalidSignature => Outcome::InvalidSignature,
            Reject::UnsupportedVersion(_) => Outcome::UnsupportedVersion,
            Reject::UnsupportedMediaType(_) => Outcome::UnsupportedMediaType,
            Reject::InvalidEvent(_) => Outcome::InvalidEvent,
            Reject::StaleEvent(_) => Outcome::StaleEvent,
        }
    }
}

/// Builds a JSON response with Content-Length (Pingora closes the connection without one).
fn respond(status: u16, body: Vec<u8>, extra: &[(&str, String)]) -> HttpResponse {
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string());
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(body).expect("static header names are valid")
}

fn status_body(status: &str) -> Vec<u8> {
    format!(r#"{{"status":"{status}"}}"#).into_bytes()
}

/// A webhook response: its outcome (status and metric), JSON body and at most one extra
/// header (`allow` or `retry-after`). Written straight into Pingora's response header, with
/// the common bodies static, so that an accepted event allocates nothing to be answered.
struct Reply {
    outcome: Outcome,
    body: Bytes,
    extra: Option<(http::header::HeaderName, http::HeaderValue)>,
}

impl Reply {
    /// The response header and body to write.
    fn into_parts(self) -> (pingora::http::ResponseHeader, Bytes) {
        use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
        let mut h = pingora::http::ResponseHeader::build_no_case(self.outcome.status(), Some(3))
            .expect("outcome statuses are valid");
        let json = http::HeaderValue::from_static("application/json");
        h.insert_header(CONTENT_TYPE, json).expect("static header");
        h.insert_header(CONTENT_LENGTH, http::HeaderValue::from(self.body.len()))
            .expect("a number is a valid header value");
        if let Some((k, v)) = self.extra {
            h.insert_header(k, v).expect("valid header");
        }
        (h, self.body)
    }
}

/// `retry-after: <secs>`.
fn retry_after_header(secs: u64) -> Option<(http::header::HeaderName, http::HeaderValue)> {
    Some((http::header::RETRY_AFTER, http::HeaderValue::from(secs)))
}

/// The bodies of the webhook's 2xx answers, built once.
const ACCEPTED: &[u8] = br#"{"status":"accepted"}"#;
const DUPLICATE: &[u8] = br#"{"status":"duplicate"}"#;
const FILTERED: &[u8] = br#"{"status":"filtered"}"#;

fn error_body(code: &str, detail: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        detail: &'a str,
    }
    serde_json::to_vec(&ErrorBody {
        error: code,
        detail,
    })
    .expect("json of strings")
}

/// A source at run time: config, checker, sink handles, pre-resolved metric handles.
struct SourceRt {
    name: String,
    checker: Checker,
    filter: crate::config::TypeFilter,
    sinks: Vec<SinkHandle>,
    /// `ack = "spool"`: the source's log.
    spool: Option<Arc<crate::spool::SourceLog>>,
    outcomes: Vec<IntCounter>,
    secret_matches: Vec<IntCounter>,
    timer: Histogram,
}

/// Shared state of the webhook listener.
pub struct Gateway {
    routes: HashMap<String, SourceRt>,
    unknown: Vec<IntCounter>,
    dedupe: Arc<Dedupe>,
    metrics: Arc<Metrics>,
    max_body: u64,
    body_timeout: Duration,
    /// Unverified body bytes held now, and the cap.
    inflight_bytes: std::sync::atomic::AtomicU64,
    max_inflight: u64,
    spool: Option<Arc<Spool>>,
    /// The forward-mode batchers, started on the listener's runtime by the first request, so
    /// that handing an event to its sink and getting the answer back never crosses threads
    /// or runtimes.
    workers: Mutex<Vec<SinkWorker>>,
    workers_started: AtomicBool,
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

/// Marks an id in flight until committed; releases it if dropped first (a failed or
/// cancelled request must not block the sender's retry).
struct InFlightGuard<'a> {
    dedupe: &'a Arc<Dedupe>,
    key: DedupeKey,
    armed: bool,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.dedupe.release_now(self.key);
        }
    }
}

use crate::event::now_ms;

impl Gateway {
    fn start_workers(&self) {
        let mut w = self.workers.lock();
        for worker in w.drain(..) {
            tokio::spawn(worker.run(self.metrics.clone()));
        }
        self.workers_started.store(true, Ordering::Release);
    }

    fn finish(
        &self,
        counters: &[IntCounter],
        outcome: Outcome,
        body: Bytes,
        extra: Option<(http::header::HeaderName, http::HeaderValue)>,
    ) -> Reply {
        counters[outcome as usize].inc();
        Reply {
            outcome,
            body,
            extra,
        }
    }

    fn reject(&self, counters: &[IntCounter], o: Outcome, detail: &str) -> Reply {
        let extra = match o {
            Outcome::MethodNotAllowed => {
                Some((http::header::ALLOW, http::HeaderValue::from_static("POST")))
            }
            Outcome::Overloaded => retry_after_header(1),
            _ => None,
        };
        self.finish(counters, o, error_body(o.as_str(), detail).into(), extra)
    }

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
                format!("body exceeds {} bytes", self.max_body),
            )
        };
        let declared = s
            .get_header("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        // A declared length is taken whole before reading, so that slow senders cannot hold
        // more than the cap between them.
        if let Some(n) = declared {
            if !permit.take(n, self.max_inflight) {
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
                    if total > permit.bytes && !permit.take(total - permit.bytes, self.max_inflight)
                    {
                        s.set_keepalive(None);
                        return Err(overloaded());
                    }
                    if total > self.max_body {
                        Self::discard_rest(s, self.max_body.saturating_mul(4)).await;
                        return Err(too_large());
                    }
                    match (&mut first, &mut more) {
                        (None, None) => first = Some(chunk),
                        (Some(f), None) => {
                            let mut m = BytesMut::with_capacity(
                                declared.unwrap_or(total * 2).min(self.max_body) as usize,
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

    async fn handle(&self, s: &mut ServerSession) -> Reply {
        let path = s.req_header().uri.path();
        let Some(src) = self.routes.get(path) else {
            s.set_keepalive(None);
            return self.reject(
                &self.unknown,
                Outcome::NotFound,
                "no webhook source is configured at this path",
            );
        };
        let _timer = src.timer.start_timer();
        let counters = &src.outcomes;
        if s.req_header().method != Method::POST {
            s.set_keepalive(None);
            return self.reject(
                counters,
                Outcome::MethodNotAllowed,
                "webhooks are delivered with POST",
            );
        }
        let mut permit = BodyPermit {
            held: &self.inflight_bytes,
            bytes: 0,
        };
        let read = tokio::time::timeout(self.body_timeout, self.read_body(s, &mut permit)).await;
        let read = read.unwrap_or_else(|_| {
            Err((
                Outcome::BodyTimeout,
                format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(self.body_timeout)
                ),
            ))
        });
        let body = match read {
            Ok(b) => b,
            Err((o, detail)) => {
                // An oversized body was drained (bounded) by read_body; anything else closes.
                if o != Outcome::BodyTooLarge || !s.is_body_done() {
                    s.set_keepalive(None);
                }
                return self.reject(counters, o, &detail);
            }
        };
        let h = s.req_header();
        let parts = RequestParts {
            signature: h
                .headers
                .get(verify::SIGNATURE_HEADER)
                .map(|v| v.as_bytes()),
            version: h.headers.get(verify::VERSION_HEADER).map(|v| v.as_bytes()),
            content_type: h.headers.get("content-type").map(|v| v.as_bytes()),
        };
        let now = now_ms();
        let secret = match src.checker.signature(parts, &body, now) {
            Ok(i) => i,
            Err(r) => return self.reject(counters, Outcome::from_reject(&r), &r.to_string()),
        };
        src.secret_matches[secret].inc();
        drop(permit);
        let event = match src.checker.after_signature(parts, body, now) {
            Ok(v) => v,
            Err(r) => return self.reject(counters, Outcome::from_reject(&r), &r.to_string()),
        };
        let event = event.into_inner();
        if !src.filter.matches(&event.event_type) {
            return self.finish(
                counters,
                Outcome::Filtered,
                Bytes::from_static(FILTERED),
                None,
            );
        }
        let key = self.dedupe.key(&src.name, &event.event_id);
        let now_s = (now / 1000).max(0) as u64;
        match self.dedupe.begin(key, now_s).await {
            Ok(Begin::New) => {}
            Ok(Begin::Duplicate) => {
                return self.finish(
                    counters,
                    Outcome::Duplicate,
                    Bytes::from_static(DUPLICATE),
                    None,
                )
            }
            Ok(Begin::InFlight) => {
                return self.finish(
                    counters,
                    Outcome::InFlight,
                    error_body(
                        "in_flight",
                        "this event_id is being forwarded by another request; retry shortly",
                    )
                    .into(),
                    retry_after_header(1),
                )
            }
            Ok(Begin::Full) => {
                return self.finish(
                    counters,
                    Outcome::DedupeFull,
                    error_body(
                        "dedupe_full",
                        "the gateway remembers as many event ids as it may (dedupe.max_entries); retry later",
                    )
                    .into(),
                    retry_after_header(30),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "dedupe store failed");
                return self.finish(
                    counters,
                    Outcome::DedupeUnavailable,
                    error_body("dedupe_unavailable", "the dedupe store is unavailable").into(),
                    retry_after_header(5),
                );
            }
        }
        let mut guard = InFlightGuard {
            dedupe: &self.dedupe,
            key,
            armed: true,
        };
        if let (Some(log), Some(spool)) = (&src.spool, &self.spool) {
            return match spool.append(log, &event.body, now).await {
                Ok(()) => {
                    guard.armed = false;
                    if let Err(e) = self.dedupe.commit(key, now, event.timestamp_ms).await {
                        tracing::error!(error = %e, "dedupe commit failed; a retry of this event may be spooled again");
                    }
                    self.finish(
                        counters,
                        Outcome::Spooled,
                        Bytes::from_static(ACCEPTED),
                        None,
                    )
                }
                Err(e) => {
                    guard.armed = false;
                    let _ = self.dedupe.release(key).await;
                    let o = match e {
                        SpoolError::Full { .. } => Outcome::SpoolFull,
                        SpoolError::Io(_) | SpoolError::Closed => Outcome::SpoolError,
                    };
                    let wait = if o == Outcome::SpoolFull { 30 } else { 5 };
                    self.finish(
                        counters,
                        o,
                        error_body(o.as_str(), &e.to_string()).into(),
                        retry_after_header(wait),
                    )
                }
            };
        }
        let event = Arc::new(event);
        let mut waits = Vec::with_capacity(src.sinks.len());
        for sink in &src.sinks {
            waits.push(sink.submit(event.clone()).await);
        }
        let mut worst: Option<(FailKind, String, Option<Duration>)> = None;
        for w in waits {
            let d = w.await.unwrap_or(Delivery::Failed {
                kind: FailKind::Unavailable,
                detail: "delivery was abandoned".into(),
                retry_after: None,
            });
            if let Delivery::Failed {
                kind,
                detail,
                retry_after,
            } = d
            {
                let rank = |k: FailKind| match k {
                    FailKind::Permanent => 3,
                    FailKind::Unavailable => 2,
                    FailKind::Timeout => 1,
                };
                if worst.as_ref().is_none_or(|(k, _, _)| rank(kind) > rank(*k)) {
                    worst = Some((kind, detail, retry_after));
                }
            }
        }
        match worst {
            None => {
                guard.armed = false;
                if let Err(e) = self.dedupe.commit(key, now_ms(), event.timestamp_ms).await {
                    tracing::error!(error = %e, "dedupe commit failed; a retry of this event may be forwarded again");
                }
                self.finish(
                    counters,
                    Outcome::Accepted,
                    Bytes::from_static(ACCEPTED),
                    None,
                )
            }
            Some((kind, detail, retry_after)) => {
                guard.armed = false;
                let _ = self.dedupe.release(key).await;
                let o = match kind {
                    FailKind::Permanent => Outcome::UpstreamError,
                    FailKind::Unavailable => Outcome::UpstreamUnavailable,
                    FailKind::Timeout => Outcome::UpstreamTimeout,
                };
                let secs = retry_after.map(|d| d.as_secs().max(1)).unwrap_or(5);
                let extra = if o == Outcome::UpstreamError {
                    None
                } else {
                    retry_after_header(secs)
                };
                self.finish(counters, o, error_body(o.as_str(), &detail).into(), extra)
            }
        }
    }
}

/// Reads a request header; `false` ends the connection. The error's context holds the raw
/// request bytes (tokens, signatures): only its kind is logged. Then keep-alive is only
/// ever shortened from what Pingora decided from the request (HTTP/1.0 without keep-alive,
/// `Connection: close`, both Transfer-Encoding and Content-Length: close after the
/// response, RFC 9112 §6.1), never re-enabled.
async fn read_request(s: &mut ServerSession, shutdown: &ShutdownWatch) -> bool {
    match s.read_request().await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::debug!(kind = ?e.etype(), "cannot read a request header");
            return false;
        }
    }
    if *shutdown.borrow() {
        s.set_keepalive(None);
    } else if s.get_keepalive().is_some() {
        s.set_keepalive(Some(60));
    }
    true
}

/// Writes the response and finishes the session, handing the stream back for reuse when
/// keep-alive allows.
async fn respond_and_finish(
    mut s: ServerSession,
    head: pingora::http::ResponseHeader,
    body: Bytes,
) -> Option<ReusedHttpStream> {
    if let Err(e) = s.write_response_header(Box::new(head)).await {
        tracing::debug!(error = %e, "cannot write a response header");
        return None;
    }
    if !body.is_empty() {
        if let Err(e) = s.write_response_body(body, true).await {
            tracing::debug!(error = %e, "cannot write a response body");
            return None;
        }
    }
    let persistent = HttpPersistentSettings::for_session(&s);
    match s.finish().await {
        Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "cannot finish a response");
            None
        }
    }
}

/// The webhook listener as a Pingora HTTP app. It is `HttpServerApp` rather than `ServeHttp`
/// so that a request counts as in flight until its response is written and the connection
/// finished: graceful shutdown waits for exactly that.
pub struct WebhookApp {
    gateway: Gateway,
    options: pingora::apps::HttpServerOptions,
}

#[async_trait]
impl HttpServerApp for WebhookApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !read_request(&mut s, shutdown).await {
            return None;
        }
        let metrics = &self.gateway.metrics;
        if !self.gateway.workers_started.load(Ordering::Acquire) {
            self.gateway.start_workers();
        }
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

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, and, with `admin.token`, the
/// failed-deliveries routes `GET /admin/failed` and `POST /admin/failed/{id}/replay`.
pub struct Admin {
    metrics: Arc<Metrics>,
    dedupe: Arc<Dedupe>,
    ready: Arc<AtomicBool>,
    token: Option<crate::secret::Secret>,
    failed: crate::deadletter::FailedStore,
    spool: Option<Arc<Spool>>,
    /// Every configured sink, for replays of spool dead letters.
    sinks: HashMap<String, Arc<dyn crate::sinks::Sink>>,
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

    async fn failed_routes(&self, s: &ServerSession, method: &Method, path: &str) -> HttpResponse {
        if self.token.is_none() {
            return respond(
                404,
                error_body("not_found", "the admin API is off (set admin.token)"),
                &[],
            );
        }
        if !self.authorized(s) {
            return respond(
                401,
                error_body("unauthorized", "a valid bearer token is required"),
                &[("www-authenticate", "Bearer".into())],
            );
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
                    "admin routes: GET /admin/failed[?limit=N&after=ID], POST /admin/failed/{id}/replay",
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
    /// through it; any other entry to its recorded target.
    async fn replay_failed(&self, id: &str) -> HttpResponse {
        use crate::deadletter::StoreError;
        let (store, key) = (self.failed.clone(), id.to_string());
        let entry = match tokio::task::spawn_blocking(move || store.get(&key)).await {
            Ok(Ok(e)) => e,
            Ok(Err(StoreError::NotFound(_))) => {
                return respond(
                    404,
                    error_body("not_found", "no failed delivery with that id"),
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
        if let Some(sink) = entry.sink_route().map(|(_, s)| s.to_string()) {
            let Some(built) = self.sinks.get(&sink) else {
                return respond(
                    409,
                    error_body(
                        "unknown_sink",
                        "the entry's sink is not in the running config; entry kept",
                    ),
                    &[],
                );
            };
            return match crate::spool::drain::replay_to_sink(&self.failed, entry, &**built, &self.metrics).await {
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
                Err(crate::spool::drain::ReplayError::Store(StoreError::NotFound(_))) => {
                    respond(404, error_body("not_found", "no failed delivery with that id"), &[])
                }
                Err(e) => {
                    tracing::error!(error = %e, "admin: replay failed");
                    respond(500, error_body("replay_error", "the entry cannot be replayed (see the log)"), &[])
                }
            };
        }
        match crate::sender::run::replay_entry(&self.failed, id, None, &[], crate::sender::DEFAULT_TIMEOUT, &crate::config::RawClientTls::default()).await {
            Ok(a) if a.ok() => respond(200, serde_json::to_vec(&serde_json::json!({"status": "delivered", "id": id, "upstream_status": a.status})).expect("json"), &[]),
            Ok(a) => respond(502, error_body("upstream_error", &format!("replay failed: {}; entry kept", a.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()))), &[]),
            Err(e) => {
                tracing::error!(error = %e, "admin: replay failed");
                respond(500, error_body("replay_error", "the entry cannot be replayed (see the log)"), &[])
            }
        }
    }
}

/// The webhook app behind a cap on open connections (`server.max_connections`): a
/// connection beyond it is closed at once, before anything is read, and counted.
pub struct Limited {
    app: Arc<WebhookApp>,
    slots: tokio::sync::Semaphore,
    refused: IntCounter,
}

#[async_trait]
impl pingora::apps::ServerApp for Limited {
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let Ok(_slot) = self.slots.try_acquire() else {
            self.refused.inc();
            return None;
        };
        pingora::apps::ServerApp::process_new(&self.app, stream, shutdown).await
    }

    async fn cleanup(&self) {
        pingora::apps::ServerApp::cleanup(&*self.app).await;
    }
}

/// The admin listener as a hand-written Pingora app, like the webhook listener: Pingora's
/// generic `HttpServer` logs the raw request buffer on a malformed header, which would put
/// the bearer token in the log. Here a bad request is dropped with a debug line that holds
/// no request bytes.
pub struct AdminApp {
    admin: Admin,
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !read_request(&mut s, shutdown).await {
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
            "/readyz" => {
                if !self.ready.load(Ordering::Acquire) {
                    respond(503, status_body("starting"), &[])
                } else if self.spool.as_ref().is_some_and(|s| s.is_full()) {
                    respond(503, status_body("spool_full"), &[])
                } else {
                    respond(200, status_body("ready"), &[])
                }
            }
            _ => respond(
                404,
                error_body("not_found", "admin paths: /metrics, /healthz, /readyz"),
                &[],
            ),
        }
    }
}

/// The spool drainers as a Pingora background service (they run from start-up, requests
/// or not).
struct PipelineService {
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

/// SIGTERM and SIGINT both stop gracefully: stop accepting, finish in-flight requests.
struct Signals {
    stopping: Arc<AtomicBool>,
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
    gateway: Gateway,
    admin: Admin,
    pipeline: PipelineService,
    ready: Arc<AtomicBool>,
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
            max_budget + Duration::from_secs(60),
            durability,
        )
        .map_err(|e| ServeError::Dedupe(e.to_string()))?,
    );
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
        routes.insert(
            src.path.clone(),
            SourceRt {
                name: src.name.clone(),
                checker: Checker::new(src),
                filter: src.event_types.clone(),
                sinks: src.sinks.iter().map(|n| handles[n].clone()).collect(),
                spool: spool.as_ref().and_then(|s| s.source(&src.name)),
                outcomes: counters(&src.name),
                secret_matches: (0..src.secrets.len())
                    .map(|i| {
                        metrics
                            .secret_matches
                            .with_label_values(&[src.name.as_str(), &i.to_string()])
                    })
                    .collect(),
                timer: metrics.request_timer(&src.name),
            },
        );
    }
    let ready = Arc::new(AtomicBool::new(false));
    Ok(Assembled {
        gateway: Gateway {
            routes,
            unknown: counters("none"),
            dedupe: dedupe.clone(),
            metrics: metrics.clone(),
            max_body: config.server.max_body_bytes,
            body_timeout: config.server.body_timeout,
            inflight_bytes: Default::default(),
            max_inflight: config.server.max_inflight_body_bytes,
            spool: spool.clone(),
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

/// Runs the gateway in the foreground until SIGTERM/SIGINT and the grace period.
pub fn run(config: Config) -> Result<(), ServeError> {
    let started = Instant::now();
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
    let parts = assemble(&config)?;
    let in_flight = parts.gateway.metrics.in_flight.clone();

    let grace = config.server.grace_period;
    let run_dir = std::env::temp_dir();
    let pid = std::process::id();
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: true,
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
    let app = WebhookApp {
        gateway: parts.gateway,
        options,
    };
    let refused = app.gateway.metrics.connections_refused.clone();
    let app = Limited {
        app: Arc::new(app),
        slots: tokio::sync::Semaphore::new(config.server.max_connections),
        refused,
    };
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
    let mut admin = Service::new("vfgate admin".to_string(), AdminApp { admin: parts.admin });
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    let mut bg = GenBackgroundService::new("vfgate spool".to_string(), Arc::new(parts.pipeline));
    bg.threads = Some(1);
    server.add_service(gw);
    server.add_service(admin);
    server.add_service(bg);

    // Ready once every listener accepts connections.
    let ready = parts.ready.clone();
    let mut probes: Vec<_> = config
        .server
        .listen
        .iter()
        .copied()
        .map(probe_addr)
        .collect();
    probes.push(probe_addr(config.admin.listen));
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

    // Pingora sleeps the whole grace period after SIGTERM; exit as soon as nothing is in
    // flight instead (after a short pause so that the listeners have closed).
    let stopping = Arc::new(AtomicBool::new(false));
    let watch = stopping.clone();
    std::thread::Builder::new()
        .name("vfgate-drain".into())
        .spawn(move || {
            while !watch.load(Ordering::Acquire) {
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

    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { stopping }),
    });
    Ok(())
}
