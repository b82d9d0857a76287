//! PID 1 duties, kept in a small synchronous process: start the supervisor
//! (this binary, `vmpod supervise`), forward signals to it, reap every
//! zombie, and exit with the supervisor's status (128+N for signal N).
//!
//! Why a separate process: a global `waitpid(-1)` in the same process as
//! tokio would steal exit statuses from `tokio::process`. When vmpod is not
//! PID 1 (tests, local runs) it becomes a child subreaper and behaves the
//! same, so orphans such as a daemonized qemu are still reaped here.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals passed on to the supervisor, as a container runtime or a user sends them.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// How long leftover processes get after the supervisor exits, between
/// SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot set up signal handling: {0}")]
    Signals(Errno),
    #[error("cannot start the supervisor {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `program args` as the supervisor and returns the exit code vmpod
/// should exit with.
pub fn run(program: OsString, args: Vec<OsString>) -> Result<i32, InitError> {
    // Before the supervisor exists, so it starts with the raised limit.
    crate::fdlimit::raise_nofile_or_warn();
    if nix::unistd::getpid().as_raw() != 1
        && let Err(error) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!(%error, "cannot become a child subreaper; orphans will not be reaped by vmpod");
    }
    let mut waited = SigSet::empty();
    for s in FORWARDED {
        waited.add(s);
    }
    waited.add(Signal::SIGCHLD);
    // Block the signals before the child exists, so none is lost between
    // spawn and the first sigwait.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None).map_err(InitError::Signals)?;

    let mut cmd = Command::new(&program);
    cmd.args(&args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            let all = SigSet::all();
            sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&all), None)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| InitError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    let supervisor = Pid::from_raw(child.id() as i32);
    // The child is reaped below with waitpid(-1); std's handle is not used.
    std::mem::forget(child);
    tracing::debug!(pid = supervisor.as_raw(), "supervisor started");

    let code = loop {
        let signal = waited.wait().map_err(InitError::Signals)?;
        if signal == Signal::SIGCHLD {
            if let Some(code) = reap(supervisor) {
                break code;
            }
            continue;
        }
        tracing::info!(signal = %signal, "forwarding signal to the supervisor");
        if let Err(e) = kill(supervisor, signal) {
            tracing::warn!(signal = %signal, error = %e, "cannot forward signal");
        }
    };
    stop_leftovers(supervisor);
    Ok(code)
}

/// Reaps every exited child; returns the exit code once the supervisor is
/// among them.
fn reap(supervisor: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) => {
                if pid == supervisor {
                    code = Some(status);
                } else {
                    tracing::debug!(pid = pid.as_raw(), status, "reaped orphan");
                }
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                if pid == supervisor {
                    tracing::error!(signal = %signal, "the supervisor was killed");
                    code = Some(128 + signal as i32);
                } else {
                    tracing::debug!(pid = pid.as_raw(), signal = %signal, "reaped orphan");
                }
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return code,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return code;
            }
        }
    }
}

/// After the supervisor is gone: SIGTERM what is left of our children,
/// SIGKILL after a grace period, and reap them all, so nothing outlives us.
fn stop_leftovers(supervisor: Pid) {
    let leftovers = children();
    if leftovers.is_empty() {
        return;
    }
    tracing::warn!(pids = ?leftovers, "processes outlived the supervisor; stopping them");
    for pid in &leftovers {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + LEFTOVER_GRACE;
    while Instant::now() < deadline && !children().is_empty() {
        reap(supervisor);
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in children() {
        let _ = kill(pid, Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(50));
    reap(supervisor);
}

/// Our direct children, from /proc.
fn children() -> Vec<Pid> {
    let me = nix::unistd::getpid();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}
