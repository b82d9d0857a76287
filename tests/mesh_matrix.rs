//! vmpod in a pod of each mesh, with no pod annotation: every mesh × egress
//! mode. The pod namespace gets the mesh's own capture rules (fixtures in
//! tests/mesh/, written from each mesh's source, loaded with
//! `iptables-restore` or `nft -f` before vmpod starts, as the mesh's init
//! container or CNI plugin does), and a stand-in for the mesh's proxy
//! (tests/support/mesh_standin.py) runs as the mesh's proxy user and relays
//! the way that proxy does. vmpod's real network setup and relays run
//! in-process (tests/support/podnet.rs), with a veth as the guest's tap.
//!
//! For every case: the guest's egress reaches the cluster server from the
//! pod's address, and (in the proxy modes) the mesh's outbound port saw it
//! with its original destination, as an ordinary outbound call of the pod;
//! a cluster client's connection to the pod passes the mesh's inbound port
//! and reaches the guest, and vmpod's hop to the guest is not captured;
//! both still hold once the mesh's rules are installed again (registered
//! after vmpod's table); the mesh's tables are the same, byte for byte,
//! after vmpod starts, reconciles and stops; teardown leaves nothing.
//! The DNS cases show the guest's queries, through vmpod's forwarder,
//! answered by the mesh's DNS proxy; the UDP cases, the guest's datagrams
//! relayed as the pod's.
//!
//! Every case runs once per IP family: at the top level in an IPv4 pod,
//! under `ipv6::` in a dual-stack pod with vmpod's IPv6 on, the guest's
//! traffic over IPv6 and the mesh's IPv6 rules beside its IPv4 ones (its
//! ip6tables fixture, `*.rules6`, or the inet tables of its nft fixture)
//! and its IPv6 routes (Istio's ::6 on lo, TPROXY's IPv6 policy route).
//!
//! Needs root, `ip`, `nft`, `iptables-restore` and `ip6tables-restore`
//! (nf_tables), `setpriv`, `dig`, /usr/bin/python3.

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use podnet::{
    EXCHANGE_PORT, GATEWAY_IP, GATEWAY_IP6, GUEST_IP, GUEST_IP6, Ns, PodNet, Servers, config,
    exchange,
};
use support::sandbox::{CLUSTER_IP, CLUSTER_IP6, POD_IP, POD_IP6, output_text, repo_root, require};
use vmpod::dns::{DnsForwarder, ForwarderConfig};
use vmpod::relay::stats::RelayStats;

const PYTHON: &str = "/usr/bin/python3";
/// The pod port the example config forwards to the guest.
const INGRESS_PORT: u16 = 9080;
/// A name only the mesh's DNS proxy knows (a ServiceEntry, say).
const MESH_ONLY_NAME: &str = "payments.mesh-only.internal";
const MESH_ONLY_ADDR: &str = "10.200.0.7";

/// The IP family of a case: an IPv4 pod with the guest's IPv4 traffic, or
/// a dual-stack pod (`pod-sandbox.sh create --dual-stack`, vmpod with
/// `network.ipv6: on`) with the guest's IPv6 traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn ip(self, v4: &str, v6: &str) -> IpAddr {
        match self {
            Family::V4 => v4,
            Family::V6 => v6,
        }
        .parse()
        .unwrap()
    }
    fn cluster(self) -> IpAddr {
        self.ip(CLUSTER_IP, CLUSTER_IP6)
    }
    fn pod(self) -> IpAddr {
        self.ip(POD_IP, POD_IP6)
    }
    fn gateway(self) -> IpAddr {
        self.ip(GATEWAY_IP, GATEWAY_IP6)
    }
    /// Any address and port of this family, to bind a client socket to.
    fn unspecified(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0:0",
            Family::V6 => "[::]:0",
        }
    }
}

/// `ip` as a log line of the stand-in starts an address: `[ip]` for IPv6.
fn host(ip: IpAddr) -> String {
    SocketAddr::new(ip, 0)
        .to_string()
        .trim_end_matches(":0")
        .to_string()
}

/// How a mesh's rules get into the pod.
#[derive(Clone, Copy)]
enum Loader {
    IptablesRestore,
    NftFile,
}

