//! `vfgate sign`: the `X-VF-Signature-256` value of a file's bytes (or stdin). Uses
//! `verify::sign` (the one MAC function) and `secret`, nothing else of the crate.

use super::{EXIT_OK, EXIT_USAGE};
use std::io::{Read, Write};
use std::path::Path;

/// Runs `sign --secret-env NAME [FILE]`: a missing secret or an unreadable FILE is a usage
/// error (exit 2), as in `send`.
pub fn run(secret_env: &str, file: Option<&Path>) -> anyhow::Result<u8> {
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
    let mut out = std::io::stdout();
    writeln!(out, "{}", crate::verify::sign(&secret, &body))?;
    Ok(EXIT_OK)
}
