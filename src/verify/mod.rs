//! Verification: pure, clock-injected, constant-time. A source's [`Checker`] checks a
//! request in a fixed order: the signature over the raw bytes first (parsing untrusted input
//! before would expose the JSON parser to unauthenticated attackers), then the version, the
//! media type, the event's shape and its age; only then is there a [`Verified`] event, which
//! nothing else can make. A sender's handshake (Slack's `url_verification`) is recognised
//! after the signature and the signed time window, before the event's shape; Okta's
//! verification `GET` is checked with the shared secret alone.
//!
//! One file per signature scheme with a MAC or signature of its own: `vf.rs`
//! (`X-VF-Signature-256`, the default), `standard_webhooks.rs` (Svix-style `webhook-*`
//! headers, HMAC or ed25519) and `hmac.rs` (a body MAC in a named header, optionally with a
//! signed timestamp); `shared-secret` (a header compared with the secrets, no signature) is
//! the few lines of [`Checker::signature`]. A source chooses its scheme with `scheme`; every
//! scheme but VF reads the event's id, type, time and org through the source's field map.
//! Owns: the checks and their order, and every scheme's MAC (the sender signs with the same
//! functions). Uses `config`, `secret` and `event`; reads no clock (callers pass the time)
//! and knows nothing of dedupe, sinks or HTTP.

pub mod hmac;
pub mod standard_webhooks;
pub mod vf;

pub use vf::{parse_signature, sign, Verifier, VerifyError, SIGNATURE_HEADER, VERSION_HEADER};

use crate::config::{Field, FieldMap, Handshake, Scheme, SourceConfig, TimeField, TimestampFrom};
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
    /// Every header, for the schemes that read their own (`standard-webhooks`, `hmac`).
    pub headers: Option<&'a http::HeaderMap>,
}

impl<'a> RequestParts<'a> {
    /// A header's raw value.
    fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers?.get(name).map(|v| v.as_bytes())
    }

    /// A Standard Webhooks header: its `webhook-` name, else its `svix-` name.
    fn standard(&self, webhook: &str, svix: &str) -> Option<&'a [u8]> {
        self.header(webhook).or_else(|| self.header(svix))
    }

    fn standard_headers(&self) -> standard_webhooks::Headers<'a> {
        standard_webhooks::Headers {
            id: self.standard("webhook-id", "svix-id"),
            timestamp: self.standard("webhook-timestamp", "svix-timestamp"),
            signature: self.standard("webhook-signature", "svix-signature"),
        }
    }
}

/// A source's scheme with its keys ready.
#[derive(Clone)]
enum Keys {
    Vf(Verifier),
    StandardWebhooks {
        keys: Vec<standard_webhooks::Key>,
        tolerance_ms: i64,
        tolerance_text: String,
    },
    Hmac {
        format: hmac::Format,
        header: String,
        keys: Vec<hmac::Key>,
        timestamp: Option<SignedTime>,
    },
    SharedSecret {
        header: String,
        /// SHA-256 of each secret, and its expiry: the received value is hashed and the
        /// digests compared, so the comparison takes the same time whatever either length.
        keys: Vec<([u8; 32], Option<i64>)>,
    },
}

/// An `hmac` scheme's signed timestamp, ready.
#[derive(Debug, Clone)]
struct SignedTime {
    from: TimestampFrom,
    before: String,
    between: String,
    tolerance_ms: i64,
    tolerance_text: String,
}

/// Most digits of a signed unix-seconds timestamp read (year 5138 has 12).
const MAX_TIMESTAMP_DIGITS: usize = 12;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::Vf(v) => write!(f, "vf {v:?}"),
            Keys::StandardWebhooks { keys, .. } => {
                write!(f, "standard-webhooks ({} keys)", keys.len())
            }
            Keys::Hmac { keys, .. } => write!(f, "hmac ({} keys)", keys.len()),
            Keys::SharedSecret { keys, .. } => write!(f, "shared-secret ({} keys)", keys.len()),
        }
    }
}

