//! The supervisor: boots the guest in order, keeps it and its plumbing
//! alive, and takes everything down again on SIGTERM.
//!
//! Boot: daemons → libvirt connection → bridge → define → start → tap →
//! network setup → ready. Then one loop watches signals, the guest's state,
//! the daemons, and the kernel state vmpod owns (reconcile).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{RestartPolicy, VmConfig};
use crate::consoles::{self, SaslUser, Secret};
use crate::health::{self, Health};
use crate::host::HostFacts;
use crate::libvirt::conn::{Libvirt, LibvirtError, SYSTEM_URI};
use crate::libvirt::daemon::{Daemon, DaemonError, DaemonEvent, DaemonSpec, RestartLimit};
use crate::libvirt::daemon_config;
use crate::libvirt::guest::{Guest, GuestState};
use crate::logtail::{self, LogTail, Source, Start};
use crate::net::setup::{NetworkSetup, SetupError};
use crate::plan::Plan;
use crate::preflight::{self, PreflightError};
use crate::relay::running::Relays;

/// Exit codes of `vmpod run`, beyond 0 (clean), 1 (runtime failure) and 2 (config).
pub const EXIT_GUEST_FAILED: i32 = 3;

const LIBVIRT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const TAP_TIMEOUT: Duration = Duration::from_secs(60);
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("cannot render the plan: {0}")]
    Render(#[from] crate::libvirt::domain::DomainError),
    #[error("cannot write {path}: {source}")]
    WriteConfig {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(transparent)]
    Network(#[from] SetupError),
    #[error(transparent)]
    Listen(#[from] crate::relay::running::ListenError),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Console(#[from] crate::consoles::ConsoleError),
}

/// Why the supervisor is stopping, and so its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Signal,
    GuestDone,
    GuestFailed,
    DaemonGaveUp,
    /// Boot or a restart failed.
    Failed,
}

impl Stop {
    fn exit_code(self) -> i32 {
        match self {
            Stop::Signal | Stop::GuestDone => 0,
            Stop::GuestFailed => EXIT_GUEST_FAILED,
            Stop::DaemonGaveUp | Stop::Failed => 1,
        }
    }
}

pub struct Supervisor {
    config: VmConfig,
    plan: Plan,
    libvirt: Libvirt,
    guest: Guest,
    network: Option<NetworkSetup>,
    /// Started daemons, stopped in reverse order.
    daemons: Vec<Daemon>,
    relays: Option<Relays>,
    tap: Option<String>,
    started: Instant,
    /// libvirt's remote users (`consoles.libvirt`), stored before libvirtd starts.
    sasl_users: Option<Vec<SaslUser>>,
    /// What the health endpoint serves; updated at every step below.
    health: Arc<Health>,
    /// The guest's serial console carried into the log (`logging.serial`).
    serial_log: Option<LogTail>,
}

/// Runs the VM until it is told to stop; returns the process exit code.
pub async fn run(config: VmConfig, facts: HostFacts) -> Result<i32, SupervisorError> {
    let started = Instant::now();
    // Secrets live in files the config names; their contents never reach
    // the config, so the whole of it can be logged.
    tracing::info!(config = ?config, "effective config");
    // Everything that can fail without side effects goes first.
    preflight::programs()?;
    let password = preflight::display_password(&config)?;
    let sasl_users = preflight::libvirt_credentials(&config)?;
    let plan = Plan::build(&config, &facts, password.as_ref().map(Secret::expose))?;
    preflight::ports(&plan.listeners)?;
    preflight::sysctls(&plan.network)?;
    // The endpoint answers from the start: alive, and not ready while booting.
    let health = Health::new(&plan, started);
    let _health_service = health::start(&plan, health.clone())?;
    let _qemu_log = LogTail::spawn(
        logtail::qemu_log_path(&config.name),
        Source::Qemu,
        Start::End,
    );
    let serial_log = config.logging.serial.then(|| {
        LogTail::spawn(
            crate::libvirt::domain::serial_log_path(&config),
            Source::Serial,
            Start::End,
        )
    });

    let libvirt = Libvirt::spawn(SYSTEM_URI);
    let guest = Guest::new(libvirt.clone(), &config.name);
    let mut sup = Supervisor {
        config,
        plan,
        libvirt,
        guest,
        network: None,
        daemons: Vec::new(),
        relays: None,
        tap: None,
        started,
        sasl_users,
        health,
        serial_log,
    };
    let (events_tx, events) = mpsc::channel(16);
    let result = match sup.boot(events_tx).await {
        Ok(()) => sup.watch(events).await,
        Err(e) => {
            tracing::error!(error = %e, "boot failed; undoing what was set up");
            Err(e)
        }
    };
    let stop = match &result {
        Ok(stop) => *stop,
        Err(_) => Stop::Failed,
    };
    sup.shutdown(stop).await;
    result.map(Stop::exit_code)
}

/// Logs a boot step with its duration; `/readyz` names it while it runs.
async fn step<T, E>(
    health: &Health,
    name: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    health.boot_step(name);
    let t = Instant::now();
    let r = f.await;
    if r.is_ok() {
        tracing::info!(
            step = name,
            ms = t.elapsed().as_millis() as u64,
            "boot step done"
        );
    }
    r
}

impl Supervisor {
    async fn boot(&mut self, events: mpsc::Sender<DaemonEvent>) -> Result<(), SupervisorError> {
        step(&self.health, "write daemon config", async {
            self.write_daemon_config()
        })
        .await?;
        if let Some(users) = &self.sasl_users {
            step(&self.health, "store libvirt users", async {
                consoles::build_sasldb(users, std::path::Path::new(daemon_config::SASL_DB))
            })
            .await?;
        }
        let limit = RestartLimit {
            max_deaths: self.config.lifecycle.daemon_max_restarts,
            window: self.config.lifecycle.daemon_restart_window.0,
        };
        let virtlogd = step(
            &self.health,
            "start virtlogd",
            Daemon::start(DaemonSpec::virtlogd(), limit, events.clone()),
        )
        .await?;
        self.daemons.push(virtlogd);
        let listen = self.config.consoles.libvirt.is_some();
        let libvirtd = step(
            &self.health,
            "start libvirtd",
            Daemon::start(DaemonSpec::libvirtd(listen), limit, events),
        )
        .await?;
        self.daemons.push(libvirtd);
        step(
            &self.health,
            "connect to libvirt",
            self.libvirt.wait_connected(LIBVIRT_CONNECT_TIMEOUT),
        )
        .await?;

        let network = self
            .network
            .insert(NetworkSetup::new(self.plan.network.clone())?);
        step(&self.health, "create bridge", network.bridge()).await?;

        let defined = step(
            &self.health,
            "define domain",
            self.guest.define(&self.plan.domain_xml),
        )
        .await?;
        tracing::info!(domain = %self.config.name, ?defined, "domain defined");
        self.start_guest().await?;
        // Listeners open only once the guest is up: until then a client is
        // refused rather than held.
        let relays = step(&self.health, "open relays", async {
            Relays::start(&self.plan.relays)
        })
        .await?;
        self.health.relays(&relays);
        self.relays = Some(relays);
        self.health.booted();
        tracing::info!(
            ms = self.started.elapsed().as_millis() as u64,
            tap = self.tap.as_deref().unwrap_or(""),
            "guest is up: ready"
        );
        Ok(())
    }

    fn write_daemon_config(&self) -> Result<(), SupervisorError> {
        use std::os::unix::fs::PermissionsExt;
        for file in &self.plan.daemon_files {
            let write = || -> std::io::Result<()> {
                if let Some(dir) = file.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&file.path, &file.contents)?;
                std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(file.mode))
            };
            write().map_err(|source| SupervisorError::WriteConfig {
                path: file.path.display().to_string(),
                source,
            })?;
        }
        for dir in [
            "/run/libvirt",
            "/var/lib/libvirt/qemu",
            "/var/log/libvirt/qemu",
        ] {
            let _ = std::fs::create_dir_all(dir);
        }
        Ok(())
    }

    /// Starts the guest (or adopts a running one), waits for its tap, and
    /// sets up the network around it.
    async fn start_guest(&mut self) -> Result<(), SupervisorError> {
        let old_tap = self.tap.take();
        self.health.tap(None);
        // libvirt truncates the serial log as the domain starts: its tail
        // waits, then reads the new file from the start.
        if let Some(tail) = &self.serial_log {
            tail.pause();
        }
        let started = match self.guest.state().await {
            Ok(s) if s.is_active() => {
                tracing::info!(state = ?s, "guest already running: adopting it");
                Ok(false)
            }
            Ok(_) => step(&self.health, "start domain", self.guest.start())
                .await
                .map(|()| true),
            Err(e) => Err(e),
        };
        if let Some(tail) = &self.serial_log {
            tail.resume(matches!(started, Ok(true)));
        }
        started?;
        let network = self.network.as_mut().expect("bridge created before start");
        let port = step(
            &self.health,
            "wait for tap",
            network.wait_for_tap(old_tap.as_deref(), TAP_TIMEOUT),
        )
        .await?;
        if old_tap.as_deref() != Some(port.name.as_str()) {
            tracing::info!(tap = %port.name, "guest tap attached to the bridge");
        }
        step(&self.health, "network setup", network.per_tap(&port.name)).await?;
        self.tap = Some(port.name);
        self.health.tap(self.tap.as_deref());
        Ok(())
    }

    async fn watch(
        &mut self,
        mut daemon_events: mpsc::Receiver<DaemonEvent>,
    ) -> Result<Stop, SupervisorError> {
        let mut term = signal(SignalKind::terminate()).map_err(SupervisorError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(SupervisorError::Signals)?;
        let mut quit = signal(SignalKind::quit()).map_err(SupervisorError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(SupervisorError::Signals)?;
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(SupervisorError::Signals)?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(SupervisorError::Signals)?;
        let mut guest_tick = tokio::time::interval(WATCH_INTERVAL);
        let mut reconcile_tick = tokio::time::interval(RECONCILE_INTERVAL);
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(Stop::Signal) }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(Stop::Signal) }
                _ = quit.recv() => { tracing::info!("SIGQUIT: shutting down"); return Ok(Stop::Signal) }
                _ = hup.recv() => tracing::info!("SIGHUP: nothing to reload; config changes need a restart of the pod"),
                _ = usr1.recv() => self.log_status().await,
                _ = usr2.recv() => self.log_status().await,
                Some(event) = daemon_events.recv() => match event {
                    DaemonEvent::Restarted { component, pid } => {
                        self.health.daemon_restarted(component);
                        tracing::warn!(component, pid, "daemon restarted; the guest keeps running");
                    }
                    DaemonEvent::GaveUp(e) => {
                        tracing::error!(error = %e, "shutting down");
                        return Ok(Stop::DaemonGaveUp);
                    }
                },
                _ = guest_tick.tick() => {
                    self.health.beat();
                    if let Some(stop) = self.check_guest().await? {
                        return Ok(stop);
                    }
                }
                _ = reconcile_tick.tick() => self.reconcile().await,
            }
        }
    }

    async fn log_status(&self) {
        let state = self.guest.state().await;
        tracing::info!(
            guest = ?state.ok(),
            tap = self.tap.as_deref().unwrap_or(""),
            uptime_s = self.started.elapsed().as_secs(),
            "status"
        );
    }

    /// Applies the restart policy when the guest has stopped.
    async fn check_guest(&mut self) -> Result<Option<Stop>, SupervisorError> {
        let state = match self.guest.state().await {
            Ok(s) => s,
            Err(e) => {
                // libvirtd restarting: the guest runs on; ask again later.
                tracing::debug!(error = %e, "cannot read the guest's state");
                return Ok(None);
            }
        };
        self.health.guest_state(state);
        if state.is_active() {
            return Ok(None);
        }
        let clean = state == GuestState::ShutOffClean;
        let policy = self.config.lifecycle.restart;
        tracing::warn!(state = ?state, ?policy, "guest stopped");
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Never => false,
        };
        if !restart {
            return Ok(Some(if clean {
                Stop::GuestDone
            } else {
                Stop::GuestFailed
            }));
        }
        if state == GuestState::Missing {
            self.guest.define(&self.plan.domain_xml).await?;
        }
        tracing::info!("restarting the guest");
        self.start_guest().await?;
        self.health.guest_restarted();
        tracing::info!(tap = self.tap.as_deref().unwrap_or(""), "guest restarted");
        Ok(None)
    }

    /// Restores kernel state vmpod owns when someone removed it.
    async fn reconcile(&mut self) {
        if let Some(network) = &mut self.network {
            let restored = network.reconcile().await;
            self.health.reconciled(&restored);
        }
    }

    /// Takes everything down, collecting errors rather than stopping at the
    /// first: a half-torn-down pod is worse than a long log.
    async fn shutdown(&mut self, stop: Stop) {
        let t = Instant::now();
        self.health.stopping();
        let grace = self.config.shutdown_grace();
        // Listeners close first: no new connection is accepted for a guest
        // that is going away.
        if let Some(relays) = self.relays.take() {
            relays.stop().await;
        }
        if matches!(self.guest.state().await, Ok(s) if s.is_active()) {
            self.stop_guest(grace).await;
        }
        let errors = match &mut self.network {
            Some(network) => network.teardown().await,
            None => Default::default(),
        };
        while let Some(daemon) = self.daemons.pop() {
            daemon.stop().await;
        }
        for e in &errors.0 {
            tracing::error!(error = %e, "teardown step failed");
        }
        tracing::info!(
            ?stop,
            ms = t.elapsed().as_millis() as u64,
            "shutdown complete"
        );
    }

    /// ACPI power button, up to `grace` to power off, then destroy.
    async fn stop_guest(&self, grace: Duration) {
        tracing::info!(?grace, "asking the guest to power off (ACPI)");
        if let Err(e) = self.guest.shutdown().await {
            tracing::warn!(error = %e, "ACPI shutdown request failed");
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.guest.state().await, Ok(s) if !s.is_active()) {
                tracing::info!("guest powered off");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!(
            ?grace,
            "guest still running after the grace period: destroying it"
        );
        if let Err(e) = self.guest.destroy().await {
            tracing::error!(error = %e, "cannot destroy the guest");
        }
    }
}
