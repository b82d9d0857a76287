//! The guest as libvirt sees it: define (idempotently), start, observe,
//! shut down, destroy. Each call runs on the libvirt thread.

use virt::domain::Domain;
use virt::sys;

use super::agent::{self, AgentAnswerError, GuestInfo};
use super::conn::{Libvirt, LibvirtError};
use super::domain;

/// Seconds libvirt waits for each agent command: the agent answers these
/// in milliseconds; the libvirt thread is shared with the state polls.
const AGENT_TIMEOUT_S: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(transparent)]
    Answer(#[from] AgentAnswerError),
    #[error("the guest agent's channel is not connected (no agent runs in the guest yet)")]
    NotConnected,
}

/// Whether the live domain XML shows the agent's channel connected:
/// `<target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>`.
fn agent_connected(xml: &str) -> bool {
    xml.lines().any(|l| {
        l.contains(super::domain::GUEST_AGENT_CHANNEL)
            && (l.contains("state='connected'") || l.contains("state=\"connected\""))
    })
}

/// A state query answers in milliseconds; longer means libvirtd is stuck,
/// and the watch loop must go on (its heartbeat is the liveness probe).
const STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the supervisor needs to know about the domain's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestState {
    Running,
    Paused,
    /// Powered off from inside the guest (or by ACPI): a clean stop.
    ShutOffClean,
    /// Destroyed by someone (`virsh destroy`, or vmpod after the grace).
    ShutOffDestroyed,
    /// qemu died or the guest crashed.
    ShutOffFailed,
    /// Booting or shutting down.
    Transitional,
    /// No domain of that name is defined.
    Missing,
}

impl GuestState {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            GuestState::Running | GuestState::Paused | GuestState::Transitional
        )
    }

    fn from_libvirt(state: sys::virDomainState, reason: i32) -> Self {
        match state {
            sys::VIR_DOMAIN_RUNNING => GuestState::Running,
            sys::VIR_DOMAIN_PAUSED | sys::VIR_DOMAIN_PMSUSPENDED => GuestState::Paused,
            sys::VIR_DOMAIN_SHUTDOWN | sys::VIR_DOMAIN_NOSTATE | sys::VIR_DOMAIN_BLOCKED => {
                GuestState::Transitional
            }
            sys::VIR_DOMAIN_SHUTOFF => match reason as sys::virDomainShutoffReason {
                sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => GuestState::ShutOffClean,
                sys::VIR_DOMAIN_SHUTOFF_DESTROYED => GuestState::ShutOffDestroyed,
                // Never started yet: as clean as it gets.
                sys::VIR_DOMAIN_SHUTOFF_UNKNOWN => GuestState::ShutOffClean,
                _ => GuestState::ShutOffFailed,
            },
            _ => GuestState::ShutOffFailed,
        }
    }
}

/// What `define` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defined {
    New,
    Replaced,
    Unchanged,
}

pub struct Guest {
    libvirt: Libvirt,
    name: String,
}

fn lookup(conn: &virt::connect::Connect, name: &str) -> Result<Option<Domain>, virt::error::Error> {
    match Domain::lookup_by_name(conn, name) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.code() == virt::error::ErrorNumber::NoDomain => Ok(None),
        Err(e) => Err(e),
    }
}

impl Guest {
    pub fn new(libvirt: Libvirt, name: &str) -> Guest {
        Guest {
            libvirt,
            name: name.to_string(),
        }
    }