/// Why a request is refused, in check order. The detail strings never contain a secret or
/// the received signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// 401 `invalid_signature` (the same detail whatever the reason).
    #[error("{0}")]
    InvalidSignature(VerifyError),
    /// 400 `unsupported_version`.
    #[error("{0}")]
    UnsupportedVersion(String),
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 400 `invalid_event`.
    #[error("{0}")]
    InvalidEvent(String),
    /// 400 `stale_event`: older than the window.
    #[error("{0}")]
    StaleEvent(String),
    /// 400 `stale_event`: further ahead than the window.
    #[error("{0}")]
    FutureEvent(String),
}

impl Reject {
    /// The `reason` label of `vfgate_rejections_total`: why a request was refused, finer
    /// than its status code.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::InvalidSignature(e) => e.reason(),
            Reject::UnsupportedVersion(_) => "unsupported_version",
            Reject::UnsupportedMediaType(_) => "unsupported_media_type",
            Reject::InvalidEvent(_) => "invalid_event",
            Reject::StaleEvent(_) => "stale",
            Reject::FutureEvent(_) => "future",
        }
    }

    /// Every reason, for the series created at start-up.
    pub const REASONS: [&'static str; 8] = [
        "signature_missing",
        "signature_malformed",
        "no_key_matched",
        "stale",
        "future",
        "unsupported_version",
        "unsupported_media_type",
        "invalid_event",
    ];
}

/// Everything a source checks before dedupe.
#[derive(Debug, Clone)]
pub struct Checker {
    keys: Keys,
    handshake: Option<Handshake>,
    fields: FieldMap,
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
        let keys = match &src.scheme {
            Scheme::Vf => Keys::Vf(Verifier::new(&src.secrets)),
            Scheme::SharedSecret { header } => Keys::SharedSecret {
                header: header.clone(),
                keys: src
                    .secrets
                    .iter()
                    .map(|s| (digest(s.secret.expose()), s.not_after))
                    .collect(),
            },
            Scheme::StandardWebhooks { tolerance } => Keys::StandardWebhooks {
                keys: src
                    .secrets
                    .iter()
                    .map(|s| {
                        use crate::secret::StandardWebhooksKey as K;
                        match crate::secret::standard_webhooks_key_of(&s.secret) {
                            Ok(K::Public(p)) => standard_webhooks::Key::public(p, s.not_after),
                            Ok(K::Symmetric(k)) => {
                                standard_webhooks::Key::new(k.expose(), s.not_after)
                            }
                            // Config validation refuses these; a key that matches nothing
                            // would be the safe reading anyway.
                            Ok(K::Private(_)) | Err(_) => {
                                standard_webhooks::Key::new(&[], Some(i64::MIN))
                            }
                        }
                    })
                    .collect(),
                tolerance_ms: tolerance.as_millis().min(i64::MAX as u128) as i64,
                tolerance_text: humantime::format_duration(*tolerance).to_string(),
            },
            Scheme::Hmac(h) => {
                let format = hmac::Format {
                    prefix: h.prefix.clone(),
                    encoding: h.encoding,
                    algorithm: h.algorithm,
                    param: h.param.clone(),
                };
                Keys::Hmac {
                    timestamp: h.timestamp.as_ref().map(|t| SignedTime {
                        from: t.from.clone(),
                        before: t.before.clone(),
                        between: t.between.clone(),
                        tolerance_ms: t.tolerance.as_millis().min(i64::MAX as u128) as i64,
                        tolerance_text: humantime::format_duration(t.tolerance).to_string(),
                    }),
                    keys: src
                        .secrets
                        .iter()
                        .map(|s| hmac::Key::new(&format, s.secret.expose(), s.not_after))
                        .collect(),
                    header: h.header.clone(),
                    format,
                }
            }
        };
        Checker {
            keys,
            handshake: src.handshake,
            fields: src.fields.clone(),
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
        let now_s = now_ms.div_euclid(1000);
        let matched = match &self.keys {
            Keys::Vf(v) => v.verify(parts.signature, body, now_s),
            Keys::StandardWebhooks { keys, .. } => {
                standard_webhooks::verify(keys, parts.standard_headers(), body, now_s)
                    .map(|s| s.secret)
            }
            Keys::SharedSecret { header, keys } => {
                use subtle::ConstantTimeEq;
                let given = parts.header(header).unwrap_or_default();
                let given_digest = digest(given);
                let mut matched = None;
                // Every secret is compared, even after a match, so timing tells nothing.
                for (i, (secret, not_after)) in keys.iter().enumerate() {
                    let ok = bool::from(given_digest.ct_eq(secret));
                    let live = not_after.is_none_or(|t| now_s <= t);
                    if ok && live && !given.is_empty() && matched.is_none() {
                        matched = Some(i);
                    }
                }
                matched.ok_or_else(|| VerifyError::of(!given.is_empty(), true))
            }
            Keys::Hmac {
                format,
                header,
                keys,
                timestamp: None,
            } => hmac::verify(format, keys, parts.header(header), body, now_s),
            Keys::Hmac {
                format,
                header,
                keys,
                timestamp: Some(t),
            } => {
                // A timestamp that is missing or not digits cannot have been signed: refused
                // like any signature that does not match.
                let ts =
                    signed_timestamp(parts, header, &t.from).map_err(Reject::InvalidSignature)?;
                let mut head = Vec::with_capacity(t.before.len() + ts.len() + t.between.len());
                head.extend_from_slice(t.before.as_bytes());
                head.extend_from_slice(ts);
                head.extend_from_slice(t.between.as_bytes());
                hmac::verify_message(format, keys, parts.header(header), &head, body, now_s)
            }
        };
        matched.map_err(Reject::InvalidSignature)
    }

