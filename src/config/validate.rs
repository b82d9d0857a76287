//! Semantic checks that serde cannot express. Every rule reports the field
//! path it is about; all issues are collected, never only the first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use super::model::{DisplayKind, Egress, EgressMode, IngressMode, Protocol, UdpEgress, VmConfig};
use crate::consoles;
use crate::host::HostLimits;

/// Ports the Istio sidecar binds or captures in the pod namespace.
pub const ISTIO_RESERVED_PORTS: &[(u16, &str)] = &[
    (15000, "Envoy admin"),
    (15001, "Envoy outbound capture"),
    (15004, "debug"),
    (15006, "Envoy inbound capture"),
    (15008, "HBONE mTLS tunnel"),
    (15009, "HBONE plaintext tunnel"),
    (15020, "merged Prometheus telemetry"),
    (15021, "health checks"),
    (15053, "DNS proxy"),
    (15090, "Envoy Prometheus telemetry"),
];

/// Routing tables that must not be used: the kernel's own and Istio's.
const RESERVED_TABLES: &[(u32, &str)] = &[
    (0, "unspec"),
    (133, "Istio's TPROXY table"),
    (253, "the kernel's default table"),
    (254, "the kernel's main table"),
    (255, "the kernel's local table"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub field: String,
    pub message: String,
    pub severity: Severity,
}

/// What to do about files the config names but that do not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChecks {
    /// `run`: a missing file is an error.
    Required,
    /// `check`: a missing file is a warning (it may exist in the pod).
    Warn,
}

pub fn validate(config: &VmConfig, files: FileChecks, limits: &HostLimits) -> Vec<Issue> {
    let mut v = Validator {
        issues: Vec::new(),
        files,
    };
    v.identity(config);
    v.host_limits(config, limits);
    v.boot(config);
    v.network(config);
    v.addressing(config);
    v.ports(config);
    v.consoles(config);
    v.lifecycle(config);
    v.guest_probes(config);
    v.unrepaired(config);
    v.issues
}

mod addressing;
mod disks;
mod probes;

struct Validator {
    issues: Vec<Issue>,
    files: FileChecks,
}

