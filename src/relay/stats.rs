//! Counters of one relay, kept for logs now and metrics later.
//!
//! A UDP relay counts sessions (one per client address) as connections:
//! `accepted` and `active` are sessions, `refused` counts datagrams of new
//! clients dropped at the session limit, `expired` sessions that ended idle.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ratelimit::RateLimited;

#[derive(Debug, Default)]
pub struct RelayStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub refused: AtomicU64,
    pub upstream_failed: AtomicU64,
    /// UDP sessions ended by their idle timeout.
    pub expired: AtomicU64,
    /// Bytes from the connecting side to the upstream.
    pub bytes_out: AtomicU64,
    /// Bytes from the upstream back.
    pub bytes_in: AtomicU64,
    /// Keeps the upstream-failure warning to one line per 10 s.
    pub upstream_log: RateLimited,
}

impl RelayStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Decrements `active` when a connection ends, however it ends.
pub struct ActiveGuard<'a>(pub &'a RelayStats);

impl<'a> ActiveGuard<'a> {
    pub fn new(stats: &'a RelayStats) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
