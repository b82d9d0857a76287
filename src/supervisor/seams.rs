//! The supervisor's edges as small traits: the guest (libvirt), the pod
//! network (rtnetlink, sysctls, nft) and the daemons (virtlogd, libvirtd
//! and the connection to them). The real implementations are thin
//! wrappers; the unit tests put in-memory fakes in their place, so the
//! lifecycle (restart policy, failed boots, reconcile, shutdown order) runs
//! without root in milliseconds.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{SupervisorError, step};
use crate::consoles::{self, SaslUser};
use crate::health::Health;
use crate::libvirt::agent::GuestInfo;
use crate::libvirt::conn::{Libvirt, LibvirtError};
use crate::libvirt::daemon::{Daemon, DaemonEvent, DaemonSpec, RestartLimit};
use crate::libvirt::daemon_config::{self, ConfigFile};
use crate::libvirt::guest::{AgentError, Defined, Guest, GuestState};
use crate::net::setup::{NetworkSetup, Restored, SetupError, TeardownErrors};

const LIBVIRT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest as libvirt runs it.
pub(crate) trait GuestControl: Send + Sync {
    fn define(&self, xml: &str) -> impl Future<Output = Result<Defined, LibvirtError>> + Send;
    fn start(&self) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    fn state(&self) -> impl Future<Output = Result<GuestState, LibvirtError>> + Send;
    /// The ACPI power button.
    fn shutdown(&self) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// A power-off through the qemu guest agent.
    fn agent_shutdown(&self) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    fn destroy(&self) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// What the qemu guest agent reports (host name, OS, addresses).
    fn agent_info(&self) -> impl Future<Output = Result<GuestInfo, AgentError>> + Send;
}

/// The pod network around the guest. `teardown` removes exactly what the
/// other calls created.
pub(crate) trait PodNetwork: Send {
    fn create_bridge(&mut self) -> impl Future<Output = Result<(), SetupError>> + Send;
    /// The guest's tap once it joins the bridge; `previous` does not count.
    fn wait_for_tap(
        &self,
        previous: Option<&str>,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, SetupError>> + Send;
    fn per_tap(&mut self, tap: &str) -> impl Future<Output = Result<(), SetupError>> + Send;
    fn reconcile(&mut self) -> impl Future<Output = Restored> + Send;
    fn teardown(&mut self) -> impl Future<Output = TeardownErrors> + Send;
}

/// virtlogd and libvirtd, and the connection to libvirtd.
pub(crate) trait Daemons: Send {
    /// Writes their config, starts them in order and waits for libvirt to
    /// answer, naming each step in `health`. A failure leaves the daemons
    /// that did start to `stop_all`.
    fn start(
        &mut self,
        health: &Health,
        events: mpsc::Sender<DaemonEvent>,
    ) -> impl Future<Output = Result<(), SupervisorError>> + Send;
    /// Stops what `start` started, in reverse order.
    fn stop_all(&mut self) -> impl Future<Output = ()> + Send;
}

impl GuestControl for Guest {
    async fn define(&self, xml: &str) -> Result<Defined, LibvirtError> {
        Guest::define(self, xml).await
    }
    async fn start(&self) -> Result<(), LibvirtError> {
        Guest::start(self).await
    }
    async fn state(&self) -> Result<GuestState, LibvirtError> {
        Guest::state(self).await
    }
    async fn shutdown(&self) -> Result<(), LibvirtError> {
        Guest::shutdown(self).await
    }
    async fn agent_shutdown(&self) -> Result<(), LibvirtError> {
        Guest::agent_shutdown(self).await
    }
    async fn destroy(&self) -> Result<(), LibvirtError> {
        Guest::destroy(self).await
    }
    async fn agent_info(&self) -> Result<GuestInfo, AgentError> {
        Guest::agent_info(self).await
    }
}

impl PodNetwork for NetworkSetup {
    async fn create_bridge(&mut self) -> Result<(), SetupError> {
        self.bridge().await
    }
    async fn wait_for_tap(
        &self,
        previous: Option<&str>,
        timeout: Duration,
    ) -> Result<String, SetupError> {
        NetworkSetup::wait_for_tap(self, previous, timeout)
            .await
            .map(|port| port.name)
    }
    async fn per_tap(&mut self, tap: &str) -> Result<(), SetupError> {
        NetworkSetup::per_tap(self, tap).await
    }
    async fn reconcile(&mut self) -> Restored {
        NetworkSetup::reconcile(self).await
    }
    async fn teardown(&mut self) -> TeardownErrors {
        NetworkSetup::teardown(self).await
    }
}

/// The real daemons, configured by the plan.
pub(crate) struct LibvirtDaemons {
    pub files: Vec<ConfigFile>,
    /// libvirt's remote users (`consoles.libvirt`), stored before libvirtd starts.
    pub sasl_users: Option<Vec<SaslUser>>,
    pub limit: RestartLimit,
    pub libvirt: Libvirt,
    /// Started daemons, stopped in reverse order.
    pub running: Vec<Daemon>,
}

impl LibvirtDaemons {
    fn write_config(&self) -> Result<(), SupervisorError> {
        use std::os::unix::fs::PermissionsExt;
        for file in &self.files {
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
        // /run/lock (/var/lock): libvirtd locks the guest's console pty
        // there when `vmpod console` opens it; a container's fresh /run lacks it.
        for dir in [
            "/run/lock",
            "/run/libvirt",
            "/var/lib/libvirt/qemu",
            "/var/log/libvirt/qemu",
        ] {
            let _ = std::fs::create_dir_all(dir);
        }
        Ok(())
    }
}

impl Daemons for LibvirtDaemons {
    async fn start(
        &mut self,
        health: &Health,
        events: mpsc::Sender<DaemonEvent>,
    ) -> Result<(), SupervisorError> {
        step(health, "write daemon config", async { self.write_config() }).await?;
        if let Some(users) = &self.sasl_users {
            step(health, "store libvirt users", async {
                consoles::build_sasldb(users, Path::new(daemon_config::SASL_DB))
            })
            .await?;
        }
        let virtlogd = step(
            health,
            "start virtlogd",
            Daemon::start(DaemonSpec::virtlogd(), self.limit, events.clone()),
        )
        .await?;
        self.running.push(virtlogd);
        let listen = self.sasl_users.is_some();
        let libvirtd = step(
            health,
            "start libvirtd",
            Daemon::start(DaemonSpec::libvirtd(listen), self.limit, events),
        )
        .await?;
        self.running.push(libvirtd);
        step(
            health,
            "connect to libvirt",
            self.libvirt.wait_connected(LIBVIRT_CONNECT_TIMEOUT),
        )
        .await?;
        Ok(())
    }

    async fn stop_all(&mut self) {
        while let Some(daemon) = self.running.pop() {
            daemon.stop().await;
        }
    }
}