    /// The answer to a sender's handshake this source takes, for a request whose signature
    /// [`Checker::signature`] accepted: Slack's `url_verification` (a body
    /// `{"type":"url_verification","challenge":...}`) is answered `{"challenge":...}`. `None`
    /// for any other request, which goes on as an event.
    /// The request's signed timestamp must be within the window and its media type JSON, as
    /// for an event.
    pub fn handshake(
        &self,
        parts: RequestParts<'_>,
        body: &[u8],
        now_ms: i64,
    ) -> Option<Result<(Handshake, Bytes), Reject>> {
        if self.handshake != Some(Handshake::Slack)
            || memchr::memmem::find(body, b"url_verification").is_none()
        {
            return None;
        }
        if let Err(r) = self
            .signed_window(parts, now_ms)
            .and_then(|_| json_media_type(parts.content_type))
        {
            return Some(Err(r));
        }
        #[derive(serde::Deserialize)]
        struct Challenge {
            #[serde(rename = "type")]
            kind: String,
            challenge: Option<String>,
        }
        let c: Challenge = serde_json::from_slice(body).ok()?;
        if c.kind != "url_verification" {
            return None;
        }
        Some(
            challenge_value(c.challenge.as_deref())
                .map(|v| (Handshake::Slack, Bytes::from(serde_json::json!({ "challenge": v }).to_string())))
                .ok_or_else(|| {
                    Reject::InvalidEvent(
                        "url_verification without a challenge of 1 to 256 letters, digits, '-', '_' or '.'".into(),
                    )
                }),
        )
    }

    /// The signed timestamp of an `hmac` scheme that signs one, in unix milliseconds, after
    /// checking that it is within `tolerance` of `now_ms` either way; `None` for a scheme
    /// without one.
    fn signed_window(&self, parts: RequestParts<'_>, now_ms: i64) -> Result<Option<i64>, Reject> {
        let Keys::Hmac {
            header,
            timestamp: Some(t),
            ..
        } = &self.keys
        else {
            return Ok(None);
        };
        let ts = signed_timestamp(parts, header, &t.from)
            .ok()
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
            .ok_or(Reject::InvalidSignature(VerifyError::Malformed))?;
        let ts_ms = ts.saturating_mul(1000);
        if now_ms.saturating_sub(ts_ms).unsigned_abs() > t.tolerance_ms.unsigned_abs() {
            let detail = format!(
                "the signed timestamp {ts} is more than {} from now",
                t.tolerance_text
            );
            return Err(if ts_ms > now_ms {
                Reject::FutureEvent(detail)
            } else {
                Reject::StaleEvent(detail)
            });
        }
        Ok(Some(ts_ms))
    }

