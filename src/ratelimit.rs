//! A warning that says how often something happened instead of saying it
//! every time: under a flood (EMFILE, an attack) one line per period, with
//! the count since the last line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl RateLimited {
    pub const fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: Mutex::new(None),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event; `Some(events since the last report)` when it is
    /// time to report.
    pub fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// One line per 10 s: a repeating fault stays visible without flooding.
impl Default for RateLimited {
    fn default() -> Self {
        RateLimited::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_first_then_counts_until_the_period_passes() {
        let r = RateLimited::new(Duration::from_millis(50));
        assert_eq!(r.hit(), Some(1));
        assert_eq!(r.hit(), None);
        assert_eq!(r.hit(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.hit(), Some(3));
    }
}
