//! The webhook's status table, in one place: every way a request can end ([`Outcome`]) with
//! its HTTP status, error code and metric label, and the reply built for it — from a
//! framing failure (the server's) or an [`Ingested`] result (the ingest core's). Nothing
//! else in the crate picks a webhook status or a `Retry-After`. It may not do I/O.

use crate::ingest::Ingested;
use crate::sinks::{RetryKind, Verdict};
use crate::spool::SpoolError;
use crate::verify::Reject;
use bytes::Bytes;

/// A plain response (the admin listener's).
pub type HttpResponse = http::Response<Vec<u8>>;

/// How a webhook request ended: status, error code, metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// 200 accepted.
    Accepted,
    /// 200 duplicate.
    Duplicate,
    /// 200 filtered.
    Filtered,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 413.
    BodyTooLarge,
    /// 400: the body could not be read (client error or timeout).
    BadRequest,
    /// 401.
    InvalidSignature,
    /// 400.
    UnsupportedVersion,
    /// 415.
    UnsupportedMediaType,
    /// 400.
    InvalidEvent,
    /// 400.
    StaleEvent,
    /// 409.
    InFlight,
    /// 502.
    UpstreamError,
    /// 503.
    UpstreamUnavailable,
    /// 504.
    UpstreamTimeout,
    /// 503: the dedupe store failed.
    DedupeUnavailable,
    /// 202: written to the spool (`ack = "spool"`).
    Spooled,
    /// 503: `spool.max_bytes` reached.
    SpoolFull,
    /// 503: the spool could not be written.
    SpoolError,
    /// 408: the body did not arrive within `server.body_timeout`.
    BodyTimeout,
    /// 503: `dedupe.max_entries` reached with `on_full = "reject"`.
    DedupeFull,
    /// 503: `server.max_inflight_body_bytes` of unverified bodies are already held.
    Overloaded,
    /// 200: a sender's handshake answered by vfgate (Slack's url_verification, Okta's
    /// verification); nothing is forwarded.
    Handshake,
}

impl Outcome {
    /// Every outcome, in discriminant order.
    pub const ALL: [Outcome; 24] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Filtered,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::BodyTooLarge,
        Outcome::BadRequest,
        Outcome::InvalidSignature,
        Outcome::UnsupportedVersion,
        Outcome::UnsupportedMediaType,
        Outcome::InvalidEvent,
        Outcome::StaleEvent,
        Outcome::InFlight,
        Outcome::UpstreamError,
        Outcome::UpstreamUnavailable,
        Outcome::UpstreamTimeout,
        Outcome::DedupeUnavailable,
        Outcome::Spooled,
        Outcome::SpoolFull,
        Outcome::SpoolError,
        Outcome::BodyTimeout,
        Outcome::DedupeFull,
        Outcome::Overloaded,
        Outcome::Handshake,
    ];

    /// Metric label and error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Filtered => "filtered",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BadRequest => "bad_request",
            Outcome::InvalidSignature => "invalid_signature",
            Outcome::UnsupportedVersion => "unsupported_version",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::InvalidEvent => "invalid_event",
            Outcome::StaleEvent => "stale_event",
            Outcome::InFlight => "in_flight",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::DedupeUnavailable => "dedupe_unavailable",
            Outcome::Spooled => "spooled",
            Outcome::SpoolFull => "spool_full",
            Outcome::SpoolError => "spool_error",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::Overloaded => "overloaded",
            Outcome::DedupeFull => "dedupe_full",
            Outcome::Handshake => "handshake",
        }
    }

    /// HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Accepted | Outcome::Duplicate | Outcome::Filtered | Outcome::Handshake => 200,
            Outcome::Spooled => 202,
            Outcome::NotFound => 404,
            Outcome::MethodNotAllowed => 405,
            Outcome::BodyTooLarge => 413,
            Outcome::BadRequest
            | Outcome::UnsupportedVersion
            | Outcome::InvalidEvent
            | Outcome::StaleEvent => 400,
            Outcome::InvalidSignature => 401,
            Outcome::UnsupportedMediaType => 415,
            Outcome::InFlight => 409,
            Outcome::UpstreamError => 502,
            Outcome::BodyTimeout => 408,
            Outcome::UpstreamUnavailable
            | Outcome::DedupeUnavailable
            | Outcome::SpoolFull
            | Outcome::SpoolError
            | Outcome::Overloaded
            | Outcome::DedupeFull => 503,
            Outcome::UpstreamTimeout => 504,
        }
    }

    /// The outcome of a request the verifier refused.
    pub fn from_reject(r: &Reject) -> Outcome {
        match r {
            Reject::InvalidSignature(_) => Outcome::InvalidSignature,
            Reject::UnsupportedVersion(_) => Outcome::UnsupportedVersion,
            Reject::UnsupportedMediaType(_) => Outcome::UnsupportedMediaType,
            Reject::InvalidEvent(_) => Outcome::InvalidEvent,
            Reject::StaleEvent(_) | Reject::FutureEvent(_) => Outcome::StaleEvent,
        }
    }
}

