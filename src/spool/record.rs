//! What one spool record's payload holds: the receive time and the event, in one of two
//! kinds.
//!
//! The first 8 bytes are a little-endian `u64`: its low 56 bits are the receive time in unix
//! milliseconds, its top byte the record's kind.
//! - Kind 0, a **body** record (every record written before kinds existed is one): the
//!   event's exact bytes follow, and the event is parsed again from them when read. A VF
//!   event is all in its body, so a `scheme = "vf"` source writes these.
//! - Kind 1, a **mapped** record: the fields read through a source's field map (some of
//!   them from headers the body does not carry, or the receive time) are stored before the
//!   body, because they cannot be found in it again: `timestamp_ms` (i64), `event_id`,
//!   `event_type`, then `org_id` behind a presence byte, each string as a `u32` length and
//!   UTF-8, then the body.
//!
//! The log's CRC covers the whole payload, so a record that decodes badly was written so
//! (or edited by hand); the drainer dead-letters it as `corrupt`. Owns: the payload layout.
//! Uses `event` only.

use crate::event::{Event, InvalidEvent};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Top byte of the time field: a body record.
const KIND_BODY: u8 = 0;
/// Top byte of the time field: a mapped record.
const KIND_MAPPED: u8 = 1;
/// The receive time's bits.
const TIME_MASK: u64 = (1 << 56) - 1;

/// Why a payload is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the layout needs.
    #[error("the record is shorter than its header")]
    Short,
    /// A kind this build does not know (written by a newer vfgate).
    #[error("record kind {0} is unknown to this version")]
    Kind(u8),
    /// A stored field is not UTF-8.
    #[error("a stored field is not UTF-8")]
    Utf8,
    /// The event in it is not valid.
    #[error("{0}")]
    Event(#[from] InvalidEvent),
}

fn head(kind: u8, received_ms: i64) -> u64 {
    (u64::from(kind) << 56) | (received_ms.max(0) as u64 & TIME_MASK)
}

/// The payload of `event`, received at `received_ms`: a body record when the event is all
/// in its body, a mapped record otherwise.
pub fn encode(received_ms: i64, event: &Event) -> Bytes {
    if !event.is_mapped() {
        return encode_body(received_ms, &event.body);
    }
    let org = event.org_id.as_deref();
    let mut b = BytesMut::with_capacity(encoded_len(event));
    b.put_u64_le(head(KIND_MAPPED, received_ms));
    b.put_i64_le(event.timestamp_ms);
    put_str(&mut b, &event.event_id);
    put_str(&mut b, &event.event_type);
    match org {
        Some(o) => {
            b.put_u8(1);
            put_str(&mut b, o);
        }
        None => b.put_u8(0),
    }
    b.put_slice(&event.body);
    b.freeze()
}

/// The length of [`encode`]'s payload for `event`, without building it (the spool's budget
/// check comes before the copy).
pub fn encoded_len(event: &Event) -> usize {
    if !event.is_mapped() {
        return 8 + event.body.len();
    }
    8 + 8
        + 4
        + event.event_id.len()
        + 4
        + event.event_type.len()
        + 1
        + event.org_id.as_deref().map_or(0, |o| 4 + o.len())
        + event.body.len()
}

/// A body record: receive time, then the event's bytes.
pub fn encode_body(received_ms: i64, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + body.len());
    b.put_u64_le(head(KIND_BODY, received_ms));
    b.put_slice(body);
    b.freeze()
}

/// The receive time and the event bytes of a payload, without parsing the event (for a
/// dead letter of a record that does not decode): `None` when even the header is short.
pub fn split(payload: &Bytes) -> Option<(i64, Bytes)> {
    let mut p = payload.clone();
    let (kind, received_ms) = read_head(&mut p).ok()?;
    match kind {
        KIND_BODY => {}
        KIND_MAPPED => skip_fields(&mut p).ok()?,
        _ => return None,
    }
    Some((received_ms, p))
}

/// The receive time and the event of a payload.
pub fn decode(payload: Bytes) -> Result<(i64, Event), RecordError> {
    let mut p = payload;
    let (kind, received_ms) = read_head(&mut p)?;
    match kind {
        KIND_BODY => Ok((received_ms, Event::parse(p)?)),
        KIND_MAPPED => {
            let timestamp_ms = get_i64(&mut p)?;
            let event_id = get_str(&mut p)?;
            let event_type = get_str(&mut p)?;
            let org_id = match get_u8(&mut p)? {
                0 => None,
                _ => Some(get_str(&mut p)?),
            };
            let event = Event::mapped(p, event_id, event_type, timestamp_ms, org_id)?;
            Ok((received_ms, event))
        }
        other => Err(RecordError::Kind(other)),
    }
}