    /// Okta's one-time verification: a `GET` with `X-Okta-Verification-Challenge`, whose
    /// shared secret matches, is answered `{"verification":...}` (with the position of the
    /// secret that matched). `None` when the source
    /// takes no such handshake or the request has no challenge header (then it is an
    /// ordinary refused GET).
    pub fn okta_verification(
        &self,
        parts: RequestParts<'_>,
        now_ms: i64,
    ) -> Option<Result<(usize, Bytes), Reject>> {
        if self.handshake != Some(Handshake::Okta) {
            return None;
        }
        let value = parts.header("x-okta-verification-challenge")?;
        let secret = match self.signature(parts, b"", now_ms) {
            Ok(i) => i,
            Err(r) => return Some(Err(r)),
        };
        let v = std::str::from_utf8(value).ok();
        Some(
            challenge_value(v)
                .map(|v| (secret, Bytes::from(serde_json::json!({ "verification": v }).to_string())))
                .ok_or_else(|| {
                    Reject::InvalidEvent(
                        "X-Okta-Verification-Challenge must be 1 to 256 letters, digits, '-', '_' or '.'".into(),
                    )
                }),
        )
    }

    /// Everything after the signature: version, media type, event shape and age. Call only
    /// with a body whose signature [`Checker::signature`] accepted.
    pub fn after_signature(
        &self,
        parts: RequestParts<'_>,
        body: Bytes,
        now_ms: i64,
    ) -> Result<Verified<Event>, Reject> {
        if !matches!(self.keys, Keys::Vf(_)) {
            return self.after_other_signature(parts, body, now_ms);
        }
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
        json_media_type(parts.content_type)?;
        let event = Event::parse(body).map_err(|e| Reject::InvalidEvent(e.0))?;
        self.age_window(&event, now_ms)?;
        Ok(Verified(event))
    }

    /// The VF age window: at most `max_event_age` old, `max_future_skew` ahead.
    fn age_window(&self, event: &Event, now_ms: i64) -> Result<(), Reject> {
        let age = now_ms.saturating_sub(event.timestamp_ms);
        if age > self.max_age_ms {
            return Err(Reject::StaleEvent(format!(
                "timestamp {} is older than max_event_age ({})",
                event.timestamp, self.max_age_text
            )));
        }
        if -age > self.max_skew_ms {
            return Err(Reject::FutureEvent(format!(
                "timestamp {} is more than {} in the future",
                event.timestamp, self.max_skew_text
            )));
        }
        Ok(())
    }

