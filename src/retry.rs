//! The one retry engine: how long to wait before the next attempt and when to stop, for the
//! request path (a time budget), the spool (capped exponential backoff, stopped by the
//! caller's `max_age`) and fixed schedules (a `webhook` sink's `retry_schedule`, sender mode);
//! the jitter, and `Retry-After` in both of its forms (seconds and HTTP-date).
//!
//! Owns: waits and stopping rules. Knows nothing of sinks, events or where the wait is spent,
//! and imports nothing of the crate: it sits at the bottom beside `time`, so that the client
//! (`Retry-After`), sender mode and the pipeline all use it without an arrow running back up.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A wait between half and all of `base * 2^n`, capped at `cap` (full jitter, so that many
/// senders retrying at once spread out).
pub fn jittered(base: Duration, cap: Duration, n: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << n.min(16)).min(cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::random_range(ms / 2..=ms.max(1)))
}

/// First backoff step on the request path.
pub const REQUEST_BASE: Duration = Duration::from_millis(100);
/// Largest backoff step on the request path (before `Retry-After`).
pub const REQUEST_CAP: Duration = Duration::from_secs(2);
/// First backoff step of a spooled retry.
pub const SPOOL_BASE: Duration = Duration::from_millis(200);
/// Largest backoff step of a spooled retry (before `Retry-After`).
pub const SPOOL_CAP: Duration = Duration::from_secs(30);

/// When and how long to retry.
#[derive(Debug, Clone, Copy)]
pub enum Policy<'a> {
    /// Request path: backoff from [`REQUEST_BASE`] to [`REQUEST_CAP`] until `deadline`; a
    /// wait that would end at or past it stops instead.
    Budget {
        /// When the budget is spent.
        deadline: Instant,
    },
    /// Spool: backoff from [`SPOOL_BASE`] to [`SPOOL_CAP`], never stopping by itself (the
    /// caller dead-letters what passes `max_age`).
    Backoff,
    /// A fixed schedule: wait `steps[n]` before retry `n`; stop after the last.
    Schedule(&'a [Duration]),
}

/// What to do after a failed round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait this long, then retry.
    Wait(Duration),
    /// Stop: the budget would be spent (the wait that was due), or the schedule is over.
    Stop {
        /// The wait that was due, if any (a budget's).
        due: Option<Duration>,
    },
}

impl Policy<'_> {
    /// After failed round `round` (0-based), with the target's `Retry-After` hint: never
    /// sooner than the hint.
    pub fn next(&self, round: u32, hint: Option<Duration>) -> Next {
        let hint = hint.unwrap_or_default();
        match self {
            Policy::Budget { deadline } => {
                let wait = jittered(REQUEST_BASE, REQUEST_CAP, round).max(hint);
                if Instant::now() + wait >= *deadline {
                    Next::Stop { due: Some(wait) }
                } else {
                    Next::Wait(wait)
                }
            }
            Policy::Backoff => Next::Wait(jittered(SPOOL_BASE, SPOOL_CAP, round).max(hint)),
            Policy::Schedule(steps) => match steps.get(round as usize) {
                Some(d) => Next::Wait((*d).max(hint)),
                None => Next::Stop { due: None },
            },
        }
    }
}

/// A `Retry-After` value: delay seconds, or an HTTP-date (a date in the past is no wait).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for n in 0..20 {
            let b = jittered(REQUEST_BASE, REQUEST_CAP, n);
            let ceiling = (REQUEST_BASE * 2u32.pow(n.min(16))).min(REQUEST_CAP);
            assert!(b <= ceiling && b >= ceiling / 2, "{n}: {b:?}");
        }
    }

    #[tokio::test]
    async fn a_budget_stops_when_the_wait_would_spend_it_and_the_hint_is_a_floor() {
        let p = Policy::Budget {
            deadline: Instant::now() + Duration::from_secs(1),
        };
        assert!(matches!(p.next(0, None), Next::Wait(d) if d <= REQUEST_BASE));
        assert_eq!(
            p.next(0, Some(Duration::from_secs(30))),
            Next::Stop {
                due: Some(Duration::from_secs(30))
            }
        );
        assert!(
            matches!(Policy::Backoff.next(3, Some(Duration::from_secs(7))), Next::Wait(d) if d == Duration::from_secs(7))
        );
    }

    #[test]
    fn a_schedule_runs_out() {
        let s = [Duration::from_secs(1), Duration::from_secs(5)];
        let p = Policy::Schedule(&s);
        assert_eq!(p.next(0, None), Next::Wait(Duration::from_secs(1)));
        assert_eq!(
            p.next(1, Some(Duration::from_secs(9))),
            Next::Wait(Duration::from_secs(9))
        );
        assert_eq!(p.next(2, None), Next::Stop { due: None });
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    proptest::proptest! {
        #[test]
        fn any_retry_after_text_is_a_wait_or_nothing_never_a_panic(v in ".{0,40}", secs in 0u64..4_000_000_000) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            if let Some(d) = parse_retry_after(&v, now) {
                // A date can only be in the future of `now` by what it says; seconds as given.
                proptest::prop_assert!(v.trim().parse::<u64>().map_or(true, |n| d == Duration::from_secs(n)));
            }
        }
    }
}
