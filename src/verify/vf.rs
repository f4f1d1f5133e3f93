//! The VF scheme's signature: `X-VF-Signature-256: sha256=<hex HMAC-SHA256(secret, raw
//! body)>`. The MAC is computed over
//! the raw bytes before anything parses the body (parsing untrusted input first would expose
//! the JSON parser to unauthenticated attackers), and compared with `Mac::verify_slice`
//! (constant time). Every configured secret is tried, even after a match, so the time taken
//! does not tell which secret matched. A malformed header, a missing one and a wrong MAC all
//! give the same error: nothing tells an attacker which check failed.
//!
//! Owns: the VF signature header and the MAC (`sign`, which sender mode uses too). Uses
//! `config` and `secret`; reads no clock (callers pass the time).

use crate::config::SourceSecret;
use crate::secret::Secret;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-vf-signature-256";
/// The version header.
pub const VERSION_HEADER: &str = "x-vf-webhook-version";

/// Why verification failed, for every scheme. The sender is told the same sentence for all
/// three (they are indistinguishable on purpose); only the metrics' `reason` tells them
/// apart, for the operator. Carries no secret and no received signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is missing (or empty).
    #[error("signature missing, malformed or not matching any configured secret")]
    Missing,
    /// A header is there but not in the scheme's shape (encoding, prefix, a timestamp that
    /// is not a number).
    #[error("signature missing, malformed or not matching any configured secret")]
    Malformed,
    /// Well formed, but no live secret matches.
    #[error("signature missing, malformed or not matching any configured secret")]
    NoMatch,
}

impl VerifyError {
    /// The `reason` label: `signature_missing`, `signature_malformed`, `no_key_matched`.
    pub fn reason(self) -> &'static str {
        match self {
            VerifyError::Missing => "signature_missing",
            VerifyError::Malformed => "signature_malformed",
            VerifyError::NoMatch => "no_key_matched",
        }
    }

    /// The failure of a check that found `given` (a header), `parsed` from it, and `matched`.
    pub fn of(given: bool, parsed: bool) -> VerifyError {
        match (given, parsed) {
            (false, _) => VerifyError::Missing,
            (true, false) => VerifyError::Malformed,
            (true, true) => VerifyError::NoMatch,
        }
    }
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
        matched.ok_or_else(|| VerifyError::of(header.is_some(), expected.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/sample-event.json");

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
            Err(VerifyError::NoMatch)
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