    /// After a `standard-webhooks` or `hmac` signature: media type, the body as one JSON
    /// object, the event's fields through the source's field map, and the time window
    /// (`tolerance` on the signed timestamp, or the age window on a mapped one).
    fn after_other_signature(
        &self,
        parts: RequestParts<'_>,
        body: Bytes,
        now_ms: i64,
    ) -> Result<Verified<Event>, Reject> {
        json_media_type(parts.content_type)?;
        let json = Event::json_object(&body).map_err(|e| Reject::InvalidEvent(e.0))?;
        let read = |f: &Option<Field>, what: &str| -> Result<Option<String>, Reject> {
            match f {
                None => Ok(None),
                Some(f) => lookup(f, parts, &json).map(Some).ok_or_else(|| {
                    Reject::InvalidEvent(format!(
                        "{what} ({}) is missing or not a string or number",
                        describe(f)
                    ))
                }),
            }
        };
        // The type and org are optional, as in a VF event: missing, they are empty.
        let event_type = self
            .fields
            .event_type
            .as_ref()
            .and_then(|f| lookup(f, parts, &json))
            .unwrap_or_default();
        let org_id = self
            .fields
            .org_id
            .as_ref()
            .and_then(|f| lookup(f, parts, &json));
        let mut signed_ts_ms = None;
        let (event_id, timestamp_ms) = match &self.keys {
            Keys::StandardWebhooks {
                tolerance_ms,
                tolerance_text,
                ..
            } => {
                // Both were checked with the signature; read them again as text.
                let h = parts.standard_headers();
                let id = String::from_utf8_lossy(h.id.unwrap_or_default()).into_owned();
                let ts: i64 = std::str::from_utf8(h.timestamp.unwrap_or_default())
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or(Reject::InvalidSignature(VerifyError::Malformed))?;
                let ts_ms = ts.saturating_mul(1000);
                if now_ms.saturating_sub(ts_ms).unsigned_abs() > tolerance_ms.unsigned_abs() {
                    let detail =
                        format!("webhook-timestamp {ts} is more than {tolerance_text} from now");
                    return Err(if ts_ms > now_ms {
                        Reject::FutureEvent(detail)
                    } else {
                        Reject::StaleEvent(detail)
                    });
                }
                (id, ts_ms)
            }
            _ => {
                let id = read(&self.fields.event_id, "event_id")?
                    .ok_or_else(|| Reject::InvalidEvent("event_id is not configured".into()))?;
                signed_ts_ms = self.signed_window(parts, now_ms)?;
                let ts = match &self.fields.timestamp {
                    Some(TimeField::Signed) => signed_ts_ms,
                    Some(TimeField::Pointer(p)) => Some(
                        json.pointer(p)
                            .and_then(time_value)
                            .ok_or_else(|| {
                                Reject::InvalidEvent(format!(
                                    "timestamp ({p}) is missing, or neither an RFC 3339 date-time nor unix seconds"
                                ))
                            })?,
                    ),
                    Some(TimeField::Received) | None => None,
                };
                (id, ts.unwrap_or(now_ms))
            }
        };
        let event = Event::mapped(body, event_id, event_type, timestamp_ms, org_id)
            .map_err(|e| Reject::InvalidEvent(e.0))?;
        // A signed timestamp was checked against the tolerance above; a mapped time alone
        // gets the age window.
        if signed_ts_ms.is_none() && matches!(self.fields.timestamp, Some(TimeField::Pointer(_))) {
            self.age_window(&event, now_ms)?;
        }
        Ok(Verified(event))
    }
}

/// SHA-256 of a shared secret or of a received header value (fixed length, so that comparing
/// two never depends on their lengths).
fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// A handshake challenge vfgate may echo: 1 to 256 of `[A-Za-z0-9_.-]` (Slack's and Okta's
/// are such); anything else is not echoed.
fn challenge_value(v: Option<&str>) -> Option<&str> {
    v.filter(|v| {
        !v.is_empty()
            && v.len() <= 256
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    })
}

/// The signed timestamp of an `hmac` request, as its digits: from its own header, or a key of
/// the signature header's `key=value` list. Missing, or not 1 to 12 ASCII digits
/// (malformed), is an error.
fn signed_timestamp<'a>(
    parts: RequestParts<'a>,
    signature_header: &str,
    from: &TimestampFrom,
) -> Result<&'a [u8], VerifyError> {
    let raw = match from {
        TimestampFrom::Header(h) => parts.header(h).map(<[u8]>::trim_ascii),
        TimestampFrom::Param(p) => parts
            .header(signature_header)
            .and_then(|v| hmac::param(v, p)),
    };
    let raw = raw.filter(|r| !r.is_empty()).ok_or(VerifyError::Missing)?;
    (raw.len() <= MAX_TIMESTAMP_DIGITS && raw.iter().all(u8::is_ascii_digit))
        .then_some(raw)
        .ok_or(VerifyError::Malformed)
}

