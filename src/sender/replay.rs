//! Replaying a sender-mode failed delivery to the target it recorded (used by
//! `vfgate failed replay` and the admin API). Library only. Owns: one replay of a claimed
//! entry; the claim is `deadletter`'s, the sending [`WebhookSender`]'s. Uses `config`,
//! `deadletter` and `secret`; knows nothing of sinks or the spool (their dead letters replay
//! through `spool::drain`).

use super::{parse_secret_ref, Answer, SendScheme, SenderError, SenderSettings, WebhookSender};
use crate::config::RawClientTls;
use crate::deadletter::{Claim, StoreError};
use crate::secret::SecretRef;
use bytes::Bytes;
use std::time::Duration;

/// Why a failed delivery could not be replayed (the entry is back in the store, or stays).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The entry names no secret reference that can be loaded.
    #[error("entry {id} records no usable secret reference ({recorded:?}); give --secret-env")]
    NoSecret {
        /// Entry id.
        id: String,
        /// What it records.
        recorded: String,
    },
    /// The entry records a signing scheme this version does not know.
    #[error("entry {id} records a signing scheme this version cannot read ({recorded:?})")]
    UnknownScheme {
        /// Entry id.
        id: String,
        /// What it records.
        recorded: String,
    },
    /// The sender could not be set up (URL, TLS, secret).
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Re-sends one claimed entry to its recorded target once; on success the entry is
/// removed, otherwise it goes back to the store with the attempt added. Either way the claim
/// is finished here (an entry that cannot be sent goes back untouched).
pub async fn replay_entry(
    claim: Claim,
    secret_override: Option<&str>,
    headers: &[(String, Vec<u8>)],
    timeout: Duration,
    tls: &RawClientTls,
) -> Result<Answer, ReplayError> {
    let entry = claim.entry();
    let id = entry.id.clone();
    let secret = match secret_override {
        Some(env) => Some(SecretRef::Env {
            env: env.to_string(),
        }),
        None => parse_secret_ref(&entry.secret_ref),
    };
    let Some(secret) = secret else {
        let why = ReplayError::NoSecret {
            id,
            recorded: entry.secret_ref.clone(),
        };
        claim.release()?;
        return Err(why);
    };
    let Some(scheme) = SendScheme::parse(&entry.scheme) else {
        let why = ReplayError::UnknownScheme {
            id,
            recorded: entry.scheme.clone(),
        };
        claim.release()?;
        return Err(why);
    };
    let sender = match WebhookSender::new(SenderSettings {
        url: entry.target.clone(),
        secret,
        version: entry.version.clone(),
        headers: headers.to_vec(),
        timeout,
        schedule: vec![],
        failed: None,
        tls: tls.clone(),
        scheme,
    }) {
        Ok(s) => s,
        Err(e) => {
            claim.release()?;
            return Err(e.into());
        }
    };
    let body = Bytes::from(entry.event.clone().into_bytes());
    let (log, ans) = sender.attempt(&body).await;
    if ans.ok() {
        claim.delivered()?;
    } else {
        claim.keep(log)?;
    }
    Ok(ans)
}
