//! `vfgate check-config`: validation only (nothing is opened, created or contacted): the
//! warnings and a summary, exit 0; or the key path and reason, exit 2. Owns: that output
//! and its exit code; uses `config` only (nothing is built).

use super::{EXIT_OK, EXIT_USAGE};
use crate::config::Config;
use std::path::Path;

/// Runs `check-config --config FILE [--explain]`.
pub fn run(config: &Path, explain: bool) -> u8 {
    match Config::load(config, crate::sinks::TYPES) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            if explain {
                for (i, s) in c.sources.iter().enumerate() {
                    let Some((preset, lines)) = &s.preset else {
                        continue;
                    };
                    println!("source[{i}] {:?}: preset = {preset:?} expands to", s.name);
                    for l in lines {
                        println!("  {l}");
                    }
                }
            }
            println!("{}", c.summary());
            EXIT_OK
        }
        Err(e) => {
            super::print_config_error(config, &e);
            EXIT_USAGE
        }
    }
}
