//! How sender mode signs a request, for each scheme a source can verify: `vf` (the
//! reference sender's `X-VF-Signature-256` and `X-VF-Webhook-Version`), `standard-webhooks`
//! (`webhook-id` from the event's `event_id`, `webhook-timestamp` at each attempt, as Svix
//! re-signs a retry, and `webhook-signature`) and `hmac` (a body MAC in a named header, and
//! the event's id and type in headers when the receiving source maps them from there).
//!
//! A [`SendScheme`] is the description (no secret; it has a one-line text form that a
//! failed-delivery entry records beside its secret reference, so a replay signs the same
//! way); a [`Signer`] is one with its key loaded. The MACs are `verify`'s, so the two sides
//! cannot drift apart; a preset's or source's scheme becomes a [`SendScheme`] through
//! [`SendScheme::from_config`]. Owns: the outgoing signature headers. Uses `verify`,
//! `secret` and `config` (the validated scheme types).

use crate::config::{Field, FieldMap, Scheme, TimestampFrom};
use crate::secret::{KeyFormatError, Secret};
use crate::verify::hmac::{self, Algorithm, Encoding, Format};

/// A signing scheme, without its key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SendScheme {
    /// `X-VF-Signature-256` and `X-VF-Webhook-Version`.
    #[default]
    Vf,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (key `whsec_<base64>`).
    StandardWebhooks,
    /// A body MAC in one header.
    Hmac(Box<HmacSend>),
    /// The secret itself in a header (no body signature; Okta event hooks).
    SharedSecret {
        /// The header, lower-case.
        header: String,
    },
}

/// The `hmac` scheme as a sender writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacSend {
    /// The signature header's name, lower-case.
    pub header: String,
    /// Prefix, encoding and hash of its value.
    pub format: Format,
    /// A header that carries the event's `event_id` (GitHub's `X-GitHub-Delivery`).
    pub id_header: Option<String>,
    /// A header that carries the event's `event_type` (GitHub's `X-GitHub-Event`).
    pub type_header: Option<String>,
    /// A header that carries the event's org (Shopify's `X-Shopify-Shop-Domain`).
    pub org_header: Option<String>,
    /// A signed timestamp: the message is `{before}{now}{between}{body}`.
    pub timestamp: Option<SendTimestamp>,
}

/// A signed timestamp as a sender writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTimestamp {
    /// Its own header, or a key of the signature header's list.
    pub from: TimestampFrom,
    /// Signed text before it.
    pub before: String,
    /// Signed text between it and the body.
    pub between: String,
}

impl SendScheme {
    /// How a sender signs for a source of `scheme` with the field map `fields` (the headers
    /// the source reads the id, type and org from are sent too).
    pub fn from_config(scheme: &Scheme, fields: &FieldMap) -> SendScheme {
        let header = |f: &Option<Field>| match f {
            Some(Field::Header(h)) => Some(h.clone()),
            _ => None,
        };
        match scheme {
            Scheme::Vf => SendScheme::Vf,
            Scheme::StandardWebhooks { .. } => SendScheme::StandardWebhooks,
            Scheme::SharedSecret { header } => SendScheme::SharedSecret {
                header: header.clone(),
            },
            Scheme::Hmac(h) => SendScheme::Hmac(Box::new(HmacSend {
                header: h.header.clone(),
                format: Format {
                    prefix: h.prefix.clone(),
                    encoding: h.encoding,
                    algorithm: h.algorithm,
                    param: h.param.clone(),
                },
                id_header: header(&fields.event_id),
                type_header: header(&fields.event_type),
                org_header: header(&fields.org_id),
                timestamp: h.timestamp.as_ref().map(|t| SendTimestamp {
                    from: t.from.clone(),
                    before: t.before.clone(),
                    between: t.between.clone(),
                }),
            })),
        }
    }

