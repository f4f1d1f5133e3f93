//! Sender mode: sign and deliver webhooks the way the reference sender does: VF by default,
//! or any scheme a source verifies ([`scheme`]: `standard-webhooks`, `hmac`, a preset's).
//!
//! One event per POST, `Content-Type: application/json`, the scheme's signature headers over
//! the exact bytes sent (for VF `X-VF-Signature-256` and `X-VF-Webhook-Version`, with the same
//! MAC functions as [`crate::verify`]), custom headers. A non-2xx answer or none within the timeout is retried on the schedule (default
//! 1 s, 5 s, 30 s, 2 min, 10 min); after the last retry the event goes to the failed-deliveries
//! store. Ordering: events of one `context.org_id` get their first attempt in arrival order; a
//! retried event does not hold back later ones (as the reference sender documents).
//!
//! Owns: signing and delivering as the reference sender does, its schedule and per-org
//! order. Uses `client`, `verify` (the MAC), `retry`, `deadletter`, `config`, `secret`,
//! `escape` and `time`; knows nothing of the gateway (`server`, `ingest`, `pipeline`,
//! `spool`, `sinks`). It sits below the sinks: the `webhook` sink builds on [`WebhookSender`],
//! the admin API replays through [`replay`], and `vfgate send` drives [`load`].

pub mod conn;
pub mod load;
pub mod replay;
pub mod scheme;

pub use scheme::SendScheme;

use crate::client::{HttpClient, Request, Target};
use crate::config::RawClientTls;
use crate::deadletter::{self as failed, AttemptLog, FailedEntry, FailedStore};
use crate::escape::Printable;
use crate::secret::{Secret, SecretRef};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The reference sender's retry schedule.
pub const DEFAULT_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// The reference sender's timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One answer (or its absence).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status, if any.
    pub status: Option<u16>,
    /// Why there was no answer.
    pub error: Option<crate::client::ClientError>,
    /// Round-trip time.
    pub rtt: Duration,
    /// Reply body.
    pub body: Bytes,
}

impl Answer {
    fn of(r: Result<conn::Reply, crate::client::ClientError>, rtt: Duration) -> Answer {
        match r {
            Ok(reply) => Answer {
                status: Some(reply.status),
                error: None,
                rtt,
                body: reply.body,
            },
            Err(e) => Answer {
                status: None,
                error: Some(e),
                rtt,
                body: Bytes::new(),
            },
        }
    }

    /// The attempt's record for a dead letter, the attempt having started `at`.
    pub fn log(&self, at: String) -> AttemptLog {
        AttemptLog {
            at,
            status: self.status,
            error: self.error.as_ref().map(ToString::to_string),
        }
    }

    /// A 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// How a delivery ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A 2xx came back.
    Delivered {
        /// Attempts made.
        attempts: usize,
        /// The 2xx.
        last: Answer,
    },
    /// Every attempt failed.
    Failed {
        /// The failed-deliveries entry, if it was stored.
        entry: Option<String>,
        /// Every attempt.
        attempts: Vec<AttemptLog>,
        /// The last answer.
        last: Answer,
    },
}

/// Settings of a webhook sender.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// Target URL.
    pub url: String,
    /// Signing secret's reference.
    pub secret: SecretRef,
    /// `X-VF-Webhook-Version`.
    pub version: String,
    /// Custom headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Waits before each retry.
    pub schedule: Vec<Duration>,
    /// Where given-up events go.
    pub failed: Option<FailedStore>,
    /// Outbound TLS.
    pub tls: RawClientTls,
    /// How requests are signed (`vf` unless `vfgate send --scheme` says otherwise).
    pub scheme: SendScheme,
}

/// Signs and delivers events to one target.
pub struct WebhookSender {
    client: HttpClient,
    url: String,
    path: String,
    signer: scheme::Signer,
    settings: SenderSettings,
}

