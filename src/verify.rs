//! Signature and version verification: pure, clock-injected, constant-time.
//!
//! `X-VF-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>`. The MAC is computed over
//! the raw bytes before anything parses the body (parsing untrusted input first would expose
//! the JSON parser to unauthenticated attackers), and compared with `Mac::verify_slice`
//! (constant time). Every configured secret is tried, even after a match, so the time taken
//! does not tell which secret matched. A malformed header, a missing one and a wrong MAC all
//! give the same error: nothing tells an attacker which check failed.
//!
//! Owns: the signature, version, shape and age checks and the MAC (`sign`, which sender
//! mode uses too). Uses `config`, `secret` and `event`; reads no clock (callers pass the
//! time) and knows nothing of dedupe, sinks or HTTP.

use crate::config::SourceSecret;
use crate::secret::Secret;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-vf-signature-256";
/// The version header.
pub const VERSION_HEADER: &str = "x-vf-webhook-version";

/// Why verification failed. Carries no secret and no received signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Header missing, malformed, or no secret matches (indistinguishable on purpose).
    #[error("signature missing, malformed or not matching any configured secret")]
    InvalidSignature,
}

/// One key of a source, with the HMAC state pre-keyed (saves hashing the key per request).
#[derive(Clone)]
struct Key {
    mac: HmacSha256,
    not_after: Option<i64>,
}

/// The secrets of one source, ready to verify.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} keys)", self.keys.len())
    }
}

/// Computes `sha256=<hex>` for a body: what a sender puts in the header.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Parses `sha256=` + 64 hex digits (either case) into 32 bytes.
pub fn parse_signature(value: &[u8]) -> Option<[u8; 32]> {
    let hex_part = value.strip_prefix(b"sha256=")?;
    if hex_part.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

impl Verifier {
    /// Builds a verifier from a source's secrets, in order (positions are metric labels).
    pub fn new(secrets: &[SourceSecret]) -> Verifier {
        Verifier {
            keys: secrets
                .iter()
                .map(|s| Key {
                    mac: HmacSha256::new_from_slice(s.secret.expose())
                        .expect("HMAC takes any key length"),
                    not_after: s.not_after,
                })
                .collect(),
        }
    }

    /// Verifies `header` (the raw `X-VF-Signature-256` value, if any) over `body` at unix
    /// time `now`. Returns the position of the first matching secret.
    pub fn verify(
        &self,
        header: Option<&[u8]>,
        body: &[u8],
        now: i64,
    ) -> Result<usize, VerifyError> {
        let expected = header.and_then(parse_signature);
        // Compute every MAC even when the header is malformed, so timing says nothing.
        let mut matched = None;
        for (i, k) in self.keys.iter().enumerate() {
            let mut mac = k.mac.clone();
            mac.update(body);
            let live = k.not_after.is_none_or(|t| now <= t);
            let ok = match &expected {
                Some(sig) => mac.verify_slice(sig).is_ok(),
                None => false,
            };
            if ok && live && matched.is_none() {
                matched = Some(i);
            }
        }
        matched.ok_or(VerifyError::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../tests/fixtures/sample-event.json");

    fn secret(s: &str, not_after: Option<i64>) -> SourceSecret {
        SourceSecret {
            reference: SecretRef::Env { env: "X".into() },
            secret: Secret::new(s.as_bytes().to_vec()),
            not_after,
        }
    }

    #[test]
    fn protocol_test_vectors() {
        assert_eq!(SAMPLE.len(), 349);
        let a = Secret::new(b"whsec_test_0123456789abcdef".to_vec());
        let b = Secret::new(b"correct horse battery staple".to_vec());
        assert_eq!(
            sign(&a, SAMPLE),
            "sha256=92a8ab5a22de1284b8bc00fa724f8ba0824fb7841244c0b9c2b159b50942af7a"
        );
        assert_eq!(
            sign(&b, SAMPLE),
            "sha256=1fa7458aed3e7896d666a6bdb4c3a263ee3c114245ae49c504b7027557e0ddf8"
        );
        assert_eq!(
            sign(&a, b""),
            "sha256=c75e30d092a12b00c5ed1f2f9705da88827c7abc179c8a52a87527b7c70ce49d"
        );
    }

    #[test]
    fn rotation_and_expiry() {
        let v = Verifier::new(&[secret("new", None), secret("old", Some(1000))]);
        let by_old = sign(&Secret::new(b"old".to_vec()), SAMPLE);
        let by_new = sign(&Secret::new(b"new".to_vec()), SAMPLE);
        let by_third = sign(&Secret::new(b"third".to_vec()), SAMPLE);
        assert_eq!(v.verify(Some(by_new.as_bytes()), SAMPLE, 0), Ok(0));
        assert_eq!(v.verify(Some(by_old.as_bytes()), SAMPLE, 1000), Ok(1));
        assert_eq!(
            v.verify(Some(by_old.as_bytes()), SAMPLE, 1001),
            Err(VerifyError::InvalidSignature)
        );
        assert!(v.verify(Some(by_third.as_bytes()), SAMPLE, 0).is_err());
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v = Verifier::new(&[secret("k", None)]);
        let good = sign(&Secret::new(b"k".to_vec()), SAMPLE);
        assert!(v
            .verify(
                Some(good.to_uppercase().replace("SHA256", "sha256").as_bytes()),
                SAMPLE,
                0
            )
            .is_ok());
        for bad in [
            String::new(),
            "sha256=".into(),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            good.replace("sha256=", "sha1="),
            good.replace("sha256=", "SHA256="),
            format!(" {good}"),
        ] {
            assert!(v.verify(Some(bad.as_bytes()), SAMPLE, 0).is_err(), "{bad}");
        }
        assert!(v.verify(None, SAMPLE, 0).is_err());
    }

    proptest! {
        #[test]
        fn any_flipped_bit_fails(bit in 0usize..(349 * 8), sig_bit in 0usize..256, which in 0u8..2) {
            let v = Verifier::new(&[secret("whsec_test_0123456789abcdef", None)]);
            let mut body = SAMPLE.to_vec();
            let mut sig = parse_signature(sign(&Secret::new(b"whsec_test_0123456789abcdef".to_vec()), SAMPLE).as_bytes()).unwrap();
            if which == 0 { body[bit / 8] ^= 1 << (bit % 8); } else { sig[sig_bit / 8] ^= 1 << (sig_bit % 8); }
            let header = format!("sha256={}", hex::encode(sig));
            prop_assert!(v.verify(Some(header.as_bytes()), &body, 0).is_err());
        }

        #[test]
        fn any_header_never_panics(h in proptest::collection::vec(any::<u8>(), 0..100), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let v = Verifier::new(&[secret("k", None)]);
            let _ = v.verify(Some(&h), &body, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The whole per-request check, in the order of the status table.

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
        sign(&Secret::new(b"k".to_vec()), b)
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
            let good = sign(&Secret::new(b"k".to_vec()), &body);
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
