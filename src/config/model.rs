//! The per-VM config file, as typed data. Field names are part of vmpod's
//! interface: users' files depend on them. Every struct rejects unknown
//! fields so that a typo is an error, not a silently ignored setting.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::types::{Fwmark, IfName, MacAddr};
use super::units::{ByteSize, HumanDuration};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// libvirt domain name: `[a-z0-9-]`, 1..63 characters.
    pub name: String,
    #[serde(default = "defaults::cpus")]
    pub cpus: u32,
    #[serde(default = "defaults::memory")]
    pub memory: ByteSize,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default)]
    pub boot: Option<Boot>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub consoles: Consoles,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub logging: Logging,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when the host CPU offers hardware virtualization and /dev/kvm
    /// opens, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// Direct kernel boot.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: PathBuf,
    #[serde(default)]
    pub format: DiskFormat,
    #[serde(default)]
    pub bus: DiskBus,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Sata,
    Scsi,
}

impl DiskBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Sata => "sata",
            DiskBus::Scsi => "scsi",
        }
    }

    /// The guest device name prefix libvirt expects for this bus.
    pub fn device_prefix(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vd",
            DiskBus::Sata | DiskBus::Scsi => "sd",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Checked when read (see [`IfName`]): it reaches nft, sysctl paths,
    /// rtnetlink and the domain XML.
    #[serde(default = "defaults::bridge")]
    pub bridge: IfName,
    /// The bridge's address; its prefix is the guest subnet.
    #[serde(default = "defaults::gateway")]
    pub gateway: IpNet,
    #[serde(default = "defaults::guest_ip")]
    pub guest_ip: IpAddr,
    /// Default: stable, derived from the domain name.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub mtu: Mtu,
    #[serde(default)]
    pub egress: Egress,
    #[serde(default)]
    pub ingress: Vec<Ingress>,
    /// Serve the guest its IPv4 address by DHCP, as a cloud does.
    #[serde(default = "defaults::dhcp")]
    pub dhcp: bool,
    /// The guest's host name (DHCP option 12). Default: `name`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The guest's DNS servers: `forward` (vmpod answers on the gateway and
    /// asks the pod's resolvers as a pod process) or a list given as is.
    #[serde(default)]
    pub dns: DnsSetting,
}

/// `network.dns`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DnsSetting {
    #[default]
    Forward,
    Servers(Vec<IpAddr>),
}

impl<'de> Deserialize<'de> for DnsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<IpAddr>),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected `forward` or a list of IP addresses"))?
        {
            Raw::Word(w) if w == "forward" => Ok(DnsSetting::Forward),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "`{w}`: expected `forward` or a list of IP addresses"
            ))),
            Raw::List(list) => Ok(DnsSetting::Servers(list)),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: defaults::bridge(),
            gateway: defaults::gateway(),
            guest_ip: defaults::guest_ip(),
            mac: None,
            mtu: Mtu::Auto,
            egress: Egress::default(),
            ingress: Vec::new(),
            dhcp: defaults::dhcp(),
            hostname: None,
            dns: DnsSetting::Forward,
        }
    }
}

/// `auto` (the MTU of the pod's default-route interface) or a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mtu {
    #[default]
    Auto,
    Fixed(u32),
}

