//! The pod network around the guest, as one unit: the bridge, the per-tap
//! setup (sysctls, nft table, policy route), reconcile, and teardown. The
//! supervisor drives it; namespace tests drive it with a veth in place of
//! the tap, so they exercise the same code without a VM.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::firewall::FirewallPlan;
use super::heal::{self, HealError, Piece, Repair, TapCheck};
use super::link::{LinkError, Netlink, Port};
use super::nft::{self, NftError};
use super::repair::{RepairGate, Report};
use super::route::{self, PolicyRoute, RouteError};
use super::sysctl::{self, Sysctl, SysctlError};
use crate::config::IfName;

/// The bridge vmpod creates for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: IfName,
    /// The gateway address the guest routes through.
    pub gateway: IpNet,
    /// The IPv6 gateway beside an IPv4 `gateway`, when the guest has IPv6.
    pub gateway6: Option<IpNet>,
    /// The guest network's MTU; None leaves the kernel's default.
    pub mtu: Option<u32>,
}

impl fmt::Display for BridgeSpec {
    /// The `ip` commands an operator would type for the same state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mtu = self.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        writeln!(f, "ip link add {} type bridge{mtu}", self.name)?;
        writeln!(f, "ip address add {} dev {}", self.gateway, self.name)?;
        if let Some(gw6) = self.gateway6 {
            writeln!(f, "ip address add {gw6} dev {} nodad", self.name)?;
        }
        write!(f, "ip link set {} up", self.name)
    }
}

/// The plan's part for the pod network: everything [`NetworkSetup`] applies.
#[derive(Clone, Debug)]
pub struct NetworkPlan {
    pub bridge: BridgeSpec,
    /// With `<tap>` where the guest's tap goes: see [`sysctl::for_tap`].
    pub sysctls: Vec<Sysctl>,
    pub firewall: FirewallPlan,
    pub policy_route: Option<PolicyRoute>,
    /// The IPv6 twin of `policy_route` when the guest has IPv6 beside IPv4.
    pub policy_route6: Option<PolicyRoute>,
}

impl NetworkPlan {
    /// Every policy route, IPv4's first.
    pub fn policy_routes(&self) -> impl Iterator<Item = &PolicyRoute> {
        self.policy_route.iter().chain(self.policy_route6.iter())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Heal(#[from] HealError),
}

/// What one reconcile pass found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Each repair done, already logged at warn.
    pub repairs: Vec<Repair>,
    /// The guest's tap no longer exists: only a new NIC, or a restart of
    /// the guest, gives it one again. The supervisor decides.
    pub tap_gone: Option<String>,
    /// Every piece that is broken and was not repaired (yet), with why.
    pub faults: Vec<(Piece, String)>,
}

impl Restored {
    /// How many repairs of `piece` this pass did.
    pub fn count(&self, piece: Piece) -> u64 {
        self.repairs.iter().filter(|r| r.piece == piece).count() as u64
    }
}

pub struct NetworkSetup {
    plan: NetworkPlan,
    netlink: Netlink,
    bridge_created: bool,
    firewall_applied: bool,
    route_applied: bool,
    /// The tap `per_tap` set up last: reconcile keeps it on the bridge.
    tap: Option<String>,
    gates: BTreeMap<Piece, RepairGate>,
}

impl NetworkSetup {
    /// Connects to rtnetlink; changes nothing yet.
    pub fn new(plan: NetworkPlan) -> Result<NetworkSetup, SetupError> {
        Ok(NetworkSetup {
            plan,
            netlink: Netlink::connect()?,
            bridge_created: false,
            firewall_applied: false,
            route_applied: false,
            tap: None,
            gates: BTreeMap::new(),
        })
    }

