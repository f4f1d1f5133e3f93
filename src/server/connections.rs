//! The webhook listener's connections: the `server.max_connections` slots, the deadline for a
//! request head, and the eviction of connections that hold a slot while only waiting.
//!
//! A connection that is waiting for a request head (a new one before its first request, a
//! kept-alive one between requests) holds a slot without doing any work. Two rules keep such
//! connections from locking real senders out:
//! - a deadline for the *whole* head, not per read (Pingora's read timeout restarts with every
//!   byte, so one byte every few seconds held a connection forever): `server.header_timeout`
//!   for a new connection, `server.keepalive_timeout` for the wait plus the head on a
//!   kept-alive one;
//! - at the limit, a new connection takes the slot of the connection that has been waiting
//!   longest for a head (it is closed), and is refused only when every connection is busy
//!   with a request.
//!
//! Each connection's state lives in a task-local, since Pingora runs one connection, all its
//! keep-alive requests included, in one task. Both listeners read a head and finish a
//! response through [`read_request`] and [`respond_and_finish`] here. Owns: slots, deadlines,
//! eviction, keep-alive. Knows nothing of requests beyond their head.

use bytes::Bytes;
use parking_lot::Mutex;
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One open connection.
#[derive(Default)]
pub struct Conn {
    /// Since when it waits for a request head ([`stamp`]); 0 while it serves a request, or
    /// once an evictor has claimed it (so that two new connections never claim the same one).
    waiting_since: AtomicU64,
    /// Set by the evictor that claimed it; `kick` wakes it.
    kicked: AtomicBool,
    /// Wakes a connection claimed while it waits.
    kick: Notify,
    /// Requests started on it.
    requests: AtomicU32,
}

/// Now as a non-zero number of nanoseconds since the first call (0 means "not waiting").
fn stamp() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

tokio::task_local! {
    static CONN: Arc<Conn>;
}

/// How long a request head may take, and the counters of connections closed for it.
#[derive(Clone)]
pub struct HeadDeadlines {
    /// A new connection's first head.
    pub header: Duration,
    /// A kept-alive connection's wait for its next request plus that head.
    pub keepalive: Duration,
    /// `vfgate_connections_closed_total{reason}`.
    pub closed: IntCounterVec,
}

/// Why waiting for a head ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHead {
    /// The deadline passed.
    Timeout,
    /// The slot went to a new connection.
    Evicted,
}