    /// Defines the domain from `xml`. A domain of the same name is replaced
    /// when its definition differs; a running one keeps running (its new
    /// definition applies at the next start). The replacement carries the
    /// existing domain's UUID ([`domain::with_uuid`]): libvirt refuses a
    /// redefinition under another one.
    pub async fn define(&self, xml: &str) -> Result<Defined, LibvirtError> {
        let name = self.name.clone();
        let xml = xml.to_string();
        self.libvirt
            .call(move |conn| {
                let existing = match lookup(conn, &name)? {
                    Some(mut d) => {
                        let current = d
                            .get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                            .and_then(|x| Ok((x, d.get_uuid()?)));
                        let _ = d.free();
                        Some(current?)
                    }
                    None => None,
                };
                let xml = match &existing {
                    Some((_, uuid)) => {
                        tracing::debug!(domain = %name, %uuid, "redefining under the existing UUID");
                        domain::with_uuid(&xml, *uuid)
                    }
                    None => Ok(xml),
                };
                let xml = match xml {
                    Ok(x) => x,
                    Err(e) => return Ok(Err(e)),
                };
                let mut dom = Domain::define_xml(conn, &xml)?;
                let after = dom.get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE);
                let _ = dom.free();
                let after = after?;
                Ok(Ok(match existing {
                    None => Defined::New,
                    Some((before, _)) if before == after => Defined::Unchanged,
                    Some(_) => Defined::Replaced,
                }))
            })
            .await?
            .map_err(LibvirtError::from)
    }

    pub async fn start(&self) -> Result<(), LibvirtError> {
        self.with_domain(|d| d.create().map(|_| ())).await
    }

    /// The domain's state; polled, so it waits at most `STATE_TIMEOUT`.
    pub async fn state(&self) -> Result<GuestState, LibvirtError> {
        let name = self.name.clone();
        self.libvirt
            .call_within(STATE_TIMEOUT, move |conn| match lookup(conn, &name)? {
                None => Ok(GuestState::Missing),
                Some(mut d) => {
                    let (state, reason) = d.get_state()?;
                    let _ = d.free();
                    Ok(GuestState::from_libvirt(state, reason))
                }
            })
            .await
    }

    /// Sends the ACPI power button.
    pub async fn shutdown(&self) -> Result<(), LibvirtError> {
        self.with_domain(|d| {
            d.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                .map(|_| ())
        })
        .await
    }

    /// Asks the qemu guest agent to power the guest off (`guest-shutdown`):
    /// the fallback for a guest that ignores the ACPI button. Fails at once
    /// when no agent answers.
    pub async fn agent_shutdown(&self) -> Result<(), LibvirtError> {
        self.with_domain(|d| {
            d.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
                .map(|_| ())
        })
        .await
    }

    /// Asks the qemu guest agent for `guest-ping`; fails when no agent
    /// answers within `timeout` (whole seconds, at least one: libvirt's unit).
    pub async fn agent_ping(&self, timeout: std::time::Duration) -> Result<(), LibvirtError> {
        let seconds = timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
        self.with_domain(move |d| {
            d.qemu_agent_command(r#"{"execute":"guest-ping"}"#, seconds, 0)
                .map(|_| ())
        })
        .await
    }

    /// The guest's host name, OS and addresses from its qemu guest agent.
    /// Fails at once when no agent is connected (libvirt tracks the
    /// channel), else within `AGENT_TIMEOUT` per command.
    pub async fn agent_info(&self) -> Result<GuestInfo, AgentError> {
        let name = self.name.clone();
        let Some([host, os, ifaces]) = self
            .libvirt
            .call(move |conn| {
                let mut d = Domain::lookup_by_name(conn, &name)?;
                // libvirt tracks the agent's channel: asking while it is not
                // connected would make libvirtd log an error at every poll.
                let connected = d
                    .get_xml_desc(0)
                    .map(|xml| agent_connected(&xml))
                    .unwrap_or(false);
                let ask = |cmd| d.qemu_agent_command(cmd, AGENT_TIMEOUT_S, 0);
                let r = if connected {
                    (|| {
                        Ok(Some([
                            ask(agent::HOST_NAME)?,
                            ask(agent::OS_INFO)?,
                            ask(agent::INTERFACES)?,
                        ]))
                    })()
                } else {
                    Ok(None)
                };
                let _ = d.free();
                r
            })
            .await?
        else {
            return Err(AgentError::NotConnected);
        };
        Ok(agent::parse_info(&host, &os, &ifaces)?)
    }

    pub async fn destroy(&self) -> Result<(), LibvirtError> {
        self.with_domain(|d| d.destroy()).await
    }

    async fn with_domain(
        &self,
        f: impl FnOnce(&Domain) -> Result<(), virt::error::Error> + Send + 'static,
    ) -> Result<(), LibvirtError> {
        let name = self.name.clone();
        self.libvirt
            .call(move |conn| {
                let mut d = Domain::lookup_by_name(conn, &name)?;
                let r = f(&d);
                let _ = d.free();
                r
            })
            .await
    }
}
