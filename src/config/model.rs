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
    /// A cloud-init NoCloud seed vmpod writes and attaches as a cdrom.
    #[serde(default)]
    pub cloud_init: Option<CloudInit>,
    /// Where vmpod keeps the files it makes for a run: ephemeral overlays,
    /// blank disks, the cloud-init seed. Default /var/lib/libvirt/vmpod.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
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

/// One disk: an image at `path` (opened as it is, or under a qcow2
/// overlay), a blank disk (`empty`), or an ISO (`cdrom`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// The image. Required except for `empty` disks.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The format of `path`.
    #[serde(default)]
    pub format: DiskFormat,
    /// Default: virtio for disks, scsi for cdroms.
    #[serde(default)]
    pub bus: Option<DiskBus>,
    #[serde(default)]
    pub readonly: bool,
    /// Writes go to a qcow2 overlay backed by `path`, which is opened
    /// read-only: `ephemeral` (made at every start in `state_dir`, removed
    /// at stop) or `persistent` (at `overlay_path`, kept).
    #[serde(default)]
    pub overlay: Option<OverlayKind>,
    #[serde(default)]
    pub overlay_path: Option<PathBuf>,
    /// The overlay's virtual size, when larger than the image's.
    #[serde(default)]
    pub size: Option<ByteSize>,
    /// A blank qcow2 data disk of this size, made at every start (KubeVirt's
    /// emptyDisk).
    #[serde(default)]
    pub empty: Option<ByteSize>,
    /// `path` is an ISO image, attached as a read-only cdrom.
    #[serde(default)]
    pub cdrom: bool,
}

impl Disk {
    pub fn bus(&self) -> DiskBus {
        self.bus.unwrap_or(if self.cdrom {
            DiskBus::Scsi
        } else {
            DiskBus::Virtio
        })
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OverlayKind {
    Ephemeral,
    Persistent,
}

/// `cloud_init`: KubeVirt's cloudInitNoCloud, from files (mounted Secrets).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    pub user_data_file: PathBuf,
    /// Default: instance-id from the domain name and the seed's contents,
    /// local-hostname from the name.
    #[serde(default)]
    pub meta_data_file: Option<PathBuf>,
    /// authorized_keys files, merged into the user-data for the default user.
    #[serde(default)]
    pub ssh_authorized_keys_files: Vec<PathBuf>,
    #[serde(default)]
    pub network_config: NetworkConfigSource,
}

/// `cloud_init.network_config`: `dhcp` (default), `static`, `none` or the
/// absolute path of a network-config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetworkConfigSource {
    #[default]
    Dhcp,
    Static,
    None,
    File(PathBuf),
}

impl<'de> Deserialize<'de> for NetworkConfigSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        Ok(match word.as_str() {
            "dhcp" => NetworkConfigSource::Dhcp,
            "static" => NetworkConfigSource::Static,
            "none" => NetworkConfigSource::None,
            path if path.starts_with('/') => NetworkConfigSource::File(PathBuf::from(path)),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "`{other}`: expected dhcp, static, none or the absolute path of a network-config file"
                )));
            }
        })
    }
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
}

impl Default for Health {
    fn default() -> Self {
        Health {
            port: defaults::health_port(),
        }
    }
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

/// `state_dir`'s default: inside libvirt's own state, which the container
/// (and the test sandbox) keeps per pod.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/libvirt/vmpod";

impl VmConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }

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
}