/// Builds a JSON response with Content-Length (Pingora closes the connection without one).
pub fn respond(status: u16, body: Vec<u8>, extra: &[(&str, String)]) -> HttpResponse {
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string());
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(body).expect("static header names are valid")
}

/// `{"status": "<status>"}`, the body of a 2xx or health answer.
pub fn status_body(status: &str) -> Vec<u8> {
    format!(r#"{{"status":"{status}"}}"#).into_bytes()
}

/// A webhook response: its outcome (status and metric), JSON body and at most one extra
/// header (`allow` or `retry-after`). Written straight into Pingora's response header, with
/// the common bodies static, so that an accepted event allocates nothing to be answered.
pub struct Reply {
    /// How the request ended.
    pub outcome: Outcome,
    /// The JSON body.
    pub body: Bytes,
    /// `allow` or `retry-after`.
    pub extra: Option<(http::header::HeaderName, http::HeaderValue)>,
}

impl Reply {
    /// The response header and body to write.
    pub fn into_parts(self) -> (pingora::http::ResponseHeader, Bytes) {
        use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
        let mut h = pingora::http::ResponseHeader::build_no_case(self.outcome.status(), Some(3))
            .expect("outcome statuses are valid");
        let json = http::HeaderValue::from_static("application/json");
        h.insert_header(CONTENT_TYPE, json).expect("static header");
        h.insert_header(CONTENT_LENGTH, http::HeaderValue::from(self.body.len()))
            .expect("a number is a valid header value");
        if let Some((k, v)) = self.extra {
            h.insert_header(k, v).expect("valid header");
        }
        (h, self.body)
    }
}

/// `retry-after: <secs>`.
fn retry_after_header(secs: u64) -> Option<(http::header::HeaderName, http::HeaderValue)> {
    Some((http::header::RETRY_AFTER, http::HeaderValue::from(secs)))
}

/// The bodies of the webhook's 2xx answers, built once.
const ACCEPTED: &[u8] = br#"{"status":"accepted"}"#;
const DUPLICATE: &[u8] = br#"{"status":"duplicate"}"#;
const FILTERED: &[u8] = br#"{"status":"filtered"}"#;

/// `{"error": "<code>", "detail": "..."}`, the body of every refusal.
pub fn error_body(code: &str, detail: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        detail: &'a str,
    }
    serde_json::to_vec(&ErrorBody {
        error: code,
        detail,
    })
    .expect("json of strings")
}

impl Reply {
    /// The reply of a request refused before the ingest core saw it (routing, method, body
    /// framing and limits), with `detail` in the error body.
    pub fn refused(o: Outcome, detail: &str) -> Reply {
        let extra = match o {
            Outcome::MethodNotAllowed => {
                Some((http::header::ALLOW, http::HeaderValue::from_static("POST")))
            }
            Outcome::Overloaded => retry_after_header(1),
            _ => None,
        };
        Reply {
            outcome: o,
            body: error_body(o.as_str(), detail).into(),
            extra,
        }
    }

    fn with_retry_after(o: Outcome, detail: &str, secs: u64) -> Reply {
        Reply {
            outcome: o,
            body: error_body(o.as_str(), detail).into(),
            extra: retry_after_header(secs),
        }
    }

    fn ok(o: Outcome, body: &'static [u8]) -> Reply {
        Reply {
            outcome: o,
            body: Bytes::from_static(body),
            extra: None,
        }
    }
}

