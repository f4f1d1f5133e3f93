//! The Standard Webhooks scheme (Svix-style senders): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{raw body}` with the base64-decoded part of a `whsec_`
//! secret, sent as `webhook-signature: v1,<base64> [v1,<base64> ...]` (any one entry may
//! match: the sender rotates by signing with two secrets). The headers may also be named
//! `svix-id`, `svix-timestamp`, `svix-signature`. The key is the base64 part of the secret,
//! checked at config load and decoded when the source's checker is built
//! ([`crate::secret::standard_webhooks_key_of`]).
//!
//! Every configured secret is tried against every `v1` entry, compared in constant time, even
//! after a match; a missing or malformed header, a timestamp that is not an integer and a
//! wrong MAC tell the sender the same (the metrics' reason tells them apart). The tolerance window on the timestamp is the caller's
//! (a 400 `stale_event`, after the signature, as for VF events).
//!
//! A `whpk_` public key verifies `v1a` entries (at most 4 a request) instead: ed25519 over the same message (the
//! specification's asymmetric signatures), so the gateway holds nothing that can forge an
//! event; a source may mix both kinds of key.
//!
//! Owns: this scheme's headers, key decoding, MAC and signatures. Pure: no clock, no I/O.

use super::VerifyError;
use base64::Engine;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The symmetric (HMAC-SHA256) signature version.
const VERSION: &str = "v1";
/// The asymmetric (ed25519) signature version.
const VERSION_ASYMMETRIC: &str = "v1a";
/// Signature entries considered in one header at most (more is not a rotation, it is abuse).
const MAX_ENTRIES: usize = 16;
/// `v1a` entries considered at most: each costs an ed25519 verification per public key, a
/// SHA-512 over the whole body, so an unsigned request must not buy many.
const MAX_ASYMMETRIC: usize = 4;

/// The three headers of a request, raw (from `webhook-*`, or else `svix-*`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Headers<'a> {
    /// `webhook-id`: the message id, which is the dedupe key.
    pub id: Option<&'a [u8]>,
    /// `webhook-timestamp`: unix seconds.
    pub timestamp: Option<&'a [u8]>,
    /// `webhook-signature`: space-separated `v1,<base64>` entries.
    pub signature: Option<&'a [u8]>,
}

/// What a verified request carries besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Position of the secret that matched.
    pub secret: usize,
    /// The message id.
    pub id: String,
    /// The signed timestamp, unix seconds.
    pub timestamp: i64,
}

/// One key, pre-keyed, with its expiry (unix seconds).
#[derive(Clone)]
pub struct Key {
    kind: KeyKind,
    not_after: Option<i64>,
}

