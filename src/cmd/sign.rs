//! `vfgate sign`: the `X-VF-Signature-256` value of a file's bytes (or stdin). Uses
//! `verify::sign` (the one MAC function) and `secret`, nothing else of the crate.

use super::EXIT_OK;
use anyhow::Context;
use std::io::{Read, Write};
use std::path::Path;

/// Runs `sign --secret-env NAME [FILE]`.
pub fn run(secret_env: &str, file: Option<&Path>) -> anyhow::Result<u8> {
    let secret = crate::secret::SecretRef::Env {
        env: secret_env.to_string(),
    }
    .load()
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut body = Vec::new();
    match file {
        None => std::io::stdin().read_to_end(&mut body)?,
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_end(&mut body)?,
        Some(p) => {
            body = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            body.len()
        }
    };
    let mut out = std::io::stdout();
    writeln!(out, "{}", crate::verify::sign(&secret, &body))?;
    Ok(EXIT_OK)
}
