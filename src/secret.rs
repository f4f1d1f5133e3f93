//! Secrets: a type that cannot be printed, and the `{ env | file | value }` reference that
//! names where one comes from.
//!
//! A [`Secret`] has a redacting `Debug`, no `Display` and no `Serialize`; the bytes are reached
//! only through [`Secret::expose`]. A [`SecretRef`] is the config's description of a secret and
//! may be printed (it names an env var or a path, never the value).
//!
//! Owns: loading a secret from its reference and keeping it unprintable. Imports nothing of
//! the crate.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// Secret bytes. Debug prints `Secret(***)`; there is no other way to format it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps bytes as a secret.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into().into_boxed_slice())
    }
    /// The secret bytes, for the one place that needs them (a MAC key, a header value).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The secret as UTF-8 text, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret comes from, as written in the config: `{ env = "NAME" }`,
/// `{ file = "PATH" }` or (discouraged, warned at start-up) `{ value = "..." }`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawSecretRef")]
pub enum SecretRef {
    /// Read from this environment variable.
    Env {
        /// Variable name.
        env: String,
    },
    /// Read from this file; one trailing newline (`\n` or `\r\n`) is removed.
    File {
        /// Path of the file.
        file: PathBuf,
    },
    /// Inline in the config file (accepted with a warning).
    Value {
        /// The secret itself.
        value: InlineSecret,
    },
}

/// The serde shape of a secret reference: exactly one of the three keys.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a secret: { env = \"NAME\" }, { file = \"PATH\" } or { value = \"...\" }"
)]
struct RawSecretRef {
    env: Option<String>,
    file: Option<PathBuf>,
    value: Option<InlineSecret>,
}

impl TryFrom<RawSecretRef> for SecretRef {
    type Error = &'static str;
    fn try_from(r: RawSecretRef) -> Result<Self, Self::Error> {
        match (r.env, r.file, r.value) {
            (Some(env), None, None) if !env.is_empty() => Ok(SecretRef::Env { env }),
            (None, Some(file), None) => Ok(SecretRef::File { file }),
            (None, None, Some(value)) => Ok(SecretRef::Value { value }),
            _ => Err("a secret is exactly one of { env = \"NAME\" }, { file = \"PATH\" } or { value = \"...\" }"),
        }
    }
}

/// An inline secret in the config: deserialises from a string, never prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSecret(pub Secret);

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(InlineSecret(Secret::new(s.into_bytes())))
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why a secret could not be loaded. Never carries the secret's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The environment variable is set but empty.
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {reason}")]
    File {
        /// The path.
        path: String,
        /// The OS error, without content.
        reason: String,
    },
    /// The file is empty.
    #[error("secret file {0} is empty")]
    FileEmpty(String),
    /// An inline value is empty (an empty HMAC key lets anyone forge events).
    #[error("the inline value is empty")]
    ValueEmpty,
}

impl SecretRef {
    /// A printable description: `env VF_SECRET`, `file /run/secrets/x`, `inline value`.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env { env } => format!("env {env}"),
            SecretRef::File { file } => format!("file {}", file.display()),
            SecretRef::Value { .. } => "inline value".to_string(),
        }
    }

    /// True for `{ value = ... }`, which start-up warns about.
    pub fn is_inline(&self) -> bool {
        matches!(self, SecretRef::Value { .. })
    }

    /// Loads the secret now.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretRef::Env { env } => match std::env::var_os(env) {
                None => Err(SecretError::EnvMissing(env.clone())),
                Some(v) if v.is_empty() => Err(SecretError::EnvEmpty(env.clone())),
                Some(v) => Ok(Secret::new(std::os::unix::ffi::OsStringExt::into_vec(v))),
            },
            SecretRef::File { file } => {
                let mut bytes = std::fs::read(file).map_err(|e| SecretError::File {
                    path: file.display().to_string(),
                    reason: e.kind().to_string(),
                })?;
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                if bytes.is_empty() {
                    return Err(SecretError::FileEmpty(file.display().to_string()));
                }
                Ok(Secret::new(bytes))
            }
            SecretRef::Value { value } if value.0.expose().is_empty() => {
                Err(SecretError::ValueEmpty)
            }
            SecretRef::Value { value } => Ok(value.0.clone()),
        }
    }
}

