//! `webhook` sink: relay verified events to another VF webhook receiver (another gateway),
//! re-signed with this hop's secret, exactly as the reference sender delivers them.
//!
//! One event per POST (a batch is sent one event after another, in order), `Content-Type:
//! application/json`, `X-VF-Signature-256` over the exact bytes sent, `X-VF-Webhook-Version`,
//! the custom headers. In `serve` with `ack = "forward"` the near sender is answered after the
//! far side's 2xx; a non-2xx or a timeout is retried within the sink's `retry.budget`, then the
//! near sender gets 503/504 and retries on its own schedule. `retry_schedule` and `failed_dir`
//! are the reference sender's schedule and store for `vfgate send`; in `serve`, a spooled
//! webhook sink retries on `retry_schedule` and dead-letters into `<spool.dir>/dead-letter`.
//!
//! ```toml
//! [sink.relay]
//! type = "webhook"
//! url = "https://gateway.other-network.example/v1/events"
//! secret = { env = "RELAY_SECRET" }
//! ```
//!
//! Owns: this target's settings and answer classification. Signing and sending are
//! [`crate::sender::WebhookSender`]'s (the layer below sinks); batching and retries are the
//! pipeline's (or, on `retry_schedule`, the spool drainer's).

use super::{Attempt, RetryKind, SendResult, Sink, SinkType, Verdict};
use crate::config::{sink_keys, ConfigError, DurationStr, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::{Secret, SecretRef};
use crate::sender::{SenderSettings, WebhookSender};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The `webhook` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "webhook",
        max_events: crate::config::defaults::MAX_BATCH_EVENTS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// `[sink.NAME]` keys of a webhook sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The far receiver's URL.
    pub url: String,
    /// This hop's signing secret.
    pub secret: SecretRef,
    /// `X-VF-Webhook-Version` to send.
    #[serde(default = "default_version")]
    pub version: String,
    /// Custom headers.
    #[serde(default)]
    pub headers: BTreeMap<String, super::http::HeaderValue>,
    /// Waits before each retry when spooled (default the reference sender's).
    pub retry_schedule: Option<Vec<DurationStr>>,
    /// Failed-deliveries store when spooled.
    pub failed_dir: Option<PathBuf>,
    /// Outbound TLS.
    #[serde(default)]
    pub tls: RawClientTls,
}

fn default_version() -> String {
    "1".into()
}

/// Validated settings: the sender's, and its signing secret loaded.
struct Settings {
    sender: SenderSettings,
    secret: Secret,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: WebhookConfig = sink_keys(common, keys)?;
    let key = common.key();
    crate::client::Target::parse(&c.url)
        .map_err(|e| ConfigError::invalid(format!("{key}.url"), e))?;
    let secret = c
        .secret
        .load()
        .map_err(|e| ConfigError::invalid(format!("{key}.secret"), e.to_string()))?;
    if c.version.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.version"),
            "must not be empty",
        ));
    }
    let headers = super::http::resolve_headers(&key, &c.headers)?;
    let sender = SenderSettings {
        url: c.url,
        secret: c.secret,
        version: c.version,
        headers,
        timeout: common.timeout,
        schedule: c
            .retry_schedule
            .map(|v| v.into_iter().map(|d| d.0).collect())
            .unwrap_or_else(|| crate::sender::DEFAULT_SCHEDULE.to_vec()),
        failed: c.failed_dir.map(crate::deadletter::FailedStore::new),
        tls: c.tls,
        scheme: crate::sender::SendScheme::Vf,
    };
    Ok(Settings { sender, secret })
}

fn build(common: &SinkCommon, s: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let sender = WebhookSender::with_secret(s.sender.clone(), s.secret.clone())
        .map_err(|e| ConfigError::invalid(format!("{}.url", common.key()), e.to_string()))?;
    Ok(Arc::new(WebhookSink { sender }))
}

/// The sink.
pub struct WebhookSink {
    sender: WebhookSender,
}

#[async_trait]
impl Sink for WebhookSink {
    /// The bodies of the POSTs `send` makes, one per line (each is the event as received).
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        let mut out = Vec::with_capacity(batch.iter().map(|e| e.body.len() + 1).sum());
        for e in batch {
            out.extend_from_slice(&e.body);
            out.push(b'\n');
        }
        Ok(out)
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut status = String::new();
        for e in batch {
            let (_, ans) = self.sender.attempt(&e.body).await;
            status = ans
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "error".into());
            verdicts.push(match (ans.status, &ans.error) {
                (Some(200..=299), _) => Verdict::Ok,
                (Some(s), _) => Verdict::retry(
                    RetryKind::Unavailable,
                    format!(
                        "receiver answered {s}: {}",
                        String::from_utf8_lossy(&ans.body[..ans.body.len().min(200)]).trim()
                    ),
                    None,
                ),
                (None, Some(err @ crate::client::ClientError::Timeout(_))) => {
                    Verdict::retry(RetryKind::Timeout, err.to_string(), None)
                }
                (None, err) => Verdict::retry(
                    RetryKind::Unavailable,
                    err.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                    None,
                ),
            });
        }
        Attempt {
            status,
            result: SendResult::PerEvent(verdicts),
        }
    }

    fn ordered(&self) -> bool {
        // One event per POST, events of an org in arrival order: one batch at a time.
        true
    }

    fn retry_schedule(&self) -> Option<&[std::time::Duration]> {
        Some(&self.sender.settings().schedule)
    }

    fn destination(&self) -> String {
        let target = self.sender.target();
        super::http_destination(TYPE.name(), target, &target.path)
    }

    fn webhook_version(&self) -> Option<&str> {
        Some(&self.sender.settings().version)
    }
}