impl<'de> Deserialize<'de> for Mtu {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Mtu::Fixed(n)),
            Raw::Text(t) if t == "auto" => Ok(Mtu::Auto),
            Raw::Text(t) => t.parse().map(Mtu::Fixed).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{t}` is not an MTU: use `auto` or a number such as 1500"
                ))
            }),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub mode: EgressMode,
    #[serde(default = "defaults::egress_port")]
    pub listen_port: u16,
    #[serde(default)]
    pub udp: UdpEgress,
    /// Destinations forwarded by the kernel, bypassing the proxy.
    #[serde(default)]
    pub exclude: Vec<IpNet>,
    /// Packet mark (and mask) for TPROXY policy routing. Chosen not to
    /// collide with Istio's 0x539 (1337), 0x111 and 1338.
    #[serde(default = "defaults::fwmark")]
    pub fwmark: Fwmark,
    /// Routing table holding the `local` default route for TPROXY. Istio
    /// uses 133.
    #[serde(default = "defaults::route_table")]
    pub route_table: u32,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default = "defaults::half_close_timeout")]
    pub half_close_timeout: HumanDuration,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            mode: EgressMode::default(),
            listen_port: defaults::egress_port(),
            udp: UdpEgress::default(),
            exclude: Vec::new(),
            fwmark: defaults::fwmark(),
            route_table: defaults::route_table(),
            connect_timeout: defaults::connect_timeout(),
            idle_timeout: defaults::idle_timeout(),
            half_close_timeout: defaults::half_close_timeout(),
            max_connections: defaults::max_connections(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// TPROXY in mangle prerouting + policy routing; userspace relay.
    #[default]
    Tproxy,
    /// nat REDIRECT + SO_ORIGINAL_DST; userspace relay.
    Redirect,
    /// Forwarding and masquerade only, no userspace hop.
    Kernel,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Tproxy => "tproxy",
            EgressMode::Redirect => "redirect",
            EgressMode::Kernel => "kernel",
        }
    }

    /// Whether guest TCP goes through vmpod's egress listener.
    pub fn uses_proxy(self) -> bool {
        self != EgressMode::Kernel
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UdpEgress {
    #[default]
    Masquerade,
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    pub name: String,
    /// The pod port.
    pub port: u16,
    /// Default: the same as `port`.
    #[serde(default)]
    pub guest_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    /// `proxy`: vmpod's forwarder; `dnat`: the kernel rewrites the address.
    #[serde(default)]
    pub mode: IngressMode,
    /// Concurrent TCP connections on this port; default 10000. Proxy mode only.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// A PROXY protocol header to the guest before the client's bytes, so
    /// the guest learns the real client (haproxy's `send-proxy`). TCP, proxy mode.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// A UDP session (one client address) ends after this long without a
    /// datagram either way; default 60s.
    #[serde(default)]
    pub udp_idle_timeout: Option<HumanDuration>,
    /// UDP sessions at once; datagrams from further clients are dropped.
    #[serde(default)]
    pub max_sessions: Option<u32>,
}

impl Ingress {
    pub fn guest_port(&self) -> u16 {
        self.guest_port.unwrap_or(self.port)
    }

    /// Whether vmpod listens on the port (rather than the kernel forwarding it).
    pub fn is_proxied(&self) -> bool {
        self.mode == IngressMode::Proxy
    }

    pub fn max_connections(&self) -> u32 {
        self.max_connections
            .unwrap_or_else(defaults::ingress_max_connections)
    }

    pub fn udp_idle_timeout(&self) -> Duration {
        self.udp_idle_timeout
            .map_or_else(defaults::udp_idle_timeout, |d| d.0)
    }

    pub fn max_sessions(&self) -> u32 {
        self.max_sessions.unwrap_or_else(defaults::max_sessions)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IngressMode {
    /// vmpod listens on the pod port and connects to the guest.
    #[default]
    Proxy,
    /// nft DNAT to the guest, including traffic from the pod's loopback.
    Dnat,
}

impl IngressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressMode::Proxy => "proxy",
            IngressMode::Dnat => "dnat",
        }
    }
}

/// The PROXY protocol version (haproxy's `send-proxy` / `send-proxy-v2`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The human-readable text line.
    V1,
    /// The binary header.
    V2,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consoles {
    #[serde(default)]
    pub display: Option<Display>,
    #[serde(default)]
    pub libvirt: Option<LibvirtConsole>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Display {
    #[serde(rename = "type", default)]
    pub kind: DisplayKind,
    #[serde(default = "defaults::display_port")]
    pub port: u16,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Allow a display without a password. Off unless set explicitly.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DisplayKind {
    #[default]
    Spice,
    Vnc,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConsole {
    #[serde(default = "defaults::libvirt_port")]
    pub port: u16,
    pub credentials_file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// Give up when a daemon (libvirtd, virtlogd) dies this many times...
    #[serde(default = "defaults::daemon_max_restarts")]
    pub daemon_max_restarts: u32,
    /// ...within this window.
    #[serde(default = "defaults::daemon_restart_window")]
    pub daemon_restart_window: HumanDuration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            restart: RestartPolicy::default(),
            shutdown_grace: defaults::shutdown_grace(),
            daemon_max_restarts: defaults::daemon_max_restarts(),
            daemon_restart_window: defaults::daemon_restart_window(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default = "defaults::health_port")]
    pub port: u16,
    /// Probes of the guest's own service (KubeVirt's VMI probes).
    #[serde(default)]
    pub guest: GuestProbes,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            port: defaults::health_port(),
            guest: GuestProbes::default(),
        }
    }
}

/// `health.guest`: readiness makes `/readyz` mean "the guest's service
/// answers"; liveness restarts a guest that stopped answering.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestProbes {
    #[serde(default)]
    pub readiness: Option<GuestProbe>,
    #[serde(default)]
    pub liveness: Option<GuestProbe>,
}

/// One probe: exactly one of `tcp`, `http`, `agent`, and Kubernetes'
/// timing fields with Kubernetes' defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestProbe {
    /// Connect to this port of the guest.
    #[serde(default)]
    pub tcp: Option<u16>,
    /// GET `path` on `port`; any status from 200 to 399 passes.
    #[serde(default)]
    pub http: Option<HttpProbe>,
    /// The qemu guest agent answers `guest-ping`.
    #[serde(default)]
    pub agent: Option<bool>,
    #[serde(default = "defaults::probe_initial_delay")]
    pub initial_delay: HumanDuration,
    #[serde(default = "defaults::probe_period")]
    pub period: HumanDuration,
    #[serde(default = "defaults::probe_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "defaults::probe_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "defaults::probe_success_threshold")]
    pub success_threshold: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: u16,
    #[serde(default = "defaults::probe_path")]
    pub path: String,
}

/// What vmpod carries into its log besides its own events and the
/// daemons' and qemu's output.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// The guest's serial console (ttyS0), one event per line with
    /// `component: serial`. Off by default: the guest's console may carry
    /// what its owner would not put in the pod's log.
    #[serde(default)]
    pub serial: bool,
}

impl VmConfig {
    pub fn shutdown_grace(&self) -> Duration {
        self.lifecycle.shutdown_grace.0
    }

    /// The ports of vmpod's own services in the pod: the health endpoint and
    /// the consoles (qemu's display, libvirtd's TCP socket). They listen on
    /// every pod address, the gateway the guest sees included, and are for
    /// the kubelet, Prometheus and console users: the firewall refuses the
    /// guest there. The egress listener is not among them: in redirect mode
    /// the guest's connections arrive there addressed to the gateway.
    pub fn service_ports(&self) -> BTreeSet<u16> {
        let consoles = &self.consoles;
        [
            Some(self.health.port),
            consoles.display.as_ref().map(|d| d.port),
            consoles.libvirt.as_ref().map(|l| l.port),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every port vmpod serves on the pod's addresses: its services and the
    /// ingress ports. An egress connection of the guest to one of them on a
    /// pod address would loop back into vmpod.
    pub fn own_ports(&self) -> BTreeSet<u16> {
        let mut ports = self.service_ports();
        ports.extend(self.network.ingress.iter().map(|i| i.port));
        ports
    }
}

mod defaults {
    use super::*;

    pub fn dhcp() -> bool {
        true
    }
    pub fn cpus() -> u32 {
        1
    }
    pub fn memory() -> ByteSize {
        ByteSize::mebibytes(256)
    }
    pub fn bridge() -> IfName {
        IfName::new("virbr0").expect("valid literal")
    }
    pub fn gateway() -> IpNet {
        "10.0.1.1/24".parse().expect("valid literal")
    }
    pub fn guest_ip() -> IpAddr {
        "10.0.1.2".parse().expect("valid literal")
    }
    pub fn egress_port() -> u16 {
        9401
    }
    pub fn fwmark() -> Fwmark {
        Fwmark::DEFAULT
    }
    pub fn route_table() -> u32 {
        4000
    }
    pub fn connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(3600))
    }
    pub fn half_close_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn max_connections() -> u32 {
        10_000
    }
    pub fn ingress_max_connections() -> u32 {
        10_000
    }
    pub fn udp_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_sessions() -> u32 {
        10_000
    }
    pub fn display_port() -> u16 {
        5900
    }
    pub fn libvirt_port() -> u16 {
        16509
    }
    pub fn shutdown_grace() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn daemon_max_restarts() -> u32 {
        5
    }
    pub fn daemon_restart_window() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn health_port() -> u16 {
        8181
    }
    // Kubernetes' probe defaults.
    pub fn probe_initial_delay() -> HumanDuration {
        HumanDuration(Duration::ZERO)
    }
    pub fn probe_period() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn probe_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub fn probe_failure_threshold() -> u32 {
        3
    }
    pub fn probe_success_threshold() -> u32 {
        1
    }
    pub fn probe_path() -> String {
        "/".to_string()
    }
}