    /// Creates the bridge with the gateway address.
    pub async fn bridge(&mut self) -> Result<(), SetupError> {
        let bridge = &self.plan.bridge;
        self.bridge_created = true;
        let index = self
            .netlink
            .ensure_bridge(&bridge.name, bridge.gateway, bridge.mtu)
            .await?;
        // Those of the bridge and the namespace now, not with the tap's:
        // the IPv6 gateway needs disable_ipv6=0 on the bridge, and the
        // guest services start before the guest.
        let early = self
            .plan
            .sysctls
            .iter()
            .filter(|s| bridge.gateway6.is_some() && sysctl::before_tap(s));
        for s in early {
            if let sysctl::Applied::Changed { from } = sysctl::apply_one(Path::new("/"), s)? {
                tracing::info!(key = %s.key, from = %from, to = s.value, "sysctl set");
            }
        }
        if let Some(gw6) = bridge.gateway6 {
            self.netlink
                .ensure_address(&bridge.name, index, gw6)
                .await?;
        }
        Ok(())
    }

    /// Waits for the port (the guest's tap) to join the bridge; `previous`
    /// is ignored, so a restarted guest's new tap is found.
    pub async fn wait_for_tap(
        &self,
        previous: Option<&str>,
        timeout: Duration,
    ) -> Result<Port, SetupError> {
        Ok(self
            .netlink
            .wait_for_port_except(&self.plan.bridge.name, previous, timeout)
            .await?)
    }

    /// Everything that depends on the tap: run after every (re)start of the guest.
    pub async fn per_tap(&mut self, tap: &str) -> Result<(), SetupError> {
        // Hygiene for readiness only: a failure is not the guest's.
        if let Err(e) = self.netlink.flush_neighbours(&self.plan.bridge.name).await {
            tracing::warn!(error = %e, "cannot forget the previous boot's neighbour entries");
        }
        for s in sysctl::for_tap(&self.plan.sysctls, tap) {
            if let sysctl::Applied::Changed { from } = sysctl::apply_one(Path::new("/"), &s)? {
                tracing::info!(key = %s.key, from = %from, to = s.value, "sysctl set");
            }
        }
        self.firewall_applied = true;
        nft::apply(&self.plan.firewall).await?;
        for r in self.plan.policy_routes() {
            self.route_applied = true;
            route::apply(&self.netlink, r).await?;
        }
        self.tap = Some(tap.to_owned());
        // A fault of the old tap is not one of this one.
        self.gates.remove(&Piece::Tap);
        self.gates.remove(&Piece::Sysctl);
        Ok(())
    }

    /// Repairs what someone changed of what vmpod set up: the bridge, the
    /// tap's place on it, the sysctls, the nft table, vmpod's policy rule
    /// and route (and the pod's `main`/`default` rules when they went with
    /// vmpod's). Each repair is logged at warn; a piece that cannot be
    /// checked or repaired is reported once per distinct fault and retried
    /// with backoff (see [`RepairGate`]), and is listed in `faults`.
    pub async fn reconcile(&mut self) -> Restored {
        let now = Instant::now();
        let mut out = Restored::default();
        if self.bridge_created && self.due(Piece::Bridge, now) {
            let result = heal::bridge(&self.netlink, &self.plan.bridge).await;
            self.settle(Piece::Bridge, result, now, &mut out);
        }
        if let Some(tap) = self.tap.clone() {
            if self.due(Piece::Tap, now) {
                match heal::tap(&self.netlink, &self.plan.bridge.name, &tap).await {
                    Ok(TapCheck::Attached(done)) => {
                        self.settle(Piece::Tap, Ok::<_, HealError>(done), now, &mut out)
                    }
                    Ok(TapCheck::Gone) => {
                        let fault = format!(
                            "the guest's tap {tap} was deleted; only a new NIC or a restart of the guest brings one back"
                        );
                        self.settle(Piece::Tap, Err(fault), now, &mut out);
                        out.tap_gone = Some(tap.clone());
                    }
                    Err(e) => self.settle(Piece::Tap, Err::<Vec<Repair>, _>(e), now, &mut out),
                }
            }
            if out.tap_gone.is_none() && self.due(Piece::Sysctl, now) {
                let result = heal::sysctls(&self.netlink, &self.plan.sysctls, &tap);
                self.settle(Piece::Sysctl, result, now, &mut out);
            }
        }
        if self.firewall_applied && self.due(Piece::Table, now) {
            let result = match nft::table_exists().await {
                Ok(true) => Ok(vec![]),
                Ok(false) => nft::apply(&self.plan.firewall).await.map(|()| {
                    vec![Repair::new(
                        Piece::Table,
                        "inet vmpod",
                        "the table missing",
                        "applied it again",
                    )]
                }),
                Err(e) => Err(e),
            };
            self.settle(Piece::Table, result, now, &mut out);
        }
        if self.route_applied && self.due(Piece::Rule, now) {
            let result = self.rules().await;
            self.settle(Piece::Rule, result, now, &mut out);
        }
        if self.route_applied && self.due(Piece::Route, now) {
            let result = self.routes().await;
            self.settle(Piece::Route, result, now, &mut out);
        }
        out.faults = self
            .gates
            .iter()
            .filter_map(|(piece, gate)| gate.fault().map(|f| (*piece, f.to_owned())))
            .collect();
        out
    }

