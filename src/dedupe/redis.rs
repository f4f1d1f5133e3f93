//! Shared dedupe in Redis, so that a retry landing on another replica is still recognised.
//!
//! Keys are `<key_prefix><hex of an unseeded 128-bit hash of source \0 event_id>`: fixed
//! size, the same on every replica. "Mark in flight if absent" is one Lua script (atomic in
//! Redis): it returns the current value (`d` delivered, `f` in flight) or sets `f` with the
//! in-flight expiry. Commit is `SET key d PX ttl`; release deletes the key only if it is still
//! in flight (a script, so a concurrent commit is never undone). One multiplexed connection
//! (`ConnectionManager`, reconnecting by itself), every call bounded by `timeout`. A request
//! still waiting for its sinks renews its in-flight mark (only while it is `f`).
//! On a Redis failure, `on_error = "reject"` makes the request a 503 (the sender retries: no
//! silent duplicate, no loss); `"allow"` forwards without dedupe and counts the error.
//!
//! Owns: the Redis keys, scripts and connection. Uses only `config`; knows nothing of
//! requests, sinks, the spool or HTTP.

use super::{Begin, DedupeError, DedupeKey};
use crate::config::{OnError, RedisConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BEGIN: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'f', 'PX', ARGV[1])
return 'n'
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == 'f' then return redis.call('DEL', KEYS[1]) end
return 0
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == 'f' then return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0
"#;

