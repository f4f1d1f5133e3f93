//! Verification: pure, clock-injected, constant-time. A source's [`Checker`] checks a
//! request in a fixed order: the signature over the raw bytes first (parsing untrusted input
//! before would expose the JSON parser to unauthenticated attackers), then the version, the
//! media type, the event's shape and its age; only then is there a [`Verified`] event, which
//! nothing else can make.
//!
//! One file per signature scheme: `vf.rs` (`X-VF-Signature-256`, the default),
//! `standard_webhooks.rs` (Svix-style `webhook-*` headers) and `hmac.rs` (a body MAC in a
//! named header); a source chooses its scheme with `scheme` (the last two are being wired in:
//! their MACs are complete and tested, their config and field mapping are not yet). Owns: the
//! checks and their order, and every scheme's MAC. Uses `config`, `secret` and `event`;
//! reads no clock (callers pass the time) and knows nothing of dedupe, sinks or HTTP.

pub mod hmac;
pub mod standard_webhooks;
pub mod vf;

pub use vf::{parse_signature, sign, Verifier, VerifyError, SIGNATURE_HEADER, VERSION_HEADER};

use crate::config::SourceConfig;
use crate::event::{Event, Verified};
use bytes::Bytes;

/// The request headers that verification reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `X-VF-Signature-256`.
    pub signature: Option<&'a [u8]>,
    /// `X-VF-Webhook-Version`.
    pub version: Option<&'a [u8]>,
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
}

/// Why a request is refused, in check order. The detail strings never contain a secret or
/// the received signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// 401 `invalid_signature`.
    #[error("signature missing, malformed or not matching any configured secret")]
    InvalidSignature,
    /// 400 `unsupported_version`.
    #[error("{0}")]
    UnsupportedVersion(String),
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 400 `invalid_event`.
    #[error("{0}")]
    InvalidEvent(String),
    /// 400 `stale_event`.
    #[error("{0}")]
    StaleEvent(String),
}

/// Everything a source checks before dedupe.
#[derive(Debug, Clone)]
pub struct Checker {
    verifier: Verifier,
    versions: Vec<String>,
    require_version: bool,
    max_age_ms: i64,
    max_skew_ms: i64,
    max_age_text: String,
    max_skew_text: String,
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(64)]).to_string();
    if b.len() > 64 {
        format!("{s}...")
    } else {
        s
    }
}