    fn due(&self, piece: Piece, now: Instant) -> bool {
        self.gates.get(&piece).is_none_or(|g| g.due(now))
    }

    /// vmpod's fwmark rules, and with them, when they are gone, the pod's
    /// `main` and `default` rules: both went in an `ip rule flush`.
    async fn rules(&self) -> Result<Vec<Repair>, SetupError> {
        let mut done = Vec::new();
        for r in self.plan.policy_routes() {
            if route::rule_present(&self.netlink, r).await? {
                continue;
            }
            done.extend(heal::pod_rules_back(&self.netlink, r.ipv6).await?);
            route::apply(&self.netlink, r).await?;
            let text = route::rule_text(r);
            done.push(Repair::new(
                Piece::Rule,
                &text,
                format!("`{text}` missing"),
                format!("added `{text}`"),
            ));
        }
        Ok(done)
    }

    async fn routes(&self) -> Result<Vec<Repair>, SetupError> {
        let mut done = Vec::new();
        for r in self.plan.policy_routes() {
            if route::route_present(&self.netlink, r).await? {
                continue;
            }
            route::apply(&self.netlink, r).await?;
            let text = route::route_text(r);
            done.push(Repair::new(
                Piece::Route,
                &text,
                format!("`{text}` missing"),
                format!("added `{text}`"),
            ));
        }
        Ok(done)
    }

    /// Logs what one check found: each repair at warn, a new fault at
    /// error, a repeated fault not at all.
    fn settle<E: std::fmt::Display>(
        &mut self,
        piece: Piece,
        result: Result<Vec<Repair>, E>,
        now: Instant,
        out: &mut Restored,
    ) {
        let gate = self.gates.entry(piece).or_default();
        match result {
            Ok(done) => {
                if let Some(fault) = gate.ok() {
                    tracing::info!(piece = piece.as_str(), was = %fault, "repair works again");
                }
                for r in &done {
                    r.log();
                }
                out.repairs.extend(done);
            }
            Err(e) => {
                let fault = e.to_string();
                if gate.failed(fault.clone(), now) == Report::New {
                    tracing::error!(piece = piece.as_str(), error = %fault, "cannot check or repair; retrying with backoff");
                }
            }
        }
    }

    /// Removes exactly what was added, collecting every error.
    pub async fn teardown(&mut self) -> TeardownErrors {
        let mut errors = Vec::new();
        if std::mem::take(&mut self.firewall_applied)
            && let Err(e) = nft::remove().await
        {
            errors.push(TeardownError::Firewall(e));
        }
        if std::mem::take(&mut self.route_applied) {
            for r in self.plan.policy_routes() {
                if let Err(e) = route::remove(&self.netlink, r).await {
                    errors.push(TeardownError::Route(e));
                }
            }
        }
        if std::mem::take(&mut self.bridge_created)
            && let Err(e) = self.netlink.delete_bridge(&self.plan.bridge.name).await
        {
            errors.push(TeardownError::Bridge(e));
        }
        TeardownErrors(errors)
    }
}

/// One step of teardown that failed.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("removing vmpod's nft table: {0}")]
    Firewall(NftError),
    #[error("removing the policy route: {0}")]
    Route(RouteError),
    #[error("deleting the bridge: {0}")]
    Bridge(LinkError),
}

/// Every teardown step that failed: teardown goes on past a failure, since
/// a half-torn-down pod is worse than a long message.
#[derive(Debug, Default)]
pub struct TeardownErrors(pub Vec<TeardownError>);

impl TeardownErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for TeardownErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TeardownErrors {}
