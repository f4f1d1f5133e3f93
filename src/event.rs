//! Events: the verified body bytes plus the few fields vfgate needs, parsed once.
//!
//! The body is kept as the exact bytes received (one `Bytes` from socket to sink) so that the
//! file and http sinks forward it byte for byte and unknown fields survive. Parsing borrows
//! from the body and copies out only the short fields used for routing, dedupe and sinks.
//!
//! Owns: the event type and its parse. Uses only `time` (RFC 3339 timestamps); knows
//! nothing of secrets, dedupe, sinks or HTTP.

use bytes::Bytes;
use serde::Deserialize;
use std::borrow::Cow;

/// One parsed event. Only [`crate::verify`] builds it from a request, after the signature
/// matched; see [`Verified`].
#[derive(Debug, Clone)]
pub struct Event {
    /// The exact bytes received.
    pub body: Bytes,
    /// `event_id`.
    pub event_id: String,
    /// `event_type` (empty when absent).
    pub event_type: String,
    /// `timestamp` as unix milliseconds.
    pub timestamp_ms: i64,
    /// `timestamp` as written.
    pub timestamp: String,
    /// `context.org_id`, if present and a string.
    pub org_id: Option<String>,
    /// Whether the fields above were read through a field map (another scheme than VF): then
    /// they cannot all be found in the body again, and a spool record or dead letter keeps them.
    mapped: bool,
}

/// Why a body is not a valid event (400 `invalid_event`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow, default)]
    org_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    context: Option<Context<'a>>,
}

impl Event {
    /// Parses and validates a body. The whole body must be one JSON object (valid UTF-8);
    /// `event_id` a non-empty string; `timestamp` an RFC 3339 string; `event_type`, when
    /// present, a string. A duplicated key among these is refused (two parsers must never
    /// disagree on which `event_id` an event has).
    pub fn parse(body: Bytes) -> Result<Event, InvalidEvent> {
        // serde would also build the struct from a JSON array: insist on an object.
        if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
            return Err(explain(&body, None));
        }
        // One UTF-8 check of the whole body (std's ASCII fast path) lets serde_json read it as
        // a `str` and skip re-validating every string it meets.
        let Ok(text) = std::str::from_utf8(&body) else {
            return Err(explain(&body, None));
        };
        if too_deep(&body) {
            return Err(InvalidEvent(format!(
                "the JSON nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let f: Fields<'_> = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => return Err(explain(&body, Some(e))),
        };
        let event_id = match f.event_id {
            None => return Err(InvalidEvent("event_id is missing".into())),
            Some(s) if s.is_empty() => return Err(InvalidEvent("event_id is empty".into())),
            Some(s) if s.bytes().any(|b| b < 0x20 || b == 0x7f) => {
                return Err(InvalidEvent("event_id contains a control character".into()))
            }
            Some(s) => s.into_owned(),
        };
        let timestamp = match f.timestamp {
            None => return Err(InvalidEvent("timestamp is missing".into())),
            Some(s) if s.is_empty() => return Err(InvalidEvent("timestamp is empty".into())),
            Some(s) => s.into_owned(),
        };
        let timestamp_ms = crate::time::parse_rfc3339_ms(&timestamp).ok_or_else(|| {
            InvalidEvent(format!(
                "timestamp {:?} is not an RFC 3339 date-time",
                truncate(&timestamp, 64)
            ))
        })?;
        Ok(Event {
            event_id,
            event_type: f.event_type.map(Cow::into_owned).unwrap_or_default(),
            timestamp_ms,
            timestamp,
            org_id: f.context.and_then(|c| c.org_id).map(Cow::into_owned),
            body,
            mapped: false,
        })
    }

    /// The body of a request signed by another scheme (`standard-webhooks`, `hmac`) as a JSON
    /// value, after the same checks as [`Event::parse`] makes of a VF body: one JSON object,
    /// valid UTF-8, at most [`MAX_DEPTH`] levels deep. Its fields are then read through the
    /// source's field map (in `crate::verify`) and the event made by [`Event::mapped`].
    pub fn json_object(body: &Bytes) -> Result<serde_json::Value, InvalidEvent> {
        if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
            return Err(explain(body, None));
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return Err(explain(body, None));
        };
        if too_deep(body) {
            return Err(InvalidEvent(format!(
                "the JSON nests deeper than {MAX_DEPTH} levels"
            )));
        }
        serde_json::from_str(text).map_err(|e| explain(body, Some(e)))
    }

    /// An event whose fields were read through a field map: `event_id` must be non-empty
    /// and free of control characters (it is the dedupe key and a log field), as in a VF body.
    pub fn mapped(
        body: Bytes,
        event_id: String,
        event_type: String,
        timestamp_ms: i64,
        org_id: Option<String>,
    ) -> Result<Event, InvalidEvent> {
        if event_id.is_empty() {
            return Err(InvalidEvent("event_id is empty".into()));
        }
        if event_id.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(InvalidEvent("event_id contains a control character".into()));
        }
        Ok(Event {
            body,
            event_id,
            event_type,
            timestamp_ms,
            timestamp: crate::time::rfc3339_ms(timestamp_ms),
            org_id,
            mapped: true,
        })
    }