    /// The scheme's name as a source's `scheme` key spells it.
    pub fn name(&self) -> &'static str {
        match self {
            SendScheme::Vf => "vf",
            SendScheme::StandardWebhooks => "standard-webhooks",
            SendScheme::Hmac(_) => "hmac",
            SendScheme::SharedSecret { .. } => "shared-secret",
        }
    }

    /// Whether requests carry the event's `event_id` outside the body (then an event without
    /// one cannot be sent).
    pub fn needs_event_id(&self) -> bool {
        match self {
            SendScheme::Vf | SendScheme::SharedSecret { .. } => false,
            SendScheme::StandardWebhooks => true,
            SendScheme::Hmac(h) => h.id_header.is_some(),
        }
    }

    /// Why an event with this id, type and org cannot be signed for this scheme, if it
    /// cannot: a value the scheme sends in a header must not contain a control character
    /// (it would end the header), and Standard Webhooks needs an id.
    pub fn unsendable(&self, event_id: &str, event_type: &str, org_id: &str) -> Option<String> {
        if self.needs_event_id() && event_id.is_empty() {
            return Some(format!(
                "no event_id (--scheme {} sends it in a header)",
                self.name()
            ));
        }
        let in_headers: Vec<(&str, &str)> = match self {
            SendScheme::Vf | SendScheme::SharedSecret { .. } => vec![],
            SendScheme::StandardWebhooks => vec![("event_id", event_id)],
            SendScheme::Hmac(h) => [
                (h.id_header.is_some(), "event_id", event_id),
                (h.type_header.is_some(), "event_type", event_type),
                (h.org_header.is_some(), "the org", org_id),
            ]
            .into_iter()
            .filter(|(sent, _, _)| *sent)
            .map(|(_, name, v)| (name, v))
            .collect(),
        };
        in_headers
            .into_iter()
            .find(|(_, v)| v.bytes().any(|b| b < 0x20 || b == 0x7f))
            .map(|(name, _)| {
                format!("{name} contains a control character and cannot be sent in a header")
            })
    }

    /// The one-line text a failed-delivery entry keeps: `vf`, `standard-webhooks`, or
    /// `hmac header=<name> prefix=<text> encoding=<e> algorithm=<a> [id-header=<name>]
    /// [type-header=<name>]` (header names and the prefix hold no spaces).
    pub fn describe(&self) -> String {
        let h = match self {
            SendScheme::Hmac(h) => h,
            SendScheme::SharedSecret { header } => return format!("shared-secret header={header}"),
            _ => return self.name().to_string(),
        };
        let mut s = format!(
            "hmac header={} prefix={} encoding={} algorithm={}",
            h.header,
            h.format.prefix,
            encoding_name(h.format.encoding),
            algorithm_name(h.format.algorithm)
        );
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                s.push_str(&format!(" {k}={v}"));
            }
        };
        add("param", &h.format.param);
        add("id-header", &h.id_header);
        add("type-header", &h.type_header);
        add("org-header", &h.org_header);
        if let Some(t) = &h.timestamp {
            let (k, v) = match &t.from {
                TimestampFrom::Header(h) => ("timestamp-header", h),
                TimestampFrom::Param(p) => ("timestamp-param", p),
            };
            s.push_str(&format!(
                " signed={}{{timestamp}}{}{{body}} {k}={v}",
                t.before, t.between
            ));
        }
        s
    }

    /// Reads what [`SendScheme::describe`] wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<SendScheme> {
        let mut words = text.split(' ');
        let simple = match words.next()? {
            "vf" | "" => SendScheme::Vf,
            "standard-webhooks" => SendScheme::StandardWebhooks,
            "shared-secret" => {
                let header = words.next()?.strip_prefix("header=")?.to_string();
                return (words.next().is_none() && !header.is_empty())
                    .then_some(SendScheme::SharedSecret { header });
            }
            "hmac" => SendScheme::Hmac(Box::new(HmacSend {
                header: String::new(),
                format: Format {
                    prefix: String::new(),
                    encoding: Encoding::Hex,
                    algorithm: Algorithm::Sha256,
                    param: None,
                },
                id_header: None,
                type_header: None,
                org_header: None,
                timestamp: None,
            })),
            _ => return None,
        };
        let SendScheme::Hmac(mut h) = simple else {
            // `vf` and `standard-webhooks` have no options.
            return words.next().is_none().then_some(simple);
        };
        let (mut signed, mut from) = (None, None);
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "header" => h.header = v.to_string(),
                "prefix" => h.format.prefix = v.to_string(),
                "encoding" => h.format.encoding = parse_encoding(v)?,
                "algorithm" => h.format.algorithm = parse_algorithm(v)?,
                "param" => h.format.param = Some(v.to_string()),
                "id-header" => h.id_header = Some(v.to_string()),
                "type-header" => h.type_header = Some(v.to_string()),
                "org-header" => h.org_header = Some(v.to_string()),
                "signed" => signed = Some(v),
                "timestamp-header" => from = Some(TimestampFrom::Header(v.to_string())),
                "timestamp-param" => from = Some(TimestampFrom::Param(v.to_string())),
                _ => return None,
            }
        }
        match (signed, from) {
            (None, None) => {}
            (Some(t), Some(from)) => {
                let (before, between) = t.strip_suffix("{body}")?.split_once("{timestamp}")?;
                h.timestamp = Some(SendTimestamp {
                    from,
                    before: before.to_string(),
                    between: between.to_string(),
                });
            }
            _ => return None,
        }
        (!h.header.is_empty()).then_some(SendScheme::Hmac(h))
    }

    /// This scheme keyed with `secret` (for `standard-webhooks`, the `whsec_` text the
    /// receiver shows); `version` is the `X-VF-Webhook-Version` a VF request carries.
    pub fn signer(&self, secret: Secret, version: &str) -> Result<Signer, KeyFormatError> {
        Ok(match self {
            SendScheme::Vf => Signer::Vf {
                secret,
                version: version.as_bytes().to_vec(),
            },
            SendScheme::StandardWebhooks => {
                use crate::secret::StandardWebhooksKey as K;
                match crate::secret::standard_webhooks_key_of(&secret)? {
                    K::Symmetric(key) => Signer::StandardWebhooks { key },
                    K::Private(key) => Signer::StandardWebhooksAsymmetric { key },
                    // A public key cannot sign.
                    K::Public(_) => return Err(KeyFormatError::PublicKeyCannotSign),
                }
            }
            SendScheme::SharedSecret { header } => Signer::SharedSecret {
                header: header.clone(),
                secret,
            },
            SendScheme::Hmac(h) => Signer::Hmac {
                spec: h.clone(),
                secret,
            },
        })
    }
}

