//! The pod network around the guest, as one unit: the bridge, the per-tap
//! setup (sysctls, nft table, policy route), reconcile, and teardown. The
//! supervisor drives it; namespace tests drive it with a veth in place of
//! the tap, so they exercise the same code without a VM.

use std::path::Path;
use std::time::Duration;

use super::firewall;
use super::link::{LinkError, Netlink, Port};
use super::nft::{self, NftError};
use super::route::{self, PolicyRoute, RouteError};
use super::sysctl::{self, SysctlError};
use crate::config::VmConfig;

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
    config: VmConfig,
    netlink: Netlink,
    route: Option<PolicyRoute>,
    bridge_created: bool,
    firewall_applied: bool,
    route_applied: bool,
}

impl NetworkSetup {
    /// Connects to rtnetlink; changes nothing yet.
    pub fn new(config: &VmConfig) -> Result<NetworkSetup, SetupError> {
        Ok(NetworkSetup {
            config: config.clone(),
            netlink: Netlink::connect()?,
            route: route::plan(config),
            bridge_created: false,
            firewall_applied: false,
            route_applied: false,
        })
    }

    /// Creates the bridge with the gateway address.
    pub async fn bridge(&mut self, mtu: Option<u32>) -> Result<(), SetupError> {
        let net = &self.config.network;
        self.bridge_created = true;
        self.netlink
            .ensure_bridge(&net.bridge, net.gateway, mtu)
            .await?;
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
            .wait_for_port_except(&self.config.network.bridge, previous, timeout)
            .await?)
    }

    /// Everything that depends on the tap: run after every (re)start of the guest.
    pub async fn per_tap(&mut self, tap: &str) -> Result<(), SetupError> {
        for s in sysctl::plan(&self.config, Some(tap)) {
            if let sysctl::Applied::Changed { from } = sysctl::apply_one(Path::new("/"), &s)? {
                tracing::info!(key = %s.key, from = %from, to = s.value, "sysctl set");
            }
        }
        self.firewall_applied = true;
        nft::apply(&firewall::plan(&self.config))?;
        if let Some(r) = &self.route {
            self.route_applied = true;
            route::apply(&self.netlink, r).await?;
        }
        Ok(())
    }

    /// Restores the nft table and the policy route if someone removed them.
    pub async fn reconcile(&self) -> Restored {
        let mut restored = Restored::default();
        if self.firewall_applied && matches!(nft::table_exists(), Ok(false)) {
            match nft::apply(&firewall::plan(&self.config)) {
                Ok(()) => {
                    tracing::warn!("vmpod's nft table was removed by someone else; restored it");
                    restored.firewall = true;
                }
                Err(e) => tracing::error!(error = %e, "cannot restore vmpod's nft table"),
            }
        }
        if let (true, Some(r)) = (self.route_applied, &self.route)
            && matches!(route::is_present(&self.netlink, r).await, Ok(false))
        {
            match route::apply(&self.netlink, r).await {
                Ok(()) => {
                    tracing::warn!("vmpod's policy rule or route was removed; restored it");
                    restored.route = true;
                }
                Err(e) => tracing::error!(error = %e, "cannot restore vmpod's policy route"),
            }
        }
        restored
    }

    /// Removes exactly what was added, collecting every error.
    pub async fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if std::mem::take(&mut self.firewall_applied)
            && let Err(e) = nft::remove()
        {
            errors.push(e.to_string());
        }
        if std::mem::take(&mut self.route_applied)
            && let Some(r) = &self.route
            && let Err(e) = route::remove(&self.netlink, r).await
        {
            errors.push(e.to_string());
        }
        if std::mem::take(&mut self.bridge_created)
            && let Err(e) = self
                .netlink
                .delete_bridge(&self.config.network.bridge)
                .await
        {
            errors.push(e.to_string());
        }
        errors
    }
}