impl From<Ingested> for Reply {
    fn from(i: Ingested) -> Reply {
        match i {
            Ingested::Accepted => Reply::ok(Outcome::Accepted, ACCEPTED),
            Ingested::Spooled => Reply::ok(Outcome::Spooled, ACCEPTED),
            Ingested::Duplicate => Reply::ok(Outcome::Duplicate, DUPLICATE),
            Ingested::Filtered => Reply::ok(Outcome::Filtered, FILTERED),
            Ingested::Handshake(_, body) => Reply {
                outcome: Outcome::Handshake,
                body,
                extra: None,
            },
            Ingested::Rejected(r) => Reply::refused(Outcome::from_reject(&r), &r.to_string()),
            Ingested::InFlight => Reply::with_retry_after(
                Outcome::InFlight,
                "this event_id is being forwarded by another request; retry shortly",
                1,
            ),
            Ingested::DedupeFull => Reply::with_retry_after(
                Outcome::DedupeFull,
                "the gateway remembers as many event ids as it may (dedupe.max_entries); retry later",
                30,
            ),
            Ingested::DedupeUnavailable => Reply::with_retry_after(
                Outcome::DedupeUnavailable,
                "the dedupe store is unavailable",
                5,
            ),
            Ingested::SpoolFailed(e @ SpoolError::TooLarge { .. }) => {
                Reply::refused(Outcome::BodyTooLarge, e.public_detail())
            }
            Ingested::SpoolFailed(e) => {
                let (o, wait) = match e {
                    SpoolError::Full { .. } => (Outcome::SpoolFull, 30),
                    SpoolError::Io(_)
                    | SpoolError::Gone(_)
                    | SpoolError::Closed
                    | SpoolError::TooLarge { .. } => (Outcome::SpoolError, 5),
                };
                Reply::with_retry_after(o, e.public_detail(), wait)
            }
            // Not constructed (an `Ok` is `Accepted`); answered as what it says.
            Ingested::NotDelivered(Verdict::Ok) => Reply::ok(Outcome::Accepted, ACCEPTED),
            Ingested::NotDelivered(Verdict::Permanent { detail, .. }) => {
                Reply::refused(Outcome::UpstreamError, &detail)
            }
            Ingested::NotDelivered(Verdict::Retry {
                kind,
                detail,
                retry_after,
            }) => {
                let o = match kind {
                    RetryKind::Timeout => Outcome::UpstreamTimeout,
                    RetryKind::Unavailable | RetryKind::Config => Outcome::UpstreamUnavailable,
                };
                let secs = retry_after.map(|d| d.as_secs().max(1)).unwrap_or(5);
                Reply::with_retry_after(o, &detail, secs)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_outcome_has_its_own_label_and_a_status_of_its_class() {
        let mut seen = std::collections::HashSet::new();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "ALL is in discriminant order");
            assert!(seen.insert(o.as_str()), "{} twice", o.as_str());
            let s = o.status();
            let ok = matches!(
                o,
                Outcome::Accepted
                    | Outcome::Duplicate
                    | Outcome::Filtered
                    | Outcome::Spooled
                    | Outcome::Handshake
            );
            assert_eq!(ok, (200..300).contains(&s), "{o:?} {s}");
        }
    }

    fn header(r: &Reply) -> Option<(String, String)> {
        r.extra
            .as_ref()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
    }

    #[test]
    fn the_status_table() {
        let ra = |s: &str| Some(("retry-after".to_string(), s.to_string()));
        type Case = (Ingested, u16, &'static str, Option<(String, String)>);
        let cases: Vec<Case> = vec![
            (Ingested::Accepted, 200, "accepted", None),
            (Ingested::Spooled, 202, "spooled", None),
            (Ingested::Duplicate, 200, "duplicate", None),
            (Ingested::Filtered, 200, "filtered", None),
            (
                Ingested::Rejected(Reject::InvalidSignature(
                    crate::verify::VerifyError::NoMatch,
                )),
                401,
                "invalid_signature",
                None,
            ),
            (
                Ingested::Rejected(Reject::StaleEvent("old".into())),
                400,
                "stale_event",
                None,
            ),
            (
                Ingested::Rejected(Reject::UnsupportedMediaType("x".into())),
                415,
                "unsupported_media_type",
                None,
            ),
            (Ingested::InFlight, 409, "in_flight", ra("1")),
            (Ingested::DedupeFull, 503, "dedupe_full", ra("30")),
            (
                Ingested::DedupeUnavailable,
                503,
                "dedupe_unavailable",
                ra("5"),
            ),
            (
                Ingested::SpoolFailed(SpoolError::Full { max_bytes: 1 }),
                503,
                "spool_full",
                ra("30"),
            ),
            (
                Ingested::SpoolFailed(SpoolError::Closed),
                503,
                "spool_error",
                ra("5"),
            ),
            (
                Ingested::SpoolFailed(SpoolError::TooLarge { bytes: 2, max: 1 }),
                413,
                "body_too_large",
                None,
            ),
            (
                Ingested::NotDelivered(Verdict::permanent(crate::sinks::Refusal::Rejected, "d")),
                502,
                "upstream_error",
                None,
            ),
            (
                Ingested::NotDelivered(Verdict::retry(
                    RetryKind::Unavailable,
                    "d",
                    Some(Duration::from_millis(300)),
                )),
                503,
                "upstream_unavailable",
                ra("1"),
            ),
            (
                Ingested::NotDelivered(Verdict::retry(RetryKind::Timeout, "d", None)),
                504,
                "upstream_timeout",
                ra("5"),
            ),
        ];
        for (ingested, status, label, extra) in cases {
            let what = format!("{ingested:?}");
            let r = Reply::from(ingested);
            assert_eq!(r.outcome.status(), status, "{what}");
            assert_eq!(r.outcome.as_str(), label, "{what}");
            assert_eq!(header(&r), extra, "{what}");
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            if status < 300 {
                let word = if label == "spooled" {
                    "accepted"
                } else {
                    label
                };
                assert_eq!(body["status"], word, "{what}");
            } else {
                assert_eq!(body["error"], label, "{what}");
                assert!(body["detail"].is_string(), "{what}");
            }
        }
    }

    #[test]
    fn refusals_before_ingest() {
        let r = Reply::refused(Outcome::MethodNotAllowed, "use POST");
        assert_eq!(r.outcome.status(), 405);
        assert_eq!(header(&r), Some(("allow".into(), "POST".into())));
        let r = Reply::refused(Outcome::Overloaded, "busy");
        assert_eq!(header(&r), Some(("retry-after".into(), "1".into())));
        assert_eq!(Reply::refused(Outcome::NotFound, "no").extra, None);
    }
}
