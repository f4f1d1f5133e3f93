//! The value types written as strings in the file: [`DurationStr`] (`"500ms"`, `"30s"`,
//! `"24h"`) and [`ByteSize`] (`42`, `"512KiB"`, `"1MB"`), with their parsers, serde impls and
//! error wording. They know nothing of keys or sections (the key path is added by
//! `from_value`), import nothing from the crate, and must stay that way so that sinks and
//! the raw shape can use them freely.

use serde::Deserialize;
use std::time::Duration;

/// A duration written as `"500ms"`, `"30s"`, `"24h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(DurationStr)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\", \"24h\""
                ))
            })
    }
}

/// A size in bytes: an integer, or a string such as `"512KiB"`, `"10GiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Why a size string is not a size (the message quotes it: sizes are not secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No leading number.
    #[error("invalid size {0:?}: expected a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)")]
    NoNumber(String),
    /// The number or the product with its unit overflows 64 bits.
    #[error("invalid size {0:?}: too large")]
    TooLarge(String),
    /// An unknown unit.
    #[error("invalid size {0:?}: unknown unit {1:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)")]
    UnknownUnit(String, String),
}

impl ByteSize {
    /// Parses `"512KiB"`, `"10 GiB"`, `"1MB"`, `"42"`, `"42B"`.
    pub fn parse(s: &str) -> Result<u64, SizeError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(SizeError::NoNumber(s.to_string()));
        }
        let n: u64 = num
            .parse()
            .map_err(|_| SizeError::TooLarge(s.to_string()))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            "TB" => 1_000_000_000_000,
            "TiB" => 1 << 40,
            u => return Err(SizeError::UnknownUnit(s.to_string(), u.to_string())),
        };
        n.checked_mul(mult)
            .ok_or_else(|| SizeError::TooLarge(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a size: a number of bytes or a string such as \"512KiB\" or \"1MB\""
        )]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) if i >= 0 => Ok(ByteSize(i as u64)),
            Raw::Int(i) => Err(serde::de::Error::custom(format!(
                "size must not be negative, got {i}"
            ))),
            Raw::Str(s) => ByteSize::parse(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512KiB").unwrap(), 512 * 1024);
        assert_eq!(ByteSize::parse("10GiB").unwrap(), 10 << 30);
        assert_eq!(ByteSize::parse("1MB").unwrap(), 1_000_000);
        assert_eq!(ByteSize::parse("42").unwrap(), 42);
        assert!(ByteSize::parse("12XB").is_err());
        assert!(ByteSize::parse("KiB").is_err());
        assert!(ByteSize::parse("99999999999999999999").is_err());
    }

    proptest! {
        #[test]
        fn size_parser_never_panics_and_roundtrips_numbers(s in ".{0,24}", n in 0u64..(1u64<<40)) {
            let _ = ByteSize::parse(&s);
            prop_assert_eq!(ByteSize::parse(&n.to_string()).unwrap(), n);
            prop_assert_eq!(ByteSize::parse(&format!("{n}KiB")).unwrap(), n * 1024);
        }
    }
}