#[derive(Clone)]
enum KeyKind {
    Hmac(HmacSha256),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl Key {
    /// A `v1` key from its decoded bytes ([`crate::secret::standard_webhooks_key`]).
    pub fn new(key: &[u8], not_after: Option<i64>) -> Key {
        Key {
            kind: KeyKind::Hmac(
                HmacSha256::new_from_slice(key).expect("HMAC takes any key length"),
            ),
            not_after,
        }
    }

    /// A `v1a` key: an ed25519 public key (`whpk_`).
    pub fn public(key: ed25519_dalek::VerifyingKey, not_after: Option<i64>) -> Key {
        Key {
            kind: KeyKind::Ed25519(key),
            not_after,
        }
    }
}

/// `v1a,<base64>` for a message: an ed25519 signature with a `whsk_` key.
pub fn sign_asymmetric(
    key: &ed25519_dalek::SigningKey,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    use ed25519_dalek::Signer;
    let sig = key.sign(&message(id.as_bytes(), timestamp, body));
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    format!("{VERSION_ASYMMETRIC},{sig}")
}

/// `{id}.{timestamp}.{body}` as one buffer (ed25519 signs the whole message at once).
fn message(id: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut m = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    m.extend_from_slice(id);
    m.push(b'.');
    m.extend_from_slice(ts.as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// `v1,<base64>` for a message: what a sender puts in `webhook-signature`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    feed(&mut mac, id.as_bytes(), timestamp, body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("{VERSION},{sig}")
}

fn feed(mac: &mut HmacSha256, id: &[u8], timestamp: i64, body: &[u8]) {
    mac.update(id);
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// The `v1` (32 bytes) and `v1a` (64 bytes) signatures of a header value; other versions
/// and malformed entries are skipped.
fn signatures(value: &[u8]) -> (Vec<[u8; 32]>, Vec<[u8; 64]>) {
    let (mut v1, mut v1a) = (Vec::new(), Vec::new());
    for e in value
        .split(|&b| b == b' ')
        .filter(|e| !e.is_empty())
        .take(MAX_ENTRIES)
    {
        let Some(at) = e.iter().position(|&b| b == b',') else {
            continue;
        };
        let (v, sig) = e.split_at(at);
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&sig[1..]) else {
            continue;
        };
        if v == VERSION.as_bytes() {
            v1.extend(<[u8; 32]>::try_from(raw).ok());
        } else if v == VERSION_ASYMMETRIC.as_bytes() && v1a.len() < MAX_ASYMMETRIC {
            v1a.extend(<[u8; 64]>::try_from(raw).ok());
        }
    }
    (v1, v1a)
}

/// An id the scheme accepts: printable ASCII, at most 256 bytes (it becomes a dedupe key and
/// a log field).
fn valid_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 256 && id.iter().all(|b| b.is_ascii_graphic())
}

/// Verifies `h` over `body` with `keys` at unix time `now` (for the keys' `not_after`).
pub fn verify(keys: &[Key], h: Headers<'_>, body: &[u8], now: i64) -> Result<Signed, VerifyError> {
    let id = h.id.filter(|id| valid_id(id));
    let timestamp = h
        .timestamp
        .and_then(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .and_then(|t| t.parse::<i64>().ok());
    let (sigs, asym) = h.signature.map(signatures).unwrap_or_default();
    // Every key against every entry, whatever is missing, so that timing tells nothing.
    let (id_bytes, ts) = (id.unwrap_or(b""), timestamp.unwrap_or(0));
    let mut matched = None;
    let mut signed: Option<Vec<u8>> = None;
    for (i, k) in keys.iter().enumerate() {
        let mut ok = false;
        match &k.kind {
            KeyKind::Hmac(m) => {
                let mut mac = m.clone();
                feed(&mut mac, id_bytes, ts, body);
                for sig in &sigs {
                    ok |= mac.clone().verify_slice(sig).is_ok();
                }
            }
            // A public key: nothing secret to leak by timing, so it stops at the first match
            // (or a match already found), and the message is built only when there is an
            // entry to check it against.
            KeyKind::Ed25519(public) if !asym.is_empty() && matched.is_none() => {
                let m = signed.get_or_insert_with(|| message(id_bytes, ts, body));
                ok = asym.iter().any(|sig| {
                    let sig = ed25519_dalek::Signature::from_bytes(sig);
                    public.verify_strict(m, &sig).is_ok()
                });
            }
            KeyKind::Ed25519(_) => {}
        }
        let live = k.not_after.is_none_or(|t| now <= t);
        if ok && live && matched.is_none() {
            matched = Some(i);
        }
    }
    match (matched, id, timestamp) {
        (Some(secret), Some(id), Some(timestamp)) => Ok(Signed {
            secret,
            id: String::from_utf8_lossy(id).into_owned(),
            timestamp,
        }),
        _ => Err(VerifyError::of(
            h.id.is_some() && h.timestamp.is_some() && h.signature.is_some(),
            id.is_some() && timestamp.is_some() && !(sigs.is_empty() && asym.is_empty()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The specification's reference test vector (libraries/rust in standard-webhooks).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn decode_secret(s: &[u8]) -> Result<Vec<u8>, crate::secret::KeyFormatError> {
        crate::secret::standard_webhooks_key(&crate::secret::Secret::new(s.to_vec()))
            .map(|k| k.expose().to_vec())
    }

    fn key() -> Vec<u8> {
        decode_secret(SECRET.as_bytes()).unwrap()
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Headers<'a> {
        Headers {
            id: Some(id.as_bytes()),
            timestamp: Some(ts.as_bytes()),
            signature: Some(sig.as_bytes()),
        }
    }

    #[test]
    fn the_specifications_vector_signs_and_verifies() {
        assert_eq!(sign(&key(), ID, TS, BODY), SIG);
        let keys = [Key::new(&key(), None)];
        let ts = TS.to_string();
        let got = verify(&keys, headers(ID, &ts, SIG), BODY, TS).unwrap();
        assert_eq!(
            got,
            Signed {
                secret: 0,
                id: ID.into(),
                timestamp: TS
            }
        );
        // Without the prefix the secret is the same key.
        assert_eq!(decode_secret(&SECRET.as_bytes()[6..]).unwrap(), key());
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let keys = [Key::new(&key(), None)];
        let ts = TS.to_string();
        let multi = format!("v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v2,abc {SIG} v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=");
        assert!(verify(&keys, headers(ID, &ts, &multi), BODY, TS).is_ok());
        let none = "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=";
        assert!(verify(&keys, headers(ID, &ts, none), BODY, TS).is_err());
        let v2 = SIG.replacen("v1,", "v2,", 1);
        assert!(verify(&keys, headers(ID, &ts, &v2), BODY, TS).is_err());
    }

    #[test]
    fn a_changed_id_timestamp_body_or_signature_fails() {
        let keys = [Key::new(&key(), None)];
        let ts = TS.to_string();
        let next = (TS + 1).to_string();
        assert!(verify(&keys, headers("msg_other", &ts, SIG), BODY, TS).is_err());
        assert!(verify(&keys, headers(ID, &next, SIG), BODY, TS).is_err());
        assert!(verify(&keys, headers(ID, &ts, SIG), b"{}", TS).is_err());
        let flipped = SIG.replacen('t', "u", 1);
        assert!(verify(&keys, headers(ID, &ts, &flipped), BODY, TS).is_err());
        for missing in [
            Headers {
                id: None,
                ..headers(ID, &ts, SIG)
            },
            Headers {
                timestamp: None,
                ..headers(ID, &ts, SIG)
            },
            Headers {
                signature: None,
                ..headers(ID, &ts, SIG)
            },
        ] {
            assert!(verify(&keys, missing, BODY, TS).is_err());
        }
        assert!(verify(&keys, headers(ID, "soon", SIG), BODY, TS).is_err());
    }

    #[test]
    fn rotation_and_expiry_pick_the_live_matching_secret() {
        let other = decode_secret(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let ts = TS.to_string();
        let keys = [Key::new(&other, None), Key::new(&key(), Some(TS))];
        assert_eq!(
            verify(&keys, headers(ID, &ts, SIG), BODY, TS)
                .unwrap()
                .secret,
            1
        );
        assert!(
            verify(&keys, headers(ID, &ts, SIG), BODY, TS + 1).is_err(),
            "expired"
        );
        use crate::secret::KeyFormatError;
        assert_eq!(decode_secret(b"whsec_***"), Err(KeyFormatError::NotBase64));
        assert_eq!(decode_secret(b"whsec_"), Err(KeyFormatError::Empty));
    }

    /// RFC 8032 section 7.1, TEST 1: the secret key (seed), its public key, and the
    /// signature of the empty message.
    const RFC_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC_SIG: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn b64(hex_text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_text).unwrap())
    }

    fn rfc_keys() -> (ed25519_dalek::SigningKey, ed25519_dalek::VerifyingKey) {
        use crate::secret::{standard_webhooks_key_of, Secret, StandardWebhooksKey as K};
        let whsk = Secret::new(format!("whsk_{}", b64(RFC_SEED)).into_bytes());
        let whpk = Secret::new(format!("whpk_{}", b64(RFC_PUBLIC)).into_bytes());
        let (Ok(K::Private(sk)), Ok(K::Public(pk))) = (
            standard_webhooks_key_of(&whsk),
            standard_webhooks_key_of(&whpk),
        ) else {
            panic!("the RFC keys read as whsk_ / whpk_")
        };
        (*sk, pk)
    }

    #[test]
    fn whsk_and_whpk_keys_are_the_standard_ed25519_key_formats() {
        use ed25519_dalek::Signer;
        let (sk, pk) = rfc_keys();
        assert_eq!(sk.verifying_key(), pk, "the whsk_ seed gives the whpk_ key");
        assert_eq!(hex::encode(sk.sign(b"").to_bytes()), RFC_SIG);
        let sig = ed25519_dalek::Signature::from_bytes(
            &hex::decode(RFC_SIG).unwrap().try_into().unwrap(),
        );
        assert!(pk.verify_strict(b"", &sig).is_ok());
        // The 64-byte form (seed and public key) reads as the same key; a wrong pair not.
        use crate::secret::{standard_webhooks_key_of, Secret, StandardWebhooksKey as K};
        let pair = format!("whsk_{}", b64(&format!("{RFC_SEED}{RFC_PUBLIC}")));
        assert!(
            matches!(standard_webhooks_key_of(&Secret::new(pair.into_bytes())), Ok(K::Private(k)) if k.verifying_key() == pk)
        );
        let bad = format!("whsk_{}", b64(&format!("{RFC_SEED}{RFC_SEED}")));
        assert!(standard_webhooks_key_of(&Secret::new(bad.into_bytes())).is_err());
        assert!(standard_webhooks_key_of(&Secret::new(b"whpk_AAAA".to_vec())).is_err());
    }

    #[test]
    fn a_v1a_signature_verifies_with_the_public_key_and_nothing_else_does() {
        let (sk, pk) = rfc_keys();
        let ts = TS.to_string();
        let sig = sign_asymmetric(&sk, ID, TS, BODY);
        assert!(sig.starts_with("v1a,"));
        let keys = [Key::new(&key(), None), Key::public(pk, None)];
        let got = verify(&keys, headers(ID, &ts, &sig), BODY, TS).unwrap();
        assert_eq!(got.secret, 1);
        // Beside a v1 entry (a sender signing both ways during a migration): either matches.
        let both = format!("{SIG} {sig}");
        assert_eq!(
            verify(&keys, headers(ID, &ts, &both), BODY, TS)
                .unwrap()
                .secret,
            0
        );
        let next = (TS + 1).to_string();
        assert!(verify(&keys, headers("msg_other", &ts, &sig), BODY, TS).is_err());
        assert!(verify(&keys, headers(ID, &next, &sig), BODY, TS).is_err());
        assert!(verify(&keys, headers(ID, &ts, &sig), b"{}", TS).is_err());
        let flipped = format!(
            "v1a,{}",
            &sig[4..].replacen('A', "B", 1).replacen('a', "b", 1)
        );
        assert!(verify(&keys, headers(ID, &ts, &flipped), BODY, TS).is_err());
        // A v1a entry is not read as v1, nor a v1 entry by the public key.
        assert!(verify(&[Key::new(&key(), None)], headers(ID, &ts, &sig), BODY, TS).is_err());
        assert!(verify(&[Key::public(pk, None)], headers(ID, &ts, SIG), BODY, TS).is_err());
        assert!(
            verify(
                &[Key::public(pk, Some(TS - 1))],
                headers(ID, &ts, &sig),
                BODY,
                TS
            )
            .is_err(),
            "expired"
        );
    }

    proptest! {
        #[test]
        fn any_header_values_never_panic(id in proptest::collection::vec(any::<u8>(), 0..300),
                                         ts in proptest::collection::vec(any::<u8>(), 0..30),
                                         sig in proptest::collection::vec(any::<u8>(), 0..400)) {
            let keys = [Key::new(&key(), None), Key::public(rfc_keys().1, None)];
            let h = Headers { id: Some(&id), timestamp: Some(&ts), signature: Some(&sig) };
            let _ = verify(&keys, h, BODY, TS);
        }

        #[test]
        fn a_signature_over_another_id_or_timestamp_never_verifies(
            id in "[a-zA-Z0-9_]{1,40}", other in "[a-zA-Z0-9_]{1,40}",
            ts in 0i64..4_000_000_000, dt in 1i64..1_000_000,
        ) {
            prop_assume!(id != other);
            let keys = [Key::new(&key(), None)];
            let sig = sign(&key(), &id, ts, BODY);
            let t = ts.to_string();
            prop_assert!(verify(&keys, headers(&id, &t, &sig), BODY, ts).is_ok());
            prop_assert!(verify(&keys, headers(&other, &t, &sig), BODY, ts).is_err());
            let t2 = (ts + dt).to_string();
            prop_assert!(verify(&keys, headers(&id, &t2, &sig), BODY, ts).is_err());
        }
    }
}
