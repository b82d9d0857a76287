//! The supervisor: boots the guest in order, keeps it and its plumbing
//! alive, and takes everything down again on SIGTERM.
//!
//! Boot: daemons → libvirt connection → bridge → define → start → tap →
//! network setup → ready. Then one loop watches stop requests, the guest's
//! state, the daemons, and the kernel state vmpod owns (reconcile).
//!
//! The supervisor talks to the guest, the pod network and the daemons only
//! through the traits in [`seams`], and decides restarts with the pure
//! [`policy::decide`]; `run` wires in the real parts.

mod policy;
mod seams;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::addressing::GuestServices;
use crate::config::{RestartPolicy, VmConfig};
use crate::consoles::Secret;
use crate::disks::PreparedDisks;
use crate::health::guest_prober::{self, Checker, GuestChecker, GuestProbers};
use crate::health::{self, Health};
use crate::host::HostFacts;
use crate::libvirt::conn::{Libvirt, LibvirtError, SYSTEM_URI};
use crate::libvirt::daemon::{DaemonError, DaemonEvent, RestartLimit};
use crate::libvirt::guest::{Guest, GuestState};
use crate::logtail::{self, LogTail, Source, Start};
use crate::net::heal::{Piece, Repair};
use crate::net::repair::RepairGate;
use crate::net::setup::{NetworkSetup, SetupError};
use crate::plan::Plan;
use crate::preflight::{self, PreflightError};
use crate::relay::running::Relays;
use policy::Decision;
pub use policy::{EXIT_GUEST_FAILED, Stop};
use seams::{Daemons, GuestControl, LibvirtDaemons, PodNetwork};

