//! The health endpoint: `/healthz` (liveness), `/readyz` (readiness) and
//! `/metrics` (Prometheus) on `health.port`.
//!
//! Handlers never call libvirt and never wait on the supervisor: they read
//! [`Health`], which the supervisor updates as it boots and watches (phase,
//! guest state, tap, counters, a heartbeat) and a prober task refreshes
//! with what the kernel holds (bridge ports, the nft table, the policy
//! route, listening sockets). So the endpoint answers within milliseconds even
//! when libvirtd hangs, and a hung supervisor loop shows as a stale
//! heartbeat, which is what liveness is for.

pub mod admission;
pub mod client;
pub mod guest_probe;
pub mod guest_prober;
pub mod metrics;
mod probe;
pub mod procfs;
pub mod readiness;
pub mod server;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::addressing::GuestServices;
use crate::config::EgressMode;
use crate::dhcp::{DhcpStats, Lease};
use crate::dns::DnsStats;
use crate::libvirt::agent::GuestInfo;
use crate::libvirt::guest::GuestState;
use crate::net::heal::Piece;
use crate::net::setup::Restored;
use crate::plan::{ListenerKind, Plan};
use crate::relay::running::{ListenError, Relays};
use crate::relay::stats::RelayStats;
use guest_probe::{ProbeKind, ProbeSpec, ProbeState};
use readiness::{Expectations, GuestAddress, KernelFacts, Phase, Reported};

/// A running watch loop beats every 500 ms; a restart of the guest holds it
/// for a few seconds. Silence this long means the loop is stuck (a libvirt
/// call that never returns, for one), and liveness fails.
pub const LIVENESS_STALE: Duration = Duration::from_secs(30);

/// The supervisor's daemons, listed in metrics from the start at 0.
const DAEMONS: [&str; 2] = ["libvirtd", "virtlogd"];

/// One relay as metrics label it.
#[derive(Clone, Debug)]
pub struct RelayHandle {
    /// `egress` or `ingress`.
    pub kind: &'static str,
    /// The ingress port's name, or `egress`.
    pub name: String,
    pub port: u16,
    pub stats: Arc<RelayStats>,
}

/// What `/readyz` and `/metrics` read of the guest services.
#[derive(Clone, Debug)]
pub struct ServiceHandles {
    pub dhcp: Option<Arc<DhcpStats>>,
    pub dns: Option<Arc<DnsStats>>,
    pub lease: Option<watch::Receiver<Option<Lease>>>,
    pub dhcpv6: Option<Arc<crate::ipv6::Dhcpv6Stats>>,
    pub ra: Option<Arc<crate::ipv6::RaStats>>,
    pub lease6: Option<watch::Receiver<Option<crate::ipv6::Lease>>>,
}

/// The state the endpoint serves, shared by the supervisor, the prober and
/// the server. Every lock is held for a copy or an assignment only.
pub struct Health {
    started: Instant,
    domain: String,
    egress_mode: EgressMode,
    /// The egress listener's port, when the mode has one.
    egress_port: Option<u16>,
    expect: Expectations,
    ingress_ports: BTreeMap<String, u16>,
    /// Milliseconds after `started` of the watch loop's last beat.
    heartbeat_ms: AtomicU64,
    reported: Mutex<Reported>,
    kernel: Mutex<Option<KernelFacts>>,
    relays: Mutex<Vec<RelayHandle>>,
    /// The UDP egress relay's counters (`udp: relay`).
    udp_egress: Mutex<Option<Arc<crate::relay::udp_egress::UdpEgressStats>>>,
    /// The DHCP server's and DNS forwarder's counters and the lease.
    services: Mutex<Option<ServiceHandles>>,
    ready_after: OnceLock<Duration>,
    guest_restarts: AtomicU64,
    /// When the guest last started: a lease granted before belongs to its
    /// previous boot, whose network the new one has not brought up yet.
    guest_started: Mutex<Option<Instant>>,
    daemon_restarts: Mutex<BTreeMap<String, u64>>,
    /// Repairs done by reconcile, by piece.
    repairs: Mutex<BTreeMap<Piece, u64>>,
    /// Pieces broken and not repaired: since when, and why.
    unrepaired: Mutex<BTreeMap<Piece, (Instant, String)>>,
    /// How long a piece may stay unrepaired before liveness fails.
    unrepaired_liveness_after: Duration,
    /// At shutdown: connections in flight that ended within the drain
    /// timeout, and those reset at it.
    drained: AtomicU64,
    drain_reset: AtomicU64,
    /// Wakes the prober early after a change the supervisor made.
    probe_now: Notify,
    /// The guest probes' states and counters, by probe.
    guest_probes: Mutex<BTreeMap<ProbeKind, ProbeRecord>>,
    liveness_restarts: AtomicU64,
    /// What the guest agent last reported; None while it does not answer.
    agent: Mutex<Option<GuestInfo>>,
}

