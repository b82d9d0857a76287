//! The per-VM config file, as typed data. Field names are part of vmpod's
//! interface: users' files depend on them. Every struct rejects unknown
//! fields so that a typo is an error, not a silently ignored setting.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};
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
    /// IPv6 for the guest beside its IPv4 network (Router Advertisements
    /// and stateful DHCPv6 on the bridge, IPv6 through every data path):
    /// `auto` turns it on when the pod has a routable IPv6 address and an
    /// IPv6 default route (a dual-stack cluster).
    #[serde(default)]
    pub ipv6: Ipv6Mode,
    /// The bridge's IPv6 address; its /64 is the guest's on-link prefix.
    /// Default: `::1` in a ULA /64 derived from `name`.
    #[serde(default)]
    pub gateway6: Option<Ipv6Net>,
    /// The address DHCPv6 hands the guest. Default: `::2` of the prefix.
    #[serde(default)]
    pub guest_ip6: Option<Ipv6Addr>,
    /// Ports of the pod the guest may reach on the pod's own addresses (the
    /// gateway and the pod IPs): a sidecar's or another container's
    /// listeners. Empty by default: the guest is refused there, as it
    /// would be on any other host of the network. DNS and DHCP on the
    /// gateway stay open when vmpod serves them.
    #[serde(default)]
    pub guest_access: Vec<GuestPort>,
    /// How the TCP relays (egress and ingress) move bytes.
    #[serde(default)]
    pub relay: RelayConfig,
}

/// `network.relay`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default)]
    pub accel: RelayAccel,
}

/// `network.relay.accel`: `auto` lets the kernel move the bytes of an
/// established relayed connection (eBPF sockmap) when the pod has the
/// capabilities for it (CAP_BPF and CAP_NET_ADMIN); otherwise, and with
/// `off`, userspace copies them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayAccel {
    #[default]
    Off,
    Auto,
}

impl RelayAccel {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayAccel::Off => "off",
            RelayAccel::Auto => "auto",
        }
    }
}

/// `network.ipv6`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    #[default]
    Auto,
    On,
    Off,
}

/// One entry of `network.guest_access`: `8080` (TCP), `8080/tcp` or `5353/udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestPort {
    pub port: u16,
    pub protocol: Protocol,
}

impl<'de> Deserialize<'de> for GuestPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u16),
            Text(String),
        }
        let bad = |t: &str| {
            serde::de::Error::custom(format!(
                "`{t}` is not a port: use a number such as 8080, or 8080/tcp or 5353/udp"
            ))
        };
        match Raw::deserialize(d).map_err(|_| bad("this value"))? {
            Raw::Number(port) => Ok(GuestPort {
                port,
                protocol: Protocol::Tcp,
            }),
            Raw::Text(t) => {
                let (port, protocol) = match t.split_once('/') {
                    None => (t.as_str(), Protocol::Tcp),
                    Some((p, "tcp")) => (p, Protocol::Tcp),
                    Some((p, "udp")) => (p, Protocol::Udp),
                    Some(_) => return Err(bad(&t)),
                };
                let port = port.parse().map_err(|_| bad(&t))?;
                Ok(GuestPort { port, protocol })
            }
        }
    }
}

impl std::fmt::Display for GuestPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
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
            ipv6: Ipv6Mode::Auto,
            gateway6: None,
            guest_ip6: None,
            guest_access: Vec::new(),
            relay: RelayConfig::default(),
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
    /// Destinations the guest is refused in every egress mode (the
    /// firewall resets TCP and answers the rest with ICMP "administratively
    /// prohibited"; the egress relay refuses them too). Default: the cloud
    /// metadata addresses, which would hand the guest the node's
    /// credentials. `[]` allows everything.
    #[serde(default = "defaults::egress_deny")]
    pub deny: Vec<IpNet>,
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
    /// `udp: relay`: a session that has carried datagrams one way only ends
    /// after this long without one (conntrack's UDP timeout).
    #[serde(default = "defaults::udp_egress_idle_timeout")]
    pub udp_idle_timeout: HumanDuration,
    /// `udp: relay`: a session that has carried datagrams both ways ends
    /// after this long without one (conntrack's UDP stream timeout).
    #[serde(default = "defaults::udp_egress_stream_timeout")]
    pub udp_stream_timeout: HumanDuration,
    /// `udp: relay`: sessions at once; datagrams that would open another
    /// are dropped and counted. Each session holds two descriptors.
    #[serde(default = "defaults::udp_egress_max_sessions")]
    pub udp_max_sessions: u32,
    /// TCP keepalive on both sockets of every relayed connection (egress
    /// and ingress): frees connections whose peer vanished without a FIN.
    #[serde(default)]
    pub keepalive: KeepaliveSetting,
}

/// `network.egress.keepalive`: `off`, or the probes' timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveSetting {
    Off,
    On(KeepaliveTiming),
}

impl Default for KeepaliveSetting {
    fn default() -> Self {
        KeepaliveSetting::On(KeepaliveTiming::default())
    }
}

/// Envoy's names (`keepalive_time`, `_interval`, `_probes`). The defaults:
/// 300 s idle, then 9 probes 75 s apart, so a dead peer is freed within
/// 16 minutes (see [`crate::relay::socket::Keepalive::DEFAULT`]).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveTiming {
    /// Idle time before the first probe.
    #[serde(default = "defaults::keepalive_time")]
    pub time: HumanDuration,
    /// Time between unanswered probes.
    #[serde(default = "defaults::keepalive_interval")]
    pub interval: HumanDuration,
    /// Unanswered probes before the connection is dropped.
    #[serde(default = "defaults::keepalive_probes")]
    pub probes: u32,
}