    /// Whether the event's fields came through a field map rather than from a VF body.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The body with whitespace outside strings removed, so that it fits on one line; the
    /// body itself when it has no raw newline (the common case: no copy).
    pub fn one_line(&self) -> Bytes {
        if memchr_newline(&self.body) {
            Bytes::from(compact_json(&self.body))
        } else {
            self.body.clone()
        }
    }
}

/// Deepest JSON nesting accepted anywhere in a body (arrays and objects).
pub const MAX_DEPTH: usize = 128;

/// Whether `body` nests arrays and objects deeper than [`MAX_DEPTH`]. A body with no more
/// opening brackets than that cannot, and is cleared by one SIMD count (the common case);
/// only others are scanned, strings skipped.
fn too_deep(body: &[u8]) -> bool {
    if memchr::memchr2_iter(b'{', b'[', body).count() <= MAX_DEPTH {
        return false;
    }
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in body {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// An event whose signature matched one of the source's secrets. Only [`crate::verify`] can
/// build one, so nothing unverified reaches a sink.
#[derive(Debug, Clone)]
pub struct Verified<T>(pub(crate) T);

impl<T> Verified<T> {
    /// The verified value.
    pub fn get(&self) -> &T {
        &self.0
    }
    /// Unwraps the verified value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

fn memchr_newline(b: &[u8]) -> bool {
    memchr::memchr2(b'\n', b'\r', b).is_some()
}

/// Removes JSON whitespace outside strings. Input must be valid JSON (it is, once parsed);
/// string contents, escapes included, are copied unchanged.
pub fn compact_json(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut in_str = false;
    let mut escaped = false;
    for &c in input {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_str = true;
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The slow path: say precisely what is wrong with a body the fast parse refused.
fn explain(body: &[u8], fast: Option<serde_json::Error>) -> InvalidEvent {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return InvalidEvent(if std::str::from_utf8(body).is_err() {
                format!("body is not valid UTF-8 JSON: {e}")
            } else {
                format!("body is not valid JSON: {e}")
            })
        }
    };
    let Some(obj) = v.as_object() else {
        return InvalidEvent("body must be a JSON object".into());
    };
    for field in ["event_id", "event_type", "timestamp"] {
        if let Some(x) = obj.get(field) {
            if !x.is_string() && !x.is_null() {
                return InvalidEvent(format!("{field} must be a string"));
            }
        }
    }
    if let Some(c) = obj.get("context") {
        if !c.is_object() && !c.is_null() {
            return InvalidEvent("context must be an object".into());
        }
        if let Some(o) = c.get("org_id") {
            if !o.is_string() && !o.is_null() {
                return InvalidEvent("context.org_id must be a string".into());
            }
        }
    }
    // serde_json::Value silently keeps the last of duplicated keys; the fast parser refuses.
    match fast {
        Some(e) => InvalidEvent(format!("body is not a valid event: {e}")),
        None => InvalidEvent("body is not a valid event".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("../tests/fixtures/sample-event.json");

    fn parse(s: &str) -> Result<Event, String> {
        Event::parse(Bytes::copy_from_slice(s.as_bytes())).map_err(|e| e.0)
    }

    #[test]
    fn nesting_deeper_than_128_and_control_characters_in_event_id_are_refused() {
        let ok_depth = format!(
            r#"{{"event_id":"e","timestamp":"2024-05-14T09:21:33Z","x":{}1{}}}"#,
            "[".repeat(127),
            "]".repeat(127)
        );
        assert!(parse(&ok_depth).is_ok(), "128 levels with the outer object");
        let deep = format!(
            r#"{{"event_id":"e","timestamp":"2024-05-14T09:21:33Z","x":{}1{}}}"#,
            "[".repeat(128),
            "]".repeat(128)
        );
        assert_eq!(
            parse(&deep).unwrap_err(),
            "the JSON nests deeper than 128 levels"
        );
        let deep_tail = format!(
            r#"{{"event_id":"e","timestamp":"2024-05-14T09:21:33Z"}}{}"#,
            "{\"a\":".repeat(100_000)
        );
        assert!(parse(&deep_tail).is_err());
        // Brackets inside strings do not count.
        let in_string = format!(
            r#"{{"event_id":"e","timestamp":"2024-05-14T09:21:33Z","s":"{}"}}"#,
            "[".repeat(500)
        );
        assert!(parse(&in_string).is_ok());
        for id in [r"a\nb", r"a\u001bb", r"a\u007fb", r"\t"] {
            let b = format!(r#"{{"event_id":"{id}","timestamp":"2024-05-14T09:21:33Z"}}"#);
            assert_eq!(
                parse(&b).unwrap_err(),
                "event_id contains a control character",
                "{id}"
            );
        }
    }

    #[test]
    fn sample_event_parses() {
        let e = parse(SAMPLE).unwrap();
        assert_eq!(e.event_id, "evt_8f3a1b2c4d5e6f70");
        assert_eq!(e.event_type, "user.login.failed");
        assert_eq!(e.org_id.as_deref(), Some("org_m3n4o5p6q7r8"));
        assert_eq!(e.timestamp_ms, 1775485921847);
        assert_eq!(e.body.as_ref(), SAMPLE.as_bytes());
    }

    #[test]
    fn timestamps_from_the_targets_sheet() {
        assert_eq!(
            crate::time::parse_rfc3339_ms("2024-05-14T09:21:33.417Z"),
            Some(1715678493417)
        );
        assert_eq!(
            crate::time::parse_rfc3339_ms("2024-05-14T09:21:41.002Z"),
            Some(1715678501002)
        );
        assert_eq!(
            crate::time::parse_rfc3339_ms("2024-05-14T11:21:41.002+02:00"),
            Some(1715678501002)
        );
        assert_eq!(crate::time::parse_rfc3339_ms("2024-05-14 09:21:41"), None);
    }

    #[test]
    fn precise_reasons() {
        assert_eq!(parse("[1]").unwrap_err(), "body must be a JSON object");
        assert!(parse("{")
            .unwrap_err()
            .starts_with("body is not valid JSON"));
        assert_eq!(
            parse(r#"{"timestamp":"2024-05-14T09:21:33Z"}"#).unwrap_err(),
            "event_id is missing"
        );
        assert_eq!(
            parse(r#"{"event_id":"","timestamp":"x"}"#).unwrap_err(),
            "event_id is empty"
        );
        assert_eq!(
            parse(r#"{"event_id":7,"timestamp":"x"}"#).unwrap_err(),
            "event_id must be a string"
        );
        assert_eq!(
            parse(r#"{"event_id":"a"}"#).unwrap_err(),
            "timestamp is missing"
        );
        assert_eq!(
            parse(r#"{"event_id":"a","timestamp":"yesterday"}"#).unwrap_err(),
            "timestamp \"yesterday\" is not an RFC 3339 date-time"
        );
        assert!(
            parse(r#"{"event_id":"a","event_id":"b","timestamp":"2024-05-14T09:21:33Z"}"#)
                .unwrap_err()
                .contains("duplicate field")
        );
        assert!(parse("{\"event_id\":\"a\",\"timestamp\":\"2024-05-14T09:21:33Z\"} x").is_err());
        let bad_utf8 = Event::parse(Bytes::from_static(
            b"{\"event_id\":\"\xff\",\"timestamp\":\"2024-05-14T09:21:33Z\"}",
        ));
        assert!(bad_utf8.unwrap_err().0.contains("UTF-8"));
    }

    #[test]
    fn one_line_compacts_only_when_needed() {
        let e = parse("{\n  \"event_id\": \"a b\",\n  \"timestamp\": \"2024-05-14T09:21:33Z\",\n  \"x\": \"q\\\"\\n\"\n}").unwrap();
        assert_eq!(
            e.one_line().as_ref(),
            br#"{"event_id":"a b","timestamp":"2024-05-14T09:21:33Z","x":"q\"\n"}"#
        );
        let e = parse(SAMPLE).unwrap();
        assert_eq!(
            e.one_line().as_ptr(),
            e.body.as_ptr(),
            "no copy without newlines"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Event::parse(Bytes::from(body));
        }

        #[test]
        fn compacting_preserves_the_value(v in arb_json()) {
            let pretty = serde_json::to_vec_pretty(&v).unwrap();
            let compact = compact_json(&pretty);
            prop_assert!(!compact.contains(&b'\n'));
            let back: serde_json::Value = serde_json::from_slice(&compact).unwrap();
            prop_assert_eq!(back, v);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