/// One guest probe as `/readyz` and `/metrics` show it.
#[derive(Clone, Debug)]
pub struct ProbeRecord {
    pub spec: ProbeSpec,
    pub state: ProbeState,
    pub passes: u64,
    pub misses: u64,
    /// Time spent in checks, and in the last one.
    pub seconds_total: f64,
    pub last_seconds: f64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind;
    // serving it beats taking the endpoint down.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Health {
    /// `started` is when the supervisor started: the origin of uptime and
    /// of the time to ready.
    pub fn new(plan: &Plan, started: Instant) -> Arc<Health> {
        // Relay listeners must be open to be ready; `dnat` ports are the
        // kernel's, and the nft table check covers them. Both families of
        // one port count once: the prober looks at ports.
        let mut listeners = Vec::new();
        for l in &plan.listeners {
            if matches!(l.kind, ListenerKind::Egress | ListenerKind::Ingress(_)) {
                let entry = (l.kind.to_string(), l.protocol, l.addr.port());
                if !listeners.contains(&entry) {
                    listeners.push(entry);
                }
            }
        }
        let ingress_ports = plan
            .relays
            .ingress
            .iter()
            .map(|i| (i.name.clone(), i.port()))
            .collect();
        let net = &plan.network;
        Arc::new(Health {
            started,
            domain: plan.domain.clone(),
            egress_mode: plan.egress_mode,
            egress_port: plan.relays.egress.as_ref().map(|e| e.addr.port()),
            expect: Expectations {
                bridge: net.bridge.name.to_string(),
                route: net.policy_route.map(|r| r.to_string()),
                listeners,
                // The neighbour check reads the IPv4 table (/proc/net/arp).
                address: plan.guest_ip.is_ipv4().then(|| GuestAddress {
                    ip: plan.guest_ip,
                    mac: plan.guest_mac.to_string().to_lowercase(),
                    dhcp: plan.addressing.dhcp.is_some(),
                }),
                address6: plan.addressing.ipv6.as_ref().map(|v6| IpAddr::V6(v6.guest)),
            },
            ingress_ports,
            heartbeat_ms: AtomicU64::new(0),
            reported: Mutex::new(Reported {
                phase: Phase::Booting("start".into()),
                guest: None,
                tap: None,
                lease: None,
                lease6: None,
                probe: None,
            }),
            kernel: Mutex::new(None),
            relays: Mutex::new(Vec::new()),
            udp_egress: Mutex::new(None),
            services: Mutex::new(None),
            ready_after: OnceLock::new(),
            guest_restarts: AtomicU64::new(0),
            guest_started: Mutex::new(None),
            daemon_restarts: Mutex::new(DAEMONS.iter().map(|d| (d.to_string(), 0)).collect()),
            repairs: Mutex::new(Piece::ALL.iter().map(|p| (*p, 0)).collect()),
            unrepaired: Mutex::new(BTreeMap::new()),
            unrepaired_liveness_after: plan.unrepaired_liveness_after,
            drained: AtomicU64::new(0),
            drain_reset: AtomicU64::new(0),
            probe_now: Notify::new(),
            guest_probes: Mutex::new(
                plan.guest_probes
                    .iter()
                    .map(|spec| {
                        (
                            spec.kind,
                            ProbeRecord {
                                spec: spec.clone(),
                                state: ProbeState::default(),
                                passes: 0,
                                misses: 0,
                                seconds_total: 0.0,
                                last_seconds: 0.0,
                            },
                        )
                    })
                    .collect(),
            ),
            liveness_restarts: AtomicU64::new(0),
            agent: Mutex::new(None),
        })
    }

    // --- what the guest probers report ---

    /// The guest (re)started: its probes start over, pending.
    pub fn probes_restarted(&self) {
        for r in lock(&self.guest_probes).values_mut() {
            r.state = ProbeState::default();
        }
        self.probe_now.notify_one();
    }

    pub fn probe_result(&self, kind: ProbeKind, state: &ProbeState, passed: bool, took: Duration) {
        if let Some(r) = lock(&self.guest_probes).get_mut(&kind) {
            r.state = state.clone();
            if passed {
                r.passes += 1;
            } else {
                r.misses += 1;
            }
            r.last_seconds = took.as_secs_f64();
            r.seconds_total += r.last_seconds;
        }
        self.probe_now.notify_one();
    }