/// Why a sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// Bad URL.
    #[error(transparent)]
    Target(#[from] crate::client::TargetError),
    /// Bad TLS settings.
    #[error(transparent)]
    Setup(#[from] crate::client::SetupError),
    /// The secret could not be loaded.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// The secret is not a key of the scheme (a `standard-webhooks` secret that is not
    /// `whsec_<base64>`).
    #[error("the secret does not suit scheme {scheme}: {source}")]
    Key {
        /// The scheme's name.
        scheme: &'static str,
        /// Why.
        source: crate::secret::KeyFormatError,
    },
}

/// The `event_id`, `event_type` and org of an event body (empty strings when absent).
pub fn event_fields(body: &[u8]) -> (String, String, Option<String>) {
    #[derive(serde::Deserialize, Default)]
    struct Ctx {
        org_id: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    struct F {
        event_id: Option<String>,
        event_type: Option<String>,
        context: Option<Ctx>,
    }
    if let Ok(f) = serde_json::from_slice::<F>(body) {
        return (
            f.event_id.unwrap_or_default(),
            f.event_type.unwrap_or_default(),
            f.context.and_then(|c| c.org_id),
        );
    }
    // A field of another type (`"event_type": 7`) or a repeated key fails the fast parse
    // above; read each field on its own, so that one odd field does not hide the others.
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_string);
    (
        text("/event_id").unwrap_or_default(),
        text("/event_type").unwrap_or_default(),
        text("/context/org_id"),
    )
}

/// `context.org_id` of an event body, for per-org ordering.
pub fn org_of(body: &[u8]) -> Option<String> {
    event_fields(body).2
}

impl WebhookSender {
    /// Builds a sender; loads the secret now.
    pub fn new(settings: SenderSettings) -> Result<WebhookSender, SenderError> {
        let secret = settings.secret.load()?;
        WebhookSender::with_secret(settings, secret)
    }

    /// Builds a sender signing with `secret`, already loaded from `settings.secret` (which
    /// is kept to name the secret in dead letters).
    pub fn with_secret(
        settings: SenderSettings,
        secret: Secret,
    ) -> Result<WebhookSender, SenderError> {
        let target = Target::parse(&settings.url)?;
        let path = target.path.clone();
        let client = HttpClient::new(target, &settings.tls, settings.timeout)?;
        let signer = settings
            .scheme
            .signer(secret, &settings.version)
            .map_err(|source| SenderError::Key {
                scheme: settings.scheme.name(),
                source,
            })?;
        Ok(WebhookSender {
            client,
            url: settings.url.clone(),
            path,
            signer,
            settings,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &SenderSettings {
        &self.settings
    }

    /// The target (its `path` holds the URL's path and query).
    pub fn target(&self) -> &Target {
        self.client.target()
    }

    /// The headers of `body`'s request besides Host and Content-Length: the media type,
    /// the scheme's signature headers, the custom ones.
    fn headers(&self, body: &Bytes) -> Vec<(String, Vec<u8>)> {
        let mut headers = Vec::with_capacity(4 + self.settings.headers.len());
        headers.push(("content-type".to_string(), b"application/json".to_vec()));
        let (event_id, event_type, org_id) = if self.signer.reads_fields() {
            event_fields(body)
        } else {
            Default::default()
        };
        let message = scheme::Message {
            body,
            event_id: &event_id,
            event_type: &event_type,
            org_id: org_id.as_deref().unwrap_or_default(),
            now_s: crate::time::now_s() as i64,
        };
        self.signer.headers(message, &mut headers);
        headers.extend(self.settings.headers.iter().cloned());
        headers
    }

    /// Sends `body` once.
    pub async fn attempt(&self, body: &Bytes) -> (AttemptLog, Answer) {
        let req = Request {
            method: "POST",
            path: self.path.clone(),
            headers: self.headers(body),
            body: body.clone(),
        };
        let at = crate::time::now_rfc3339();
        let t0 = Instant::now();
        let r = self.client.send(&req).await;
        let rtt = t0.elapsed();
        let r = r.map(|resp| conn::Reply {
            status: resp.status,
            body: resp.body,
        });
        let answer = Answer::of(r, rtt);
        (answer.log(at), answer)
    }

    /// Sends `body` once on the slot's own kept-alive connection (the load generator's
    /// path: no pool, the request written at once; see [`conn`]). The round-trip time is
    /// counted from `since`: the attempt's start, or, for an open-loop rate, the moment the
    /// event was due, so that a late send counts its wait (no coordinated omission).
    pub async fn attempt_kept(
        &self,
        slot: &mut conn::KeptConn,
        head: &mut Vec<u8>,
        body: &Bytes,
        since: Option<Instant>,
    ) -> (i64, Answer) {
        use std::io::Write;
        head.clear();
        let _ = write!(
            head,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.path,
            self.client.target().authority(),
            body.len()
        );
        for (k, v) in self.headers(body) {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(&v);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let at = crate::time::now_ms();
        // Late (the slot was busy when the event was due): from when it was due. Early (the
        // rate's pacing wakes up to a millisecond ahead): from now.
        let now = Instant::now();
        let t0 = since.map_or(now, |due| due.min(now));
        let r = slot.exchange(&self.client, head, body).await;
        (at, Answer::of(r, t0.elapsed()))
    }

    /// Retries after a failed first attempt, on the schedule; stores the event when the
    /// schedule is exhausted.
    pub async fn retry(&self, body: Bytes, first: (AttemptLog, Answer)) -> Outcome {
        self.retry_watched(body, first, |_| {}).await
    }

    /// [`WebhookSender::retry`], telling `on_wait` when the next attempt is due before each
    /// wait, and `None` once the event is delivered or failed (for progress displays).
    pub async fn retry_watched(
        &self,
        body: Bytes,
        first: (AttemptLog, Answer),
        on_wait: impl Fn(Option<tokio::time::Instant>),
    ) -> Outcome {
        let outcome = self.retry_inner(body, first, &on_wait).await;
        on_wait(None);
        outcome
    }

    async fn retry_inner(
        &self,
        body: Bytes,
        first: (AttemptLog, Answer),
        on_wait: &impl Fn(Option<tokio::time::Instant>),
    ) -> Outcome {
        use crate::retry::{Next, Policy};
        let mut logs = vec![first.0];
        let mut last = first.1;
        let policy = Policy::Schedule(&self.settings.schedule);
        let mut round = 0;
        while let Next::Wait(wait) = policy.next(round, None) {
            round += 1;
            on_wait(Some(tokio::time::Instant::now() + wait));
            tokio::time::sleep(wait).await;
            let (log, ans) = self.attempt(&body).await;
            logs.push(log);
            last = ans;
            if last.ok() {
                return Outcome::Delivered {
                    attempts: logs.len(),
                    last,
                };
            }
        }
        let entry = self.store_failed(&body, &logs, None);
        Outcome::Failed {
            entry,
            attempts: logs,
            last,
        }
    }

    /// Delivers `body`: the first attempt, then the schedule.
    pub async fn deliver(&self, body: Bytes) -> Outcome {
        let first = self.attempt(&body).await;
        if first.1.ok() {
            return Outcome::Delivered {
                attempts: 1,
                last: first.1,
            };
        }
        self.retry(body, first).await
    }

    /// Writes a failed-delivery entry; returns its id.
    pub fn store_failed(
        &self,
        body: &[u8],
        logs: &[AttemptLog],
        sink: Option<&str>,
    ) -> Option<String> {
        let reason = format!("no 2xx after {} attempts", logs.len());
        self.store_entry(body, logs, sink, reason)
    }

    /// Writes the entry of an event whose delivery was stopped (Ctrl-C) before a 2xx, with
    /// the attempts made so far (none for an event not yet sent); returns its id.
    pub fn store_interrupted(&self, body: &[u8]) -> Option<String> {
        self.store_entry(
            body,
            &[],
            None,
            "interrupted before a 2xx (vfgate send was stopped)".into(),
        )
    }

    fn store_entry(
        &self,
        body: &[u8],
        logs: &[AttemptLog],
        sink: Option<&str>,
        reason: String,
    ) -> Option<String> {
        let store = self.settings.failed.as_ref()?;
        let (event_id, event_type, _) = event_fields(body);
        let entry = FailedEntry {
            id: failed::new_id(),
            target: self.url.clone(),
            version: self.settings.version.clone(),
            header_names: self
                .settings
                .headers
                .iter()
                .map(|(k, _)| k.clone())
                .collect(),
            secret_ref: self.settings.secret.describe(),
            event_id,
            event_type,
            sink: sink.map(str::to_string),
            source: None,
            reason,
            created_at: crate::time::now_rfc3339(),
            attempts: logs.to_vec(),
            event: String::from_utf8_lossy(body).to_string(),
            mapped: None,
            scheme: match self.settings.scheme {
                SendScheme::Vf => String::new(),
                ref other => other.describe(),
            },
        };
        match store.put(&entry) {
            Ok(()) => Some(entry.id),
            Err(e) => {
                tracing::error!(error = %e, event_id = ?Printable(&entry.event_id), "cannot store a failed delivery");
                None
            }
        }
    }
}

/// Parses a recorded secret reference (`env NAME`, `file PATH`).
pub fn parse_secret_ref(s: &str) -> Option<SecretRef> {
    if let Some(n) = s.strip_prefix("env ") {
        Some(SecretRef::Env { env: n.to_string() })
    } else {
        s.strip_prefix("file ")
            .map(|p| SecretRef::File { file: p.into() })
    }
}