impl Default for KeepaliveTiming {
    fn default() -> Self {
        KeepaliveTiming {
            time: defaults::keepalive_time(),
            interval: defaults::keepalive_interval(),
            probes: defaults::keepalive_probes(),
        }
    }
}

impl<'de> Deserialize<'de> for KeepaliveSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: the timing's own errors
        // (an unknown field, a bad duration) keep their words.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeepaliveSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`off` or a map of time, interval and probes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "off" => Ok(KeepaliveSetting::Off),
                    other => Err(E::custom(format!(
                        "`{other}`: expected `off` or a map of time, interval and probes"
                    ))),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                // YAML 1.1 reads a bare `off` as false.
                if v {
                    Err(E::custom(
                        "expected `off` or a map of time, interval and probes",
                    ))
                } else {
                    Ok(KeepaliveSetting::Off)
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                KeepaliveTiming::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(KeepaliveSetting::On)
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            mode: EgressMode::default(),
            listen_port: defaults::egress_port(),
            udp: UdpEgress::default(),
            exclude: Vec::new(),
            deny: defaults::egress_deny(),
            fwmark: defaults::fwmark(),
            route_table: defaults::route_table(),
            connect_timeout: defaults::connect_timeout(),
            idle_timeout: defaults::idle_timeout(),
            half_close_timeout: defaults::half_close_timeout(),
            max_connections: defaults::max_connections(),
            udp_idle_timeout: defaults::udp_egress_idle_timeout(),
            udp_stream_timeout: defaults::udp_egress_stream_timeout(),
            udp_max_sessions: defaults::udp_egress_max_sessions(),
            keepalive: KeepaliveSetting::default(),
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
    /// The kernel forwards the guest's UDP behind the pod's address.
    #[default]
    Masquerade,
    /// TPROXY to vmpod's UDP relay: the guest's datagrams leave from a
    /// socket of vmpod, a pod process (tproxy mode only).
    Relay,
    /// The guest's UDP does not leave the pod (but DNS to the gateway).
    Off,
}

impl UdpEgress {
    pub fn as_str(self) -> &'static str {
        match self {
            UdpEgress::Masquerade => "masquerade",
            UdpEgress::Relay => "relay",
            UdpEgress::Off => "off",
        }
    }
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

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// At shutdown, relayed connections in flight get this long to finish
    /// before they are reset; taken out of `shutdown_grace`, so it must be
    /// shorter. Unset: 5 s, or half the grace when that is shorter (see
    /// [`Lifecycle::drain_timeout`]).
    #[serde(default, rename = "drain_timeout")]
    pub drain_timeout_set: Option<HumanDuration>,
    /// Give up when a daemon (libvirtd, virtlogd) dies this many times...
    #[serde(default = "defaults::daemon_max_restarts")]
    pub daemon_max_restarts: u32,
    /// ...within this window.
    #[serde(default = "defaults::daemon_restart_window")]
    pub daemon_restart_window: HumanDuration,
}

impl Lifecycle {
    /// The drain at shutdown: as configured, else the default, cut to half
    /// the grace so that a short `shutdown_grace` alone stays valid and
    /// leaves the guest time to power off.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout_set
            .map(|d| d.0)
            .unwrap_or_else(|| defaults::drain_timeout().0.min(self.shutdown_grace.0 / 2))
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            restart: RestartPolicy::default(),
            shutdown_grace: defaults::shutdown_grace(),
            drain_timeout_set: None,
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
    /// How long a piece vmpod owns (bridge, tap, sysctl, rule, route,
    /// nft table, listener) may stay broken and unrepaired before
    /// `/healthz` fails, so that the kubelet restarts the pod.
    #[serde(default = "defaults::unrepaired_liveness_after")]
    pub unrepaired_liveness_after: HumanDuration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            port: defaults::health_port(),
            guest: GuestProbes::default(),
            unrepaired_liveness_after: defaults::unrepaired_liveness_after(),
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

    /// The guest's IPv6 gateway (with its /64) and address when IPv6 is on:
    /// the configured ones, or `::1` and `::2` of the ULA /64 derived from
    /// `name` (stable across restarts, see [`crate::ipv6::ula_prefix`]).
    pub fn ipv6_addresses(&self) -> (Ipv6Net, Ipv6Addr) {
        use crate::ipv6::config::host_in;
        let net = &self.network;
        let gateway = net.gateway6.unwrap_or_else(|| {
            let prefix = crate::ipv6::ula_prefix(&self.name);
            Ipv6Net::new(host_in(prefix, 1), 64).expect("64 is a valid prefix length")
        });
        let guest = net.guest_ip6.unwrap_or_else(|| host_in(gateway.trunc(), 2));
        (gateway, guest)
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
    /// The link-local metadata service of AWS, GCP, Azure and others, and
    /// AWS's IPv6 one.
    pub fn keepalive_time() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn keepalive_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(75))
    }
    pub fn keepalive_probes() -> u32 {
        9
    }
    pub fn unrepaired_liveness_after() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn drain_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn egress_deny() -> Vec<IpNet> {
        ["169.254.169.254/32", "fd00:ec2::254/128"]
            .iter()
            .map(|n| n.parse().expect("valid literal"))
            .collect()
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
    /// conntrack's `nf_conntrack_udp_timeout`.
    pub fn udp_egress_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    /// conntrack's `nf_conntrack_udp_timeout_stream`.
    pub fn udp_egress_stream_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(120))
    }
    /// Each session holds two descriptors; a guest whose DNS goes to the
    /// forwarder rarely has more than a few UDP flows at once.
    pub fn udp_egress_max_sessions() -> u32 {
        4096
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
