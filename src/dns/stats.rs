//! The forwarder's counters, plain atomics the lead exports to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds (the last bucket,
/// +Inf, is implicit).
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

#[derive(Debug, Default)]
pub struct DnsStats {
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    /// Answers from an upstream relayed to the guest.
    pub answers: AtomicU64,
    /// Answers that came back truncated (TC), passed through for the
    /// client's TCP retry.
    pub truncated: AtomicU64,
    /// Queries no upstream answered: the guest got SERVFAIL.
    pub failures: AtomicU64,
    /// Upstream attempts that timed out (the next server was tried).
    pub timeouts: AtomicU64,
    /// Upstream attempts that failed otherwise (refused, reset, I/O).
    pub upstream_errors: AtomicU64,
    /// Datagrams from an upstream with a wrong ID, ignored.
    pub mismatched: AtomicU64,
    /// Queries dropped because too many were in flight.
    pub dropped_busy: AtomicU64,
    /// Queries that were not DNS queries (short, a response, too large).
    pub malformed: AtomicU64,
    pub tcp_connections: AtomicU64,
    /// TCP connections closed at once because too many were open.
    pub tcp_rejected: AtomicU64,
    pub latency: LatencyHistogram,
}

/// Time from a guest's query to its answer (SERVFAIL included).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); index 12 is +Inf.
    pub buckets: [AtomicU64; 13],
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

impl LatencyHistogram {
    /// The sum of all observations, in seconds, as Prometheus has it.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn observe(&self, d: Duration) {
        let ms = d.as_millis();
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= u128::from(b))
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        bump(&self.buckets[i]);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        bump(&self.count);
    }

    /// (upper bound in ms, cumulative count) per bucket, as Prometheus
    /// exposes them; `None` is +Inf.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                total += b.load(Ordering::Relaxed);
                (LATENCY_BUCKETS_MS.get(i).copied(), total)
            })
            .collect()
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// `counter`'s current value.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c[0], (Some(1), 1));
        assert_eq!(c[3], (Some(10), 2));
        assert_eq!(c[12], (None, 3));
        assert_eq!(get(&h.count), 3);
    }
}
