//! Shared dedupe in a real `redis-server` (started here on a reserved port; `.ci/run` installs it).

use crate::util::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Redis {
    child: Child,
    /// Held for the test's whole life, so that a restart gets the same port back.
    reserved: ReservedPort,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        let reserved = ReservedPort::new();
        let port = reserved.port;
        let mut redis = Redis {
            child: Self::spawn(port),
            reserved,
            port,
        };
        redis.wait_up().await;
        redis
    }

    /// Starts a fresh, empty `redis-server` on the same port (after [`Redis::kill`]).
    async fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.reserved.port);
        self.wait_up().await;
    }

    /// `redis-server` sets `SO_REUSEADDR`, so it can listen on the reserved port.
    fn spawn(port: u16) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it: apt-get install redis-server)")
    }

    async fn wait_up(&mut self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        panic!("redis-server did not start");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(redis_port: u16, mock: &Mock, on_error: &str) -> String {
    Toml::new()
        .dedupe()
        .with(r#"backend = "redis""#)
        .with(&format!(r#"url = "redis://127.0.0.1:{redis_port}/0""#))
        .with(r#"key_prefix = "vfgate-test:""#)
        .with(&format!(r#"on_error = "{on_error}""#))
        .with(r#"timeout = "300ms""#)
        .with(r#"ttl = "1h""#)
        .source(&["up"])
        .http_sink("up", &mock.url("/ingest"))
        .with(r#"timeout = "2s""#)
        .with(r#"retry = { budget = "500ms" }"#)
        .build()
}

#[tokio::test]
async fn two_replicas_share_dedupe_and_deliver_once() {
    let redis = Redis::start().await;
    let mock = Mock::start().await;
    let a = Gateway::start(&config(redis.port, &mock, "reject")).await;
    let b = Gateway::start(&config(redis.port, &mock, "reject")).await;

    // Concurrently to both replicas: one forwards, the other says in flight (409).
    mock.set_default(Reply::Sleep(Duration::from_millis(400)));
    let body = event("evt_shared_1", "user.login");
    let (ra, rb) = tokio::join!(a.post_event(&body), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.post_event(&body).await
    });
    assert_eq!(ra.status_field(), "accepted");
    assert_eq!((rb.status, rb.error()), (409, "in_flight".into()));
    // One after the other: the second replica knows it was delivered.
    assert_eq!(b.post_event(&body).await.status_field(), "duplicate");
    assert_eq!(a.post_event(&body).await.status_field(), "duplicate");
    assert_eq!(mock.requests().len(), 1, "reached the SIEM once");

    // A failed forward on one replica releases the id: the retry on the other goes through.
    mock.set_default(Reply::Status(503, vec![], "down".into()));
    let body2 = event("evt_shared_2", "user.login");
    assert_eq!(a.post_event(&body2).await.status, 503);
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    assert_eq!(b.post_event(&body2).await.status_field(), "accepted");
    assert_eq!(a.post_event(&body2).await.status_field(), "duplicate");
    drop(redis);
}

#[tokio::test]
async fn redis_down_follows_on_error() {
    let mut redis = Redis::start().await;
    let mock = Mock::start().await;
    let reject = Gateway::start(&config(redis.port, &mock, "reject")).await;
    let allow = Gateway::start(&config(redis.port, &mock, "allow")).await;
    assert_eq!(
        reject
            .post_event(&event("evt_r_1", "user.login"))
            .await
            .status_field(),
        "accepted"
    );
    assert_eq!(
        allow
            .post_event(&event("evt_r_2", "user.login"))
            .await
            .status_field(),
        "accepted"
    );
    redis.kill();
    let r = reject.post_event(&event("evt_r_3", "user.login")).await;
    assert_eq!((r.status, r.error()), (503, "dedupe_unavailable".into()));
    assert!(r.header("retry-after").is_some());
    let before = mock.requests().len();
    let r = allow.post_event(&event("evt_r_4", "user.login")).await;
    assert_eq!(r.status_field(), "accepted", "forwarded without dedupe");
    assert_eq!(mock.requests().len(), before + 1);
    assert!(allow.metric("vfgate_dedupe_errors_total").await >= 1.0);
    assert!(reject.metric("vfgate_dedupe_errors_total").await >= 1.0);
    assert_eq!(
        reject
            .metric("vfgate_requests_total{outcome=\"dedupe_unavailable\",scheme=\"vf\",source=\"syvault\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_commit_lost_with_redis_is_made_once_redis_is_back() {
    // Redis dies between the in-flight mark and the commit (its data gone with it): the
    // sender still gets 200 (the event was delivered), the commit is retried, and once a
    // Redis answers again the replay is a duplicate (it used to be handed on again).
    let mut redis = Redis::start().await;
    let mock = Mock::start().await;
    let gw = Gateway::start(&config(redis.port, &mock, "reject")).await;
    mock.set_default(Reply::Sleep(Duration::from_millis(600)));
    let body = event("evt_commit_1", "user.login");
    let (r, ()) = tokio::join!(gw.post_event(&body), async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        redis.kill();
    });
    assert_eq!(r.status_field(), "accepted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().await;
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    // The retry says when it lands (an older build never does: the replay then decides).
    let retried = wait_until(Duration::from_secs(10), || {
        gw.log_text().contains("dedupe commit made after a failure")
    })
    .await;
    let r = gw.post_event(&body).await;
    assert_eq!(r.status_field(), "duplicate", "{:?}", r.json());
    assert_eq!(mock.requests().len(), 1, "reached the SIEM once");
    assert!(retried, "{}", gw.log_text());
    assert_eq!(gw.metric("vfgate_dedupe_commit_failures_total").await, 0.0);
}
