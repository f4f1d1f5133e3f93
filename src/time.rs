//! The wall clock and RFC 3339 timestamps, in one place.
//!
//! Everything that needs the time of day reads it here (`clippy.toml` forbids
//! `SystemTime::now` elsewhere), so the clock has one definition and one fallback (a clock
//! before 1970 reads as 0). Elapsed-time measurement uses `Instant` / tokio's clock, not this.
//! This module owns formats only: it may not import anything of the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock now.
#[allow(clippy::disallowed_methods)] // the one place the wall clock is read
pub fn now() -> SystemTime {
    #[cfg(test)]
    if let Some(ms) = test_clock::pinned() {
        return UNIX_EPOCH + Duration::from_millis(ms);
    }
    SystemTime::now()
}

/// Unit tests only: this thread's wall clock held at a chosen instant, so that a model can
/// drive what reads the clock itself (the dedupe journal's rotation and pruning).
#[cfg(test)]
pub mod test_clock {
    use std::cell::Cell;

    thread_local! {
        static PINNED: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Holds this thread's clock at `ms` unix milliseconds (`None`: the real clock again).
    pub fn pin(ms: Option<u64>) {
        PINNED.with(|p| p.set(ms));
    }

    pub(super) fn pinned() -> Option<u64> {
        PINNED.with(Cell::get)
    }
}

/// The wall clock since the unix epoch (zero for a clock before 1970).
pub fn since_epoch() -> Duration {
    now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The wall clock in unix milliseconds.
pub fn now_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// The wall clock in unix seconds.
pub fn now_s() -> u64 {
    since_epoch().as_secs()
}

/// Unix milliseconds of an RFC 3339 date-time (any offset, any fraction digits).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Text that is not an RFC 3339 date-time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 timestamp ({reason})")]
pub struct NotRfc3339 {
    /// The text.
    pub text: String,
    /// The parser's reason.
    pub reason: String,
}

impl From<NotRfc3339> for String {
    fn from(e: NotRfc3339) -> String {
        e.to_string()
    }
}

/// Unix seconds of an RFC 3339 date-time.
pub fn parse_rfc3339_s(s: &str) -> Result<i64, NotRfc3339> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| NotRfc3339 {
            text: s.to_string(),
            reason: e.to_string(),
        })
}

fn utc(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// UTC date and time of unix milliseconds with millisecond precision, the parts separated
/// by `-`, `:` and `.` (RFC 3339) or by nothing (compact).
fn stamp(ms: i64, compact: bool) -> String {
    let t = utc(ms);
    let (d, c, f) = if compact {
        ("", "", "")
    } else {
        ("-", ":", ".")
    };
    format!(
        "{:04}{d}{:02}{d}{:02}T{:02}{c}{:02}{c}{:02}{f}{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// RFC 3339 UTC with milliseconds of unix milliseconds (`2024-05-14T09:21:33.417Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    stamp(ms, false)
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// Unix milliseconds as a compact sortable stamp (`20240514T092133417Z`), for file names.
pub fn compact_ms(ms: i64) -> String {
    stamp(ms, true)
}

/// An RFC 9110 HTTP-date of the wall clock now (`Tue, 14 May 2024 09:21:33 GMT`).
pub fn http_date_now() -> String {
    httpdate::fmt_http_date(now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formatting_from_integer_millis() {
        assert_eq!(rfc3339_ms(1715678493417), "2024-05-14T09:21:33.417Z");
        assert_eq!(rfc3339_ms(1715678501002), "2024-05-14T09:21:41.002Z");
        assert_eq!(compact_ms(1715678501002), "20240514T092141002Z");
    }

    #[test]
    fn rfc3339_parsing_any_offset() {
        assert_eq!(
            parse_rfc3339_ms("2024-05-14T09:21:33.417Z"),
            Some(1715678493417)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-14T11:21:41.002+02:00"),
            Some(1715678501002)
        );
        assert_eq!(parse_rfc3339_ms("2024-05-14 09:21:41"), None);
        assert_eq!(parse_rfc3339_s("2024-05-14T09:21:41Z"), Ok(1715678501));
        assert!(parse_rfc3339_s("yesterday")
            .unwrap_err()
            .to_string()
            .contains("not an RFC 3339"));
    }

    #[test]
    fn the_clock_reads_after_2024() {
        assert!(now_ms() > 1_700_000_000_000);
        assert!(now_s().abs_diff((now_ms() / 1000) as u64) <= 1);
    }

    #[test]
    fn a_pinned_test_clock_holds_this_thread_only() {
        test_clock::pin(Some(1_000_500));
        assert_eq!((now_ms(), now_s()), (1_000_500, 1_000));
        let other = std::thread::spawn(now_ms).join().unwrap();
        assert!(
            other > 1_700_000_000_000,
            "another thread reads the real clock"
        );
        test_clock::pin(None);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
