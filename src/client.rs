//! The one outbound HTTP stack: Pingora's pooled `Connector`, with the timeouts, TLS
//! verification and DNS handling that Pingora leaves to the caller.
//!
//! - TLS is verified against the system roots, or a `ca_file` given per sink; SNI is always
//!   the URL's host (Pingora skips verification when SNI is empty).
//! - Every attempt has connect, read and write timeouts plus an overall deadline (Pingora has
//!   none by default).
//! - DNS is resolved asynchronously and cached for [`DNS_TTL`] (Pingora's `HttpPeer::new`
//!   resolves synchronously and panics on failure).
//! - A request that fails on a reused pooled connection before any response byte is retried
//!   once on a fresh one (the server may have closed it while idle).
//! - Response bodies are read to the end (capped) so that the connection goes back to the pool.
//!
//! Owns: outbound connections, TLS, the DNS cache and one request's attempt. Uses only
//! `config` (the TLS settings), `retry` (`Retry-After`) and `time`; knows nothing of sinks,
//! events, batches or any retry but the one on a stale connection.

use crate::config::RawClientTls;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a DNS answer is used.
pub const DNS_TTL: Duration = Duration::from_secs(30);
/// Largest response body kept; the rest is discarded and the connection not reused.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(50);

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https`?
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Why a URL is not a target. The messages never repeat the URL: it may hold a token in its
/// query or a password before its host, and a config error is logged and, on a reload,
/// answered to the admin API (the key path says which URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a URL at all.
    #[error("not a valid URL ({reason})")]
    Invalid {
        /// The text.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// Neither http nor https.
    #[error("the URL must start with http:// or https://")]
    Scheme(String),
    /// No host.
    #[error("the URL has no host")]
    NoHost(String),
    /// `user:password@` in the URL.
    #[error("credentials in the URL are not supported; use headers")]
    Credentials(String),
}

impl From<TargetError> for String {
    fn from(e: TargetError) -> String {
        e.to_string()
    }
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file cannot be read.
    #[error("cannot read {path}: {source}")]
    CaFile {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CA file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
}

impl From<SetupError> for String {
    fn from(e: SetupError) -> String {
        e.to_string()
    }
}

impl Target {
    /// Parses an absolute `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| TargetError::Invalid {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(TargetError::Scheme(url.to_string())),
        };
        let host = uri
            .host()
            .ok_or_else(|| TargetError::NoHost(url.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(TargetError::Credentials(url.to_string()));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Ok(Target {
            tls,
            host,
            port,
            path,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `scheme://authority` (for logs and records; never carries credentials).
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }
}

/// Why an attempt got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// DNS failed.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke mid-exchange.
    #[error("connection error: {0}")]
    Io(String),
}

impl ClientError {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::Resolve(_) => "dns_error",
            ClientError::Connect(_) => "connect_error",
            ClientError::Timeout(_) => "timeout",
            ClientError::Io(_) => "io_error",
        }
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body, at most [`MAX_RESPONSE_BODY`] bytes.
    pub body: Bytes,
}

impl Response {
    /// The first header named `name` (lower case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// `Retry-After`: delay seconds or an HTTP-date
    /// ([`crate::retry::parse_retry_after`]).
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| crate::retry::parse_retry_after(v, crate::time::now()))
    }
}

/// A request to send.
pub struct Request {
    /// Method, e.g. `POST`.
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    /// Headers besides Host and Content-Length.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Bytes,
}

/// A pooled client for one target.
pub struct HttpClient {
    target: Target,
    connector: Connector,
    /// For [`HttpClient::open_stream`]: made on first use (its TLS context costs a few ms),
    /// from the same options as `connector`.
    transport: std::sync::OnceLock<TransportConnector>,
    options: ConnectorOptions,
    timeout: Duration,
    verify: bool,
    peer: Mutex<Option<(Instant, Arc<HttpPeer>)>>,
}