impl Validator {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            field: field.into(),
            message: message.into(),
            severity: Severity::Error,
        });
    }

    /// True when the file is there to be read.
    fn file_exists(&mut self, field: impl Into<String>, path: &Path, what: &str) -> bool {
        let field = field.into();
        if !self.path_text(&field, path) {
            return false;
        }
        if !path.is_absolute() {
            self.error(
                field,
                format!("{what} `{}` must be an absolute path", path.display()),
            );
            return false;
        }
        let problem = match std::fs::metadata(path) {
            Ok(meta) => match super::input::not_regular(&meta) {
                None => return true,
                Some(kind) => format!("{what} `{}` is {kind}, not a file", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{what} `{}` does not exist", path.display())
            }
            Err(e) => format!("{what} `{}` cannot be inspected: {e}", path.display()),
        };
        self.file_problem(field, problem);
        false
    }

    /// A file the pod provides is missing or unusable: an error for `run`,
    /// a warning for `check` (the pod may hold another file there).
    fn file_problem(&mut self, field: impl Into<String>, message: String) {
        self.issues.push(Issue {
            field: field.into(),
            message,
            severity: match self.files {
                FileChecks::Required => Severity::Error,
                FileChecks::Warn => Severity::Warning,
            },
        });
    }

    fn identity(&mut self, c: &VmConfig) {
        if !is_dns_label(&c.name, 63) {
            self.error(
                "name",
                format!(
                    "`{}` is not a valid domain name: use 1 to 63 characters from a-z, 0-9 and `-`, not starting or ending with `-`",
                    c.name
                ),
            );
        }
        if !(1..=256).contains(&c.cpus) {
            self.error("cpus", format!("{} is out of range: use 1 to 256", c.cpus));
        }
        if c.memory.0 < 32 << 20 {
            self.error(
                "memory",
                format!("{} is too small: a guest needs at least 32Mi", c.memory),
            );
        }
    }

    /// What the guest asks for must fit what the host and the cgroup can
    /// give; otherwise qemu fails (or the OOM killer strikes) long after
    /// `check` said ok.
    fn host_limits(&mut self, c: &VmConfig, limits: &HostLimits) {
        if let Some(limit) = &limits.memory
            && c.memory.0 > limit.value
        {
            self.error(
                "memory",
                format!(
                    "{} is more than this host can give: at most {} ({} bytes, from {}); lower memory or raise the pod's memory limit",
                    c.memory,
                    approximate(limit.value),
                    limit.value,
                    limit.source
                ),
            );
        }
        if let Some(limit) = &limits.cpus
            && (1..=256).contains(&c.cpus)
            && u64::from(c.cpus) > limit.value
        {
            self.error(
                "cpus",
                format!(
                    "{} is more than the {} CPUs vmpod may use here (from {}); lower cpus or raise the pod's CPU limit",
                    c.cpus, limit.value, limit.source
                ),
            );
        }
    }

    /// A path that reaches the domain XML or a file open: absolute, and
    /// without control characters (a newline or NUL cannot be written in
    /// libvirt's XML, and would not name the file the user meant).
    fn path_text(&mut self, field: &str, path: &Path) -> bool {
        let text = path.to_string_lossy();
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            self.error(
                field,
                format!(
                    "`{}` contains the control character {c:?}: a path must not hold newlines, tabs or NUL",
                    text.escape_debug()
                ),
            );
            return false;
        }
        true
    }

    fn boot(&mut self, c: &VmConfig) {
        if c.boot.is_none() && c.disks.is_empty() {
            self.error(
                "boot",
                "nothing to boot: set boot.kernel for direct kernel boot, or list a bootable disk under disks",
            );
        }
        if let Some(boot) = &c.boot {
            if let Some(ch) = boot.cmdline.chars().find(|c| c.is_control()) {
                self.error(
                    "boot.cmdline",
                    format!(
                        "contains the control character {ch:?}: the kernel command line is one line of printable text"
                    ),
                );
            }
            self.file_exists("boot.kernel", &boot.kernel, "kernel");
            if let Some(initrd) = &boot.initrd {
                self.file_exists("boot.initrd", initrd, "initrd");
            }
        }
        for (i, disk) in c.disks.iter().enumerate() {
            self.disk(i, disk);
        }
        if let Some(dir) = &c.state_dir {
            self.absolute("state_dir", dir, "the state directory");
        }
        self.cloud_init(c);
    }

    /// An absolute path without control characters.
    fn absolute(&mut self, field: &str, path: &Path, what: &str) -> bool {
        if !self.path_text(field, path) {
            return false;
        }
        if !path.is_absolute() {
            self.error(
                field,
                format!("{what} `{}` must be an absolute path", path.display()),
            );
            return false;
        }
        true
    }
    fn network(&mut self, c: &VmConfig) {
        let net = &c.network;
        // network.bridge and network.mac are checked as they are read (IfName, MacAddr).
        let gw = net.gateway;
        let subnet = gw.trunc();
        let host_bits = gw.max_prefix_len() - gw.prefix_len();
        if host_bits < 2 {
            self.error(
                "network.gateway",
                format!(
                    "/{} leaves no room for a guest: use /30 or shorter",
                    gw.prefix_len()
                ),
            );
        } else if gw.addr() == subnet.network()
            || (gw.addr().is_ipv4() && gw.addr() == subnet.broadcast())
        {
            self.error(
                "network.gateway",
                format!("{} is the subnet's network or broadcast address: give the bridge a host address, e.g. {}", gw.addr(), first_host(&subnet)),
            );
        }
        let guest = net.guest_ip;
        if guest.is_ipv4() != gw.addr().is_ipv4() {
            self.error(
                "network.guest_ip",
                format!("{guest} is not of the same IP family as the gateway {gw}"),
            );
        } else if !subnet.contains(&guest) {
            self.error(
                "network.guest_ip",
                format!("{guest} is outside the gateway's subnet {subnet}"),
            );
        } else if guest == gw.addr() {
            self.error(
                "network.guest_ip",
                format!("{guest} is the gateway's own address: pick another host of {subnet}"),
            );
        } else if guest == subnet.network() || (guest.is_ipv4() && guest == subnet.broadcast()) {
            self.error(
                "network.guest_ip",
                format!("{guest} is the network or broadcast address of {subnet}"),
            );
        }
        if let super::model::Mtu::Fixed(mtu) = net.mtu {
            let min = if gw.addr().is_ipv4() { 576 } else { 1280 };
            if !(min..=65520).contains(&mtu) {
                self.error(
                    "network.mtu",
                    format!("{mtu} is out of range: use `auto` or {min} to 65520"),
                );
            }
        }
        let eg = &net.egress;
        // network.egress.fwmark is checked as it is read (Fwmark).
        if let Some((_, why)) = RESERVED_TABLES.iter().find(|(t, _)| *t == eg.route_table) {
            self.error(
                "network.egress.route_table",
                format!("table {} is {why}; use e.g. 4000", eg.route_table),
            );
        }
        // IPv6 exclusions beside an IPv4 guest network apply to the guest's
        // IPv6 traffic when IPv6 is on.
        let dual = gw.addr().is_ipv4() && net.ipv6 != super::model::Ipv6Mode::Off;
        for (i, cidr) in eg.exclude.iter().enumerate() {
            if cidr.addr().is_ipv4() != gw.addr().is_ipv4() && !(dual && cidr.addr().is_ipv6()) {
                self.error(
                    format!("network.egress.exclude[{i}]"),
                    format!("{cidr} is not of the guest network's IP family"),
                );
            }
        }
        for (field, d) in [
            ("connect_timeout", eg.connect_timeout),
            ("idle_timeout", eg.idle_timeout),
            ("half_close_timeout", eg.half_close_timeout),
        ] {
            if d.0.is_zero() {
                self.error(format!("network.egress.{field}"), "must be longer than 0");
            }
        }
        if eg.max_connections == 0 {
            self.error("network.egress.max_connections", "must be at least 1");
        }
        self.udp_egress(eg);
        if let super::model::KeepaliveSetting::On(k) = eg.keepalive {
            // The kernel takes whole seconds, 1 to 32767 (TCP_KEEPIDLE,
            // TCP_KEEPINTVL), and 1 to 127 probes (TCP_KEEPCNT).
            for (field, d) in [("time", k.time), ("interval", k.interval)] {
                let ms = d.0.as_millis();
                if ms < 1000 || !ms.is_multiple_of(1000) || d.0.as_secs() > 32767 {
                    self.error(
                        format!("network.egress.keepalive.{field}"),
                        format!("{d} is not a whole number of seconds from 1s to 32767s, as the kernel takes it"),
                    );
                }
            }
            if !(1..=127).contains(&k.probes) {
                self.error(
                    "network.egress.keepalive.probes",
                    format!("{} is out of range: 1 to 127", k.probes),
                );
            }
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, ing) in net.ingress.iter().enumerate() {
            let field = format!("network.ingress[{i}]");
            if !is_dns_label(&ing.name, 15) {
                self.error(
                    format!("{field}.name"),
                    format!("`{}` is not a valid port name: 1 to 15 characters from a-z, 0-9 and `-` (a Kubernetes port name)", ing.name),
                );
            }
            if let Some(first) = names.insert(&ing.name, i) {
                self.error(
                    format!("{field}.name"),
                    format!(
                        "`{}` is already the name of network.ingress[{first}]",
                        ing.name
                    ),
                );
            }
            if ing.guest_port == Some(0) {
                self.error(format!("{field}.guest_port"), "port 0 is not a port");
            }
            self.ingress_options(&field, ing);
        }
        self.guest_access(c);
    }

    /// `network.guest_access`: ports of the pod, never vmpod's own
    /// services (the firewall refuses the guest there whatever this says).
    fn guest_access(&mut self, c: &VmConfig) {
        let services = c.service_ports();
        for (i, access) in c.network.guest_access.iter().enumerate() {
            let field = format!("network.guest_access[{i}]");
            if access.port == 0 {
                self.error(field, "port 0 is not a port");
            } else if access.protocol == Protocol::Tcp && services.contains(&access.port) {
                self.error(
                    field,
                    format!(
                        "{} is a port of vmpod's own services (health, consoles), which are never open to the guest: remove it",
                        access.port
                    ),
                );
            }
        }
    }

    /// Options that apply to one protocol or mode only are errors elsewhere:
    /// silently ignoring them would hide a misunderstanding.
    fn ingress_options(&mut self, field: &str, ing: &super::model::Ingress) {
        let dnat = ing.mode == IngressMode::Dnat;
        let udp = ing.protocol == Protocol::Udp;
        if ing.proxy_protocol.is_some() {
            if udp {
                self.error(
                    format!("{field}.proxy_protocol"),
                    "a PROXY protocol header starts a TCP stream; UDP has none: remove proxy_protocol or use protocol: tcp",
                );
            } else if dnat {
                self.error(
                    format!("{field}.proxy_protocol"),
                    "in mode: dnat the kernel forwards the packets and cannot add a PROXY protocol header: use mode: proxy",
                );
            }
        }
        let limits = [
            (
                "max_connections",
                ing.max_connections.is_some(),
                !udp,
                ing.max_connections == Some(0),
            ),
            (
                "max_sessions",
                ing.max_sessions.is_some(),
                udp,
                ing.max_sessions == Some(0),
            ),
            (
                "udp_idle_timeout",
                ing.udp_idle_timeout.is_some(),
                udp,
                ing.udp_idle_timeout.is_some_and(|d| d.0.is_zero()),
            ),
        ];
        for (name, set, right_protocol, zero) in limits {
            if !set {
                continue;
            }
            let other = if udp { "tcp" } else { "udp" };
            if !right_protocol {
                self.error(
                    format!("{field}.{name}"),
                    format!(
                        "applies to protocol: {other} only, and this port is {}",
                        ing.protocol.as_str()
                    ),
                );
            } else if dnat {
                self.error(
                    format!("{field}.{name}"),
                    "has no effect in mode: dnat (the kernel forwards without a limit): remove it or use mode: proxy",
                );
            } else if zero && name == "udp_idle_timeout" {
                self.error(format!("{field}.{name}"), "must be longer than 0");
            } else if zero {
                self.error(format!("{field}.{name}"), "must be at least 1");
            }
        }
    }

    /// `udp: relay` needs TPROXY's policy route, and its own limits.
    fn udp_egress(&mut self, eg: &Egress) {
        if eg.udp == UdpEgress::Relay && eg.mode != EgressMode::Tproxy {
            self.error(
                "network.egress.udp",
                format!(
                    "`relay` needs `mode: tproxy` (the UDP relay is fed by TPROXY and its policy route); mode is `{}`: use mode: tproxy or udp: masquerade",
                    eg.mode.as_str()
                ),
            );
        }
        for (field, d) in [
            ("udp_idle_timeout", eg.udp_idle_timeout),
            ("udp_stream_timeout", eg.udp_stream_timeout),
        ] {
            if d.0.is_zero() {
                self.error(format!("network.egress.{field}"), "must be longer than 0");
            }
        }
        if eg.udp_stream_timeout.0 < eg.udp_idle_timeout.0 {
            self.error(
                "network.egress.udp_stream_timeout",
                format!(
                    "{}s is shorter than udp_idle_timeout ({}s): a session that has answers would end sooner than one without",
                    eg.udp_stream_timeout.0.as_secs(),
                    eg.udp_idle_timeout.0.as_secs()
                ),
            );
        }
        if eg.udp_max_sessions == 0 {
            self.error("network.egress.udp_max_sessions", "must be at least 1");
        }
    }

    fn ports(&mut self, c: &VmConfig) {
        let mut used: Vec<(u16, Protocol, String)> = Vec::new();
        if c.network.egress.mode.uses_proxy() {
            used.push((
                c.network.egress.listen_port,
                Protocol::Tcp,
                "network.egress.listen_port".into(),
            ));
        }
        if c.network.egress.udp == UdpEgress::Relay {
            // The UDP relay listens on the same port number, for UDP.
            used.push((
                c.network.egress.listen_port,
                Protocol::Udp,
                "network.egress.listen_port".into(),
            ));
        }
        for (i, ing) in c.network.ingress.iter().enumerate() {
            used.push((ing.port, ing.protocol, format!("network.ingress[{i}].port")));
        }
        if let Some(d) = &c.consoles.display {
            used.push((d.port, Protocol::Tcp, "consoles.display.port".into()));
        }
        if let Some(l) = &c.consoles.libvirt {
            used.push((l.port, Protocol::Tcp, "consoles.libvirt.port".into()));
        }
        used.push((c.health.port, Protocol::Tcp, "health.port".into()));

        for (i, (port, proto, field)) in used.iter().enumerate() {
            // The egress port is in the list once per protocol: say what is
            // wrong with its number once.
            if used[..i].iter().any(|(_, _, f)| f == field) {
                continue;
            }
            if *port == 0 {
                self.error(field.clone(), "port 0 is not a port");
                continue;
            }
            if let Some((_, role)) = ISTIO_RESERVED_PORTS.iter().find(|(p, _)| p == port) {
                self.error(
                    field.clone(),
                    format!("port {port} is reserved by the Istio sidecar ({role}) in the shared pod network namespace; choose another port"),
                );
            }
            if let Some((_, _, other)) =
                used[..i].iter().find(|(p, pr, _)| p == port && pr == proto)
            {
                self.error(
                    field.clone(),
                    format!("port {port}/{} is already used by {other}", proto.as_str()),
                );
            }
        }
    }

    fn consoles(&mut self, c: &VmConfig) {
        if let Some(d) = &c.consoles.display {
            let field = "consoles.display.password_file";
            match &d.password_file {
                Some(p) => {
                    if self.file_exists(field, p, "password file") {
                        match consoles::read_password(p) {
                            Err(e) => self.file_problem(field, e.to_string()),
                            Ok(pw) if d.kind == DisplayKind::Vnc
                                && pw.char_count() > consoles::VNC_PASSWORD_MAX =>
                            {
                                self.file_problem(
                                    field,
                                    format!(
                                        "the password in {} is longer than {max} characters, but VNC authentication compares only the first {max}; shorten it, or use type: spice",
                                        p.display(),
                                        max = consoles::VNC_PASSWORD_MAX
                                    ),
                                )
                            }
                            Ok(_) => {}
                        }
                    }
                }
                None if d.insecure => {}
                None => self.error(
                    "consoles.display.password_file",
                    "a display console needs a password file; set `insecure: true` only if anyone who reaches the port may take over the guest's screen",
                ),
            }
        }
        if let Some(l) = &c.consoles.libvirt {
            let field = "consoles.libvirt.credentials_file";
            if self.file_exists(field, &l.credentials_file, "credentials file")
                && let Err(e) = consoles::read_credentials(&l.credentials_file)
            {
                self.file_problem(field, e.to_string());
            }
        }
    }

    fn lifecycle(&mut self, c: &VmConfig) {
        let l = &c.lifecycle;
        if l.shutdown_grace.0.is_zero() {
            self.error(
                "lifecycle.shutdown_grace",
                "must be longer than 0: the guest needs time to power off",
            );
        }
        if l.shutdown_grace.0.as_secs() > 3600 {
            self.error("lifecycle.shutdown_grace", "must be at most 1h");
        }
        if let Some(drain) = l.drain_timeout_set
            && drain >= l.shutdown_grace
            && !l.shutdown_grace.0.is_zero()
        {
            self.error(
                "lifecycle.drain_timeout",
                format!(
                    "{drain} does not fit within lifecycle.shutdown_grace ({}): the drain is taken out of the grace, and the guest needs the rest to power off",
                    l.shutdown_grace
                ),
            );
        }
        if l.daemon_max_restarts == 0 {
            self.error("lifecycle.daemon_max_restarts", "must be at least 1");
        }
        if l.daemon_restart_window.0.is_zero() {
            self.error("lifecycle.daemon_restart_window", "must be longer than 0");
        }
    }
}

/// `[a-z0-9-]`, 1..=max characters, no leading or trailing `-`.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A byte count for people: `23.5Gi`, `512.0Mi`.
fn approximate(bytes: u64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 1.0 {
        format!("{gib:.1}Gi")
    } else {
        format!("{:.1}Mi", bytes as f64 / f64::from(1u32 << 20))
    }
}

fn first_host(subnet: &ipnet::IpNet) -> IpAddr {
    match subnet.hosts().next() {
        Some(h) => h,
        None => subnet.network(),
    }
}
