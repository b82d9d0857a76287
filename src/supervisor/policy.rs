//! The supervisor's decisions as pure functions: what a stopped guest means
//! under the restart policy, and what each way of stopping exits with.

use crate::config::RestartPolicy;
use crate::libvirt::guest::GuestState;

/// Exit codes of `vmpod run`, beyond 0 (clean), 1 (runtime failure) and 2 (config).
pub const EXIT_GUEST_FAILED: i32 = 3;

/// Why the supervisor is stopping, and so its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Signal,
    GuestDone,
    GuestFailed,
    DaemonGaveUp,
    /// Boot or a restart failed.
    Failed,
}

impl Stop {
    pub fn exit_code(self) -> i32 {
        match self {
            Stop::Signal | Stop::GuestDone => 0,
            Stop::GuestFailed => EXIT_GUEST_FAILED,
            Stop::DaemonGaveUp | Stop::Failed => 1,
        }
    }
}

/// What to do about the guest's state, as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Running, paused or in transition: nothing to do.
    Keep,
    /// Start it again; `redefine` when libvirt no longer knows the domain.
    Restart { redefine: bool },
    /// The policy says the pod ends here.
    Stop(Stop),
}

pub fn decide(policy: RestartPolicy, state: GuestState) -> Decision {
    if state.is_active() {
        return Decision::Keep;
    }
    // A domain that vanished did not power itself off: a failure.
    let clean = state == GuestState::ShutOffClean;
    let restart = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !clean,
        RestartPolicy::Never => false,
    };
    match (restart, clean) {
        (true, _) => Decision::Restart {
            redefine: state == GuestState::Missing,
        },
        (false, true) => Decision::Stop(Stop::GuestDone),
        (false, false) => Decision::Stop(Stop::GuestFailed),
    }
}

/// What a failed liveness probe leads to: the guest is destroyed, and then
/// treated as a guest that was destroyed (restarted unless the policy is
/// `never`, where the pod ends as failed).
pub fn unhealthy(policy: RestartPolicy) -> Decision {
    decide(policy, GuestState::ShutOffDestroyed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuestState::*;
    use RestartPolicy::*;

    const ALL_STATES: [GuestState; 7] = [
        Running,
        Paused,
        Transitional,
        ShutOffClean,
        ShutOffDestroyed,
        ShutOffFailed,
        Missing,
    ];

    #[test]
    fn every_policy_against_every_guest_state() {
        let restart = Decision::Restart { redefine: false };
        let expected = |policy, state| match (policy, state) {
            (_, Running | Paused | Transitional) => Decision::Keep,
            (_, Missing) if policy != Never => Decision::Restart { redefine: true },
            (Always, _) => restart,
            (OnFailure, ShutOffClean) => Decision::Stop(Stop::GuestDone),
            (OnFailure, _) => restart,
            (Never, ShutOffClean) => Decision::Stop(Stop::GuestDone),
            (Never, _) => Decision::Stop(Stop::GuestFailed),
        };
        for policy in [Always, OnFailure, Never] {
            for state in ALL_STATES {
                assert_eq!(
                    decide(policy, state),
                    expected(policy, state),
                    "{policy:?} × {state:?}"
                );
            }
        }
    }

    #[test]
    fn a_failed_liveness_probe_restarts_unless_the_policy_is_never() {
        let restart = Decision::Restart { redefine: false };
        assert_eq!(unhealthy(Always), restart);
        assert_eq!(unhealthy(OnFailure), restart);
        assert_eq!(unhealthy(Never), Decision::Stop(Stop::GuestFailed));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Stop::Signal.exit_code(), 0);
        assert_eq!(Stop::GuestDone.exit_code(), 0);
        assert_eq!(Stop::GuestFailed.exit_code(), 3);
        assert_eq!(Stop::DaemonGaveUp.exit_code(), 1);
        assert_eq!(Stop::Failed.exit_code(), 1);
    }
}
