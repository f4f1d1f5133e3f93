//! Prometheus metrics: one struct owning its registry, typed handles, bounded labels.
//!
//! Label values come only from the config (source and sink names, secret positions) and from
//! enums' `as_str()`, never from request data, so cardinality is bounded by the config.
//!
//! Owns: the registry and every metric's name, help and labels, and the sink health board
//! (`vfgate_sink_up`, see [`crate::health`]). Imports nothing of the crate but `health`
//! (which imports only `escape`), so every layer may count.
//!
//! Families with labels are initialised at assembly (`server/assemble.rs` calls
//! [`Metrics::init_source`] and [`Metrics::init_sink`]), so that every configured source's
//! and sink's series exist with value 0 from start-up: `rate()` and absence alerts work before
//! the first event.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric vfgate exports.
pub struct Metrics {
    registry: Registry,
    /// `vfgate_requests_total{source,scheme,outcome}`.
    pub requests: IntCounterVec,
    /// `vfgate_request_duration_seconds{source}`.
    pub request_duration: HistogramVec,
    /// `vfgate_events_forwarded_total{sink}`.
    pub events_forwarded: IntCounterVec,
    /// `vfgate_sink_requests_total{sink,status}`.
    pub sink_requests: IntCounterVec,
    /// `vfgate_sink_batch_events{sink}`.
    pub sink_batch_events: HistogramVec,
    /// `vfgate_sink_duration_seconds{sink}`.
    pub sink_duration: HistogramVec,
    /// `vfgate_sink_events_failed_total{sink,reason}`.
    pub sink_events_failed: IntCounterVec,
    /// `vfgate_sink_retries_total{sink}`.
    pub sink_retries: IntCounterVec,
    /// `vfgate_dedupe_entries`.
    pub dedupe_entries: IntGauge,
    /// `vfgate_dedupe_evictions_total`.
    pub dedupe_evictions: IntCounter,
    /// `vfgate_dedupe_errors_total`.
    pub dedupe_errors: IntCounter,
    /// `vfgate_dedupe_commit_failures_total`.
    pub dedupe_commit_failures: IntCounter,
    /// `vfgate_config_reloads_total{result="ok"|"error"}`.
    pub config_reloads: IntCounterVec,
    /// `vfgate_config_last_reload_success_timestamp_seconds`: the start, then each reload
    /// that took effect.
    pub config_last_reload_success: prometheus::Gauge,
    /// `vfgate_dedupe_journal_corrupt_records_total`.
    pub dedupe_journal_corrupt: IntCounter,
    /// `vfgate_secret_matches_total{source,secret}`.
    pub secret_matches: IntCounterVec,
    /// `vfgate_handshakes_total{source,kind}`: senders' handshakes answered (`slack`, `okta`).
    pub handshakes: IntCounterVec,
    /// `vfgate_rejections_total{source,reason}`: requests refused by verification, by the
    /// reason the sender is not told apart (`signature_missing`, `signature_malformed`,
    /// `no_key_matched`, `stale`, `future`, ...).
    pub rejections: IntCounterVec,
    /// `vfgate_build_info{version}`.
    pub build_info: IntGauge,
    /// `vfgate_in_flight_requests`.
    pub in_flight: IntGauge,
    /// `vfgate_connections_refused_total`.
    pub connections_refused: prometheus::IntCounter,
    /// `vfgate_connections_closed_total{reason}`: `header_timeout`, `idle_timeout`,
    /// `evicted_idle`.
    pub connections_closed: IntCounterVec,
    /// `vfgate_spool_bytes`.
    pub spool_bytes: IntGauge,
    /// `vfgate_spool_events{sink}`.
    pub spool_events: IntGaugeVec,
    /// `vfgate_spool_oldest_event_age_seconds{sink}`.
    pub spool_oldest_age: GaugeVec,
    /// `vfgate_dead_letter_events_total{sink,reason}`.
    pub dead_letters: IntCounterVec,
    /// `vfgate_spool_corrupt_records_total{source}`.
    pub spool_corrupt: IntCounterVec,
    /// `vfgate_received_bytes_total{source}`: webhook request body bytes read.
    pub received_bytes: IntCounterVec,
    /// `vfgate_sink_sent_bytes_total{sink}`: upstream request body bytes as sent (after
    /// compression), or bytes written by the file sink.
    pub sink_sent_bytes: IntCounterVec,
    /// `vfgate_sink_up{sink}`: 1 up, 0 down (the rule is [`crate::health`]'s).
    pub sink_up: IntGaugeVec,
    /// `vfgate_secret_not_after_timestamp_seconds{source,position}`: a secret's `not_after`.
    pub secret_not_after: IntGaugeVec,
    /// `vfgate_spool_capacity_bytes`: `spool.max_bytes` (0 without a spool).
    pub spool_capacity: IntGauge,
    /// Sink health, behind `vfgate_sink_up`.
    pub health: crate::health::Board,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        // Fine below 5 ms (a forwarded request's whole budget at low load is a few ms), so
        // that a p99 read from the histogram is close enough to compare with a 2 ms target.
        let latency = vec![
            0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let sink_up = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "vfgate_sink_up",
                    "1 while a sink delivers, 0 once its last 5 attempts over at least 10s all failed (one success sets it back to 1)",
                ),
                &["sink"],
            )
            .unwrap(),
        );
        let m = Metrics {
            requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_requests_total",
                        "Webhook requests by source, its signature scheme and outcome",
                    ),
                    &["source", "scheme", "outcome"],
                )
                .unwrap(),
            ),
            request_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "vfgate_request_duration_seconds",
                        "Time from request headers to response, by source",
                    )
                    .buckets(latency.clone()),
                    &["source"],
                )
                .unwrap(),
            ),
            events_forwarded: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("vfgate_events_forwarded_total", "Events accepted by a sink"),
                    &["sink"],
                )
                .unwrap(),
            ),
            sink_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_sink_requests_total",
                        "Upstream requests by sink and HTTP status (or error kind)",
                    ),
                    &["sink", "status"],
                )
                .unwrap(),
            ),
            sink_batch_events: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("vfgate_sink_batch_events", "Events per upstream batch")
                        .buckets(vec![
                            1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
                        ]),
                    &["sink"],
                )
                .unwrap(),
            ),
            sink_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "vfgate_sink_duration_seconds",
                        "Duration of one upstream attempt",
                    )
                    .buckets(latency),
                    &["sink"],
                )
                .unwrap(),
            ),
            sink_events_failed: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_sink_events_failed_total",
                        "Events a sink did not deliver, by reason",
                    ),
                    &["sink", "reason"],
                )
                .unwrap(),
            ),
            sink_retries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_sink_retries_total",
                        "Upstream attempts that were retries",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            dedupe_entries: reg(
                &r,
                IntGauge::new("vfgate_dedupe_entries", "Event ids remembered by dedupe").unwrap(),
            ),
            dedupe_evictions: reg(
                &r,
                IntCounter::new(
                    "vfgate_dedupe_evictions_total",
                    "Ids forgotten before their TTL because dedupe.max_entries was reached",
                )
                .unwrap(),
            ),
            dedupe_errors: reg(
                &r,
                IntCounter::new(
                    "vfgate_dedupe_errors_total",
                    "Dedupe backend calls that failed (Redis unreachable or slow)",
                )
                .unwrap(),
            ),
            dedupe_commit_failures: reg(
                &r,
                IntCounter::new(
                    "vfgate_dedupe_commit_failures_total",
                    "Delivered ids whose delivered mark could not be stored within the in-flight lifetime (a replay would be handed on again)",
                )
                .unwrap(),
            ),
            config_reloads: {
                let v = reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "vfgate_config_reloads_total",
                            "Config reloads (SIGHUP, POST /admin/reload) by result: ok, or error (the running config stayed)",
                        ),
                        &["result"],
                    )
                    .unwrap(),
                );
                for result in ["ok", "error"] {
                    v.with_label_values(&[result]);
                }
                v
            },
            config_last_reload_success: reg(
                &r,
                prometheus::Gauge::new(
                    "vfgate_config_last_reload_success_timestamp_seconds",
                    "When the running config was loaded (start-up or the last reload that took effect), unix seconds",
                )
                .unwrap(),
            ),
            dedupe_journal_corrupt: reg(
                &r,
                IntCounter::new(
                    "vfgate_dedupe_journal_corrupt_records_total",
                    "Dedupe journal records found damaged at start-up (their ids can be accepted again)",
                )
                .unwrap(),
            ),
            secret_matches: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_secret_matches_total",
                        "Verified requests by source and position of the matching secret",
                    ),
                    &["source", "secret"],
                )
                .unwrap(),
            ),
            handshakes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_handshakes_total",
                        "Senders' handshakes answered by vfgate (never forwarded), by source and kind",
                    ),
                    &["source", "kind"],
                )
                .unwrap(),
            ),
            rejections: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_rejections_total",
                        "Requests refused by verification, by source and reason (finer than the status code: why a signature failed, stale or future)",
                    ),
                    &["source", "reason"],
                )
                .unwrap(),
            ),
            build_info: reg(
                &r,
                IntGauge::with_opts(
                    Opts::new("vfgate_build_info", "Build information")
                        .const_label("version", env!("CARGO_PKG_VERSION")),
                )
                .unwrap(),
            ),
            connections_refused: reg(
                &r,
                prometheus::IntCounter::new(
                    "vfgate_connections_refused_total",
                    "Webhook connections closed at once because server.max_connections were open",
                )
                .unwrap(),
            ),
            connections_closed: {
                let v = reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "vfgate_connections_closed_total",
                            "Webhook connections closed by vfgate while waiting for a request head: its deadline passed (header_timeout, idle_timeout) or its slot went to a new connection at server.max_connections (evicted_idle)",
                        ),
                        &["reason"],
                    )
                    .unwrap(),
                );
                for reason in ["header_timeout", "idle_timeout", "evicted_idle"] {
                    v.with_label_values(&[reason]);
                }
                v
            },
            in_flight: reg(
                &r,
                IntGauge::new(
                    "vfgate_in_flight_requests",
                    "Webhook requests being handled",
                )
                .unwrap(),
            ),
            spool_bytes: reg(
                &r,
                IntGauge::new("vfgate_spool_bytes", "Bytes of the spool's log segments").unwrap(),
            ),
            spool_events: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "vfgate_spool_events",
                        "Spooled events a sink has not taken yet (backlog)",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            spool_oldest_age: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "vfgate_spool_oldest_event_age_seconds",
                        "Age of the oldest spooled event a sink has not taken (0 when none)",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            dead_letters: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_dead_letter_events_total",
                        "Spooled events moved to the dead-letter store, by sink and reason",
                    ),
                    &["sink", "reason"],
                )
                .unwrap(),
            ),
            spool_corrupt: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_spool_corrupt_records_total",
                        "Spooled records skipped because their checksum or length did not hold (copied to <spool.dir>/quarantine)",
                    ),
                    &["source"],
                )
                .unwrap(),
            ),
            received_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_received_bytes_total",
                        "Webhook request body bytes read, by source",
                    ),
                    &["source"],
                )
                .unwrap(),
            ),
            sink_sent_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vfgate_sink_sent_bytes_total",
                        "Upstream request body bytes as sent (after compression; bytes written for the file sink), by sink",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            sink_up: sink_up.clone(),
            secret_not_after: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "vfgate_secret_not_after_timestamp_seconds",
                        "The not_after of a source's secret (unix seconds), by source and position in its secrets list; only secrets with a not_after",
                    ),
                    &["source", "position"],
                )
                .unwrap(),
            ),
            spool_capacity: reg(
                &r,
                IntGauge::new(
                    "vfgate_spool_capacity_bytes",
                    "spool.max_bytes: the spool refuses new events (503 spool_full) near it",
                )
                .unwrap(),
            ),
            health: crate::health::Board::new(sink_up),
            registry: r,
        };
        m.build_info.set(1);
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        m
    }

    /// Creates the series of a configured source with value 0 (requests by every outcome
    /// are created by the webhook routes; `outcomes` names them here too).
    pub fn init_source(&self, source: &str, scheme: &str, outcomes: &[&str]) {
        for o in outcomes {
            self.requests.with_label_values(&[source, scheme, o]);
        }
        self.received_bytes.with_label_values(&[source]);
        self.request_duration.with_label_values(&[source]);
    }

    /// Creates the series of a configured sink with value 0 (and `vfgate_sink_up` 1).
    /// `reasons` are the failure reason labels (`RetryKind` and `Refusal` names).
    pub fn init_sink(&self, sink: &str, reasons: &[&str]) {
        self.events_forwarded.with_label_values(&[sink]);
        self.sink_retries.with_label_values(&[sink]);
        self.sink_sent_bytes.with_label_values(&[sink]);
        self.sink_duration.with_label_values(&[sink]);
        self.sink_batch_events.with_label_values(&[sink]);
        for r in reasons {
            self.sink_events_failed.with_label_values(&[sink, r]);
        }
        self.health.sink(sink);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        out
    }

    /// A histogram handle resolved once (hot paths keep it).
    pub fn request_timer(&self, source: &str) -> Histogram {
        self.request_duration.with_label_values(&[source])
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn configured_sources_and_sinks_have_their_series_at_zero_from_the_start() {
        let m = Metrics::new();
        m.init_source("syvault", "vf", &["accepted", "bad_signature"]);
        m.init_sink("splunk", &["unavailable", "rejected"]);
        let t = text(&m);
        for series in [
            r#"vfgate_requests_total{outcome="accepted",scheme="vf",source="syvault"} 0"#,
            r#"vfgate_requests_total{outcome="bad_signature",scheme="vf",source="syvault"} 0"#,
            r#"vfgate_received_bytes_total{source="syvault"} 0"#,
            r#"vfgate_request_duration_seconds_count{source="syvault"} 0"#,
            r#"vfgate_events_forwarded_total{sink="splunk"} 0"#,
            r#"vfgate_sink_retries_total{sink="splunk"} 0"#,
            r#"vfgate_sink_sent_bytes_total{sink="splunk"} 0"#,
            r#"vfgate_sink_events_failed_total{reason="unavailable",sink="splunk"} 0"#,
            r#"vfgate_sink_events_failed_total{reason="rejected",sink="splunk"} 0"#,
            r#"vfgate_sink_up{sink="splunk"} 1"#,
            r#"vfgate_config_reloads_total{result="ok"} 0"#,
            r#"vfgate_config_reloads_total{result="error"} 0"#,
            r#"vfgate_spool_capacity_bytes 0"#,
        ] {
            assert!(t.lines().any(|l| l == series), "missing {series} in\n{t}");
        }
        assert!(t.contains(&format!(
            "vfgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_in_the_gateway_registry() {
        let t = text(&Metrics::new());
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(t.lines().any(|l| l.starts_with(name)), "missing {name}");
        }
    }
}