/// The media type check every scheme shares: `application/json`.
fn json_media_type(ct: Option<&[u8]>) -> Result<(), Reject> {
    match ct {
        Some(ct) if is_json_media_type(ct) => Ok(()),
        Some(ct) => Err(Reject::UnsupportedMediaType(format!(
            "Content-Type {:?} is not application/json",
            lossy(ct)
        ))),
        None => Err(Reject::UnsupportedMediaType(
            "Content-Type is missing; expected application/json".into(),
        )),
    }
}

/// A mapped field's value: a header's text, or a string or number at a JSON pointer.
fn lookup(f: &Field, parts: RequestParts<'_>, json: &serde_json::Value) -> Option<String> {
    match f {
        Field::Header(h) => parts
            .header(h)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim().to_string()),
        Field::Pointer(p) => match json.pointer(p)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
    }
}

fn describe(f: &Field) -> String {
    match f {
        Field::Header(h) => format!("header {h}"),
        Field::Pointer(p) => p.clone(),
    }
}

/// Unix milliseconds of a mapped time: an RFC 3339 string, or unix seconds (a number).
fn time_value(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => crate::time::parse_rfc3339_ms(s),
        serde_json::Value::Number(n) => {
            n.as_i64().and_then(|s| s.checked_mul(1000)).or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| (f * 1000.0) as i64)
            })
        }
        _ => None,
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
            headers: None,
        };
        let (ev, pos) = c.check(ok, b.clone(), NOW).unwrap();
        assert_eq!((ev.get().event_id.as_str(), pos), ("e1", 0));
        // Signature is checked before everything else.
        let bad = RequestParts {
            signature: None,
            version: None,
            content_type: None,
            headers: None,
        };
        assert_eq!(
            c.check(bad, b.clone(), NOW).unwrap_err(),
            Reject::InvalidSignature(VerifyError::Missing)
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
            matches!(r, Reject::FutureEvent(ref d) if d.contains("future")),
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
                headers: None,
            };
            let _ = checker.check(parts, Bytes::from(body.clone()), now);
        }
    }
    use crate::config::Config;
}

#[cfg(test)]
mod scheme_tests {
    use super::*;
    use crate::config::Config;

    const NOW_MS: i64 = 1_700_000_000_000;
    const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn source(keys: &str) -> SourceConfig {
        let text = format!(
            "[[source]]\nname = \"s\"\npath = \"/e\"\nsinks = [\"f\"]\n{keys}\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n"
        );
        let mut c = Config::parse(&text, &crate::config::AnySinkType).unwrap();
        c.sources.remove(0)
    }

    fn err(keys: &str) -> String {
        let text = format!(
            "[[source]]\nname = \"s\"\npath = \"/e\"\nsinks = [\"f\"]\n{keys}\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n"
        );
        Config::parse(&text, &crate::config::AnySinkType)
            .unwrap_err()
            .to_string()
    }

    fn headers(pairs: &[(&'static str, String)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn check(c: &Checker, h: &http::HeaderMap, body: &str, now: i64) -> Result<Event, Reject> {
        let parts = RequestParts {
            content_type: h.get("content-type").map(|v| v.as_bytes()),
            headers: Some(h),
            ..Default::default()
        };
        c.check(parts, Bytes::from(body.to_string()), now)
            .map(|(v, _)| v.into_inner())
    }

    proptest::proptest! {
        /// Any values in the headers a preset's source reads (signature, signed timestamp,
        /// ids, challenge), any body and any clock: a refusal or an event, never a panic.
        #[test]
        fn any_headers_on_a_preset_source_never_panic(
            preset in proptest::sample::select(vec!["github", "shopify", "slack", "stripe", "okta", "standard-webhooks"]),
            values in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..90), 6),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            now in proptest::prelude::any::<i64>(),
        ) {
            let secret = if preset == "standard-webhooks" { WHSEC } else { "s3cret-value-0123456" };
            let c = Checker::new(&source(&format!("preset = \"{preset}\"\nsecrets = [{{ value = \"{secret}\" }}]")));
            let names = ["stripe-signature", "x-slack-signature", "x-slack-request-timestamp", "authorization", "webhook-signature", "x-okta-verification-challenge"];
            let mut h = http::HeaderMap::new();
            for (name, v) in names.iter().zip(&values) {
                if let Ok(v) = http::HeaderValue::from_bytes(v) {
                    h.insert(*name, v);
                }
            }
            let parts = RequestParts { headers: Some(&h), ..Default::default() };
            let _ = c.check(parts, Bytes::from(body.clone()), now);
            let _ = c.handshake(parts, &body, now);
            let _ = c.okta_verification(parts, now);
        }
    }

