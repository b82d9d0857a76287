//! The guest probes as data and as a pure state machine (KubeVirt's VMI
//! readiness and liveness probes, with Kubernetes' rules): a probe passes
//! after `success_threshold` answers in a row and fails after
//! `failure_threshold` misses in a row. Readiness waits for its first pass;
//! a failing liveness probe has the supervisor restart the guest. The checks
//! themselves and their timing are in `guest_prober`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{GuestProbe, VmConfig};

/// Which of the two probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }
}

/// What one probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// A TCP connection to the guest is accepted.
    Tcp(SocketAddr),
    /// `GET path` answers 200 to 399.
    Http { addr: SocketAddr, path: String },
    /// The qemu guest agent answers `guest-ping` (through libvirt).
    Agent,
}

impl fmt::Display for ProbeAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeAction::Tcp(addr) => write!(f, "tcp {addr}"),
            ProbeAction::Http { addr, path } => write!(f, "http://{addr}{path}"),
            ProbeAction::Agent => f.write_str("the guest agent (guest-ping)"),
        }
    }
}

/// One probe of the plan: what it checks and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub action: ProbeAction,
    /// From the (re)start of the guest to the first check.
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl ProbeSpec {
    fn build(kind: ProbeKind, p: &GuestProbe, guest_ip: IpAddr) -> ProbeSpec {
        // Validation leaves exactly one action; agent last so that a
        // config that somehow holds none still probes something harmless.
        let action = match (&p.tcp, &p.http) {
            (Some(port), _) => ProbeAction::Tcp(SocketAddr::new(guest_ip, *port)),
            (None, Some(h)) => ProbeAction::Http {
                addr: SocketAddr::new(guest_ip, h.port),
                path: h.path.clone(),
            },
            (None, None) => ProbeAction::Agent,
        };
        ProbeSpec {
            kind,
            action,
            initial_delay: p.initial_delay.0,
            period: p.period.0,
            timeout: p.timeout.0,
            failure_threshold: p.failure_threshold,
            success_threshold: p.success_threshold,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (kind, target, path) = match &self.action {
            ProbeAction::Tcp(addr) => ("tcp", Some(addr.to_string()), None),
            ProbeAction::Http { addr, path } => ("http", Some(addr.to_string()), Some(path)),
            ProbeAction::Agent => ("agent", None, None),
        };
        serde_json::json!({
            "check": kind,
            "target": target,
            "path": path,
            "initial_delay_ms": self.initial_delay.as_millis() as u64,
            "period_ms": self.period.as_millis() as u64,
            "timeout_ms": self.timeout.as_millis() as u64,
            "failure_threshold": self.failure_threshold,
            "success_threshold": self.success_threshold,
        })
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ProbeKind::Readiness => "ready",
            ProbeKind::Liveness => "alive",
        };
        write!(
            f,
            "{:<10} {} every {:?} (timeout {:?}, first after {:?}); {what} after {} pass(es), failing after {} miss(es)",
            self.kind.as_str(),
            self.action,
            self.period,
            self.timeout,
            self.initial_delay,
            self.success_threshold,
            self.failure_threshold,
        )?;
        if self.kind == ProbeKind::Liveness {
            f.write_str(": the guest is restarted under lifecycle.restart")?;
        }
        Ok(())
    }
}

/// `health.guest` in the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestProbePlan {
    pub readiness: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
}

impl GuestProbePlan {
    pub fn build(config: &VmConfig) -> GuestProbePlan {
        let g = &config.health.guest;
        let ip = config.network.guest_ip;
        GuestProbePlan {
            readiness: g
                .readiness
                .as_ref()
                .map(|p| ProbeSpec::build(ProbeKind::Readiness, p, ip)),
            liveness: g
                .liveness
                .as_ref()
                .map(|p| ProbeSpec::build(ProbeKind::Liveness, p, ip)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProbeSpec> {
        self.readiness.iter().chain(self.liveness.iter())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "readiness": self.readiness.as_ref().map(ProbeSpec::to_json),
            "liveness": self.liveness.as_ref().map(ProbeSpec::to_json),
        })
    }
}

impl fmt::Display for GuestProbePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for p in self.iter() {
            writeln!(f, "{p}")?;
            any = true;
        }
        if !any {
            writeln!(f, "(none: readiness is vmpod's own checks only)")?;
        }
        Ok(())
    }
}

/// A probe's verdict so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not passed since the guest (re)started: not ready, and not yet
    /// failed either.
    Pending,
    Passing,
    Failing,
}

/// Consecutive results and the verdict they give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeState {
    pub verdict: Verdict,
    /// Passes in a row (0 after a miss).
    pub passes: u32,
    /// Misses in a row (0 after a pass).
    pub misses: u32,
    /// Why the last miss missed.
    pub last_error: Option<String>,
}

impl Default for ProbeState {
    fn default() -> Self {
        ProbeState {
            verdict: Verdict::Pending,
            passes: 0,
            misses: 0,
            last_error: None,
        }
    }
}

impl ProbeState {
    /// Takes one result; the new verdict when it changed.
    pub fn record(&mut self, spec: &ProbeSpec, result: Result<(), String>) -> Option<Verdict> {
        let next = match result {
            Ok(()) => {
                self.passes = self.passes.saturating_add(1);
                self.misses = 0;
                (self.passes >= spec.success_threshold).then_some(Verdict::Passing)
            }
            Err(e) => {
                self.misses = self.misses.saturating_add(1);
                self.passes = 0;
                self.last_error = Some(e);
                (self.misses >= spec.failure_threshold).then_some(Verdict::Failing)
            }
        };
        match next {
            Some(v) if v != self.verdict => {
                self.verdict = v;
                Some(v)
            }
            _ => None,
        }
    }