const TAP_TIMEOUT: Duration = Duration::from_secs(60);
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// How often the guest agent is asked for the guest's addresses, host name
/// and OS; a guest without an agent costs one refused call per period.
const AGENT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("cannot render the plan: {0}")]
    Render(#[from] crate::plan::PlanError),
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
    #[error(transparent)]
    GuestServices(#[from] crate::addressing::ServiceError),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Console(#[from] crate::consoles::ConsoleError),
    #[error(transparent)]
    Disks(#[from] crate::disks::DiskError),
}

/// What the outside world asks of the supervisor (signals, in `run`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM, SIGINT or SIGQUIT, by name: shut down.
    Terminate(&'static str),
    /// SIGUSR1 or SIGUSR2: log the status.
    Status,
    /// SIGHUP: nothing to reload.
    Reload,
}

/// The lifecycle settings of the config.
#[derive(Clone, Copy, Debug)]
pub struct Lifecycle {
    pub restart: RestartPolicy,
    pub shutdown_grace: Duration,
}

/// A liveness probe's failure: the probers' generation it belongs to (a
/// late report about a guest already restarted is ignored) and why.
type Unhealthy = (u64, String);

struct Supervisor<G, N, D, P> {
    plan: Plan,
    lifecycle: Lifecycle,
    guest: G,
    network: N,
    daemons: D,
    /// How the guest probes reach the guest.
    checker: P,
    /// The guest probes of the guest now running; restarted with it.
    probers: Option<GuestProbers>,
    /// Counts the probers started, to match a liveness report to its guest.
    probe_generation: u64,
    /// Where the liveness prober reports; set by `run_to_end`.
    unhealthy: Option<mpsc::Sender<Unhealthy>>,
    relays: Option<Relays>,
    /// The DHCP server and DNS forwarder.
    services: Option<GuestServices>,
    tap: Option<String>,
    started: Instant,
    /// What the health endpoint serves; updated at every step below.
    health: Arc<Health>,
    /// The guest's serial console carried into the log (`logging.serial`).
    serial_log: Option<LogTail>,
    /// The overlays, blank disks and seed made for this run.
    disks: Option<PreparedDisks>,
    /// Listeners found dead and not open again yet: what was found.
    listeners_down: ListenersDown,
}

/// The listener sets the supervisor reopens when a task of theirs ended.
#[derive(Debug, Default)]
struct ListenersDown {
    relays: Option<String>,
    services: Option<String>,
    gate: RepairGate,
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
    preflight::qemu_access(&config)?;
    // Before anything starts: a base image qemu-img cannot read is an
    // error here, with nothing to undo.
    let prepared = crate::disks::prepare(&plan.disks).await?;
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
    let libvirt = Libvirt::spawn(SYSTEM_URI)?;
    let checker = GuestChecker {
        guest: Arc::new(Guest::new(libvirt.clone(), &config.name)),
    };
    let daemons = LibvirtDaemons {
        files: plan.daemon_files.clone(),
        sasl_users,
        limit: RestartLimit {
            max_deaths: config.lifecycle.daemon_max_restarts,
            window: config.lifecycle.daemon_restart_window.0,
        },
        libvirt: libvirt.clone(),
        running: Vec::new(),
    };
    let network = NetworkSetup::new(plan.network.clone())?;
    let (control_tx, control) = mpsc::channel(8);
    let _signals = tokio::spawn(forward_signals(control_tx)?);
    let sup = Supervisor {
        guest: Guest::new(libvirt, &config.name),
        network,
        daemons,
        checker,
        probers: None,
        probe_generation: 0,
        unhealthy: None,
        lifecycle: Lifecycle {
            restart: config.lifecycle.restart,
            shutdown_grace: config.shutdown_grace(),
        },
        plan,
        relays: None,
        services: None,
        tap: None,
        started,
        health,
        serial_log,
        disks: Some(prepared),
        listeners_down: ListenersDown::default(),
    };
    sup.run_to_end(control).await
}

/// Turns the signals vmpod acts on into [`Control`] requests. The handlers
/// are installed before this returns, so no signal is lost after it.
fn forward_signals(
    to: mpsc::Sender<Control>,
) -> Result<impl Future<Output = ()> + Send, SupervisorError> {
    let listen = |kind| signal(kind).map_err(SupervisorError::Signals);
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    let mut quit = listen(SignalKind::quit())?;
    let mut hup = listen(SignalKind::hangup())?;
    let mut usr1 = listen(SignalKind::user_defined1())?;
    let mut usr2 = listen(SignalKind::user_defined2())?;
    Ok(async move {
        loop {
            let request = tokio::select! {
                _ = term.recv() => Control::Terminate("SIGTERM"),
                _ = int.recv() => Control::Terminate("SIGINT"),
                _ = quit.recv() => Control::Terminate("SIGQUIT"),
                _ = hup.recv() => Control::Reload,
                _ = usr1.recv() => Control::Status,
                _ = usr2.recv() => Control::Status,
            };
            if to.send(request).await.is_err() {
                return;
            }
        }
    })
}

/// Logs a boot step with its duration; `/readyz` names it while it runs.
pub(crate) async fn step<T, E>(
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

impl<G: GuestControl, N: PodNetwork, D: Daemons, P: Checker> Supervisor<G, N, D, P> {
    /// Boots, watches until told to stop, and shuts down; the exit code.
    async fn run_to_end(
        mut self,
        control: mpsc::Receiver<Control>,
    ) -> Result<i32, SupervisorError> {
        let (events_tx, events) = mpsc::channel(16);
        let (unhealthy_tx, unhealthy) = mpsc::channel(4);
        self.unhealthy = Some(unhealthy_tx);
        let result = match self.boot(events_tx).await {
            Ok(()) => self.watch(events, control, unhealthy).await,
            Err(e) => {
                tracing::error!(error = %e, "boot failed; undoing what was set up");
                Err(e)
            }
        };
        let stop = match &result {
            Ok(stop) => *stop,
            Err(_) => Stop::Failed,
        };
        self.shutdown(stop).await;
        result.map(Stop::exit_code)
    }

    async fn boot(&mut self, events: mpsc::Sender<DaemonEvent>) -> Result<(), SupervisorError> {
        self.daemons.start(&self.health, events).await?;
        step(&self.health, "create bridge", self.network.create_bridge()).await?;
        // Before the guest starts, so that its first DISCOVER is answered.
        let services = step(&self.health, "start DHCP and DNS", async {
            GuestServices::start(&self.plan.addressing)
        })
        .await?;
        self.health.guest_services(&services);
        self.services = Some(services);
        let defined = step(
            &self.health,
            "define domain",
            self.guest.define(&self.plan.domain_xml),
        )
        .await?;
        tracing::info!(domain = %self.plan.domain, ?defined, "domain defined");
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
        let tap = step(
            &self.health,
            "wait for tap",
            self.network.wait_for_tap(old_tap.as_deref(), TAP_TIMEOUT),
        )
        .await?;
        if old_tap.as_deref() != Some(tap.as_str()) {
            tracing::info!(%tap, "guest tap attached to the bridge");
        }
        step(&self.health, "network setup", self.network.per_tap(&tap)).await?;
        self.tap = Some(tap);
        self.health.tap(self.tap.as_deref());
        self.start_probes();
        Ok(())
    }

    /// (Re)starts the guest probes, so that their delays and counts run
    /// from this start of the guest.
    fn start_probes(&mut self) {
        self.probers = None;
        self.probe_generation += 1;
        let Some(unhealthy) = &self.unhealthy else {
            return;
        };
        if self.plan.guest_probes.iter().next().is_none() {
            return;
        }
        let generation = self.probe_generation;
        let (tx, mut rx) = mpsc::channel::<String>(1);
        let unhealthy = unhealthy.clone();
        // Tags the probers' reports with this generation.
        let forward = tokio::spawn(async move {
            if let Some(reason) = rx.recv().await {
                let _ = unhealthy.send((generation, reason)).await;
            }
        });
        let mut probers =
            guest_prober::start(&self.plan.guest_probes, &self.checker, &self.health, &tx);
        probers.also_stop(forward);
        self.probers = Some(probers);
    }

    /// The liveness probe failed: the guest is destroyed, and started again
    /// when the restart policy allows (as a guest that died would be).
    async fn guest_unhealthy(&mut self, reason: &str) -> Result<Option<Stop>, SupervisorError> {
        let decision = policy::unhealthy(self.lifecycle.restart);
        tracing::warn!(%reason, policy = ?self.lifecycle.restart, "the guest's liveness probe failed: destroying the guest");
        self.probers = None;
        self.health.liveness_failed();
        if let Err(e) = self.guest.destroy().await {
            tracing::error!(error = %e, "cannot destroy the unresponsive guest; probing it again");
            self.start_probes();
            return Ok(None);
        }
        match decision {
            Decision::Stop(stop) => {
                self.health.guest_state(GuestState::ShutOffDestroyed);
                Ok(Some(stop))
            }
            Decision::Restart { .. } | Decision::Keep => {
                self.start_guest().await?;
                self.health.guest_restarted();
                tracing::info!(
                    tap = self.tap.as_deref().unwrap_or(""),
                    "guest restarted after its liveness probe failed"
                );
                Ok(None)
            }
        }
    }

    async fn watch(
        &mut self,
        mut daemon_events: mpsc::Receiver<DaemonEvent>,
        mut control: mpsc::Receiver<Control>,
        mut unhealthy: mpsc::Receiver<Unhealthy>,
    ) -> Result<Stop, SupervisorError> {
        let mut guest_tick = tokio::time::interval(WATCH_INTERVAL);
        let mut reconcile_tick = tokio::time::interval(RECONCILE_INTERVAL);
        let mut agent_tick = tokio::time::interval(AGENT_INTERVAL);
        let mut agent_up = false;
        loop {
            tokio::select! {
                Some(request) = control.recv() => match request {
                    Control::Terminate(name) => {
                        tracing::info!(signal = name, "shutting down");
                        return Ok(Stop::Signal);
                    }
                    Control::Reload => tracing::info!("SIGHUP: nothing to reload; config changes need a restart of the pod"),
                    Control::Status => self.log_status().await,
                },
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
                Some((generation, reason)) = unhealthy.recv() => {
                    if generation == self.probe_generation
                        && let Some(stop) = self.guest_unhealthy(&reason).await?
                    {
                        return Ok(stop);
                    }
                }
                _ = reconcile_tick.tick() => {
                    if let Some(stop) = self.reconcile().await? {
                        return Ok(stop);
                    }
                }
                _ = agent_tick.tick() => agent_up = self.ask_agent(agent_up).await,
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
        let redefine = match policy::decide(self.lifecycle.restart, state) {
            Decision::Keep => return Ok(None),
            Decision::Stop(stop) => {
                tracing::warn!(state = ?state, policy = ?self.lifecycle.restart, "guest stopped");
                return Ok(Some(stop));
            }
            Decision::Restart { redefine } => redefine,
        };
        tracing::warn!(state = ?state, policy = ?self.lifecycle.restart, "guest stopped; restarting it");
        // The probes of the dead guest stop before they can report it.
        self.probers = None;
        if redefine {
            self.guest.define(&self.plan.domain_xml).await?;
        }
        self.start_guest().await?;
        self.health.guest_restarted();
        tracing::info!(tap = self.tap.as_deref().unwrap_or(""), "guest restarted");
        Ok(None)
    }

    /// Reads the guest's report from its agent into the health endpoint;
    /// logs when the agent starts or stops answering. Whether it answered.
    async fn ask_agent(&self, was_up: bool) -> bool {
        match self.guest.agent_info().await {
            Ok(info) => {
                if !was_up {
                    let addresses: Vec<String> = info
                        .addresses
                        .iter()
                        .map(|a| format!("{} {}/{}", a.interface, a.ip, a.prefix))
                        .collect();
                    tracing::info!(hostname = %info.hostname, os = %info.os, addresses = ?addresses, "the guest agent answers");
                }
                self.health.guest_agent(Some(info));
                true
            }
            Err(e) => {
                if was_up {
                    tracing::info!(error = %e, "the guest agent stopped answering");
                } else {
                    tracing::debug!(error = %e, "no answer from the guest agent");
                }
                self.health.guest_agent(None);
                false
            }
        }
    }

    /// Repairs kernel state vmpod owns when someone changed or removed it.
    /// A deleted tap cannot be made again by vmpod (qemu holds the other
    /// end): the guest is restarted for a new one, unless the restart
    /// policy is `never`, which leaves the fault standing for readiness
    /// and, past `health.unrepaired_liveness_after`, liveness.
    async fn reconcile(&mut self) -> Result<Option<Stop>, SupervisorError> {
        let restored = self.network.reconcile().await;
        self.health.reconciled(&restored);
        self.repair_listeners().await;
        let Some(gone) = restored.tap_gone else {
            return Ok(None);
        };
        if self.lifecycle.restart == RestartPolicy::Never {
            return Ok(None);
        }
        let t = Instant::now();
        self.probers = None;
        if let Err(e) = self.guest.destroy().await {
            tracing::error!(error = %e, tap = %gone, "the guest's tap was deleted and the guest cannot be destroyed for a new one; retrying");
            return Ok(None);
        }
        self.start_guest().await?;
        self.health.guest_restarted();
        self.health.repaired([Piece::Tap]);
        let tap = self.tap.as_deref().unwrap_or("");
        Repair::new(
            Piece::Tap,
            &gone,
            "the tap deleted",
            format!(
                "restarted the guest (restart: {:?}), new tap {tap}, in {} ms",
                self.lifecycle.restart,
                t.elapsed().as_millis()
            ),
        )
        .log();
        Ok(None)
    }

    /// A relay, DHCP or DNS task that ended (a panic) leaves its port
    /// unserved: its set is stopped and opened again from the plan. A reopen
    /// that fails (the port taken meanwhile) is retried with backoff and
    /// stands as a `listener` fault for readiness and liveness meanwhile.
    async fn repair_listeners(&mut self) {
        let down = &mut self.listeners_down;
        if let Some(n) = self.relays.as_ref().map(Relays::ended).filter(|n| *n > 0)
            && let Some(old) = self.relays.take()
        {
            old.stop(Duration::ZERO).await;
            down.relays = Some(format!("{n} relay listener task(s) ended"));
        }
        if let Some(n) = self
            .services
            .as_ref()
            .map(GuestServices::ended)
            .filter(|n| *n > 0)
            && let Some(old) = self.services.take()
        {
            old.stop().await;
            down.services = Some(format!("{n} DHCP/DNS task(s) ended"));
        }
        let now = Instant::now();
        if (down.relays.is_none() && down.services.is_none()) || !down.gate.due(now) {
            return;
        }
        let mut fault = Vec::new();
        if let Some(found) = down.relays.clone() {
            match Relays::start(&self.plan.relays) {
                Ok(relays) => {
                    self.health.relays(&relays);
                    self.relays = Some(relays);
                    down.relays = None;
                    self.health.repaired([Piece::Listener]);
                    Repair::new(
                        Piece::Listener,
                        "relays",
                        found,
                        "opened every relay listener again",
                    )
                    .log();
                }
                Err(e) => fault.push(format!("{found}; reopening them failed: {e}")),
            }
        }
        if let Some(found) = down.services.clone() {
            match GuestServices::start(&self.plan.addressing) {
                Ok(services) => {
                    self.health.guest_services(&services);
                    self.services = Some(services);
                    down.services = None;
                    self.health.repaired([Piece::Listener]);
                    Repair::new(
                        Piece::Listener,
                        "dhcp-dns",
                        found,
                        "started the DHCP server and DNS forwarder again",
                    )
                    .log();
                }
                Err(e) => fault.push(format!("{found}; restarting them failed: {e}")),
            }
        }
        if fault.is_empty() {
            down.gate.ok();
            self.health.unrepaired(Piece::Listener, None);
        } else {
            let fault = fault.join("; ");
            if down.gate.failed(fault.clone(), now) == crate::net::repair::Report::New {
                tracing::error!(piece = "listener", error = %fault, "cannot repair; retrying with backoff");
            }
            self.health.unrepaired(Piece::Listener, Some(fault));
        }
    }

    /// Takes everything down, collecting errors rather than stopping at the
    /// first: a half-torn-down pod is worse than a long log.
    async fn shutdown(&mut self, stop: Stop) {
        let t = Instant::now();
        self.health.stopping();
        // A guest going away must not look unhealthy.
        self.probers = None;
        // Listeners close first: no new connection is accepted for a guest
        // that is going away.
        if let Some(relays) = self.relays.take() {
            let report = relays.stop(self.plan.relays.drain_timeout).await;
            self.health.drained(&report);
        }
        // The drain is taken out of the grace (validation keeps it
        // shorter): the kubelet's deadline counts from SIGTERM.
        let grace = self.lifecycle.shutdown_grace.saturating_sub(t.elapsed());
        if matches!(self.guest.state().await, Ok(s) if s.is_active()) {
            self.stop_guest(grace).await;
        }
        if let Some(services) = self.services.take() {
            services.stop().await;
        }
        // The guest is off (or destroyed): its ephemeral disks can go.
        if let Some(mut disks) = self.disks.take() {
            for e in disks.remove() {
                tracing::error!(error = %e, "teardown step failed");
            }
        }
        let errors = self.network.teardown().await;
        self.daemons.stop_all().await;
        for e in &errors.0 {
            tracing::error!(error = %e, "teardown step failed");
        }
        tracing::info!(
            ?stop,
            ms = t.elapsed().as_millis() as u64,
            "shutdown complete"
        );
    }

    /// ACPI power button; after half of `grace`, the guest agent's
    /// shutdown for a guest that ignores the button; at the end of `grace`,
    /// destroy.
    async fn stop_guest(&self, grace: Duration) {
        tracing::info!(?grace, "asking the guest to power off (ACPI)");
        if let Err(e) = self.guest.shutdown().await {
            tracing::warn!(error = %e, "ACPI shutdown request failed");
        }
        let start = tokio::time::Instant::now();
        if self.powered_off_by(start + grace / 2).await {
            return;
        }
        match self.guest.agent_shutdown().await {
            Ok(()) => tracing::info!("the guest ignored ACPI; asked its guest agent to power off"),
            Err(e) => {
                tracing::info!(error = %e, "the guest ignored ACPI and no guest agent answered")
            }
        }
        if self.powered_off_by(start + grace).await {
            return;
        }
        tracing::warn!(
            ?grace,
            "guest still running after the grace period: destroying it"
        );
        if let Err(e) = self.guest.destroy().await {
            tracing::error!(error = %e, "cannot destroy the guest");
        }
    }

    /// Waits until the guest is off or `deadline` passes; whether it is off.
    async fn powered_off_by(&self, deadline: tokio::time::Instant) -> bool {
        while tokio::time::Instant::now() < deadline {
            if matches!(self.guest.state().await, Ok(s) if !s.is_active()) {
                tracing::info!("guest powered off");
                return true;
            }
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
        false
    }
}