    /// The liveness probe failed and the guest is restarted for it.
    pub fn liveness_failed(&self) {
        self.liveness_restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn readiness_probe_failure(&self) -> Option<String> {
        let probes = lock(&self.guest_probes);
        let r = probes.get(&ProbeKind::Readiness)?;
        r.state.failure(&r.spec)
    }

    // --- what the supervisor reports ---

    /// The step now running; shown while booting (steps rerun when the
    /// guest restarts, and do not make a booted vmpod "booting" again).
    pub fn boot_step(&self, step: &str) {
        if let Phase::Booting(now) = &mut lock(&self.reported).phase {
            *now = step.to_string();
        }
    }

    /// Boot is over; the watch loop takes over.
    pub fn booted(&self) {
        lock(&self.reported).phase = Phase::Running;
        self.beat();
        self.probe_now.notify_one();
    }

    pub fn stopping(&self) {
        lock(&self.reported).phase = Phase::Stopping;
    }

    /// The guest's state as just read from libvirt.
    pub fn guest_state(&self, state: GuestState) {
        let changed = {
            let mut r = lock(&self.reported);
            r.guest.replace(state) != Some(state)
        };
        if changed {
            self.probe_now.notify_one();
        }
    }

    /// The tap the guest is attached with; None while it is being restarted.
    pub fn tap(&self, tap: Option<&str>) {
        if tap.is_none() {
            *lock(&self.guest_started) = Some(Instant::now());
        }
        lock(&self.reported).tap = tap.map(str::to_string);
        self.probe_now.notify_one();
    }

    /// The relays whose counters `/metrics` shows.
    pub fn relays(&self, relays: &Relays) {
        let mut handles = Vec::new();
        if let Some(port) = self.egress_port {
            handles.push(RelayHandle {
                kind: "egress",
                name: "egress".into(),
                port,
                stats: relays.egress.clone(),
            });
        }
        for (name, stats) in &relays.ingress {
            handles.push(RelayHandle {
                kind: "ingress",
                name: name.clone(),
                port: self.ingress_ports.get(name).copied().unwrap_or_default(),
                stats: stats.clone(),
            });
        }
        *lock(&self.relays) = handles;
        *lock(&self.udp_egress) = relays.udp_egress.clone();
        self.probe_now.notify_one();
    }

    /// The DHCP server and DNS forwarder are running.
    pub fn guest_services(&self, services: &GuestServices) {
        *lock(&self.services) = Some(ServiceHandles {
            dhcp: services.dhcp_stats.clone(),
            dns: services.dns_stats.clone(),
            lease: services.lease.clone(),
            dhcpv6: services.dhcpv6_stats.clone(),
            ra: services.ra_stats.clone(),
            lease6: services.lease6.clone(),
        });
        self.probe_now.notify_one();
    }

    fn leased(&self) -> Option<IpAddr> {
        let services = lock(&self.services);
        let lease = services.as_ref()?.lease.as_ref()?.borrow();
        let started = *lock(&self.guest_started);
        lease
            .as_ref()
            .filter(|l| started.is_none_or(|s| l.granted >= s))
            .map(|l| IpAddr::V4(l.ip))
    }

    /// The guest's DHCPv6 address, if it holds a lease.
    fn leased6(&self) -> Option<IpAddr> {
        let services = lock(&self.services);
        let lease = services.as_ref()?.lease6.as_ref()?.borrow();
        let started = *lock(&self.guest_started);
        lease
            .as_ref()
            .filter(|l| started.is_none_or(|s| l.granted_at >= s))
            .map(|l| IpAddr::V6(l.address))
    }

    /// The guest agent's report, or None when it stopped answering.
    pub fn guest_agent(&self, info: Option<GuestInfo>) {
        *lock(&self.agent) = info;
    }

    pub fn guest_restarted(&self) {
        self.guest_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn daemon_restarted(&self, component: &str) {
        *lock(&self.daemon_restarts)
            .entry(component.to_string())
            .or_default() += 1;
    }

    /// What the relays' drain at shutdown did.
    pub fn drained(&self, report: &crate::relay::drain::DrainReport) {
        self.drained.fetch_add(report.drained, Ordering::Relaxed);
        self.drain_reset.fetch_add(report.reset, Ordering::Relaxed);
    }

    /// What a reconcile pass repaired, and what stays broken: a piece
    /// keeps the time it was first seen broken until it is repaired.
    pub fn reconciled(&self, restored: &Restored) {
        self.repaired(restored.repairs.iter().map(|r| r.piece));
        let now = Instant::now();
        let changed = {
            let mut unrepaired = lock(&self.unrepaired);
            let before: Vec<Piece> = unrepaired.keys().copied().collect();
            unrepaired.retain(|piece, _| restored.faults.iter().any(|(p, _)| p == piece));
            for (piece, why) in &restored.faults {
                unrepaired
                    .entry(*piece)
                    .and_modify(|(_, w)| w.clone_from(why))
                    .or_insert_with(|| (now, why.clone()));
            }
            before != unrepaired.keys().copied().collect::<Vec<_>>()
        };
        if changed || !restored.repairs.is_empty() {
            self.probe_now.notify_one();
        }
    }

    /// Counts repairs done outside the network's reconcile (listeners).
    pub fn repaired(&self, pieces: impl IntoIterator<Item = Piece>) {
        let mut counts = lock(&self.repairs);
        for p in pieces {
            *counts.entry(p).or_default() += 1;
        }
    }

    /// A piece outside the network's reconcile (a listener) is broken, or
    /// with None works again.
    pub fn unrepaired(&self, piece: Piece, why: Option<String>) {
        let mut unrepaired = lock(&self.unrepaired);
        match why {
            Some(why) => {
                unrepaired
                    .entry(piece)
                    .or_insert_with(|| (Instant::now(), why));
            }
            None => {
                unrepaired.remove(&piece);
            }
        }
    }

    /// The unrepaired pieces as readiness failures.
    fn unrepaired_failures(&self) -> Vec<String> {
        lock(&self.unrepaired)
            .iter()
            .map(|(piece, (since, why))| {
                format!(
                    "repair {piece}: not repaired for {} s: {why}",
                    since.elapsed().as_secs()
                )
            })
            .collect()
    }

    /// The watch loop is alive.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.fetch_max(ms, Ordering::Relaxed);
    }

    // --- what the endpoint serves ---

    /// Ok while the supervisor is alive; the reason otherwise. Boot and
    /// shutdown bound their own steps, so only the watch loop is timed.
    pub fn liveness(&self) -> Result<(), String> {
        if lock(&self.reported).phase != Phase::Running {
            return Ok(());
        }
        let limit = self.unrepaired_liveness_after;
        if let Some((piece, (since, why))) = lock(&self.unrepaired)
            .iter()
            .find(|(_, (since, _))| since.elapsed() > limit)
        {
            return Err(format!(
                "{piece} has been broken and unrepaired for {} s (limit {} s, health.unrepaired_liveness_after): {why}",
                since.elapsed().as_secs(),
                limit.as_secs()
            ));
        }
        let age = self.heartbeat_age();
        if age > LIVENESS_STALE {
            return Err(format!(
                "the supervisor's watch loop has not run for {} s (limit {} s)",
                age.as_secs(),
                LIVENESS_STALE.as_secs()
            ));
        }
        Ok(())
    }

    fn heartbeat_age(&self) -> Duration {
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat)
    }