/// One mesh as the tests model it.
struct Mesh {
    name: &'static str,
    /// The rule file under tests/mesh/.
    fixture: &'static str,
    /// The mesh's ip6tables rules for a dual-stack pod (tests/mesh/), for
    /// the meshes that write iptables; an nft fixture's inet tables hold
    /// both families already.
    fixture6: Option<&'static str>,
    loader: Loader,
    /// The tables the mesh owns, as `nft` names them (family, name).
    tables: &'static [(&'static str, &'static str)],
    /// The proxy's user; 0 runs it as root (ztunnel sets SO_MARK).
    uid: u32,
    /// The proxy needs CAP_NET_ADMIN (a transparent listener).
    net_admin: bool,
    outbound: u16,
    inbound: u16,
    standin_args: &'static [&'static str],
    /// Policy routing the mesh sets up besides its rules.
    routes: &'static [&'static [&'static str]],
    /// What it sets up besides for IPv6, in a dual-stack pod.
    routes6: &'static [&'static [&'static str]],
    /// The mesh's DNS proxy port, when its rules capture DNS.
    dns: Option<u16>,
}

const ISTIO_IPTABLES: Mesh = Mesh {
    name: "istio-iptables",
    fixture: "istio-sidecar-redirect.rules",
    fixture6: Some("istio-sidecar-redirect.rules6"),
    loader: Loader::IptablesRestore,
    tables: &[("ip", "raw"), ("ip", "nat")],
    uid: 1337,
    net_admin: false,
    outbound: 15001,
    inbound: 15006,
    standin_args: &["--inbound-from", "127.0.0.6", "--inbound-from6", "::6"],
    routes: &[],
    routes6: ISTIO_LO6,
    dns: Some(15053),
};

/// Istio's IPv6 loopback address for Envoy's inbound passthrough (an IPv6
/// loopback is a /128, so ::6 must be added to be bound: istio/istio
/// tools/common/tproxy configureIPv6Addresses).
const ISTIO_LO6: &[&[&str]] = &[&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]];

const ISTIO_NFTABLES: Mesh = Mesh {
    name: "istio-nftables",
    fixture: "istio-sidecar-redirect.nft",
    fixture6: None,
    loader: Loader::NftFile,
    tables: &[("inet", "istio-proxy-nat"), ("inet", "istio-proxy-raw")],
    ..ISTIO_IPTABLES
};

const ISTIO_TPROXY: Mesh = Mesh {
    name: "istio-tproxy",
    fixture: "istio-sidecar-tproxy.rules",
    fixture6: Some("istio-sidecar-tproxy.rules6"),
    tables: &[("ip", "mangle"), ("ip", "nat")],
    net_admin: true,
    // Envoy's inbound passthrough in TPROXY mode marks its upstream
    // sockets 1337, which Istio's mangle rules skip.
    standin_args: &[
        "--inbound-tproxy",
        "--inbound-from",
        "127.0.0.6",
        "--inbound-from6",
        "::6",
        "--inbound-mark",
        "0x539",
    ],
    routes: &[
        &["ip", "rule", "add", "fwmark", "1337", "lookup", "133"],
        &[
            "ip", "route", "add", "local", "default", "dev", "lo", "table", "133",
        ],
    ],
    routes6: &[
        &["ip", "-6", "addr", "add", "::6/128", "dev", "lo"],
        &["ip", "-6", "rule", "add", "fwmark", "1337", "lookup", "133"],
        &[
            "ip", "-6", "route", "add", "local", "default", "dev", "lo", "table", "133",
        ],
    ],
    dns: None,
    ..ISTIO_IPTABLES
};

const ISTIO_NFTABLES_TPROXY: Mesh = Mesh {
    name: "istio-nftables-tproxy",
    fixture: "istio-sidecar-tproxy.nft",
    fixture6: None,
    loader: Loader::NftFile,
    tables: &[("inet", "istio-proxy-nat"), ("inet", "istio-proxy-mangle")],
    ..ISTIO_TPROXY
};

const AMBIENT: Mesh = Mesh {
    name: "istio-ambient",
    fixture: "istio-ambient.rules",
    fixture6: Some("istio-ambient.rules6"),
    loader: Loader::IptablesRestore,
    tables: &[("ip", "raw"), ("ip", "mangle"), ("ip", "nat")],
    uid: 0,
    net_admin: true,
    outbound: 15001,
    inbound: 15006,
    standin_args: &["--mark", "0x539"],
    routes: &[],
    routes6: &[],
    dns: Some(15053),
};

const LINKERD: Mesh = Mesh {
    name: "linkerd",
    fixture: "linkerd.rules",
    fixture6: Some("linkerd.rules6"),
    loader: Loader::IptablesRestore,
    tables: &[("ip", "nat")],
    uid: 2102,
    net_admin: false,
    outbound: 4140,
    inbound: 4143,
    standin_args: &[],
    routes: &[],
    routes6: &[],
    dns: None,
};

fn require_tools() {
    require(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("setpriv", "util-linux"),
        ("dig", "bind9-dnsutils"),
    ]);
    assert!(
        std::path::Path::new(PYTHON).is_file(),
        "this test needs {PYTHON} (Debian package python3): the mesh stand-ins run as the \
         mesh's proxy user and cannot use a python under /root"
    );
    let version = output_text(
        &Command::new("iptables-restore")
            .arg("--version")
            .output()
            .expect("run iptables-restore --version"),
    );
    assert!(
        version.contains("nf_tables"),
        "iptables must use the nf_tables backend, as the meshes' init containers do on \
         current distributions (update-alternatives --set iptables /usr/sbin/iptables-nft): \
         {version}"
    );
}