impl HttpClient {
    /// A client for `target` with a per-attempt `timeout` and the TLS settings.
    pub fn new(
        target: Target,
        tls: &RawClientTls,
        timeout: Duration,
    ) -> Result<HttpClient, SetupError> {
        let mut opts = ConnectorOptions::new(128);
        if let Some(ca) = &tls.ca_file {
            let text = std::fs::read(ca).map_err(|source| SetupError::CaFile {
                path: ca.display().to_string(),
                source,
            })?;
            if !text.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(SetupError::NoCertificate(ca.display().to_string()));
            }
            opts.ca_file = Some(ca.display().to_string());
        }
        Ok(HttpClient {
            target,
            connector: Connector::new(Some(opts.clone())),
            transport: std::sync::OnceLock::new(),
            options: opts,
            timeout,
            verify: !tls.insecure_skip_verify,
            peer: Mutex::new(None),
        })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn peer(&self) -> Result<Arc<HttpPeer>, ClientError> {
        if let Some((at, p)) = self.peer.lock().as_ref() {
            if at.elapsed() < DNS_TTL {
                return Ok(p.clone());
            }
        }
        let addr: SocketAddr = match self.target.host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.target.port),
            Err(_) => tokio::time::timeout(
                self.timeout,
                tokio::net::lookup_host((self.target.host.as_str(), self.target.port)),
            )
            .await
            .map_err(|_| ClientError::Resolve(self.target.host.clone()))?
            .map_err(|_| ClientError::Resolve(self.target.host.clone()))?
            .next()
            .ok_or_else(|| ClientError::Resolve(self.target.host.clone()))?,
        };
        let mut peer = HttpPeer::new(addr, self.target.tls, self.target.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeout);
        o.total_connection_timeout = Some(self.timeout);
        o.read_timeout = Some(self.timeout);
        o.write_timeout = Some(self.timeout);
        o.idle_timeout = Some(POOL_IDLE);
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        let peer = Arc::new(peer);
        *self.peer.lock() = Some((Instant::now(), peer.clone()));
        Ok(peer)
    }

    /// A new connection to the target (TCP, and TLS for https, verified as every other
    /// connection is), outside the pool: for a caller that keeps one connection per slot
    /// and speaks HTTP/1.1 on it itself (the load generator, [`crate::sender::conn`]).
    pub async fn open_stream(&self) -> Result<pingora::protocols::Stream, ClientError> {
        let peer = self.peer().await?;
        let transport = self
            .transport
            .get_or_init(|| TransportConnector::new(Some(self.options.clone())));
        match tokio::time::timeout(self.timeout, transport.new_stream(&*peer)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ClientError::Connect(e.to_string())),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `req` once (plus one transparent retry on a stale pooled connection), within
    /// the client's timeout. The body bytes written count towards [`counting_sent`].
    pub async fn send(&self, req: &Request) -> Result<Response, ClientError> {
        let deadline = self.timeout;
        match tokio::time::timeout(deadline, self.send_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(deadline)),
        }
    }

    async fn send_inner(&self, req: &Request) -> Result<Response, ClientError> {
        let peer = self.peer().await?;
        let (session, reused) = self
            .connector
            .get_http_session(&*peer)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        match self.exchange(session, &peer, req).await {
            Err((e, true)) if reused => {
                tracing::debug!(target = %self.target.origin(), error = %e, "stale pooled connection; retrying on a new one");
                let (session, _) = self
                    .connector
                    .get_http_session(&*peer)
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                self.exchange(session, &peer, req).await.map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// One exchange on one connection. The error's flag says whether nothing was received
    /// (so a retry on a fresh connection is safe).
    async fn exchange(
        &self,
        mut s: pingora::protocols::http::client::HttpSession,
        peer: &HttpPeer,
        req: &Request,
    ) -> Result<Response, (ClientError, bool)> {
        let io = |e: Box<pingora::Error>| ClientError::Io(e.to_string());
        let mut h =
            RequestHeader::build(req.method, req.path.as_bytes(), Some(req.headers.len() + 2))
                .map_err(|e| (io(e), false))?;
        h.insert_header("host", self.target.authority())
            .map_err(|e| (io(e), false))?;
        h.insert_header("content-length", req.body.len().to_string())
            .map_err(|e| (io(e), false))?;
        for (k, v) in &req.headers {
            h.append_header(k.clone(), v.as_slice())
                .map_err(|e| (io(e), false))?;
        }
        s.write_request_header(Box::new(h))
            .await
            .map_err(|e| (io(e), true))?;
        if !req.body.is_empty() {
            s.write_request_body(req.body.clone(), true)
                .await
                .map_err(|e| (io(e), true))?;
            count_sent(req.body.len() as u64);
        }
        s.finish_request_body().await.map_err(|e| (io(e), true))?;
        s.read_response_header().await.map_err(|e| (io(e), true))?;
        let head = s
            .response_header()
            .ok_or_else(|| (ClientError::Io("no response header".into()), false))?;
        let status = head.status.as_u16();
        let headers = head
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut body = BytesMut::new();
        let mut complete = true;
        loop {
            match s.read_response_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                        complete = false;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err((io(e), false)),
            }
        }
        if complete {
            self.connector
                .release_http_session(s, peer, Some(POOL_IDLE))
                .await;
        }
        Ok(Response {
            status,
            headers,
            body: body.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://splunk.example.com:8088/services/collector/event").unwrap();
        assert!(t.tls);
        assert_eq!(t.port, 8088);
        assert_eq!(t.path, "/services/collector/event");
        assert_eq!(t.authority(), "splunk.example.com:8088");
        let t = Target::parse("http://127.0.0.1/x?y=1").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority().as_str()),
            (80, "/x?y=1", "127.0.0.1")
        );
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("::1", "/"));
        assert_eq!(t.authority(), "[::1]:9000");
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("/relative").is_err());
        assert!(Target::parse("https://user:pw@host/").is_err());
    }
}

tokio::task_local! {
    static SENT_BYTES: std::cell::Cell<u64>;
}

/// Runs `f` and returns its output with the request body bytes written on this task while it
/// ran (by [`HttpClient::send`], or a sink that writes elsewhere through [`count_sent`]):
/// how the pipeline counts `vfgate_sink_sent_bytes_total` without every sink reporting it.
pub async fn counting_sent<F: std::future::Future>(f: F) -> (F::Output, u64) {
    SENT_BYTES
        .scope(std::cell::Cell::new(0), async {
            let out = f.await;
            (out, SENT_BYTES.with(std::cell::Cell::get))
        })
        .await
}

/// Adds `n` bytes sent to the enclosing [`counting_sent`], if any.
pub fn count_sent(n: u64) {
    let _ = SENT_BYTES.try_with(|c| c.set(c.get() + n));
}
