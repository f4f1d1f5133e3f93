//! The log of refused webhooks: at most one WARN per (source, reason) every
//! [`LOG_EVERY`], carrying how many were refused since the previous line and the last
//! peer, so a misconfigured sender or an attack is visible without a line per request. The
//! peer's `X-Forwarded-For` is added only when the peer is one of `server.trusted_proxies`
//! (anyone else can write anything there), and, being outside text, is escaped. Owns: the
//! per-reason windows; counts are the metrics' job (`vfgate_requests_total`).

use super::outcome::Outcome;
use crate::escape::Printable;
use parking_lot::Mutex;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// At most one line per (source, reason) this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Window {
    /// Refusals not yet in a line.
    count: u64,
    /// When the last line was written.
    last_line: Option<Instant>,
}

/// The refusal windows of one source (or of the paths no source serves).
pub struct Rejections {
    source: String,
    windows: Vec<Mutex<Window>>,
}

/// Who sent a refused request.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The connection's remote address.
    pub addr: Option<IpAddr>,
    /// `X-Forwarded-For`, when the peer is a trusted proxy.
    pub forwarded_for: Option<&'a [u8]>,
}

impl Rejections {
    /// The windows of `source`.
    pub fn new(source: &str) -> Rejections {
        Rejections {
            source: source.to_string(),
            windows: Outcome::ALL.iter().map(|_| Mutex::default()).collect(),
        }
    }

    /// Notes a refusal (a 4xx answer) at `now`; returns the count written, if this one
    /// wrote the line.
    pub fn note(&self, outcome: Outcome, peer: Peer<'_>, now: Instant) -> Option<u64> {
        let mut w = self.windows[outcome as usize].lock();
        w.count += 1;
        if w.last_line
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            return None;
        }
        let count = std::mem::take(&mut w.count);
        w.last_line = Some(now);
        drop(w);
        let peer_addr = peer.addr.map(|a| a.to_string()).unwrap_or_default();
        match peer.forwarded_for {
            Some(xff) => tracing::warn!(
                source = %self.source,
                reason = outcome.as_str(),
                count,
                peer = %peer_addr,
                forwarded_for = ?Printable(&String::from_utf8_lossy(xff)),
                "webhooks refused (count since the last line for this source and reason)"
            ),
            None => tracing::warn!(
                source = %self.source,
                reason = outcome.as_str(),
                count,
                peer = %peer_addr,
                "webhooks refused (count since the last line for this source and reason)"
            ),
        }
        Some(count)
    }
}

/// Whether `addr` is one of `trusted`.
pub fn trusted(addr: Option<IpAddr>, trusted: &[ipnet::IpNet]) -> bool {
    // A dual-stack listener sees an IPv4 peer as ::ffff:a.b.c.d.
    addr.is_some_and(|a| {
        let a = a.to_canonical();
        trusted.iter().any(|n| n.contains(&a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Peer<'static> = Peer {
        addr: None,
        forwarded_for: None,
    };

    #[test]
    fn one_line_per_reason_per_window_with_the_count_since_the_last() {
        let r = Rejections::new("s");
        let t0 = Instant::now();
        assert_eq!(r.note(Outcome::InvalidSignature, PEER, t0), Some(1));
        for i in 1..=5 {
            let at = t0 + Duration::from_secs(i);
            assert_eq!(r.note(Outcome::InvalidSignature, PEER, at), None);
        }
        // Another reason has its own window.
        assert_eq!(
            r.note(Outcome::StaleEvent, PEER, t0 + Duration::from_secs(1)),
            Some(1)
        );
        let later = t0 + LOG_EVERY + Duration::from_millis(1);
        assert_eq!(r.note(Outcome::InvalidSignature, PEER, later), Some(6));
        assert_eq!(r.note(Outcome::InvalidSignature, PEER, later), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let nets: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        assert!(trusted(Some("10.1.2.3".parse().unwrap()), &nets));
        assert!(trusted(Some("192.0.2.7".parse().unwrap()), &nets));
        assert!(!trusted(Some("192.0.2.8".parse().unwrap()), &nets));
        assert!(!trusted(None, &nets));
        assert!(!trusted(Some("10.1.2.3".parse().unwrap()), &[]));
        assert!(
            trusted(Some("::ffff:10.1.2.3".parse().unwrap()), &nets),
            "v4-mapped"
        );
    }
}