/// What failed, in words, for an operator: connection refused, authentication failed, timed
/// out, the OS error, or the server's error code. Built from the error's kind and code only,
/// never from its text or the URL, so no credential can reach a log.
fn reason(e: &redis::RedisError) -> String {
    let says =
        |code: &str| e.code() == Some(code) || e.detail().is_some_and(|d| d.starts_with(code));
    if e.is_connection_refusal() {
        return "connection refused (is Redis running and listening there?)".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed || says("WRONGPASS") {
        return "authentication failed (check dedupe.password or the user in dedupe.url)".into();
    }
    if says("NOAUTH") {
        return "authentication required (set dedupe.password)".into();
    }
    if e.is_io_error() {
        let io = std::iter::successors(std::error::Error::source(e), |s| s.source())
            .find_map(|s| s.downcast_ref::<std::io::Error>());
        return match io {
            Some(io) => format!("connection failed: {io}"),
            None if e.is_connection_dropped() => "connection lost".into(),
            None => "I/O error".into(),
        };
    }
    match e.code() {
        Some(code) => format!("{} ({code})", e.category()),
        None => e.category().to_string(),
    }
}

/// The Redis backend.
pub struct RedisDedupe {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    prefix: String,
    display: String,
    on_error: OnError,
    timeout: Duration,
    ttl_ms: u64,
    in_flight_ms: u64,
    begin: redis::Script,
    release: redis::Script,
    renew: redis::Script,
    errors: AtomicU64,
}

impl RedisDedupe {
    /// A backend for `cfg`; connects on first use.
    pub fn new(
        cfg: &RedisConfig,
        ttl: Duration,
        in_flight_ttl: Duration,
    ) -> Result<RedisDedupe, DedupeError> {
        use redis::IntoConnectionInfo;
        let url = cfg.url.expose_str().unwrap_or("");
        let mut info = url
            .into_connection_info()
            .map_err(|e| DedupeError(format!("dedupe.url: {:?}", e.kind())))?;
        if let Some(p) = &cfg.password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(p.expose_str().unwrap_or(""));
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)
            .map_err(|e| DedupeError(format!("dedupe.url: {:?}", e.kind())))?;
        Ok(RedisDedupe {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: cfg.key_prefix.clone(),
            display: cfg.display.clone(),
            on_error: cfg.on_error,
            timeout: cfg.timeout,
            ttl_ms: ttl.as_millis().max(1) as u64,
            in_flight_ms: in_flight_ttl.as_millis().max(1) as u64,
            begin: redis::Script::new(BEGIN),
            release: redis::Script::new(RELEASE),
            renew: redis::Script::new(RENEW),
            errors: AtomicU64::new(0),
        })
    }

    /// The key of `(source, event_id)`: the same on every replica.
    pub fn key(&self, source: &str, event_id: &str) -> DedupeKey {
        super::hash_key(None, source, event_id)
    }

    fn redis_key(&self, k: DedupeKey) -> String {
        format!("{}{:016x}{:016x}", self.prefix, k.0[0], k.0[1])
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, DedupeError> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.timeout * 2,
            self.conn.get_or_try_init(|| {
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg)
            }),
        )
        .await
        .map_err(|_| {
            DedupeError(format!(
                "redis {}: connect timed out (no answer within {:?})",
                self.display,
                self.timeout * 2
            ))
        })?
        .map_err(|e| DedupeError(format!("redis {}: {}", self.display, reason(&e))))?;
        Ok(c.clone())
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, DedupeError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(DedupeError(format!(
                "redis {}: {}",
                self.display,
                reason(&e)
            ))),
            Err(_) => Err(DedupeError(format!(
                "redis {}: no answer within {:?}",
                self.display, self.timeout
            ))),
        }
    }

    fn failed(&self, e: DedupeError) -> DedupeError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "dedupe call failed");
        e
    }

    /// Marks `key` in flight if absent.
    pub async fn begin(&self, key: DedupeKey) -> Result<Begin, DedupeError> {
        let r: Result<String, DedupeError> = async {
            let mut c = self.conn().await?;
            let mut inv = self.begin.key(self.redis_key(key));
            inv.arg(self.in_flight_ms);
            self.call(inv.invoke_async(&mut c)).await
        }
        .await;
        match r {
            Ok(v) if v == "d" => Ok(Begin::Duplicate),
            Ok(v) if v == "f" => Ok(Begin::InFlight),
            Ok(_) => Ok(Begin::New),
            Err(e) => {
                let e = self.failed(e);
                match self.on_error {
                    OnError::Reject => Err(e),
                    OnError::Allow => Ok(Begin::New),
                }
            }
        }
    }

    /// Marks `key` delivered for the TTL.
    pub async fn commit(&self, key: DedupeKey, extra_ms: u64) -> Result<(), DedupeError> {
        let r: Result<(), DedupeError> = async {
            let mut c = self.conn().await?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.redis_key(key))
                .arg("d")
                .arg("PX")
                .arg(self.ttl_ms.saturating_add(extra_ms));
            self.call(cmd.query_async::<()>(&mut c)).await
        }
        .await;
        r.map_err(|e| self.failed(e))
    }

    /// Forgets `key` if still in flight.
    pub async fn release(&self, key: DedupeKey) -> Result<(), DedupeError> {
        let r: Result<i64, DedupeError> = async {
            let mut c = self.conn().await?;
            self.call(self.release.key(self.redis_key(key)).invoke_async(&mut c))
                .await
        }
        .await;
        r.map(drop).map_err(|e| self.failed(e))
    }

    /// Extends an in-flight `key` by the in-flight lifetime (a delivered mark is left alone).
    pub async fn renew(&self, key: DedupeKey) -> Result<(), DedupeError> {
        let r: Result<i64, DedupeError> = async {
            let mut c = self.conn().await?;
            let mut inv = self.renew.key(self.redis_key(key));
            inv.arg(self.in_flight_ms);
            self.call(inv.invoke_async(&mut c)).await
        }
        .await;
        r.map(drop).map_err(|e| self.failed(e))
    }

    /// How long an in-flight mark lives unless renewed.
    pub fn in_flight_ttl(&self) -> Duration {
        Duration::from_millis(self.in_flight_ms)
    }

    /// For `/readyz`: `PING` within the timeout, when a Redis failure refuses requests
    /// (`on_error = "reject"`); `Ok` without asking under `"allow"`. Not counted as a failed
    /// dedupe call (no request was affected).
    pub async fn probe(&self) -> Result<(), DedupeError> {
        if self.on_error == OnError::Allow {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let pong: String = self.call(redis::cmd("PING").query_async(&mut c)).await?;
        if pong != "PONG" {
            return Err(DedupeError(format!(
                "redis {}: unexpected PING answer",
                self.display
            )));
        }
        Ok(())
    }

    /// Failed calls so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn backend(port: u16, password: &str) -> RedisDedupe {
        let cfg = RedisConfig {
            url: Secret::new(format!("redis://:{password}@127.0.0.1:{port}/0").into_bytes()),
            display: format!("127.0.0.1:{port}"),
            password: None,
            key_prefix: "t:".into(),
            on_error: OnError::Reject,
            timeout: Duration::from_millis(500),
        };
        RedisDedupe::new(&cfg, Duration::from_secs(60), Duration::from_secs(60)).unwrap()
    }

    async fn error_of(r: &RedisDedupe) -> String {
        let key = r.key("s", "evt_1");
        r.begin(key).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_and_where() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = error_of(&backend(port, "TOPSECRETPW")).await;
        assert_eq!(
            e,
            format!("dedupe backend error: redis 127.0.0.1:{port}: connection refused (is Redis running and listening there?)")
        );
    }

    #[tokio::test]
    async fn a_wrong_password_says_authentication_failed_without_the_password() {
        // A server that answers every command as Redis does to a wrong AUTH.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        // One reply per command (a RESP array starts a line with '*').
                        let commands = buf[..n]
                            .iter()
                            .enumerate()
                            .filter(|&(i, &b)| b == b'*' && (i == 0 || buf[i - 1] == b'\n'))
                            .count();
                        let reply =
                            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
                                .repeat(commands);
                        if n == 0 || s.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let e = error_of(&backend(port, "TOPSECRETPW")).await;
        assert!(
            e.starts_with(&format!(
                "dedupe backend error: redis 127.0.0.1:{port}: authentication failed"
            )),
            "{e}"
        );
        assert!(!e.contains("TOPSECRETPW"), "{e}");
    }
}
