//! The namespaces: a guest behind the pod's bridge, a cluster beside the
//! pod, veths at MTU 1500, and the pod's rules for every competitor.
//!
//! ```text
//!  guest 10.0.1.2 ─veth─ virbr0 10.0.1.1 [pod] eth0 10.89.0.2 ─veth─ 10.89.0.1 cluster
//! ```

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub const GUEST: &str = "vmpb-guest";
pub const POD: &str = "vmpb-pod";
pub const CLUSTER: &str = "vmpb-cluster";
/// The guests of the two pasta competitors: pasta makes their only
/// interface (a tap) and copies the pod's address and routes into them.
pub const PASTA_EGRESS_NS: &str = "vmpb-pasta-e";
pub const PASTA_INGRESS_NS: &str = "vmpb-pasta-i";
const ALL_NS: [&str; 5] = [GUEST, POD, CLUSTER, PASTA_EGRESS_NS, PASTA_INGRESS_NS];

pub const GUEST_IP: &str = "10.0.1.2";
pub const POD_IP: &str = "10.89.0.2";
pub const CLUSTER_IP: &str = "10.89.0.1";
/// The guest's gateway, the pod's bridge address (vmpod's DNS forwarder).
pub const GATEWAY_IP: &str = "10.0.1.1";

/// The guest's servers (ingress competitors forward to them).
pub const GUEST_IPERF: u16 = 5201;
pub const GUEST_ECHO: u16 = 5202;

pub const TPROXY_LISTEN: u16 = 9401;
pub const REDIRECT_LISTEN: u16 = 9402;
/// The tproxy relay with `--accel auto` (eBPF sockmap).
pub const ACCEL_LISTEN: u16 = 9403;

/// Cluster ports each egress competitor's traffic goes to (iperf3, echo);
/// the pod's rules choose the path by destination port.
pub const EGRESS_KERNEL: (u16, u16) = (6101, 6102);
pub const EGRESS_TPROXY: (u16, u16) = (6201, 6202);
pub const EGRESS_REDIRECT: (u16, u16) = (6301, 6302);
pub const EGRESS_PASTA: (u16, u16) = (6401, 6402);
pub const EGRESS_ACCEL: (u16, u16) = (6501, 6502);
/// Pod ports of the ingress competitors.
pub const INGRESS_VMPOD: (u16, u16) = (7101, 7102);
pub const INGRESS_HAPROXY: (u16, u16) = (7201, 7202);
pub const INGRESS_HAPROXY_SPLICE: (u16, u16) = (7301, 7302);
pub const INGRESS_SOCAT: (u16, u16) = (7401, 7402);
pub const INGRESS_KERNEL: (u16, u16) = (7501, 7502);
/// pasta forwards these to the guest ports in its own guest namespace.
pub const INGRESS_PASTA: (u16, u16) = (7601, 7602);
pub const INGRESS_ACCEL: (u16, u16) = (7701, 7702);

/// `argv` in namespace `ns`.
pub fn in_ns(ns: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(argv);
    c
}