impl Mesh {
    /// The mesh's rules as its init container or CNI plugin writes them
    /// for a pod of `family`: in a dual-stack pod, its ip6tables rules too.
    fn install(&self, pod: &Ns, family: Family) {
        let loader: &[&str] = match self.loader {
            Loader::IptablesRestore => &["iptables-restore"],
            Loader::NftFile => &["nft", "-f", "-"],
        };
        let mut files = vec![(self.fixture, loader)];
        if let (Family::V6, Some(fixture6)) = (family, self.fixture6) {
            files.push((fixture6, &["ip6tables-restore"]));
        }
        for (fixture, argv) in files {
            let path = repo_root().join("tests/mesh").join(fixture);
            let rules = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            pipe_into(pod, argv, &rules);
        }
    }

    /// The tables the mesh owns in a pod of `family`, as `nft` names them:
    /// iptables-nft keeps ip6tables' rules in `ip6` tables of the same names.
    fn tables(&self, family: Family) -> Vec<(&'static str, &'static str)> {
        let mut tables = self.tables.to_vec();
        if family == Family::V6 && self.fixture6.is_some() {
            tables.extend(self.tables.iter().map(|&(_, name)| ("ip6", name)));
        }
        tables
    }

    /// Deletes the mesh's tables and installs its rules again: its nat
    /// chains are then registered after vmpod's, the state of a pod whose
    /// mesh rules were re-applied while vmpod runs.
    fn reinstall(&self, pod: &Ns, family: Family) {
        for (nft_family, name) in self.tables(family) {
            pod.sh(&["nft", "delete", "table", nft_family, name]);
        }
        self.install(pod, family);
    }
}

