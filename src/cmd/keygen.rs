//! `vfgate keygen`: a new random 32-byte secret, URL-safe base64 without padding. Owns:
//! that one line of output; uses nothing of the crate.

use super::EXIT_OK;
use base64::Engine;

/// Runs `keygen`.
pub fn run() -> anyhow::Result<u8> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    println!(
        "{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    );
    Ok(EXIT_OK)
}
