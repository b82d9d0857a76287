//! How reconcile treats a piece it cannot check or restore: the fault is
//! logged once (again only when it changes), and the next attempt waits
//! longer each time, so a lasting fault (nft missing, no permission) is
//! neither a log line per second nor a process per second.

use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The fault state of one piece vmpod owns (the nft table, the route).
#[derive(Debug, Default)]
pub struct RepairGate {
    fault: Option<String>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What to do with a fault just seen.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// A new fault, or a different one: log it.
    New,
    /// The same as the last one: already said.
    Repeated,
}

impl RepairGate {
    /// Whether it is time to look at the piece again.
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// Records a fault; the next attempt waits twice as long as the last.
    pub fn failed(&mut self, fault: String, now: Instant) -> Report {
        self.backoff = if self.fault.is_none() {
            FIRST_RETRY
        } else {
            (self.backoff * 2).min(MAX_RETRY)
        };
        self.retry_at = Some(now + self.backoff);
        if self.fault.as_ref() == Some(&fault) {
            Report::Repeated
        } else {
            self.fault = Some(fault);
            Report::New
        }
    }

    /// The fault now standing, if any.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// The piece is fine (or was repaired). Returns the fault it had, if
    /// any, so the caller can say it cleared.
    pub fn ok(&mut self) -> Option<String> {
        self.retry_at = None;
        self.backoff = Duration::ZERO;
        self.fault.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_fault_is_reported_once_and_retried_ever_less_often() {
        let t0 = Instant::now();
        let mut g = RepairGate::default();
        assert!(g.due(t0));
        assert_eq!(g.failed("nft missing".into(), t0), Report::New);
        assert!(!g.due(t0 + Duration::from_millis(999)));
        assert!(g.due(t0 + FIRST_RETRY));
        let mut now = t0 + FIRST_RETRY;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(g.failed("nft missing".into(), now), Report::Repeated);
            let next = g.retry_at.unwrap();
            waits.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30, 30]);
        // A different fault is news, and keeps the backoff.
        assert_eq!(g.failed("permission".into(), now), Report::New);
        assert_eq!(g.ok().as_deref(), Some("permission"));
        assert!(g.due(now));
        assert_eq!(g.ok(), None);
        // After a recovery, the first retry is quick again.
        assert_eq!(g.failed("x".into(), now), Report::New);
        assert_eq!(g.retry_at.unwrap() - now, FIRST_RETRY);
    }
}
