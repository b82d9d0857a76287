//! virtlogd and libvirtd as supervised children: started with the config
//! vmpod writes, their output carried into vmpod's log with a `component`
//! field, restarted with backoff when they die, and given up on after too
//! many deaths in a window.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::daemon_config::{LIBVIRTD_CONF, VIRTLOGD_CONF};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A daemon that ran this long is healthy again: the backoff restarts.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub const LIBVIRTD_SOCKET: &str = "/run/libvirt/libvirt-sock";
pub const VIRTLOGD_SOCKET: &str = "/run/libvirt/virtlogd-sock";

/// What to run and how to know it is ready.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    pub component: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The daemon is ready when this socket exists.
    pub socket: PathBuf,
}

impl DaemonSpec {
    pub fn virtlogd() -> Self {
        DaemonSpec {
            component: "virtlogd",
            program: "virtlogd".into(),
            args: vec!["--config".into(), VIRTLOGD_CONF.into()],
            socket: VIRTLOGD_SOCKET.into(),
        }
    }

    pub fn libvirtd(listen_tcp: bool) -> Self {
        let mut args = vec!["--config".to_string(), LIBVIRTD_CONF.to_string()];
        if listen_tcp {
            args.push("--listen".into());
        }
        DaemonSpec {
            component: "libvirtd",
            program: "libvirtd".into(),
            args,
            socket: LIBVIRTD_SOCKET.into(),
        }
    }
}

/// When to stop restarting: more than `max_deaths` within `window`.
#[derive(Clone, Copy, Debug)]
pub struct RestartLimit {
    pub max_deaths: u32,
    pub window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "cannot start {component} ({program}): {source}; is the libvirt-daemon-system package installed?"
    )]
    Spawn {
        component: &'static str,
        program: String,
        source: std::io::Error,
    },
    #[error("{component} did not create {socket} within {timeout:?}")]
    NotReady {
        component: &'static str,
        socket: String,
        timeout: Duration,
    },
    #[error("{component} died {deaths} times within {window:?}; giving up")]
    GaveUp {
        component: &'static str,
        deaths: usize,
        window: Duration,
    },
}

/// Events a supervised daemon reports to the supervisor.
#[derive(Debug)]
pub enum DaemonEvent {
    Restarted { component: &'static str, pid: i32 },
    GaveUp(DaemonError),
}

/// A running, supervised daemon.
pub struct Daemon {
    pub component: &'static str,
    pid: Arc<AtomicI32>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Starts the daemon, waits until its socket exists, then supervises it.
    pub async fn start(
        spec: DaemonSpec,
        limit: RestartLimit,
        events: mpsc::Sender<DaemonEvent>,
    ) -> Result<Daemon, DaemonError> {
        // A socket left by an earlier run would make readiness a lie.
        let _ = std::fs::remove_file(&spec.socket);
        let child = spawn(&spec)?;
        let pid = Arc::new(AtomicI32::new(child.id().map_or(0, |p| p as i32)));
        wait_for_socket(&spec).await?;
        tracing::info!(
            component = spec.component,
            pid = pid.load(Ordering::Relaxed),
            "daemon ready"
        );
        let (stop, stop_rx) = watch::channel(false);
        let component = spec.component;
        let task = tokio::spawn(supervise(spec, limit, child, pid.clone(), stop_rx, events));
        Ok(Daemon {
            component,
            pid,
            stop,
            task,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// SIGTERM to the daemon's pid (never its group), SIGKILL after a timeout.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn spawn(spec: &DaemonSpec) -> Result<Child, DaemonError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at a terminal reaches vmpod, which
        // stops the guest in order, and not the daemons directly.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|source| DaemonError::Spawn {
        component: spec.component,
        program: spec.program.display().to_string(),
        source,
    })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(spec.component, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(spec.component, err));
    }
    Ok(child)
}

/// Carries a daemon's output into our log, one event per line.
async fn forward_lines(component: &'static str, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(" error : ") {
            tracing::error!(component, "{line}");
        } else if line.contains(" warning : ") {
            tracing::warn!(component, "{line}");
        } else {
            tracing::info!(component, "{line}");
        }
    }
}

async fn wait_for_socket(spec: &DaemonSpec) -> Result<(), DaemonError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !Path::new(&spec.socket).exists() {
        if Instant::now() > deadline {
            return Err(DaemonError::NotReady {
                component: spec.component,
                socket: spec.socket.display().to_string(),
                timeout: READY_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn supervise(
    spec: DaemonSpec,
    limit: RestartLimit,
    mut child: Child,
    pid: Arc<AtomicI32>,
    mut stop: watch::Receiver<bool>,
    events: mpsc::Sender<DaemonEvent>,
) {
    let component = spec.component;
    let mut deaths: VecDeque<Instant> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    let mut started = Instant::now();
    loop {
        tokio::select! {
            status = child.wait() => {
                let now = Instant::now();
                tracing::error!(component, status = ?status.ok(), "daemon died");
                if now.duration_since(started) > STABLE_AFTER {
                    backoff = FIRST_BACKOFF;
                }
                deaths.push_back(now);
                while deaths.front().is_some_and(|t| now.duration_since(*t) > limit.window) {
                    deaths.pop_front();
                }
                if deaths.len() > limit.max_deaths as usize {
                    let _ = events.send(DaemonEvent::GaveUp(DaemonError::GaveUp {
                        component,
                        deaths: deaths.len(),
                        window: limit.window,
                    })).await;
                    return;
                }
                tracing::info!(component, backoff = ?backoff, "restarting daemon after backoff");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let _ = std::fs::remove_file(&spec.socket);
                match spawn(&spec) {
                    Ok(c) => child = c,
                    Err(e) => {
                        let _ = events.send(DaemonEvent::GaveUp(e)).await;
                        return;
                    }
                }
                started = Instant::now();
                let new_pid = child.id().map_or(0, |p| p as i32);
                pid.store(new_pid, Ordering::Relaxed);
                if let Err(e) = wait_for_socket(&spec).await {
                    tracing::error!(component, error = %e, "restarted daemon is not ready");
                }
                let _ = events.send(DaemonEvent::Restarted { component, pid: new_pid }).await;
            }
            _ = stop.changed() => {
                terminate(component, &mut child).await;
                return;
            }
        }
    }
}

async fn terminate(component: &'static str, child: &mut Child) {
    let Some(pid) = child.id() else { return };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(_) => tracing::info!(component, "daemon stopped"),
        Err(_) => {
            tracing::warn!(component, "daemon ignored SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}