pub fn sh(ns: Option<&str>, argv: &[&str]) -> Result<String> {
    let mut c = match ns {
        Some(ns) => in_ns(ns, argv),
        None => {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let out = c
        .output()
        .with_context(|| format!("run {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}`{} failed: {}",
            argv.join(" "),
            ns.map(|n| format!(" in {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = in_ns(ns, &["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The three namespaces, deleted (with whatever still runs in them) on drop.
pub struct Topology;

impl Topology {
    pub fn create() -> Result<Topology> {
        remove();
        for ns in ALL_NS {
            sh(None, &["ip", "netns", "add", ns])?;
        }
        let topo = Topology;
        let link = |argv: &[&str]| sh(None, argv);
        link(&[
            "ip", "link", "add", "eth0", "netns", GUEST, "mtu", "1500", "type", "veth", "peer",
            "name", "vguest", "netns", POD, "mtu", "1500",
        ])?;
        link(&[
            "ip", "link", "add", "eth0", "netns", POD, "mtu", "1500", "type", "veth", "peer",
            "name", "eth0", "netns", CLUSTER, "mtu", "1500",
        ])?;
        for (ns, cmds) in [
            (
                GUEST,
                vec![
                    "ip link set lo up",
                    "ip addr add 10.0.1.2/24 dev eth0",
                    "ip link set eth0 up",
                    "ip route add default via 10.0.1.1",
                ],
            ),
            (
                POD,
                vec![
                    "ip link set lo up",
                    "ip link add virbr0 type bridge",
                    "ip link set vguest master virbr0",
                    "ip addr add 10.0.1.1/24 dev virbr0",
                    "ip link set vguest up",
                    "ip link set virbr0 up",
                    "ip addr add 10.89.0.2/24 dev eth0",
                    "ip link set eth0 up",
                    // pasta copies the addresses and routes of the
                    // interface with the default route.
                    "ip route add default via 10.89.0.1",
                    // TPROXY: packets of sockets the relay holds, and new
                    // diverted connections, are delivered locally.
                    "ip rule add fwmark 0x4000/0x4000 lookup 4000",
                    "ip route add local default dev lo table 4000",
                ],
            ),
            (
                CLUSTER,
                vec![
                    "ip link set lo up",
                    "ip addr add 10.89.0.1/24 dev eth0",
                    "ip link set eth0 up",
                ],
            ),
            (PASTA_EGRESS_NS, vec!["ip link set lo up"]),
            (PASTA_INGRESS_NS, vec!["ip link set lo up"]),
        ] {
            for cmd in cmds {
                let argv: Vec<&str> = cmd.split(' ').collect();
                sh(Some(ns), &argv)?;
            }
            // Many short connections from few addresses: wide port range,
            // TIME_WAIT reuse.
            sh(
                Some(ns),
                &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
            )?;
            sh(Some(ns), &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
            // The connection-rate runs leave some 10,000 closed connections
            // per competitor in conntrack, for 120 s each by default: a full
            // run filled the table (262,144: "nf_conntrack: table full,
            // dropping packet") and the next memory test's connects timed
            // out. Absent until conntrack is loaded, hence no error.
            let _ = sh(
                Some(ns),
                &[
                    "sysctl",
                    "-qw",
                    "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5",
                ],
            );
        }
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.virbr0.rp_filter=0",
            // With 1, routed bridge traffic passes the IP hooks at bridge
            // level and TPROXY never reaches the listener.
            "net.bridge.bridge-nf-call-iptables=0",
        ] {
            sh(Some(POD), &["sysctl", "-qw", kv])?;
        }
        nft(POD, &rules())?;
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove();
    }
}

/// The TPROXY rules are vmpod's (src/net/firewall.rs): a SYN is never taken
/// by the `socket transparent` rule, so a guest that reuses a source port
/// whose relayed socket is in TIME_WAIT reaches the listener at once.
fn rules() -> String {
    let (t, r, a) = (EGRESS_TPROXY, EGRESS_REDIRECT, EGRESS_ACCEL);
    let (k, g) = (INGRESS_KERNEL, (GUEST_IPERF, GUEST_ECHO));
    format!(
        r#"table inet vmpb {{
  chain divert {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "virbr0" tcp flags & (syn | ack) != syn socket transparent 1 meta mark set meta mark | 0x4000 accept
    iifname "virbr0" ip daddr {CLUSTER_IP} tcp dport {{ {}, {} }} tproxy ip to :{TPROXY_LISTEN} meta mark set meta mark | 0x4000 accept
    iifname "virbr0" ip daddr {CLUSTER_IP} tcp dport {{ {}, {} }} tproxy ip to :{ACCEL_LISTEN} meta mark set meta mark | 0x4000 accept
  }}
  chain prerouting_nat {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "virbr0" ip daddr {CLUSTER_IP} tcp dport {{ {}, {} }} redirect to :{REDIRECT_LISTEN}
    iifname "eth0" ip daddr {POD_IP} tcp dport {} dnat ip to {GUEST_IP}:{}
    iifname "eth0" ip daddr {POD_IP} tcp dport {} dnat ip to {GUEST_IP}:{}
  }}
  chain postrouting_nat {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.0.1.0/24 oifname "eth0" masquerade
  }}
}}
"#,
        t.0, t.1, a.0, a.1, r.0, r.1, k.0, g.0, k.1, g.1
    )
}

/// Kills what runs in the namespaces (only this benchmark's processes run
/// there) and deletes them.
pub fn remove() {
    for ns in ALL_NS {
        if let Ok(pids) = sh(None, &["ip", "netns", "pids", ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}