fn pipe_into(ns: &Ns, argv: &[&str], input: &str) {
    use std::io::Write;
    let mut child = ns
        .command(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {argv:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{argv:?}:\n{}", output_text(&out));
}

/// The mesh's proxy stand-in: a child process of this test.
struct Standin {
    child: Child,
    log: PathBuf,
}

impl Standin {
    fn start(net: &PodNet, mesh: &Mesh, family: Family) -> Standin {
        let script = repo_root().join("tests/support/mesh_standin.py");
        let log = net.sandbox.state.join(format!("{}.log", mesh.name));
        let uid = mesh.uid.to_string();
        let (outbound, inbound) = (mesh.outbound.to_string(), mesh.inbound.to_string());
        let mut argv: Vec<&str> = Vec::new();
        if mesh.uid != 0 {
            argv.extend([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ]);
            if mesh.net_admin {
                argv.extend(["--inh-caps", "+net_admin", "--ambient-caps", "+net_admin"]);
            }
        }
        argv.extend([PYTHON, "-u", script.to_str().unwrap()]);
        argv.extend(["--outbound", &outbound, "--inbound", &inbound]);
        argv.extend(mesh.standin_args);
        if family == Family::V6 {
            argv.push("--ipv6");
        }
        let dns = mesh.dns.map(|p| p.to_string());
        if let Some(port) = &dns {
            argv.extend([
                "--dns",
                port,
                "--dns-name",
                MESH_ONLY_NAME,
                "--dns-answer",
                MESH_ONLY_ADDR,
            ]);
        }
        let child = net
            .pod
            .command(&argv)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the mesh stand-in");
        let standin = Standin { child, log };
        podnet::wait_until(
            "the mesh stand-in to listen",
            Duration::from_secs(10),
            || standin.log().contains("ready uid=").then_some(()),
        );
        standin
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines of connections `port` took from `from` to `to`.
    fn hops(&self, port: u16, from: IpAddr, to: SocketAddr) -> Vec<String> {
        let (seen, dst) = (
            format!("{port} {}:", host(from)),
            format!(" -> {to}: relaying"),
        );
        self.log()
            .lines()
            .filter(|l| l.starts_with(&seen) && l.contains(&dst))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What vmpod must leave as it found it: every table (without counters,
/// which move with traffic), the policy rules, routes and links.
fn pod_state(pod: &Ns) -> String {
    format!(
        "--- nft -s list ruleset\n{}--- ip rule\n{}{}--- ip route show table all\n{}{}--- links\n{}",
        pod.sh(&["nft", "-s", "list", "ruleset"]),
        pod.sh(&["ip", "rule"]),
        pod.sh(&["ip", "-6", "rule"]),
        // Without link-local routes: the veth's own fe80:: address comes
        // up whenever its DAD ends, vmpod or not.
        routes(pod, "-4"),
        routes(pod, "-6"),
        pod.sh(&["ip", "-br", "link"])
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string() + "\n")
            .collect::<String>(),
    )
}

/// Routes of every table of one family (`-4`, `-6`), without link-local
/// ones (a veth's own fe80:: address comes up whenever its DAD ends, vmpod
/// or not, and with it its fe80::/64 and multicast routes) and without the
/// kernel's subnet-router anycast routes (`anycast fd89::`), which come
/// with `net.ipv6.conf.all.forwarding=1`: a sysctl of the pod that vmpod
/// sets and leaves, as it leaves `ip_forward` (the pod ends with it).
fn routes(pod: &Ns, family: &str) -> String {
    pod.sh(&["ip", family, "route", "show", "table", "all"])
        .lines()
        .filter(|l| {
            !l.contains("fe80::")
                && !l.starts_with("multicast ff00::/8")
                && !l.starts_with("anycast ")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The mesh's own tables as `nft -s` lists them, and as `iptables-save`
/// (and in a dual-stack pod `ip6tables-save`) shows them to the mesh,
/// without its timestamp and counter noise.
fn mesh_tables(pod: &Ns, mesh: Option<&Mesh>, family: Family) -> String {
    let mut out = String::new();
    let Some(mesh) = mesh else {
        return out;
    };
    for (nft_family, name) in mesh.tables(family) {
        out += &pod.sh(&["nft", "-s", "list", "table", nft_family, name]);
    }
    if matches!(mesh.loader, Loader::IptablesRestore) {
        let saves: &[&str] = match family {
            Family::V4 => &["iptables-save"],
            Family::V6 => &["iptables-save", "ip6tables-save"],
        };
        for save in saves {
            for line in pod.sh(&[save]).lines() {
                if !line.starts_with('#') {
                    out += &strip_counters(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// `:CHAIN POLICY [p:b]` → `:CHAIN POLICY`.
fn strip_counters(line: &str) -> String {
    match line.rfind(" [") {
        Some(i) if line.starts_with(':') => line[..i].to_string(),
        _ => line.to_string(),
    }
}

/// A pod of `mesh` (or of none) with vmpod running in `mode`.
struct Case {
    mesh: Option<&'static Mesh>,
    mode: &'static str,
    family: Family,
    net: PodNet,
    standin: Option<Standin>,
    servers: Servers,
    vmpod: Option<podnet::Vmpod>,
    before_vmpod: String,
    mesh_before: String,
}

impl Case {
    fn start(mesh: Option<&'static Mesh>, mode: &'static str, family: Family) -> Case {
        Case::start_with(mesh, mode, family, |t| t)
    }

    /// [`Case::start`] with `edit` applied to the config's text. An IPv6
    /// case runs in a dual-stack pod, with vmpod's IPv6 on and the mesh's
    /// IPv6 rules and routes installed beside its IPv4 ones.
    fn start_with(
        mesh: Option<&'static Mesh>,
        mode: &'static str,
        family: Family,
        edit: impl FnOnce(String) -> String,
    ) -> Case {
        require_tools();
        let six = if family == Family::V6 { "6" } else { "" };
        let test = format!("mx{six}{}{mode}", mesh.map_or("none", |m| m.name));
        let test = test.replace('-', "");
        let net = match family {
            Family::V4 => PodNet::new(&test),
            Family::V6 => PodNet::new_dual_stack(&test),
        };
        let standin = mesh.map(|m| {
            m.install(&net.pod, family);
            let routes6 = if family == Family::V6 { m.routes6 } else { &[] };
            for argv in m.routes.iter().chain(routes6) {
                net.pod.sh(argv);
            }
            Standin::start(&net, m, family)
        });
        let servers = Servers::start(&net.cluster, &family.cluster().to_string());
        let before_vmpod = pod_state(&net.pod);
        let mesh_before = mesh_tables(&net.pod, mesh, family);
        let config = config(mode, |t| {
            let t = edit(t);
            match family {
                Family::V4 => t,
                Family::V6 => t.replacen("  bridge: virbr0\n", "  bridge: virbr0\n  ipv6: on\n", 1),
            }
        });
        if family == Family::V6 {
            assert_eq!(config.network.ipv6, vmpod::config::Ipv6Mode::On);
        }
        let vmpod = Some(net.start_vmpod(config));
        Case {
            mesh,
            mode,
            family,
            net,
            standin,
            servers,
            vmpod,
            before_vmpod,
            mesh_before,
        }
    }

    fn vmpod(&self) -> &podnet::Vmpod {
        self.vmpod.as_ref().unwrap()
    }

    fn report(&self) -> String {
        format!(
            "--- case: {} x {} x {:?}\n--- stand-in log\n{}--- nft -s list ruleset\n{}--- vmpod log\n{}",
            self.mesh.map_or("no mesh", |m| m.name),
            self.mode,
            self.family,
            self.standin.as_ref().map(Standin::log).unwrap_or_default(),
            self.net.pod.sh(&["nft", "-s", "list", "ruleset"]),
            podnet::logs_of(&self.net.pod),
        )
    }

    /// The guest's connection to the cluster server, `round` of them so far.
    fn check_egress(&self, round: usize) {
        let dst = SocketAddr::new(self.family.cluster(), EXCHANGE_PORT);
        let got = self.net.guest.run(bounded(exchange(dst, 1000, 1000)));
        let report = self.report();
        got.unwrap_or_else(|e| panic!("guest egress, round {round}: {e}\n{report}"))
            .assert_intact(1000, 1000);
        assert_eq!(
            self.servers.peer_ips(),
            vec![self.family.pod().to_string(); round],
            "the cluster server must see the pod's address:\n{report}"
        );
        if self.mode != "kernel" {
            assert_eq!(
                RelayStats::get(&self.vmpod().relays().egress.accepted),
                round as u64,
                "vmpod's egress relay must hold the guest's connection:\n{report}"
            );
        }
        let (Some(mesh), Some(standin)) = (self.mesh, &self.standin) else {
            return;
        };
        // In the proxy modes the mesh sees vmpod's upstream connection, an
        // outbound call of the pod to the guest's original destination. In
        // kernel mode the guest's packets are forwarded and bypass it.
        let outbound = standin.hops(mesh.outbound, self.family.pod(), dst);
        let expected = if self.mode == "kernel" { 0 } else { round };
        assert_eq!(
            outbound.len(),
            expected,
            "round {round}: the mesh's outbound port {}:\n{report}",
            mesh.outbound
        );
        assert!(
            !guest_in(&standin.log(), " "),
            "the guest's connection must never reach the mesh's inbound port:\n{report}"
        );
    }

    /// Cluster client → pod port → the mesh's inbound port → vmpod's
    /// ingress forwarder → the guest; `round` connections so far.
    fn check_ingress(&self, guest_server: &Servers, round: usize) {
        let to = SocketAddr::new(self.family.pod(), INGRESS_PORT);
        let got = self.net.cluster.run(bounded(exchange(to, 1000, 1000)));
        let report = self.report();
        got.unwrap_or_else(|e| panic!("ingress, round {round}: {e}\n{report}"))
            .assert_intact(1000, 1000);
        // A `proxy` ingress port reaches the guest over IPv4 whichever
        // family the client used (README, IPv6).
        assert_eq!(
            guest_server.peer_ips(),
            vec![GATEWAY_IP.to_string(); round],
            "vmpod's forwarder must make the hop to the guest:\n{report}"
        );
        assert_eq!(
            RelayStats::get(&self.vmpod().relays().ingress[0].1.accepted),
            round as u64,
            "{report}"
        );
        let (Some(mesh), Some(standin)) = (self.mesh, &self.standin) else {
            return;
        };
        let inbound = standin.hops(mesh.inbound, self.family.cluster(), to);
        assert_eq!(
            inbound.len(),
            round,
            "ingress must pass the mesh's inbound port {}:\n{report}",
            mesh.inbound
        );
        assert!(
            !guest_in(&standin.log(), "-> "),
            "vmpod's hop to the guest must not be captured as an outbound call:\n{report}"
        );
    }

    /// Stops vmpod; the mesh's tables and everything else are as before.
    fn finish(mut self) {
        let report = self.report();
        let errors = self.net.stop_vmpod(self.vmpod.take().unwrap());
        assert!(errors.is_empty(), "teardown: {errors:?}\n{report}");
        assert_eq!(
            mesh_tables(&self.net.pod, self.mesh, self.family),
            self.mesh_before,
            "the mesh's tables after vmpod stopped"
        );
        assert_eq!(
            pod_state(&self.net.pod),
            self.before_vmpod,
            "teardown must leave nothing of vmpod"
        );
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if let Some(v) = self.vmpod.take() {
            let _ = self.net.stop_vmpod(v);
        }
    }
}

/// Every exchange of the matrix gets at most this long, so a case that
/// hangs (a SYN dropped, a proxy that never answers) fails in seconds.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
}

/// Whether either of the guest's addresses follows `before` in a stand-in
/// log: a connection from (`" "`) or to (`"-> "`) the guest.
fn guest_in(log: &str, before: &str) -> bool {
    [GUEST_IP, GUEST_IP6]
        .iter()
        .any(|ip| log.contains(&format!("{before}{}:", host(ip.parse().unwrap()))))
}

fn mesh_case(mesh: Option<&'static Mesh>, mode: &'static str, family: Family) {
    let case = Case::start(mesh, mode, family);
    let guest_server = Servers::start_exchange_on(&case.net.guest, GUEST_IP, INGRESS_PORT);
    case.check_egress(1);
    case.check_ingress(&guest_server, 1);
    // A reconcile pass (the supervisor runs one every second) finds vmpod's
    // table and routes in place beside the mesh's, and leaves the mesh alone.
    assert_eq!(
        case.net.reconcile_now(case.vmpod()),
        Default::default(),
        "reconcile restored something:\n{}",
        case.report()
    );
    assert_eq!(
        mesh_tables(&case.net.pod, mesh, family),
        case.mesh_before,
        "the mesh's tables after vmpod started and reconciled:\n{}",
        case.report()
    );
    if let Some(m) = mesh {
        // Registered after vmpod's table now: the order must not matter.
        m.reinstall(&case.net.pod, family);
        case.check_egress(2);
        case.check_ingress(&guest_server, 2);
    }
    case.finish();
}

/// A case the design cannot make work; it asserts how it breaks, so a
/// change that fixes (or worsens) it shows up.
fn broken_case(mesh: &'static Mesh, mode: &'static str, family: Family) {
    let case = Case::start(Some(mesh), mode, family);
    let to = SocketAddr::new(family.cluster(), EXCHANGE_PORT);
    let got = case.net.guest.run(bounded(exchange(to, 1000, 1000)));
    let report = case.report();
    assert!(
        got.is_err(),
        "{} x {mode} was expected to break (the mesh's TPROXY hands the guest's SYN to its \
         inbound proxy, and nat cannot take it back); it works now, move it to the matrix:\n{report}",
        mesh.name
    );
    let standin = case.standin.as_ref().unwrap();
    let guest = family.ip(GUEST_IP, GUEST_IP6);
    assert!(
        standin
            .log()
            .lines()
            .any(|l| l.starts_with(&format!("{} {}:", mesh.inbound, host(guest)))),
        "the guest's connection must end at the mesh's inbound port:\n{report}"
    );
    assert!(case.servers.peer_ips().is_empty(), "{report}");
    case.finish();
}

// ---- DNS through the mesh -------------------------------------------------

/// The guest asks vmpod's forwarder on the gateway; the forwarder asks the
/// pod's nameserver (10.89.0.1, where nothing answers) as a pod process,
/// so the mesh's DNS capture takes the query to its DNS proxy, which alone
/// knows the name. In an IPv6 case the guest asks over IPv6, on the IPv6
/// gateway, where vmpod's forwarder has a socket pair too; the pod's
/// nameserver is the same.
fn dns_case(mesh: &'static Mesh, family: Family) {
    let case = Case::start(Some(mesh), "tproxy", family);
    let gateway = family.gateway();
    let mut config = ForwarderConfig::new(
        SocketAddr::new(gateway, 53),
        vec![format!("{CLUSTER_IP}:53").parse().unwrap()],
    );
    config.attempt_timeout = Duration::from_millis(800);
    let fwd = case
        .net
        .pod
        .run(async move { DnsForwarder::bind(config) })
        .unwrap_or_else(|e| panic!("{e}"));
    let task = case.net.pod.spawn(fwd.run());
    for transport in ["+notcp", "+tcp"] {
        let out = case
            .net
            .guest
            .command(&[
                "dig",
                &format!("@{gateway}"),
                "+tries=1",
                "+time=3",
                "+short",
                transport,
                MESH_ONLY_NAME,
                "A",
            ])
            .output()
            .expect("run dig");
        let report = case.report();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            MESH_ONLY_ADDR,
            "dig {transport}: the mesh's DNS proxy must answer the guest:\n{}\n{report}",
            output_text(&out)
        );
        let proto = if transport == "+tcp" { "tcp" } else { "udp" };
        let standin = case.standin.as_ref().unwrap();
        assert!(
            standin
                .log()
                .lines()
                .any(|l| l.starts_with(&format!("dns {proto} "))
                    && l.ends_with(&format!("{MESH_ONLY_NAME}: answered"))
                    && !guest_in(l, " ")),
            "the query must reach the DNS proxy as the pod's own ({proto}):\n{report}"
        );
    }
    task.abort();
    case.finish();
}

// ---- UDP egress as the pod ----------------------------------------------

/// `udp: relay` under `mesh`: 20 guest sockets, two datagrams each, to a UDP
/// echo server in the cluster; the server sees only the pod's address, each
/// guest socket gets its answers from the address it sent to, and the
/// mesh's tables are untouched. No mesh of the fixtures captures UDP but
/// DNS, so the relay's datagrams pass it as the pod's own.
fn udp_case(mesh: Option<&'static Mesh>, family: Family) {
    use std::sync::{Arc, Mutex};
    use tokio::net::UdpSocket;
    let case = Case::start_with(mesh, "tproxy", family, |t| {
        t.replace("    udp: masquerade\n", "    udp: relay\n")
    });
    let echo = SocketAddr::new(family.cluster(), 7007);
    let any = family.unspecified();
    let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let s = seen.clone();
    let server = case
        .net
        .cluster
        .run(async move { UdpSocket::bind(echo).await.unwrap() });
    let echo_task = case.net.cluster.spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            s.lock().unwrap().push(from);
            let _ = server.send_to(&buf[..n], from).await;
        }
    });
    let answered = case.net.guest.run(async move {
        let mut tasks = Vec::new();
        for i in 0..20 {
            tasks.push(tokio::spawn(async move {
                let s = UdpSocket::bind(any).await.unwrap();
                s.connect(echo).await.unwrap();
                let mut ok = 0;
                for r in 0..2 {
                    let msg = format!("{i}/{r}");
                    s.send(msg.as_bytes()).await.unwrap();
                    let mut buf = [0u8; 64];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf)).await
                        && &buf[..n] == msg.as_bytes()
                    {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let report = case.report();
    assert_eq!(answered, vec![2; 20], "answers per guest socket:\n{report}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40, "{report}");
    assert!(
        seen.iter().all(|a| a.ip() == family.pod()),
        "the cluster server must see only the pod's address: {seen:?}\n{report}"
    );
    let stats = case.vmpod().relays().udp_egress.clone().expect("udp relay");
    assert_eq!(
        vmpod::relay::udp_egress::UdpEgressStats::get(&stats.sessions_opened),
        20,
        "{report}"
    );
    assert_eq!(
        mesh_tables(&case.net.pod, mesh, family),
        case.mesh_before,
        "the mesh's tables with the UDP relay running:\n{report}"
    );
    echo_task.abort();
    case.finish();
}

// ---- the matrix ----------------------------------------------------------
//
// Every cell once per family: the IPv4 rows at the top level (an IPv4 pod),
// the IPv6 rows under `ipv6::` (a dual-stack pod, the guest's IPv6 traffic,
// the mesh's ip6tables rules or inet tables). `ipv6::istio_tproxy::tproxy`
// is the IPv6 row of `istio_tproxy::tproxy`, and so on.

/// One module per mesh, one test per egress mode, in the family of the
/// enclosing module's `FAMILY`.
macro_rules! cells {
    ($($name:ident: $mesh:expr => $($mode:ident),+;)+) => {
        $(
            mod $name {
                use super::*;
                $(
                    #[test]
                    fn $mode() {
                        crate::mesh_case($mesh, stringify!($mode), FAMILY);
                    }
                )+
            }
        )+
    };
}

/// One test per line: `name => ARGS` runs `case(ARGS, FAMILY)`.
macro_rules! tests {
    ($case:ident: $($name:ident => $($arg:expr),+;)+) => {
        $(
            #[test]
            fn $name() {
                $case($($arg,)+ FAMILY);
            }
        )+
    };
}

macro_rules! matrix {
    ($family:expr) => {
        /// The family of every test of this module and the modules in it.
        const FAMILY: Family = $family;

        cells! {
            no_mesh: None => tproxy, redirect, kernel;
            istio_iptables: Some(&ISTIO_IPTABLES) => tproxy, redirect, kernel;
            istio_nftables: Some(&ISTIO_NFTABLES) => tproxy, redirect, kernel;
            istio_tproxy: Some(&ISTIO_TPROXY) => tproxy;
            istio_nftables_tproxy: Some(&ISTIO_NFTABLES_TPROXY) => tproxy;
            istio_ambient: Some(&AMBIENT) => tproxy, redirect, kernel;
            linkerd: Some(&LINKERD) => tproxy, redirect, kernel;
        }

        tests! {
            broken_case:
            istio_tproxy_breaks_redirect_mode => &ISTIO_TPROXY, "redirect";
            istio_nftables_tproxy_breaks_redirect_mode => &ISTIO_NFTABLES_TPROXY, "redirect";
            istio_tproxy_breaks_kernel_mode => &ISTIO_TPROXY, "kernel";
            istio_nftables_tproxy_breaks_kernel_mode => &ISTIO_NFTABLES_TPROXY, "kernel";
        }

        tests! {
            dns_case:
            dns_through_istio_iptables => &ISTIO_IPTABLES;
            dns_through_istio_nftables => &ISTIO_NFTABLES;
            dns_through_istio_ambient => &AMBIENT;
        }

        mod udp_relay {
            use super::*;
            tests! {
                udp_case:
                no_mesh => None;
                istio_iptables => Some(&ISTIO_IPTABLES);
                istio_nftables => Some(&ISTIO_NFTABLES);
                istio_tproxy => Some(&ISTIO_TPROXY);
                istio_nftables_tproxy => Some(&ISTIO_NFTABLES_TPROXY);
                istio_ambient => Some(&AMBIENT);
                linkerd => Some(&LINKERD);
            }
        }
    };
}

matrix!(Family::V4);

mod ipv6 {
    use crate::*;
    matrix!(Family::V6);
}

// ---- both IP families --------------------------------------------------

/// Two namespaces made for one test, deleted when dropped.
struct NsPair {
    pod: Option<Ns>,
    guest: Option<Ns>,
    names: [String; 2],
}

impl NsPair {
    fn new(test: &str) -> NsPair {
        let names = [
            format!("vt{}-{test}-p", std::process::id()),
            format!("vt{}-{test}-g", std::process::id()),
        ];
        for n in &names {
            support::sandbox::run_ok(Command::new("ip").args(["netns", "add", n]));
        }
        NsPair {
            pod: Some(Ns::enter(&names[0])),
            guest: Some(Ns::enter(&names[1])),
            names,
        }
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        self.pod.take();
        self.guest.take();
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Which of the pod's two listeners (the service's port or the mesh's
/// inbound port) a guest connection to `to` reaches.
fn reached(guest: &Ns, to: SocketAddr) -> String {
    guest.run(async move {
        use tokio::io::AsyncReadExt;
        let mut s =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(to))
                .await
                .unwrap_or_else(|_| panic!("connect {to}: timed out"))
                .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        got
    })
}

/// vmpod's real table for an IPv6 guest, beside a mesh's capture of every
/// inbound TCP connection (`REDIRECT --to-ports 15006`, with iptables and
/// ip6tables, installed after vmpod's table): the guest's connections to
/// the pod reach the port they were made to in both families; without
/// vmpod's table they reach 15006. The matrix's `ipv6::` rows show the
/// lever at work under each mesh's own rules; this shows it alone, with the
/// control that without it the capture takes the guest's connections.
#[test]
fn the_nat_binding_comes_first_in_both_families() {
    require_tools();
    let pair = NsPair::new("mx46");
    let (pod, guest) = (pair.pod.as_ref().unwrap(), pair.guest.as_ref().unwrap());
    // The pod end is named as the config's bridge: the rules match on it.
    support::sandbox::run_ok(Command::new("ip").args([
        "link",
        "add",
        "br6",
        "netns",
        &pair.names[0],
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pair.names[1],
    ]));
    for (ns, addrs) in [
        (pod, ["fd00:1::1/64", "10.0.1.1/24"]),
        (guest, ["fd00:1::2/64", "10.0.1.2/24"]),
    ] {
        let dev = if ns.name == pair.names[0] {
            "br6"
        } else {
            "eth0"
        };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        for a in addrs {
            ns.sh(&["ip", "addr", "add", a, "dev", dev, "nodad"]);
        }
        ns.sh(&["ip", "link", "set", dev, "up"]);
    }
    let yaml = "name: t\nboot:\n  kernel: /k\nnetwork:\n  bridge: br6\n  gateway: fd00:1::1/64\n  \
                guest_ip: fd00:1::2\n  guest_access: [80]\n  egress:\n    mode: tproxy\n";
    let config = vmpod::config::load("<test>", yaml, vmpod::config::FileChecks::Warn)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    pipe_into(
        pod,
        &["nft", "-f", "-"],
        &vmpod::net::firewall::plan(&config).script(),
    );
    let capture = "*nat\n-A PREROUTING -p tcp -j REDIRECT --to-ports 15006\nCOMMIT\n";
    pipe_into(pod, &["iptables-restore"], capture);
    pipe_into(pod, &["ip6tables-restore"], capture);
    let servers: Vec<_> = [80u16, 15006]
        .into_iter()
        .map(|port| {
            let l = pod.run(async move {
                let s = tokio::net::TcpSocket::new_v6().unwrap();
                s.set_reuseaddr(true).unwrap();
                s.bind(format!("[::]:{port}").parse().unwrap()).unwrap();
                s.listen(16).unwrap()
            });
            pod.spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Ok((mut c, _)) = l.accept().await {
                    let _ = c.write_all(format!("port {port}").as_bytes()).await;
                }
            })
        })
        .collect();
    let v6: SocketAddr = "[fd00:1::1]:80".parse().unwrap();
    let v4: SocketAddr = "10.0.1.1:80".parse().unwrap();
    let ruleset = || pod.sh(&["nft", "-s", "list", "ruleset"]);
    for to in [v6, v4] {
        assert_eq!(reached(guest, to), "port 80", "{to}:\n{}", ruleset());
    }
    pod.sh(&["nft", "delete", "table", "inet", "vmpod"]);
    for to in [v6, v4] {
        assert_eq!(
            reached(guest, to),
            "port 15006",
            "{to}: without vmpod's table the mesh's capture applies:\n{}",
            ruleset()
        );
    }
    for s in servers {
        s.abort();
    }
}
