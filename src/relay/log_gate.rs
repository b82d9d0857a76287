//! Rate-limited warnings: a fault that can repeat per connection (a guest
//! that refuses ingress, an upstream that is down) is logged at most once
//! per interval, with how many like it were not logged since, so the log
//! says what is wrong without one line per connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One warning every this long at most.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct LogGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were held back since the last one; `None` to stay quiet.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(last) if now.duration_since(last) < INTERVAL => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let g = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(g.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(g.admit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(g.admit(t0 + INTERVAL), Some(5));
        assert_eq!(g.admit(t0 + INTERVAL + Duration::from_secs(1)), None);
        assert_eq!(g.admit(t0 + INTERVAL * 3), Some(1));
    }
}