/// Why a secret is not a Standard Webhooks signing key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not base64 after the optional `whsec_` prefix.
    #[error("not a Standard Webhooks secret: expected \"whsec_\" followed by base64 (as the sender shows it)")]
    NotBase64,
    /// Decodes to nothing.
    #[error("the secret decodes to an empty key")]
    Empty,
    /// A `whpk_` / `whsk_` key that is not an ed25519 key (32 bytes; a secret key may also be
    /// the 64-byte key pair).
    #[error("not an ed25519 key: whpk_ is 32 bytes in base64, whsk_ 32 (or 64) bytes in base64")]
    NotEd25519,
    /// A `whpk_` public key given to sign with.
    #[error("a whpk_ public key verifies but cannot sign: give the whsk_ secret key")]
    PublicKeyCannotSign,
}

/// A Standard Webhooks key as the sender shows it: `whsec_<base64>` (or the base64 alone),
/// the symmetric key of `v1` signatures; `whpk_<base64>`, an ed25519 public key that
/// verifies `v1a` signatures (the gateway then holds nothing that can forge an event);
/// `whsk_<base64>`, the ed25519 secret key a sender signs `v1a` with (a 32-byte seed, or the
/// 64-byte seed and public key).
pub enum StandardWebhooksKey {
    /// The decoded HMAC key.
    Symmetric(Secret),
    /// An ed25519 public key.
    Public(ed25519_dalek::VerifyingKey),
    /// An ed25519 secret key.
    Private(Box<ed25519_dalek::SigningKey>),
}

/// Reads a Standard Webhooks key of any of its three kinds.
pub fn standard_webhooks_key_of(secret: &Secret) -> Result<StandardWebhooksKey, KeyFormatError> {
    use base64::Engine;
    let s = secret.expose().trim_ascii();
    let decode = |b: &[u8]| {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| KeyFormatError::NotBase64)
    };
    if let Some(b) = s.strip_prefix(b"whpk_") {
        let raw: [u8; 32] = decode(b)?
            .try_into()
            .map_err(|_| KeyFormatError::NotEd25519)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| KeyFormatError::NotEd25519)?;
        return Ok(StandardWebhooksKey::Public(key));
    }
    if let Some(b) = s.strip_prefix(b"whsk_") {
        let mut raw = decode(b)?;
        let key = match raw.len() {
            32 => Ok(ed25519_dalek::SigningKey::from_bytes(
                raw[..].try_into().expect("32 bytes"),
            )),
            64 => {
                ed25519_dalek::SigningKey::from_keypair_bytes(raw[..].try_into().expect("64 bytes"))
                    .map_err(|_| KeyFormatError::NotEd25519)
            }
            _ => Err(KeyFormatError::NotEd25519),
        };
        // The decoded secret key is not left behind in freed memory.
        raw.fill(0);
        return key.map(|k| StandardWebhooksKey::Private(Box::new(k)));
    }
    standard_webhooks_key(secret).map(StandardWebhooksKey::Symmetric)
}

/// The HMAC key of a Standard Webhooks secret as senders show it: `whsec_<base64>`, or the
/// base64 alone (decoded all the same, as the specification's reference libraries do).
pub fn standard_webhooks_key(secret: &Secret) -> Result<Secret, KeyFormatError> {
    use base64::Engine;
    let s = secret.expose().trim_ascii();
    let s = s.strip_prefix(b"whsec_").unwrap_or(s);
    let key = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| KeyFormatError::NotBase64)?;
    if key.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    Ok(Secret::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let r: SecretRef = toml::from_str::<toml::Table>("v = { value = \"hunter2\" }").unwrap()
            ["v"]
            .clone()
            .try_into()
            .unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
        assert_eq!(r.load().unwrap().expose(), b"hunter2");
    }

    #[test]
    fn file_secret_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "abc\r\n").unwrap();
        let r = SecretRef::File { file: p.clone() };
        assert_eq!(r.load().unwrap().expose(), b"abc");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(r.load(), Err(SecretError::FileEmpty(_))));
    }

    #[test]
    fn missing_env_is_named() {
        let r = SecretRef::Env {
            env: "VFGATE_TEST_SURELY_UNSET".into(),
        };
        assert_eq!(
            r.load().unwrap_err().to_string(),
            "environment variable VFGATE_TEST_SURELY_UNSET is not set"
        );
    }
}