    #[test]
    fn a_standard_webhooks_source_verifies_maps_and_bounds_the_timestamp() {
        let src = source(&format!(
            "scheme = \"standard-webhooks\"\nsecrets = [{{ value = \"{WHSEC}\" }}]\ntolerance = \"5m\"\nfields = {{ event_type = \"/type\", org_id = \"/data/org\" }}"
        ));
        let c = Checker::new(&src);
        let key = crate::secret::standard_webhooks_key(&crate::secret::Secret::new(WHSEC)).unwrap();
        let body = r#"{"type":"user.created","data":{"org":"o1"}}"#;
        let ts = NOW_MS / 1000 - 60;
        let sig = standard_webhooks::sign(key.expose(), "msg_1", ts, body.as_bytes());
        for prefix in ["webhook", "svix"] {
            let h = headers(&[
                (
                    if prefix == "webhook" {
                        "webhook-id"
                    } else {
                        "svix-id"
                    },
                    "msg_1".into(),
                ),
                (
                    if prefix == "webhook" {
                        "webhook-timestamp"
                    } else {
                        "svix-timestamp"
                    },
                    ts.to_string(),
                ),
                (
                    if prefix == "webhook" {
                        "webhook-signature"
                    } else {
                        "svix-signature"
                    },
                    sig.clone(),
                ),
            ]);
            let e = check(&c, &h, body, NOW_MS).unwrap();
            assert_eq!(
                (
                    e.event_id.as_str(),
                    e.event_type.as_str(),
                    e.timestamp_ms,
                    e.org_id.as_deref()
                ),
                ("msg_1", "user.created", ts * 1000, Some("o1")),
                "{prefix}-* headers"
            );
            assert_eq!(
                check(&c, &h, body, NOW_MS + 301_000).err(),
                Some(Reject::StaleEvent(
                    "webhook-timestamp 1699999940 is more than 5m from now".into()
                ))
            );
            assert!(
                matches!(
                    check(&c, &h, body, NOW_MS - 361_000),
                    Err(Reject::FutureEvent(_))
                ),
                "ahead of now"
            );
            assert_eq!(
                check(&c, &h, &body.replace("o1", "o2"), NOW_MS).err(),
                Some(Reject::InvalidSignature(VerifyError::NoMatch))
            );
        }
    }

