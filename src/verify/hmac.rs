//! The `hmac` scheme: a MAC of the raw body in one named header, with an optional prefix, in
//! hex (either case) or base64, by SHA-256, SHA-512 or SHA-1 (SHA-1 only because some
//! senders still use it: the config warns). GitHub's `X-Hub-Signature-256: sha256=<hex>` is
//! one such; so are many others. Some senders sign a timestamp before the body (Slack's
//! `v0:{timestamp}:{body}`, Stripe's `{timestamp}.{body}`): the caller passes that signed
//! head (`verify/mod.rs` reads the timestamp and checks its window). Some write the MACs as
//! one key's values in a `key=value,...` list (Stripe's `t=...,v1=...,v1=...`): any one may
//! match, as during the sender's own rotation.
//!
//! Every configured secret is tried, compared in constant time, even after a match; a missing
//! header, a wrong prefix, bad encoding and a wrong MAC tell the sender the same (the
//! metrics' reason tells them apart).
//!
//! Owns: this scheme's header value and MAC. Pure: no clock, no I/O.

use super::VerifyError;
use base64::Engine;
use hmac::{KeyInit, Mac};

pub use crate::config::{HmacAlgorithm as Algorithm, HmacEncoding as Encoding};

/// How a source's sender writes its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// Text before the MAC (`sha256=`), possibly empty.
    pub prefix: String,
    /// The MAC's encoding.
    pub encoding: Encoding,
    /// The hash.
    pub algorithm: Algorithm,
    /// The MACs are this key's values in a `key=value,...` header (then `prefix` is empty).
    pub param: Option<String>,
}

/// Most MACs read from one `key=value` list header.
const MAX_CANDIDATES: usize = 8;

#[derive(Clone)]
enum Keyed {
    Sha1(hmac::Hmac<sha1::Sha1>),
    Sha256(hmac::Hmac<sha2::Sha256>),
    Sha512(hmac::Hmac<sha2::Sha512>),
}

impl Keyed {
    fn new(algorithm: Algorithm, key: &[u8]) -> Keyed {
        const ANY: &str = "HMAC takes any key length";
        match algorithm {
            Algorithm::Sha1 => Keyed::Sha1(KeyInit::new_from_slice(key).expect(ANY)),
            Algorithm::Sha256 => Keyed::Sha256(KeyInit::new_from_slice(key).expect(ANY)),
            Algorithm::Sha512 => Keyed::Sha512(KeyInit::new_from_slice(key).expect(ANY)),
        }
    }

    /// The MAC of `head` followed by `body`, in a buffer as long as the longest (SHA-512's
    /// 64 bytes): no allocation per key and request.
    fn mac(&self, head: &[u8], body: &[u8]) -> Mac64 {
        fn run<M: Mac>(mut m: M, head: &[u8], body: &[u8]) -> Mac64 {
            m.update(head);
            m.update(body);
            let out = m.finalize().into_bytes();
            let mut buf = [0u8; 64];
            buf[..out.len()].copy_from_slice(&out);
            Mac64(buf, out.len())
        }
        match self.clone() {
            Keyed::Sha1(m) => run(m, head, body),
            Keyed::Sha256(m) => run(m, head, body),
            Keyed::Sha512(m) => run(m, head, body),
        }
    }
}

/// A MAC of up to 64 bytes and its length.
struct Mac64([u8; 64], usize);

impl Mac64 {
    fn bytes(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

/// One key, pre-keyed, with its expiry (unix seconds).
#[derive(Clone)]
pub struct Key {
    keyed: Keyed,
    not_after: Option<i64>,
}

impl Key {
    /// A key for `format`'s algorithm.
    pub fn new(format: &Format, secret: &[u8], not_after: Option<i64>) -> Key {
        Key {
            keyed: Keyed::new(format.algorithm, secret),
            not_after,
        }
    }
}

/// The header value a sender writes for `body`.
pub fn sign(format: &Format, secret: &[u8], body: &[u8]) -> String {
    sign_message(format, secret, b"", body)
}

/// The MAC part of a header value for the message `head` + `body`: `<prefix><mac>`, or
/// `<param>=<mac>` (a sender with a timestamp parameter writes `t=<ts>,` before it).
pub fn sign_message(format: &Format, secret: &[u8], head: &[u8], body: &[u8]) -> String {
    let mac = Keyed::new(format.algorithm, secret).mac(head, body);
    let text = match format.encoding {
        Encoding::Hex => hex::encode(mac.bytes()),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac.bytes()),
    };
    match &format.param {
        Some(p) => format!("{p}={text}"),
        None => format!("{}{text}", format.prefix),
    }
}

fn decode_mac(format: &Format, text: &[u8]) -> Option<Vec<u8>> {
    match format.encoding {
        Encoding::Hex => hex::decode(text).ok(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
    }
}

/// The value of `key` in a `key=value,key=value` header (the first; surrounding spaces
/// ignored), e.g. Stripe's `t`.
pub fn param<'a>(value: &'a [u8], key: &str) -> Option<&'a [u8]> {
    params(value)
        .find(|(k, _)| *k == key.as_bytes())
        .map(|(_, v)| v)
}