    /// The failing readiness checks; empty when ready. The first success
    /// fixes the time to ready.
    pub fn readiness(&self) -> Vec<String> {
        let mut reported = lock(&self.reported).clone();
        reported.lease = self.leased();
        reported.lease6 = self.leased6();
        reported.probe = self.readiness_probe_failure();
        let kernel = lock(&self.kernel).clone();
        let mut failures = readiness::failures(&self.expect, &reported, kernel.as_ref());
        failures.extend(self.unrepaired_failures());
        if failures.is_empty() && self.ready_after.get().is_none() {
            let after = self.started.elapsed();
            if self.ready_after.set(after).is_ok() {
                tracing::info!(
                    seconds = after.as_secs_f64(),
                    "ready (all readiness checks pass)"
                );
            }
        }
        failures
    }

    fn set_kernel(&self, facts: KernelFacts) {
        *lock(&self.kernel) = Some(facts);
    }
}

/// The endpoint's tasks; dropping this stops them.
pub struct HealthService {
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HealthService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens `health.port` on every address of the pod (the guest is kept out
/// by a rule in vmpod's nft table) and starts the server and the prober.
pub fn start(plan: &Plan, health: Arc<Health>) -> Result<HealthService, ListenError> {
    let addr = plan.health_addr;
    let listener = server::bind(addr).map_err(|source| ListenError {
        addr,
        field: "health.port".into(),
        source,
    })?;
    tracing::info!(%addr, "health endpoint listening: /healthz /readyz /metrics");
    let net = &plan.network;
    Ok(HealthService {
        addr,
        tasks: vec![
            tokio::spawn(server::serve(listener, health.clone())),
            tokio::spawn(probe::run(
                health,
                net.bridge.name.to_string(),
                net.policy_route,
            )),
        ],
    })
}