fn read_head(p: &mut Bytes) -> Result<(u8, i64), RecordError> {
    if p.len() < 8 {
        return Err(RecordError::Short);
    }
    let h = p.get_u64_le();
    Ok(((h >> 56) as u8, (h & TIME_MASK) as i64))
}

fn skip_fields(p: &mut Bytes) -> Result<(), RecordError> {
    get_i64(p)?;
    get_str(p)?;
    get_str(p)?;
    if get_u8(p)? != 0 {
        get_str(p)?;
    }
    Ok(())
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn get_u8(p: &mut Bytes) -> Result<u8, RecordError> {
    if p.is_empty() {
        return Err(RecordError::Short);
    }
    Ok(p.get_u8())
}

fn get_i64(p: &mut Bytes) -> Result<i64, RecordError> {
    if p.len() < 8 {
        return Err(RecordError::Short);
    }
    Ok(p.get_i64_le())
}

fn get_str(p: &mut Bytes) -> Result<String, RecordError> {
    if p.len() < 4 {
        return Err(RecordError::Short);
    }
    let n = p.get_u32_le() as usize;
    if p.len() < n {
        return Err(RecordError::Short);
    }
    let s = p.split_to(n);
    String::from_utf8(s.to_vec()).map_err(|_| RecordError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VF: &[u8] = br#"{"event_id":"e1","event_type":"t","timestamp":"2026-01-01T00:00:00Z","context":{"org_id":"o"}}"#;

    fn mapped(id: &str, ty: &str, ts: i64, org: Option<&str>, body: &[u8]) -> Event {
        Event::mapped(
            Bytes::copy_from_slice(body),
            id.into(),
            ty.into(),
            ts,
            org.map(Into::into),
        )
        .unwrap()
    }

    #[test]
    fn a_vf_event_is_a_body_record_laid_out_as_before_kinds() {
        let e = Event::parse(Bytes::from_static(VF)).unwrap();
        let p = encode(1_700_000_000_123, &e);
        // The original layout: the time as an i64, then the bytes.
        assert_eq!(&p[..8], &1_700_000_000_123i64.to_le_bytes());
        assert_eq!(&p[8..], VF);
        let (t, back) = decode(p).unwrap();
        assert_eq!(t, 1_700_000_000_123);
        assert_eq!(back.event_id, "e1");
        assert!(!back.is_mapped());
    }

    #[test]
    fn a_mapped_event_keeps_the_fields_its_body_does_not_carry() {
        let e = mapped(
            "msg_1",
            "invoice.paid",
            1_700_000_000_000,
            None,
            b"{\"x\":1}",
        );
        let p = encode(1_700_000_000_999, &e);
        let (t, back) = decode(p.clone()).unwrap();
        assert_eq!(t, 1_700_000_000_999);
        assert_eq!(
            (back.event_id.as_str(), back.event_type.as_str()),
            ("msg_1", "invoice.paid")
        );
        assert_eq!(back.timestamp_ms, 1_700_000_000_000);
        assert_eq!(back.org_id, None);
        assert_eq!(&back.body[..], b"{\"x\":1}");
        assert!(back.is_mapped());
        assert_eq!(split(&p).unwrap(), (1_700_000_000_999, back.body));
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert_eq!(
            decode(Bytes::from_static(b"short")).err(),
            Some(RecordError::Short)
        );
        let mut k = 7u64 << 56;
        k |= 5;
        let p = Bytes::copy_from_slice(&k.to_le_bytes());
        assert_eq!(decode(p).err(), Some(RecordError::Kind(7)));
        let e = mapped("i", "t", 1, Some("o"), b"{}");
        let p = encode(1, &e);
        for cut in 8..p.len() - 2 {
            assert!(decode(p.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    fn field() -> impl Strategy<Value = String> {
        "[ -~]{0,40}"
    }

    proptest! {
        #[test]
        fn every_mapped_event_comes_back_as_it_went_in(
            id in "[!-~]{1,40}", ty in field(), ts in -1i64..=i64::MAX / 2,
            org in proptest::option::of(field()), received in 0i64..(1 << 56), extra in field(),
        ) {
            let body = format!("{{\"k\":{}}}", serde_json::Value::String(extra));
            let e = mapped(&id, &ty, ts, org.as_deref(), body.as_bytes());
            let p = encode(received, &e);
            prop_assert_eq!(p.len(), encoded_len(&e));
            let (t, back) = decode(p).unwrap();
            prop_assert_eq!(t, received);
            prop_assert_eq!(back.event_id, e.event_id);
            prop_assert_eq!(back.event_type, e.event_type);
            prop_assert_eq!(back.timestamp_ms, e.timestamp_ms);
            prop_assert_eq!(back.timestamp, e.timestamp);
            prop_assert_eq!(back.org_id, e.org_id);
            prop_assert_eq!(back.body, e.body);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = Bytes::from(b);
            let _ = decode(p.clone());
            let _ = split(&p);
        }
    }
}