impl HeadDeadlines {
    /// Reads a request head within its deadline, closing early when this connection's slot
    /// is taken over; counts the closes.
    pub async fn read_head(&self, s: &mut ServerSession) -> Result<pingora::Result<bool>, NoHead> {
        let conn = CONN.try_with(Arc::clone).ok();
        let first = conn
            .as_ref()
            .is_none_or(|c| c.requests.fetch_add(1, Ordering::AcqRel) == 0);
        let (deadline, reason) = if first {
            (self.header, "header_timeout")
        } else {
            (self.keepalive, "idle_timeout")
        };
        if let Some(c) = &conn {
            c.waiting_since.store(stamp(), Ordering::Release);
        }
        let kicked = async {
            match &conn {
                Some(c) => {
                    // A permit left by a claim this connection outlived wakes it once: the
                    // flag says whether this wait was claimed.
                    while !c.kicked.load(Ordering::Acquire) {
                        c.kick.notified().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let mut r = tokio::select! {
            r = tokio::time::timeout(deadline, s.read_request()) => r.map_err(|_| NoHead::Timeout),
            () = kicked => Err(NoHead::Evicted),
        };
        if let Some(c) = &conn {
            c.waiting_since.store(0, Ordering::Release);
            if c.kicked.swap(false, Ordering::AcqRel) && r.is_ok() {
                // Claimed just as its head arrived: it serves this request and then closes,
                // so the new connection gets the slot right after.
                s.set_keepalive(None);
                r = r.inspect(|_| self.closed.with_label_values(&["evicted_idle"]).inc());
            }
        }
        match r {
            Err(NoHead::Timeout) => self.closed.with_label_values(&[reason]).inc(),
            Err(NoHead::Evicted) => self.closed.with_label_values(&["evicted_idle"]).inc(),
            Ok(_) => {}
        }
        r
    }
}

/// An app (the webhook listener's) behind `server.max_connections` slots.
pub struct Limited<A> {
    /// The app.
    pub app: Arc<A>,
    /// Free connection slots.
    pub slots: tokio::sync::Semaphore,
    /// Open connections, for eviction.
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// `vfgate_connections_refused_total`.
    pub refused: IntCounter,
}

/// How long a new connection waits for an evicted one's slot.
const TAKE_OVER_WAIT: Duration = Duration::from_millis(250);

impl<A> Limited<A> {
    /// `app` with `max` connection slots.
    pub fn new(app: Arc<A>, max: usize, refused: IntCounter) -> Limited<A> {
        Limited {
            app,
            slots: tokio::sync::Semaphore::new(max),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            refused,
        }
    }

    /// Tells the connection waiting longest for a request head to close; false when every
    /// open connection is serving a request.
    fn evict_longest_waiting(&self) -> bool {
        let open = self.open.lock();
        // Oldest first; a connection another evictor claimed, or that got its head meanwhile,
        // reads 0 and is skipped (the claim is a compare-and-swap to 0).
        let mut waiting: Vec<(u64, &Arc<Conn>)> = open
            .values()
            .map(|c| (c.waiting_since.load(Ordering::Acquire), c))
            .filter(|(since, _)| *since != 0)
            .collect();
        waiting.sort_unstable_by_key(|(since, _)| *since);
        for (since, c) in waiting {
            if c.waiting_since
                .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                c.kicked.store(true, Ordering::Release);
                c.kick.notify_one();
                return true;
            }
        }
        false
    }
}

struct Registered<'a> {
    open: &'a Mutex<HashMap<u64, Arc<Conn>>>,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

#[async_trait::async_trait]
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> pingora::apps::ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let slot = match self.slots.try_acquire() {
            Ok(s) => s,
            Err(_) => {
                let got = if self.evict_longest_waiting() {
                    tokio::time::timeout(TAKE_OVER_WAIT, self.slots.acquire())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match got {
                    Some(s) => s,
                    None => {
                        self.refused.inc();
                        return None;
                    }
                }
            }
        };
        let conn = Arc::new(Conn::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.lock().insert(id, conn.clone());
        let _registered = Registered {
            open: &self.open,
            id,
        };
        let out = CONN
            .scope(
                conn,
                pingora::apps::ServerApp::process_new(&self.app, stream, shutdown),
            )
            .await;
        drop(slot);
        out
    }

    async fn cleanup(&self) {
        pingora::apps::ServerApp::cleanup(&*self.app).await;
    }
}

/// Reads a request header; `false` ends the connection. The error's context holds the raw
/// request bytes (tokens, signatures): only its kind is logged. Then keep-alive is only
/// ever shortened from what Pingora decided from the request (HTTP/1.0 without keep-alive,
/// `Connection: close`, both Transfer-Encoding and Content-Length: close after the
/// response, RFC 9112 §6.1), never re-enabled.
pub(super) async fn read_request(
    s: &mut ServerSession,
    shutdown: &ShutdownWatch,
    head: &HeadDeadlines,
) -> bool {
    match head.read_head(s).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return false,
        Ok(Err(e)) => {
            tracing::debug!(kind = ?e.etype(), "cannot read a request header");
            return false;
        }
        Err(why) => {
            tracing::debug!(
                ?why,
                "closing a connection that sent no whole request head in time"
            );
            return false;
        }
    }
    if *shutdown.borrow() {
        s.set_keepalive(None);
    } else if let Some(current) = s.get_keepalive() {
        // Pingora's idle timeout for the next request, never longer than what it had (0 is
        // "no limit") nor than server.keepalive_timeout, which bounds the wait in total.
        let ours = head.keepalive.as_secs().max(1);
        s.set_keepalive(Some(if current == 0 {
            ours
        } else {
            current.min(ours)
        }));
    }
    true
}

/// Writes the response and finishes the session, handing the stream back for reuse when
/// keep-alive allows.
pub(super) async fn respond_and_finish(
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
