//! The pod network around the guest, as one unit: the bridge, the per-tap
//! setup (sysctls, nft table, policy route), reconcile, and teardown. The
//! supervisor drives it; namespace tests drive it with a veth in place of
//! the tap, so they exercise the same code without a VM.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::firewall::FirewallPlan;
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
}

/// What was restored by one reconcile pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub firewall: bool,
    pub route: bool,
}

pub struct NetworkSetup {
    plan: NetworkPlan,
    netlink: Netlink,
    bridge_created: bool,
    firewall_applied: bool,
    route_applied: bool,
    firewall_gate: RepairGate,
    route_gate: RepairGate,
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
            firewall_gate: RepairGate::default(),
            route_gate: RepairGate::default(),
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
        Ok(())
    }

    /// Restores the nft table and the policy route if someone removed them.
    /// A piece that cannot be checked or restored is reported once per
    /// distinct fault and retried with backoff (see [`RepairGate`]).
    pub async fn reconcile(&mut self) -> Restored {
        let now = Instant::now();
        let mut restored = Restored::default();
        if self.firewall_applied && self.firewall_gate.due(now) {
            let result = match nft::table_exists().await {
                Ok(true) => Ok(false),
                Ok(false) => nft::apply(&self.plan.firewall).await.map(|()| true),
                Err(e) => Err(e),
            };
            restored.firewall = settle(&mut self.firewall_gate, "vmpod's nft table", result, now);
        }
        if self.route_applied && self.route_gate.due(now) {
            let mut result = Ok(false);
            for r in self.plan.policy_routes() {
                let one = match route::is_present(&self.netlink, r).await {
                    Ok(true) => Ok(false),
                    Ok(false) => route::apply(&self.netlink, r).await.map(|()| true),
                    Err(e) => Err(e),
                };
                result = match (result, one) {
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(a), Ok(b)) => Ok(a || b),
                };
            }
            restored.route = settle(&mut self.route_gate, "vmpod's policy route", result, now);
        }
        restored
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

/// Logs what one reconcile check found: a repair at warn, a new fault at
/// error, a repeated fault not at all. Returns whether it repaired.
fn settle<E: std::fmt::Display>(
    gate: &mut RepairGate,
    piece: &str,
    result: Result<bool, E>,
    now: Instant,
) -> bool {
    match result {
        Ok(repaired) => {
            if let Some(fault) = gate.ok() {
                tracing::info!(piece, was = %fault, "reconcile works again");
            }
            if repaired {
                tracing::warn!(piece, "removed by someone else; restored it");
            }
            repaired
        }
        Err(e) => {
            let fault = e.to_string();
            if gate.failed(fault.clone(), now) == Report::New {
                tracing::error!(piece, error = %fault, "cannot check or restore; retrying with backoff");
            }
            false
        }
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