/// `hex` / `base64`.
pub fn parse_encoding(s: &str) -> Option<Encoding> {
    match s {
        "hex" => Some(Encoding::Hex),
        "base64" => Some(Encoding::Base64),
        _ => None,
    }
}

/// `sha256` / `sha512` / `sha1`.
pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    match s {
        "sha256" => Some(Algorithm::Sha256),
        "sha512" => Some(Algorithm::Sha512),
        "sha1" => Some(Algorithm::Sha1),
        _ => None,
    }
}

fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Hex => "hex",
        Encoding::Base64 => "base64",
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Sha256 => "sha256",
        Algorithm::Sha512 => "sha512",
        Algorithm::Sha1 => "sha1",
    }
}

/// A scheme with its key: writes the signature headers of one request.
pub enum Signer {
    /// VF.
    Vf {
        /// The shared secret.
        secret: Secret,
        /// `X-VF-Webhook-Version`.
        version: Vec<u8>,
    },
    /// Standard Webhooks, `v1` (HMAC).
    StandardWebhooks {
        /// The decoded HMAC key.
        key: Secret,
    },
    /// Standard Webhooks, `v1a` (ed25519 with a `whsk_` key).
    StandardWebhooksAsymmetric {
        /// The secret key.
        key: Box<ed25519_dalek::SigningKey>,
    },
    /// The secret in a header.
    SharedSecret {
        /// The header.
        header: String,
        /// The secret, sent as the header's value.
        secret: Secret,
    },
    /// A body MAC.
    Hmac {
        /// Header layout.
        spec: Box<HmacSend>,
        /// The shared secret.
        secret: Secret,
    },
}

