//! Validation of the guest probes (`health.guest.readiness`,
//! `health.guest.liveness`): one action each, timings that can be kept.

use std::time::Duration;

use super::Validator;
use crate::config::{GuestProbe, VmConfig};

const MIN_UNREPAIRED: Duration = Duration::from_secs(15);
const MAX_UNREPAIRED: Duration = Duration::from_secs(3600);

impl Validator {
    /// `health.unrepaired_liveness_after`: long enough for the repairs'
    /// first retries (1, 2, 4 and 8 s apart) to have run.
    pub(super) fn unrepaired(&mut self, c: &VmConfig) {
        let after = c.health.unrepaired_liveness_after;
        if after.0 < MIN_UNREPAIRED {
            self.error(
                "health.unrepaired_liveness_after",
                format!(
                    "{after} is shorter than {}s: a repair is retried at 1, 2, 4 and 8 s before the pod should be given up",
                    MIN_UNREPAIRED.as_secs()
                ),
            );
        }
        if after.0 > MAX_UNREPAIRED {
            self.error(
                "health.unrepaired_liveness_after",
                format!(
                    "{after} is longer than 1h: a pod that cannot repair its network would serve nothing that long"
                ),
            );
        }
    }

    pub(super) fn guest_probes(&mut self, c: &VmConfig) {
        let g = &c.health.guest;
        for (name, probe) in [("readiness", &g.readiness), ("liveness", &g.liveness)] {
            if let Some(p) = probe {
                self.guest_probe(&format!("health.guest.{name}"), name, p);
            }
        }
    }

    fn guest_probe(&mut self, field: &str, name: &str, p: &GuestProbe) {
        let actions = [p.tcp.is_some(), p.http.is_some(), p.agent.is_some()];
        match actions.iter().filter(|a| **a).count() {
            0 => self.error(
                field,
                "names no check: give one of `tcp: PORT`, `http: {port, path}` or `agent: true`",
            ),
            1 => {}
            _ => self.error(
                field,
                "gives more than one of `tcp`, `http` and `agent`: a probe does one check",
            ),
        }
        if p.tcp == Some(0) {
            self.error(
                format!("{field}.tcp"),
                "port 0 cannot be probed: use 1 to 65535",
            );
        }
        if p.agent == Some(false) {
            self.error(
                format!("{field}.agent"),
                "`agent: false` checks nothing: write `agent: true` or remove the probe",
            );
        }
        if let Some(http) = &p.http {
            if http.port == 0 {
                self.error(
                    format!("{field}.http.port"),
                    "port 0 cannot be probed: use 1 to 65535",
                );
            }
            // The path goes verbatim into the request line.
            let bad = http
                .path
                .chars()
                .find(|c| c.is_control() || c.is_whitespace() || !c.is_ascii());
            if !http.path.starts_with('/') {
                self.error(
                    format!("{field}.http.path"),
                    format!("`{}` must start with `/`", http.path.escape_debug()),
                );
            } else if let Some(c) = bad {
                self.error(
                    format!("{field}.http.path"),
                    format!(
                        "`{}` holds {c:?}: percent-encode spaces, control and non-ASCII characters",
                        http.path.escape_debug()
                    ),
                );
            }
        }
        for (key, d) in [("period", p.period.0), ("timeout", p.timeout.0)] {
            if d.is_zero() {
                self.error(format!("{field}.{key}"), "must be longer than 0");
            } else if d.as_secs() > 3600 {
                self.error(format!("{field}.{key}"), "must be at most 1h");
            }
        }
        if p.initial_delay.0.as_secs() > 24 * 3600 {
            self.error(format!("{field}.initial_delay"), "must be at most 24h");
        }
        for (key, n) in [
            ("failure_threshold", p.failure_threshold),
            ("success_threshold", p.success_threshold),
        ] {
            if n == 0 {
                self.error(format!("{field}.{key}"), "must be at least 1");
            } else if n > 1000 {
                self.error(format!("{field}.{key}"), "must be at most 1000");
            }
        }
        // As in Kubernetes: one answer proves a guest alive.
        if name == "liveness" && p.success_threshold > 1 {
            self.error(
                format!("{field}.success_threshold"),
                "must be 1 for a liveness probe: one answer shows the guest is alive",
            );
        }
    }
}
