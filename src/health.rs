//! Sink health: whether a sink's recent deliveries all failed, for `/readyz`, the
//! `vfgate_sink_up{sink}` gauge and one log line per transition.
//!
//! The rule, in one place: a sink is **down** once its last [`DOWN_AFTER_ATTEMPTS`]
//! upstream attempts in a row failed *and* the first of those failures is at least
//! [`DOWN_AFTER`] old (so a burst of fast failures in a second is not yet "down", and a
//! sink that answers one request a minute is not "up" on the strength of a single old
//! success). One successful attempt brings it back **up** at once. An attempt *fails* when
//! the target took none of its events and every event is to be retried (no answer, timeout,
//! 5xx, 429, refused credentials); an attempt where the target answered for the events
//! (delivered, or refused some permanently) is a success: the target is reachable.
//!
//! Logs go once each way: `sink splunk down: connect_error (12 failures in 30s)` at WARN,
//! `sink splunk recovered after 41s` at INFO. The detail is the attempt's status label (an
//! HTTP status or an error kind), never the target's body.
//!
//! Owns: the per-sink state and the rule. Imports only `crate::escape`; every layer that
//! sends to a sink records here through [`crate::metrics::Metrics::health`].

use crate::escape::Printable;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failed attempts in a row before a sink can be down.
pub const DOWN_AFTER_ATTEMPTS: u32 = 5;
/// How long the failures in a row must have lasted before a sink is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    /// Failed attempts since the last success.
    failures: u32,
    /// When the first of them happened.
    first_failure: Option<Instant>,
    /// Set while down: since when.
    down_since: Option<Instant>,
}

/// One sink's health.
pub struct SinkHealth {
    name: String,
    state: Mutex<State>,
    up: prometheus::IntGauge,
}

/// A health change, for the caller to see in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// The sink just went down.
    Down,
    /// The sink just came back.
    Recovered,
}

impl SinkHealth {
    fn new(name: &str, up: prometheus::IntGauge) -> SinkHealth {
        up.set(1);
        SinkHealth {
            name: name.to_string(),
            state: Mutex::new(State::default()),
            up,
        }
    }

    /// Records one attempt at `now`: `Ok(())` for a success, `Err(detail)` for a failure
    /// (`detail`: the status label, e.g. `503` or `connect_error`).
    pub fn record(&self, now: Instant, result: Result<(), &str>) -> Transition {
        let mut s = self.state.lock();
        match result {
            Ok(()) => {
                let was_down = s.down_since.take();
                *s = State::default();
                drop(s);
                if let Some(since) = was_down {
                    self.up.set(1);
                    tracing::info!(
                        "sink {} recovered after {}s",
                        self.name,
                        now.saturating_duration_since(since).as_secs()
                    );
                    return Transition::Recovered;
                }
                Transition::None
            }
            Err(detail) => {
                s.failures = s.failures.saturating_add(1);
                let first = *s.first_failure.get_or_insert(now);
                let lasted = now.saturating_duration_since(first);
                if s.down_since.is_none()
                    && s.failures >= DOWN_AFTER_ATTEMPTS
                    && lasted >= DOWN_AFTER
                {
                    s.down_since = Some(now);
                    let failures = s.failures;
                    drop(s);
                    self.up.set(0);
                    tracing::warn!(
                        "sink {} down: {} ({failures} failures in {}s)",
                        self.name,
                        Printable(detail),
                        lasted.as_secs()
                    );
                    return Transition::Down;
                }
                Transition::None
            }
        }
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.state.lock().failures
    }

    /// Whether the sink is down by the rule above.
    pub fn is_down(&self) -> bool {
        self.state.lock().down_since.is_some()
    }

    /// While down: the failed attempts in a row and for how long they have lasted.
    pub fn down_for(&self, now: Instant) -> Option<(u32, Duration)> {
        let s = self.state.lock();
        s.down_since?;
        Some((
            s.failures,
            now.saturating_duration_since(s.first_failure.unwrap_or(now)),
        ))
    }
}

/// Every sink's health, by sink name (a sink rebuilt under the same name keeps its entry).
pub struct Board {
    gauge: prometheus::IntGaugeVec,
    sinks: Mutex<HashMap<String, Arc<SinkHealth>>>,
}

impl Board {
    /// A board exporting `vfgate_sink_up` through `gauge`.
    pub fn new(gauge: prometheus::IntGaugeVec) -> Board {
        Board {
            gauge,
            sinks: Mutex::default(),
        }
    }