    #[test]
    fn an_hmac_source_reads_its_id_from_a_header_and_its_time_from_the_body() {
        let src = source(
            "scheme = \"hmac\"\nsecrets = [{ value = \"It's a Secret to Everybody\" }]\nhmac = { header = \"X-Hub-Signature-256\", prefix = \"sha256=\" }\nfields = { event_id = { header = \"X-GitHub-Delivery\" }, event_type = { header = \"X-GitHub-Event\" }, timestamp = \"/at\" }",
        );
        let c = Checker::new(&src);
        let at = crate::time::rfc3339_ms(NOW_MS - 1000);
        let body = format!(r#"{{"at":"{at}","zen":"x"}}"#);
        let format = hmac::Format {
            prefix: "sha256=".into(),
            encoding: hmac::Encoding::Hex,
            algorithm: hmac::Algorithm::Sha256,
            param: None,
        };
        let sig = hmac::sign(&format, b"It's a Secret to Everybody", body.as_bytes());
        let h = headers(&[
            ("x-hub-signature-256", sig.clone()),
            ("x-github-delivery", "d-1".into()),
            ("x-github-event", "push".into()),
        ]);
        let e = check(&c, &h, &body, NOW_MS).unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.event_type.as_str(), e.timestamp_ms),
            ("d-1", "push", NOW_MS - 1000)
        );
        let no_id = headers(&[("x-hub-signature-256", sig.clone())]);
        assert_eq!(
            check(&c, &no_id, &body, NOW_MS).err(),
            Some(Reject::InvalidEvent(
                "event_id (header x-github-delivery) is missing or not a string or number".into()
            ))
        );
        assert!(matches!(
            check(&c, &h, &body, NOW_MS + 90_000_000),
            Err(Reject::StaleEvent(_))
        ));
        // A hex digit too many is malformed; a wrong MAC of the right shape matches no key;
        // no header is missing: three reasons, one answer.
        let wrong = headers(&[("x-hub-signature-256", sig.replace("sha256=", "sha256=0"))]);
        assert_eq!(
            check(&c, &wrong, &body, NOW_MS).err(),
            Some(Reject::InvalidSignature(VerifyError::Malformed))
        );
        // The first MAC byte changed: right shape, wrong MAC.
        let flipped = if &sig[7..9] == "00" { "11" } else { "00" };
        let other = format!("sha256={flipped}{}", &sig[9..]);
        let other = headers(&[("x-hub-signature-256", other)]);
        assert_eq!(
            check(&c, &other, &body, NOW_MS).err(),
            Some(Reject::InvalidSignature(VerifyError::NoMatch))
        );
        let none = headers(&[("x-github-delivery", "d-1".into())]);
        let missing = check(&c, &none, &body, NOW_MS).unwrap_err();
        assert_eq!(missing, Reject::InvalidSignature(VerifyError::Missing));
        assert_eq!(
            missing.to_string(),
            Reject::InvalidSignature(VerifyError::NoMatch).to_string(),
            "the sender is told the same for every reason"
        );
    }

    #[test]
    fn scheme_keys_are_checked_with_their_key_path() {
        assert_eq!(
            err("scheme = \"hmac\"\nsecrets = [{ value = \"k\" }]\nhmac = { header = \"X-Sig\" }"),
            "source[0].fields.event_id: required for scheme = \"hmac\" (a JSON pointer or { header = \"...\" }): without an id there is no dedupe"
        );
        assert_eq!(
            err("scheme = \"standard-webhooks\"\nsecrets = [{ value = \"whsec_***\" }]"),
            "source[0].secrets[0]: not a Standard Webhooks secret: expected \"whsec_\" followed by base64 (as the sender shows it)"
        );
        assert!(err("secrets = [{ value = \"k\" }]\ntolerance = \"5m\"")
            .starts_with("source[0].tolerance: only for scheme"));
        assert!(err("scheme = \"hmac\"\nsecrets = [{ value = \"k\" }]\nversions = [\"1\"]\nhmac = { header = \"X\" }\nfields = { event_id = \"/id\" }").starts_with("source[0].versions: only for scheme"));
        assert!(err("scheme = \"hmac\"\nsecrets = [{ value = \"k\" }]\nhmac = { header = \"X\" }\nfields = { event_id = \"id\" }").contains("is not a JSON pointer"));
        let sha1 = "scheme = \"hmac\"\nsecrets = [{ value = \"0123456789abcdef0\" }]\nhmac = { header = \"X\", algorithm = \"sha1\" }\nfields = { event_id = \"/id\", timestamp = \"received\" }";
        let text = format!("[[source]]\nname = \"s\"\npath = \"/e\"\nsinks = [\"f\"]\n{sha1}\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n");
        let c = Config::parse(&text, &crate::config::AnySinkType).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("HMAC-SHA1 is weak")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings.iter().any(|w| w.contains("no age check")),
            "{:?}",
            c.warnings
        );
    }
}