/// Whether a Content-Type is `application/json` (parameters such as charset allowed).
pub fn is_json_media_type(ct: &[u8]) -> bool {
    let media = ct.split(|&c| c == b';').next().unwrap_or(b"");
    media.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

impl Checker {
    /// The checker of a source.
    pub fn new(src: &SourceConfig) -> Checker {
        Checker {
            verifier: Verifier::new(&src.secrets),
            versions: src.versions.clone(),
            require_version: src.require_version,
            max_age_ms: src.max_event_age.as_millis().min(i64::MAX as u128) as i64,
            max_skew_ms: src.max_future_skew.as_millis().min(i64::MAX as u128) as i64,
            max_age_text: humantime::format_duration(src.max_event_age).to_string(),
            max_skew_text: humantime::format_duration(src.max_future_skew).to_string(),
        }
    }

    /// Checks a request at unix milliseconds `now_ms`: signature over the raw bytes first,
    /// then version, media type, event shape and age. Returns the verified event and the
    /// position of the secret that matched.
    pub fn check(
        &self,
        parts: RequestParts<'_>,
        body: Bytes,
        now_ms: i64,
    ) -> Result<(Verified<Event>, usize), Reject> {
        let secret = self.signature(parts, &body, now_ms)?;
        Ok((self.after_signature(parts, body, now_ms)?, secret))
    }

    /// The signature check alone: the position of the matching secret.
    pub fn signature(
        &self,
        parts: RequestParts<'_>,
        body: &[u8],
        now_ms: i64,
    ) -> Result<usize, Reject> {
        self.verifier
            .verify(parts.signature, body, now_ms.div_euclid(1000))
            .map_err(|_| Reject::InvalidSignature)
    }

    /// Everything after the signature: version, media type, event shape and age. Call only
    /// with a body whose signature [`Checker::signature`] accepted.
    pub fn after_signature(
        &self,
        parts: RequestParts<'_>,
        body: Bytes,
        now_ms: i64,
    ) -> Result<Verified<Event>, Reject> {
        match parts.version {
            None if self.require_version => {
                return Err(Reject::UnsupportedVersion(
                    "the X-VF-Webhook-Version header is required".into(),
                ))
            }
            None => {}
            Some(v) if !self.versions.iter().any(|a| a.as_bytes() == v.trim_ascii()) => {
                return Err(Reject::UnsupportedVersion(format!(
                    "webhook version {:?} is not accepted (accepted: {})",
                    lossy(v),
                    self.versions.join(", ")
                )));
            }
            Some(_) => {}
        }
        match parts.content_type {
            Some(ct) if is_json_media_type(ct) => {}
            Some(ct) => {
                return Err(Reject::UnsupportedMediaType(format!(
                    "Content-Type {:?} is not application/json",
                    lossy(ct)
                )))
            }
            None => {
                return Err(Reject::UnsupportedMediaType(
                    "Content-Type is missing; expected application/json".into(),
                ))
            }
        }
        let event = Event::parse(body).map_err(|e| Reject::InvalidEvent(e.0))?;
        let age = now_ms.saturating_sub(event.timestamp_ms);
        if age > self.max_age_ms {
            return Err(Reject::StaleEvent(format!(
                "timestamp {} is older than max_event_age ({})",
                event.timestamp, self.max_age_text
            )));
        }
        if -age > self.max_skew_ms {
            return Err(Reject::StaleEvent(format!(
                "timestamp {} is more than {} in the future",
                event.timestamp, self.max_skew_text
            )));
        }
        Ok(Verified(event))
    }
}

#[cfg(test)]
mod checker_tests {
    use super::*;
    use crate::config::Config;

    fn checker() -> Checker {
        let c = Config::parse(
            r#"
[[source]]
name = "s"
path = "/e"
secrets = [{ value = "k" }]
versions = ["1", "2"]
max_event_age = "1h"
max_future_skew = "5m"
sinks = ["f"]
[sink.f]
type = "file"
path = "/dev/null"
"#,
            &crate::config::AnySinkType,
        )
        .unwrap();
        Checker::new(&c.sources[0])
    }

    const NOW: i64 = 1_715_678_493_417 + 1000;

    fn body() -> Bytes {
        Bytes::from_static(
            br#"{"event_id":"e1","event_type":"t","timestamp":"2024-05-14T09:21:33.417Z"}"#,
        )
    }

    fn sig(b: &[u8]) -> String {
        sign(&crate::secret::Secret::new(b"k".to_vec()), b)
    }

    #[test]
    fn order_and_reasons() {
        let c = checker();
        let b = body();
        let s = sig(&b);
        let ok = RequestParts {
            signature: Some(s.as_bytes()),
            version: Some(b"2"),
            content_type: Some(b"Application/JSON; charset=utf-8"),
        };
        let (ev, pos) = c.check(ok, b.clone(), NOW).unwrap();
        assert_eq!((ev.get().event_id.as_str(), pos), ("e1", 0));
        // Signature is checked before everything else.
        let bad = RequestParts {
            signature: None,
            version: None,
            content_type: None,
        };
        assert_eq!(
            c.check(bad, b.clone(), NOW).unwrap_err(),
            Reject::InvalidSignature
        );
        let r = c
            .check(
                RequestParts {
                    version: None,
                    ..ok
                },
                b.clone(),
                NOW,
            )
            .unwrap_err();
        assert!(matches!(r, Reject::UnsupportedVersion(_)));
        let r = c
            .check(
                RequestParts {
                    version: Some(b"3"),
                    ..ok
                },
                b.clone(),
                NOW,
            )
            .unwrap_err();
        assert_eq!(
            r.to_string(),
            "webhook version \"3\" is not accepted (accepted: 1, 2)"
        );
        let r = c
            .check(
                RequestParts {
                    content_type: Some(b"text/plain"),
                    ..ok
                },
                b.clone(),
                NOW,
            )
            .unwrap_err();
        assert!(matches!(r, Reject::UnsupportedMediaType(_)));
        let r = c.check(ok, b.clone(), NOW + 3_600_000).unwrap_err();
        assert!(
            matches!(r, Reject::StaleEvent(ref d) if d.contains("older")),
            "{r:?}"
        );
        let r = c.check(ok, b.clone(), NOW - 301_000 - 1000).unwrap_err();
        assert!(
            matches!(r, Reject::StaleEvent(ref d) if d.contains("future")),
            "{r:?}"
        );
        let nb = Bytes::from_static(b"[]");
        let ns = sig(&nb);
        let r = c
            .check(
                RequestParts {
                    signature: Some(ns.as_bytes()),
                    ..ok
                },
                nb,
                NOW,
            )
            .unwrap_err();
        assert_eq!(r, Reject::InvalidEvent("body must be a JSON object".into()));
    }
}

#[cfg(test)]
mod checker_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_request_never_panics(
            sig in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
            ver in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            ct in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            now in any::<i64>(),
            signed in any::<bool>(),
        ) {
            let c = Config::parse("[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{ value = \"k\" }]\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n", &crate::config::AnySinkType).unwrap();
            let checker = Checker::new(&c.sources[0]);
            let good = sign(&crate::secret::Secret::new(b"k".to_vec()), &body);
            let parts = RequestParts {
                signature: if signed { Some(good.as_bytes()) } else { sig.as_deref() },
                version: ver.as_deref(),
                content_type: ct.as_deref(),
            };
            let _ = checker.check(parts, Bytes::from(body.clone()), now);
        }
    }
    use crate::config::Config;
}