/// What a request's signature headers are computed from.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The exact bytes sent.
    pub body: &'a [u8],
    /// The event's `event_id` (empty when it has none).
    pub event_id: &'a str,
    /// The event's `event_type` (empty when it has none).
    pub event_type: &'a str,
    /// The event's org (empty when it has none).
    pub org_id: &'a str,
    /// Unix seconds at signing.
    pub now_s: i64,
}

impl Signer {
    /// Whether [`Signer::headers`] reads the message's id, type or time (a VF signature is
    /// over the body alone, so a caller can skip finding them).
    pub fn reads_fields(&self) -> bool {
        !matches!(self, Signer::Vf { .. } | Signer::SharedSecret { .. })
    }

    /// Appends the signature headers of `m` to `out`.
    pub fn headers(&self, m: Message<'_>, out: &mut Vec<(String, Vec<u8>)>) {
        match self {
            Signer::Vf { secret, version } => {
                out.push((
                    crate::verify::SIGNATURE_HEADER.to_string(),
                    crate::verify::sign(secret, m.body).into_bytes(),
                ));
                out.push((crate::verify::VERSION_HEADER.to_string(), version.clone()));
            }
            Signer::StandardWebhooks { key } => standard_webhooks_headers(
                m,
                crate::verify::standard_webhooks::sign(key.expose(), m.event_id, m.now_s, m.body),
                out,
            ),
            Signer::StandardWebhooksAsymmetric { key } => standard_webhooks_headers(
                m,
                crate::verify::standard_webhooks::sign_asymmetric(key, m.event_id, m.now_s, m.body),
                out,
            ),
            Signer::SharedSecret { header, secret } => {
                out.push((header.clone(), secret.expose().to_vec()));
            }
            Signer::Hmac { spec, secret } => {
                let now = m.now_s.to_string();
                let mut head = Vec::new();
                if let Some(t) = &spec.timestamp {
                    head.extend_from_slice(t.before.as_bytes());
                    head.extend_from_slice(now.as_bytes());
                    head.extend_from_slice(t.between.as_bytes());
                }
                let mut sig = hmac::sign_message(&spec.format, secret.expose(), &head, m.body);
                match spec.timestamp.as_ref().map(|t| &t.from) {
                    Some(TimestampFrom::Param(p)) => sig = format!("{p}={now},{sig}"),
                    Some(TimestampFrom::Header(h)) => out.push((h.clone(), now.into_bytes())),
                    None => {}
                }
                out.push((spec.header.clone(), sig.into_bytes()));
                for (h, v) in [
                    (&spec.id_header, m.event_id),
                    (&spec.type_header, m.event_type),
                    (&spec.org_header, m.org_id),
                ] {
                    if let Some(h) = h {
                        out.push((h.clone(), v.as_bytes().to_vec()));
                    }
                }
            }
        }
    }
}