    /// The readiness failure line for `/readyz`, None when the probe passes.
    pub fn failure(&self, spec: &ProbeSpec) -> Option<String> {
        let name = spec.kind.as_str();
        let last = || {
            self.last_error
                .as_deref()
                .map(|e| {
                    format!(
                        " (last: {e}; {} miss(es) in a row of {} allowed)",
                        self.misses, spec.failure_threshold
                    )
                })
                .unwrap_or_default()
        };
        match self.verdict {
            Verdict::Passing => None,
            Verdict::Pending => Some(format!(
                "probe {name}: {} has not answered yet{}",
                spec.action,
                last()
            )),
            Verdict::Failing => Some(format!(
                "probe {name}: {} failed {} time(s) in a row: {}",
                spec.action,
                self.misses,
                self.last_error.as_deref().unwrap_or("no answer")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ProbeKind, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            kind,
            action: ProbeAction::Http {
                addr: "10.0.1.2:9080".parse().unwrap(),
                path: "/".into(),
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: failure,
            success_threshold: success,
        }
    }

    fn miss(why: &str) -> Result<(), String> {
        Err(why.to_string())
    }

    #[test]
    fn a_new_probe_is_pending_and_not_ready() {
        let s = spec(ProbeKind::Readiness, 1, 3);
        let st = ProbeState::default();
        assert_eq!(st.verdict, Verdict::Pending);
        assert_eq!(
            st.failure(&s).as_deref(),
            Some("probe readiness: http://10.0.1.2:9080/ has not answered yet")
        );
    }

    #[test]
    fn misses_below_the_threshold_keep_the_verdict_and_show_the_reason() {
        let s = spec(ProbeKind::Readiness, 1, 3);
        let mut st = ProbeState::default();
        assert_eq!(st.record(&s, miss("connection refused")), None);
        assert_eq!(st.record(&s, miss("connection refused")), None);
        assert_eq!(st.verdict, Verdict::Pending);
        assert_eq!(
            st.failure(&s).as_deref(),
            Some(
                "probe readiness: http://10.0.1.2:9080/ has not answered yet (last: connection refused; 2 miss(es) in a row of 3 allowed)"
            )
        );
        assert_eq!(st.record(&s, miss("timed out")), Some(Verdict::Failing));
        assert_eq!(
            st.failure(&s).as_deref(),
            Some("probe readiness: http://10.0.1.2:9080/ failed 3 time(s) in a row: timed out")
        );
        // More misses change nothing.
        assert_eq!(st.record(&s, miss("timed out")), None);
    }

    #[test]
    fn the_success_threshold_counts_passes_in_a_row() {
        let s = spec(ProbeKind::Readiness, 2, 3);
        let mut st = ProbeState::default();
        assert_eq!(st.record(&s, Ok(())), None);
        assert_eq!(st.record(&s, miss("refused")), None);
        assert_eq!(st.record(&s, Ok(())), None, "the miss reset the count");
        assert_eq!(st.record(&s, Ok(())), Some(Verdict::Passing));
        assert_eq!(st.failure(&s), None);
        assert_eq!(st.record(&s, Ok(())), None);
    }

    #[test]
    fn a_passing_probe_fails_only_after_threshold_misses_in_a_row() {
        let s = spec(ProbeKind::Liveness, 1, 3);
        let mut st = ProbeState::default();
        assert_eq!(st.record(&s, Ok(())), Some(Verdict::Passing));
        for _ in 0..5 {
            // Two misses, then an answer: never three in a row.
            assert_eq!(st.record(&s, miss("refused")), None);
            assert_eq!(st.record(&s, miss("refused")), None);
            assert_eq!(st.record(&s, Ok(())), None);
        }
        assert_eq!(st.failure(&s), None, "still passing");
        st.record(&s, miss("a"));
        st.record(&s, miss("b"));
        assert_eq!(st.record(&s, miss("c")), Some(Verdict::Failing));
        assert_eq!(st.misses, 3);
        // And back.
        assert_eq!(st.record(&s, Ok(())), Some(Verdict::Passing));
    }

    #[test]
    fn a_threshold_of_one_acts_on_the_first_result() {
        let s = spec(ProbeKind::Liveness, 1, 1);
        let mut st = ProbeState::default();
        assert_eq!(st.record(&s, miss("refused")), Some(Verdict::Failing));
    }

    #[test]
    fn the_plan_takes_the_guest_address_and_kubernetes_defaults() {
        let yaml = "name: vm\nboot: {kernel: /k}\nnetwork: {guest_ip: 10.0.1.7}\nhealth:\n  guest:\n    readiness: {http: {port: 9080}}\n    liveness: {tcp: 7, period: 2s, failure_threshold: 5}\n";
        let config = crate::config::load("<test>", yaml, crate::config::FileChecks::Warn)
            .unwrap()
            .config;
        let plan = GuestProbePlan::build(&config);
        let r = plan.readiness.unwrap();
        assert_eq!(
            r.action,
            ProbeAction::Http {
                addr: "10.0.1.7:9080".parse().unwrap(),
                path: "/".into()
            }
        );
        assert_eq!(
            (
                r.period,
                r.timeout,
                r.initial_delay,
                r.failure_threshold,
                r.success_threshold
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(1),
                Duration::ZERO,
                3,
                1
            )
        );
        let l = plan.liveness.unwrap();
        assert_eq!(l.action, ProbeAction::Tcp("10.0.1.7:7".parse().unwrap()));
        assert_eq!((l.period, l.failure_threshold), (Duration::from_secs(2), 5));
    }
}
