//! `vfgate sign`: the signature of a file's bytes (or stdin) for a source's scheme: the
//! `X-VF-Signature-256` value for VF, the request's signature headers for any other scheme.
//! Also turns `--scheme` / `--preset` and their options into a [`SendScheme`] for `send`.
//! Uses `sender` (the schemes' signers, whose MACs are `verify`'s, and `event_fields`),
//! `config` (presets), `secret` and `time`.

use super::args::SchemeArgs;
use super::{EXIT_OK, EXIT_USAGE};
use crate::sender::scheme::{parse_algorithm, parse_encoding, HmacSend, Message, SendScheme};
use crate::verify::hmac::{Algorithm, Encoding, Format};
use std::io::{Read, Write};
use std::path::Path;

/// The scheme `--scheme` and its options describe; a usage error names the option.
pub(super) fn send_scheme(a: &SchemeArgs) -> Result<SendScheme, String> {
    if let Some(name) = &a.preset {
        let (scheme, fields) = crate::config::preset_scheme(name).ok_or_else(|| {
            format!(
                "--preset: unknown preset {name:?}; the presets are {}",
                crate::config::presets::names()
            )
        })?;
        return Ok(SendScheme::from_config(&scheme, &fields));
    }
    let hmac_options = [
        ("--hmac-header", a.hmac_header.is_some()),
        ("--hmac-prefix", a.hmac_prefix.is_some()),
        ("--hmac-encoding", a.hmac_encoding.is_some()),
        ("--hmac-algorithm", a.hmac_algorithm.is_some()),
        ("--id-header", a.id_header.is_some()),
        ("--type-header", a.type_header.is_some()),
    ];
    match a.scheme.as_deref().unwrap_or("vf") {
        "hmac" => {}
        other => {
            if let Some((name, _)) = hmac_options.iter().find(|(_, given)| *given) {
                return Err(format!("{name} is only for --scheme hmac (not {other})"));
            }
            return Ok(match other {
                "standard-webhooks" => SendScheme::StandardWebhooks,
                _ => SendScheme::Vf,
            });
        }
    }
    let header_name = |opt: &str, v: &Option<String>| -> Result<Option<String>, String> {
        v.as_deref()
            .map(|h| match crate::config::is_header_name(h) {
                true => Ok(h.to_ascii_lowercase()),
                false => Err(format!("{opt}: {h:?} is not a header name")),
            })
            .transpose()
    };
    let header = header_name("--hmac-header", &a.hmac_header)?
        .ok_or("--scheme hmac needs --hmac-header (the signature header's name)")?;
    let prefix = a.hmac_prefix.clone().unwrap_or_default();
    if prefix.contains(char::is_whitespace) {
        return Err("--hmac-prefix: must not contain spaces".into());
    }
    Ok(SendScheme::Hmac(Box::new(HmacSend {
        header,
        format: Format {
            prefix,
            encoding: a
                .hmac_encoding
                .as_deref()
                .and_then(parse_encoding)
                .unwrap_or(Encoding::Hex),
            algorithm: a
                .hmac_algorithm
                .as_deref()
                .and_then(parse_algorithm)
                .unwrap_or(Algorithm::Sha256),
            param: None,
        },
        id_header: header_name("--id-header", &a.id_header)?,
        type_header: header_name("--type-header", &a.type_header)?,
        org_header: None,
        timestamp: None,
    })))
}

/// Runs `sign --secret-env NAME [--scheme ...] [FILE]`: a missing secret, an unreadable
/// FILE, or a scheme that needs an event id the body does not have is a usage error (exit
/// 2), as in `send`.
pub fn run(
    secret_env: &str,
    scheme: &SchemeArgs,
    id: Option<String>,
    timestamp: Option<i64>,
    file: Option<&Path>,
) -> anyhow::Result<u8> {
    let scheme = match send_scheme(scheme) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let secret = match (crate::secret::SecretRef::Env {
        env: secret_env.to_string(),
    })
    .load()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --secret-env: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let signer = match scheme.signer(secret, "1") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --secret-env: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let mut body = Vec::new();
    match file {
        None => std::io::stdin().read_to_end(&mut body)?,
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_end(&mut body)?,
        Some(p) => match std::fs::read(p) {
            Ok(b) => {
                body = b;
                body.len()
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return Ok(EXIT_USAGE);
            }
        },
    };
    let (body_id, event_type, org_id) = crate::sender::event_fields(&body);
    let event_id = id.unwrap_or(body_id);
    let org = org_id.clone().unwrap_or_default();
    if scheme.needs_event_id() && event_id.is_empty() {
        eprintln!(
            "error: --scheme {} sends the event id in a header: give --id or sign a body with an event_id",
            scheme.name()
        );
        return Ok(EXIT_USAGE);
    }
    if let Some(why) = scheme.unsendable(&event_id, &event_type, &org) {
        eprintln!("error: {why}");
        return Ok(EXIT_USAGE);
    }
    let mut headers = Vec::new();
    signer.headers(
        Message {
            body: &body,
            event_id: &event_id,
            event_type: &event_type,
            org_id: org_id.as_deref().unwrap_or_default(),
            now_s: timestamp.unwrap_or_else(|| crate::time::now_s() as i64),
        },
        &mut headers,
    );
    let mut out = std::io::stdout();
    if scheme == SendScheme::Vf {
        writeln!(out, "{}", String::from_utf8_lossy(&headers[0].1))?;
    } else {
        for (k, v) in headers {
            writeln!(out, "{k}: {}", String::from_utf8_lossy(&v))?;
        }
    }
    Ok(EXIT_OK)
}