/// The three Standard Webhooks headers of `m` with its signature entry (`v1,...` or
/// `v1a,...`).
fn standard_webhooks_headers(m: Message<'_>, sig: String, out: &mut Vec<(String, Vec<u8>)>) {
    out.push(("webhook-id".into(), m.event_id.as_bytes().to_vec()));
    out.push(("webhook-timestamp".into(), m.now_s.to_string().into_bytes()));
    out.push(("webhook-signature".into(), sig.into_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn github() -> SendScheme {
        SendScheme::Hmac(Box::new(HmacSend {
            header: "x-hub-signature-256".into(),
            format: Format {
                prefix: "sha256=".into(),
                encoding: Encoding::Hex,
                algorithm: Algorithm::Sha256,
                param: None,
            },
            id_header: Some("x-github-delivery".into()),
            type_header: Some("x-github-event".into()),
            org_header: None,
            timestamp: None,
        }))
    }

    #[test]
    fn the_recorded_text_reads_back_as_the_same_scheme() {
        let okta = SendScheme::SharedSecret {
            header: "authorization".into(),
        };
        for s in [SendScheme::Vf, SendScheme::StandardWebhooks, github(), okta] {
            assert_eq!(SendScheme::parse(&s.describe()), Some(s.clone()), "{s:?}");
        }
        assert_eq!(
            github().describe(),
            "hmac header=x-hub-signature-256 prefix=sha256= encoding=hex algorithm=sha256 id-header=x-github-delivery type-header=x-github-event"
        );
        assert_eq!(
            SendScheme::parse(""),
            Some(SendScheme::Vf),
            "entries before schemes"
        );
        assert_eq!(SendScheme::parse("hmac"), None, "no header");
        assert_eq!(SendScheme::parse("hmac header=x encoding=hex2"), None);
        assert_eq!(SendScheme::parse("stripe"), None);
        assert_eq!(SendScheme::parse("vf junk"), None);
        let stripe = SendScheme::from_config(
            &crate::config::preset_scheme("stripe").unwrap().0,
            &crate::config::preset_scheme("stripe").unwrap().1,
        );
        assert_eq!(SendScheme::parse(&stripe.describe()), Some(stripe.clone()));
        let slack = crate::config::preset_scheme("slack").unwrap();
        let slack = SendScheme::from_config(&slack.0, &slack.1);
        assert_eq!(SendScheme::parse(&slack.describe()), Some(slack));
        assert!(github()
            .unsendable("a\nwebhook-signature: x", "", "")
            .is_some());
        assert!(SendScheme::StandardWebhooks
            .unsendable("", "", "")
            .is_some());
        assert!(
            SendScheme::Vf.unsendable("a\n", "", "").is_none(),
            "vf sends no id header"
        );
    }

    fn headers(s: &SendScheme, secret: &str, m: Message<'_>) -> Vec<(String, String)> {
        let signer = s.signer(Secret::new(secret.as_bytes()), "1").unwrap();
        let mut out = vec![];
        signer.headers(m, &mut out);
        out.into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn each_scheme_writes_what_its_verifier_reads() {
        let m = Message {
            body: b"{\"a\":1}",
            event_id: "evt_1",
            event_type: "push",
            org_id: "",
            now_s: 1_700_000_000,
        };
        let vf = headers(&SendScheme::Vf, "k", m);
        assert_eq!(
            vf[0].1,
            crate::verify::sign(&Secret::new(b"k".to_vec()), m.body)
        );
        assert_eq!(vf[1], ("x-vf-webhook-version".into(), "1".into()));
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sw = headers(&SendScheme::StandardWebhooks, whsec, m);
        let key = crate::secret::standard_webhooks_key(&Secret::new(whsec.as_bytes())).unwrap();
        let keys = [crate::verify::standard_webhooks::Key::new(
            key.expose(),
            None,
        )];
        let h = crate::verify::standard_webhooks::Headers {
            id: Some(sw[0].1.as_bytes()),
            timestamp: Some(sw[1].1.as_bytes()),
            signature: Some(sw[2].1.as_bytes()),
        };
        assert!(crate::verify::standard_webhooks::verify(&keys, h, m.body, 0).is_ok());
        let gh = headers(&github(), "s3cret", m);
        assert_eq!(gh[1], ("x-github-delivery".into(), "evt_1".into()));
        assert_eq!(gh[2], ("x-github-event".into(), "push".into()));
        let SendScheme::Hmac(spec) = github() else {
            unreachable!()
        };
        let keys = [hmac::Key::new(&spec.format, b"s3cret", None)];
        assert_eq!(
            hmac::verify(&spec.format, &keys, Some(gh[0].1.as_bytes()), m.body, 0),
            Ok(0)
        );
        assert!(SendScheme::StandardWebhooks
            .signer(Secret::new(b"whsec_!!".to_vec()), "1")
            .is_err());
    }
}