fn params(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|&b| b == b',').filter_map(|pair| {
        let at = pair.iter().position(|&b| b == b'=')?;
        Some((pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()))
    })
}

/// The MACs a header value offers, if it has the format's shape.
fn candidates(format: &Format, value: &[u8]) -> Vec<Vec<u8>> {
    match &format.param {
        Some(key) => params(value)
            .filter(|(k, _)| *k == key.as_bytes())
            .take(MAX_CANDIDATES)
            .filter_map(|(_, v)| decode_mac(format, v))
            .collect(),
        None => value
            .trim_ascii()
            .strip_prefix(format.prefix.as_bytes())
            .and_then(|t| decode_mac(format, t))
            .into_iter()
            .collect(),
    }
}

/// Verifies the header `value` over `body` with `keys` at unix time `now`: the position of
/// the first live secret that matches.
pub fn verify(
    format: &Format,
    keys: &[Key],
    value: Option<&[u8]>,
    body: &[u8],
    now: i64,
) -> Result<usize, VerifyError> {
    verify_message(format, keys, value, b"", body, now)
}

/// [`verify`] for the message `head` + `body` (a signed timestamp's head, or nothing).
pub fn verify_message(
    format: &Format,
    keys: &[Key],
    value: Option<&[u8]>,
    head: &[u8],
    body: &[u8],
    now: i64,
) -> Result<usize, VerifyError> {
    use subtle::ConstantTimeEq;
    let sigs = value.map(|v| candidates(format, v)).unwrap_or_default();
    let mut matched = None;
    for (i, k) in keys.iter().enumerate() {
        // Every key computes its MAC whatever the header held, and is compared with every
        // candidate, so timing tells nothing.
        let mac = k.keyed.mac(head, body);
        let ok = sigs.iter().fold(false, |any, s| {
            any | bool::from(mac.bytes().ct_eq(s.as_slice()))
        });
        let live = k.not_after.is_none_or(|t| now <= t);
        if ok && live && matched.is_none() {
            matched = Some(i);
        }
    }
    matched.ok_or_else(|| VerifyError::of(value.is_some(), !sigs.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn github() -> Format {
        Format {
            prefix: "sha256=".into(),
            encoding: Encoding::Hex,
            algorithm: Algorithm::Sha256,
            param: None,
        }
    }

    #[test]
    fn githubs_documented_example_verifies() {
        // docs.github.com, "Validating webhook deliveries": secret "It's a Secret to
        // Everybody", payload "Hello, World!".
        let (secret, body) = (b"It's a Secret to Everybody", b"Hello, World!");
        let want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(&github(), secret, body), want);
        let keys = [Key::new(&github(), secret, None)];
        assert_eq!(
            verify(&github(), &keys, Some(want.as_bytes()), body, 0),
            Ok(0)
        );
        let upper = want.to_ascii_uppercase().replacen("SHA256=", "sha256=", 1);
        assert_eq!(
            verify(&github(), &keys, Some(upper.as_bytes()), body, 0),
            Ok(0)
        );
    }

    #[test]
    fn each_algorithm_and_encoding_round_trips_and_refuses_a_change() {
        for algorithm in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
            for encoding in [Encoding::Hex, Encoding::Base64] {
                let f = Format {
                    prefix: String::new(),
                    encoding,
                    algorithm,
                    param: None,
                };
                let keys = [Key::new(&f, b"old", Some(10)), Key::new(&f, b"new", None)];
                let sig = sign(&f, b"new", b"body");
                assert_eq!(verify(&f, &keys, Some(sig.as_bytes()), b"body", 0), Ok(1));
                assert!(verify(&f, &keys, Some(sig.as_bytes()), b"bodY", 0).is_err());
                let old = sign(&f, b"old", b"body");
                assert_eq!(verify(&f, &keys, Some(old.as_bytes()), b"body", 10), Ok(0));
                assert!(verify(&f, &keys, Some(old.as_bytes()), b"body", 11).is_err());
                assert!(verify(&f, &keys, None, b"body", 0).is_err());
            }
        }
        let other = sign(&github(), b"k", b"body").replacen("sha256=", "sha1=", 1);
        let keys = [Key::new(&github(), b"k", None)];
        assert!(verify(&github(), &keys, Some(other.as_bytes()), b"body", 0).is_err());
    }

    proptest! {
        #[test]
        fn any_header_value_never_panics(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let keys = [Key::new(&github(), b"k", None)];
            let _ = verify(&github(), &keys, Some(&v), b"body", 0);
        }
    }
}