    /// The health of `sink` (created up, its gauge set to 1, on first use).
    pub fn sink(&self, sink: &str) -> Arc<SinkHealth> {
        let mut sinks = self.sinks.lock();
        if let Some(h) = sinks.get(sink) {
            return h.clone();
        }
        sinks
            .entry(sink.to_string())
            .or_insert_with(|| {
                Arc::new(SinkHealth::new(sink, self.gauge.with_label_values(&[sink])))
            })
            .clone()
    }

    /// Forgets every sink not in `configured` (a reload removed it), with its gauge series.
    pub fn retain(&self, configured: &[&str]) {
        self.sinks.lock().retain(|name, _| {
            let keep = configured.contains(&name.as_str());
            if !keep {
                let _ = self.gauge.remove_label_values(&[name]);
            }
            keep
        });
    }

    /// Starts `sink` afresh, up (a reload built it anew: its old failures were another
    /// configuration's, and a forward-mode sink reported down would keep `/readyz` failing
    /// until a request reached it). Down again after the rule's failures, if still failing.
    pub fn reset(&self, sink: &str) {
        let fresh = Arc::new(SinkHealth::new(sink, self.gauge.with_label_values(&[sink])));
        self.sinks.lock().insert(sink.to_string(), fresh);
    }

    /// The names of the sinks that are down, sorted.
    pub fn down(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sinks
            .lock()
            .iter()
            .filter(|(_, h)| h.is_down())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> (Board, prometheus::IntGaugeVec) {
        let g = prometheus::IntGaugeVec::new(prometheus::Opts::new("up", "up"), &["sink"]).unwrap();
        (Board::new(g.clone()), g)
    }

    #[test]
    fn down_needs_both_the_count_and_the_duration_and_one_success_brings_it_back() {
        let (b, g) = board();
        let h = b.sink("splunk");
        assert_eq!(g.with_label_values(&["splunk"]).get(), 1);
        let t0 = Instant::now();
        // Many failures within a second: not down yet (duration not reached).
        for i in 0..20 {
            let t = h.record(t0 + Duration::from_millis(i * 10), Err("503"));
            assert_eq!(t, Transition::None);
        }
        assert!(!h.is_down());
        // Past DOWN_AFTER since the first failure: down, once.
        assert_eq!(h.record(t0 + DOWN_AFTER, Err("503")), Transition::Down);
        assert_eq!(
            h.record(t0 + DOWN_AFTER + Duration::from_secs(1), Err("503")),
            Transition::None
        );
        assert!(h.is_down());
        assert_eq!(b.down(), vec!["splunk".to_string()]);
        assert_eq!(g.with_label_values(&["splunk"]).get(), 0);
        assert_eq!(h.down_for(t0 + DOWN_AFTER * 2).map(|(n, _)| n), Some(22));
        // One success: up again, logged once.
        assert_eq!(h.record(t0 + DOWN_AFTER * 3, Ok(())), Transition::Recovered);
        assert_eq!(h.record(t0 + DOWN_AFTER * 3, Ok(())), Transition::None);
        assert!(!h.is_down());
        assert!(b.down().is_empty());
        assert_eq!(g.with_label_values(&["splunk"]).get(), 1);
    }

    #[test]
    fn a_reload_forgets_removed_sinks_and_starts_rebuilt_ones_up() {
        let (b, g) = board();
        let t0 = Instant::now();
        for name in ["gone", "rebuilt", "kept"] {
            let h = b.sink(name);
            for i in 0..DOWN_AFTER_ATTEMPTS {
                h.record(t0 + DOWN_AFTER * i, Err("503"));
            }
        }
        assert_eq!(b.down().len(), 3);
        b.retain(&["rebuilt", "kept"]);
        b.reset("rebuilt");
        assert_eq!(b.down(), vec!["kept".to_string()]);
        assert_eq!(g.with_label_values(&["rebuilt"]).get(), 1);
        let text = {
            use prometheus::core::Collector;
            format!("{:?}", g.collect())
        };
        assert!(!text.contains("gone"), "the removed sink's series is gone");
    }

    #[test]
    fn few_failures_over_a_long_time_are_not_down_and_a_success_resets_the_count() {
        let (b, _) = board();
        let h = b.sink("s");
        let t0 = Instant::now();
        for i in 0..(DOWN_AFTER_ATTEMPTS as u64 - 1) {
            h.record(t0 + Duration::from_secs(60 * i), Err("timeout"));
        }
        assert!(!h.is_down(), "too few attempts");
        h.record(t0 + Duration::from_secs(600), Ok(()));
        for i in 0..(DOWN_AFTER_ATTEMPTS as u64 - 1) {
            h.record(t0 + Duration::from_secs(700 + 60 * i), Err("timeout"));
        }
        assert!(!h.is_down(), "the success reset the streak");
        h.record(t0 + Duration::from_secs(1000), Err("timeout"));
        assert!(h.is_down());
    }
}
