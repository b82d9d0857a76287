//! vmpod beside an Istio sidecar, with no VM and no Istio: the pod namespace
//! gets the nat rules Istio's init container installs (by `iptables-restore`,
//! Debian's iptables on its nf_tables backend), built from the annotations
//! `vmpod render --what sidecar` prints, and a stand-in for Envoy runs as
//! uid 1337 on 15001/15006 (tests/support/envoy_standin.py: it reads
//! SO_ORIGINAL_DST, logs, relays). vmpod's network setup and relays run
//! in-process as in tests/egress_ns.rs.
//!
//! Without the annotations every data path works too (vmpod's table binds
//! the NAT of the guest's connections, and of its own to the guest, before
//! Istio's nat chains run): the `without_the_exclusion` tests, which once
//! showed what broke, keep that as a regression test. tests/mesh_matrix.rs
//! does the same for every mesh with its own rule set.
//!
//! Needs root, `ip`, `nft`, `iptables-restore` (nf_tables), `setpriv`,
//! /usr/bin/python3.

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use podnet::{
    EXCHANGE_PORT, GATEWAY_IP, GUEST_IP, Ns, PodNet, Servers, config, exchange, logs_of, wait_until,
};
use support::golden::assert_golden;
use support::sandbox::{CLUSTER_IP, POD_IP, output_text, repo_root, require, run_ok};
use vmpod::config::VmConfig;
use vmpod::relay::stats::RelayStats;
use vmpod::sidecar::{self, SidecarPlan};

const PYTHON: &str = "/usr/bin/python3";
/// The pod port the example config forwards to the guest.
const INGRESS_PORT: u16 = 9080;

fn require_sidecar_tools() {
    require(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ]);
    assert!(
        std::path::Path::new(PYTHON).is_file(),
        "this test needs {PYTHON} (Debian package python3): the Envoy stand-in runs as uid 1337 and cannot use a python under /root"
    );
    let version = output_text(
        &Command::new("iptables-restore")
            .arg("--version")
            .output()
            .expect("run iptables-restore --version"),
    );
    assert!(
        version.contains("nf_tables"),
        "iptables must use the nf_tables backend, as Istio's init container does on current \
         distributions (update-alternatives --set iptables /usr/sbin/iptables-nft): {version}"
    );
}

/// Istio's nat rules (sidecar mode, REDIRECT interception) as its
/// iptables builder writes them for a pod with these annotations.
fn istio_rules(annotations: &SidecarPlan) -> String {
    let mut prerouting = Vec::new();
    let mut output = Vec::new();
    let mut inbound = Vec::new();
    let mut istio_output_exclusions = Vec::new();
    if let Some(ifaces) = annotations.get(sidecar::REROUTE_VIRTUAL_INTERFACES) {
        for i in ifaces.split(',') {
            // Istio inserts these at the top of PREROUTING.
            prerouting.push(format!("-A PREROUTING -i {i} -j ISTIO_REDIRECT"));
        }
    }
    if let Some(ifaces) = annotations.get(sidecar::EXCLUDE_INTERFACES) {
        for i in ifaces.split(',') {
            prerouting.push(format!("-A PREROUTING -i {i} -j RETURN"));
            output.push(format!("-A OUTPUT -o {i} -j RETURN"));
        }
    }
    if let Some(ports) = annotations.get(sidecar::EXCLUDE_INBOUND_PORTS) {
        for p in ports.split(',') {
            inbound.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
        }
    }
    if let Some(cidrs) = annotations.get(sidecar::EXCLUDE_OUTBOUND_IP_RANGES) {
        for c in cidrs.split(',') {
            istio_output_exclusions.push(format!("-A ISTIO_OUTPUT -d {c} -j RETURN"));
        }
    }
    let lines = |v: &[String]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n\
         -N ISTIO_INBOUND\n\
         -N ISTIO_REDIRECT\n\
         -N ISTIO_IN_REDIRECT\n\
         -N ISTIO_OUTPUT\n\
         {}{}\
         -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN\n\
         {}\
         -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
         -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n\
         -A PREROUTING -p tcp -j ISTIO_INBOUND\n\
         -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n\
         -A OUTPUT -p tcp -j ISTIO_OUTPUT\n\
         -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN\n\
         -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT\n\
         -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN\n\
         -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n\
         -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n\
         {}\
         -A ISTIO_OUTPUT -j ISTIO_REDIRECT\n\
         COMMIT\n",
        lines(&prerouting),
        lines(&output),
        lines(&inbound),
        lines(&istio_output_exclusions),
    )
}

/// A pod with Istio's rules (for `annotations`), the Envoy stand-in, and
/// vmpod running `config`; like a real pod, the sidecar's init ran first.
struct MeshPod {
    net: PodNet,
    rules: String,
    envoy: Envoy,
    servers: Servers,
    vmpod: Option<podnet::Vmpod>,
}

impl MeshPod {
    fn start(
        test: &str,
        config: VmConfig,
        annotations: &SidecarPlan,
        registry: Option<&str>,
    ) -> MeshPod {
        require_sidecar_tools();
        let net = PodNet::new(test);
        let rules = istio_rules(annotations);
        iptables_restore(&net.pod, &rules);
        let envoy = Envoy::start(&net, registry);
        let servers = Servers::start(&net.cluster, CLUSTER_IP);
        let vmpod = net.start_vmpod(config);
        MeshPod {
            net,
            rules,
            envoy,
            servers,
            vmpod: Some(vmpod),
        }
    }

    /// Installs Istio's rules anew, so its nat chains are registered after
    /// vmpod's: of two nat chains at the same priority, the one registered
    /// last runs first, and the first NAT binding wins. This is the state
    /// of a pod whose sidecar rules were (re)applied after vmpod's table.
    fn reinstall_istio_rules(&self) {
        self.net.pod.sh(&["nft", "delete", "table", "ip", "nat"]);
        iptables_restore(&self.net.pod, &self.rules);
    }

    fn vmpod(&self) -> &podnet::Vmpod {
        self.vmpod.as_ref().unwrap()
    }

    /// Everything a failed assertion should show.
    fn report(&self) -> String {
        format!(
            "--- envoy stand-in log\n{}--- iptables-save\n{}--- vmpod log\n{}",
            self.envoy.log(),
            self.net.pod.sh(&["iptables-save", "-t", "nat"]),
            logs_of(&self.net.pod)
        )
    }
}

impl Drop for MeshPod {
    fn drop(&mut self) {
        if let Some(v) = self.vmpod.take() {
            let errors = self.net.stop_vmpod(v);
            if !std::thread::panicking() {
                assert!(errors.is_empty(), "teardown: {errors:?}");
            }
        }
    }
}

fn iptables_restore(pod: &Ns, rules: &str) {
    use std::io::Write;
    let mut child = pod
        .command(&["iptables-restore"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iptables-restore");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iptables-restore:\n{rules}\n{}",
        output_text(&out)
    );
}

/// The Envoy stand-in: a child process of this test, as uid 1337.
struct Envoy {
    child: Child,
    log: PathBuf,
}

impl Envoy {
    fn start(net: &PodNet, registry: Option<&str>) -> Envoy {
        let script = repo_root().join("tests/support/envoy_standin.py");
        let log = net.sandbox.state.join("envoy.log");
        let mut argv = vec![
            "setpriv",
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            PYTHON,
            "-u",
            script.to_str().unwrap(),
        ];
        if let Some(r) = registry {
            argv.extend(["--registry", r]);
        }
        let child = net
            .pod
            .command(&argv)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Envoy stand-in");
        let envoy = Envoy { child, log };
        wait_until(
            "the Envoy stand-in to listen",
            Duration::from_secs(10),
            || envoy.log().contains("ready uid=1337").then_some(()),
        );
        envoy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(port: u16) -> SocketAddr {
    format!("{CLUSTER_IP}:{port}").parse().unwrap()
}

fn example(mode: &str) -> VmConfig {
    config(mode, |t| t)
}

// ---- with the annotations vmpod renders --------------------------------

/// The 15001 lines of the stand-in's log for connections from `from` to
/// the cluster's exchange server.
fn outbound_hops(report: &str, from: &str) -> usize {
    let seen = format!("15001 {from}:");
    let to = format!("-> {CLUSTER_IP}:{EXCHANGE_PORT}: relaying");
    report
        .lines()
        .filter(|l| l.starts_with(&seen) && l.ends_with(&to))
        .count()
}

fn egress_passes_the_sidecar(mode: &str) {
    let config = example(mode);
    let pod = MeshPod::start(
        &format!("meshOut{mode}"),
        config.clone(),
        &sidecar::plan(&config),
        None,
    );
    // In the proxy modes Envoy sees vmpod's connection, from the pod. In
    // kernel mode the guest's packets are forwarded past Envoy: vmpod's
    // table binds their NAT before Istio's, so rerouting the bridge to
    // Envoy (istio.io/reroute-virtual-interfaces) has no effect; vmpod no
    // longer renders that annotation.
    let (from, hops) = if mode == "kernel" {
        (GUEST_IP, 0)
    } else {
        (POD_IP, 1)
    };
    for round in 1..=2 {
        if round == 2 {
            // With the exclusions, which of the two nat chains runs first
            // no longer matters.
            pod.reinstall_istio_rules();
        }
        let got = pod
            .net
            .guest
            .run(exchange(cluster(EXCHANGE_PORT), 1000, 1000));
        let report = pod.report();
        got.unwrap_or_else(|e| panic!("guest egress, round {round}: {e}\n{report}"))
            .assert_intact(1000, 1000);
        assert_eq!(
            outbound_hops(&report, from),
            round * hops,
            "round {round}: the egress must pass Envoy's outbound port 15001 (kernel mode: \
             never):\n{report}"
        );
        assert!(
            !pod.envoy.log().contains("\n15006 "),
            "nothing may pass the inbound port:\n{report}"
        );
        if mode != "kernel" {
            let accepted = RelayStats::get(&pod.vmpod().relays().egress.accepted);
            assert_eq!(accepted, round as u64, "{report}");
        }
    }
    assert_eq!(
        pod.servers.peer_ips(),
        vec![POD_IP.to_string(); 2],
        "the server must see the pod"
    );
}

/// Cluster → pod port → 15006 → vmpod's ingress forwarder → the guest.
fn ingress_passes_the_sidecar(mode: &str) {
    let config = example(mode);
    // REGISTRY_ONLY: were vmpod's hop to the guest captured as an outbound
    // call, the stand-in would drop it.
    let pod = MeshPod::start(
        &format!("meshIn{mode}"),
        config.clone(),
        &sidecar::plan(&config),
        Some("10.89.0.0/24"),
    );
    let guest_server = guest_exchange_server(&pod.net.guest);
    let to: SocketAddr = format!("{POD_IP}:{INGRESS_PORT}").parse().unwrap();
    let got = pod.net.cluster.run(exchange(to, 1000, 1000));
    let report = pod.report();
    got.unwrap_or_else(|e| panic!("ingress: {e}\n{report}"))
        .assert_intact(1000, 1000);
    let seen = format!("15006 {CLUSTER_IP}:");
    let dst = format!("-> {POD_IP}:{INGRESS_PORT}: relaying");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&seen) && l.ends_with(&dst)),
        "ingress must pass Envoy's inbound port 15006:\n{report}"
    );
    assert!(
        !pod.envoy.log().contains("\n15001 "),
        "nothing may pass the outbound port:\n{report}"
    );
    // vmpod's forwarder took it from Envoy (127.0.0.6) and made the hop to the guest.
    let ingress = &pod.vmpod().relays().ingress[0].1;
    assert_eq!(RelayStats::get(&ingress.accepted), 1, "{report}");
    assert!(report.contains("peer=127.0.0.6:"), "{report}");
    assert_eq!(
        guest_server.peer_ips(),
        vec![GATEWAY_IP.to_string()],
        "{report}"
    );
}

fn guest_exchange_server(guest: &Ns) -> GuestServer {
    GuestServer(Servers::start_exchange_on(guest, GUEST_IP, INGRESS_PORT))
}

struct GuestServer(Servers);

impl GuestServer {
    fn peer_ips(&self) -> Vec<String> {
        self.0.peer_ips()
    }
}

// ---- without the exclusions ----------------------------------------------

/// The annotations for `mode` minus the ones that keep Istio off the bridge.
fn without_exclusions(config: &VmConfig) -> SidecarPlan {
    let mut plan = sidecar::plan(config);
    plan.annotations.retain(|a| {
        a.key != sidecar::EXCLUDE_INTERFACES
            && a.key != sidecar::REROUTE_VIRTUAL_INTERFACES
            && a.key != sidecar::EXCLUDE_OUTBOUND_IP_RANGES
    });
    plan
}

/// Envoy's log lines for guest connections that reached its inbound port.
fn inbound_guest_hops(report: &str) -> Vec<&str> {
    let seen = format!("15006 {GUEST_IP}:");
    report.lines().filter(|l| l.starts_with(&seen)).collect()
}

/// tproxy without the exclusion. Istio's nat REDIRECT once rewrote the
/// destination after TPROXY chose vmpod's listener, and the guest's
/// connection was reset in the handshake; vmpod's `guest_nat_first` now
/// binds the connection's NAT (an identity DNAT) before Istio's chain runs.
#[test]
fn without_the_exclusion_tproxy_egress_passes_envoy() {
    let config = example("tproxy");
    let pod = MeshPod::start(
        "noExclOuttproxy",
        config.clone(),
        &without_exclusions(&config),
        None,
    );
    for round in 1..=2 {
        if round == 2 {
            pod.reinstall_istio_rules();
        }
        let got = pod
            .net
            .guest
            .run(exchange(cluster(EXCHANGE_PORT), 1000, 1000));
        let report = pod.report();
        got.unwrap_or_else(|e| panic!("round {round}: {e}\n{report}"))
            .assert_intact(1000, 1000);
        assert_eq!(
            RelayStats::get(&pod.vmpod().relays().egress.accepted),
            round as u64,
            "{report}"
        );
        assert_eq!(outbound_hops(&report, POD_IP), round, "{report}");
        assert!(inbound_guest_hops(&report).is_empty(), "{report}");
    }
    assert_eq!(pod.servers.peer_ips(), vec![POD_IP.to_string(); 2]);
}

/// redirect without the exclusion. Istio's REDIRECT to 15006 and vmpod's
/// to its listener once sat at the same priority, and whichever nat chain
/// was registered last ran first: egress broke once Istio's rules were
/// applied again. vmpod's redirect now runs at dstnat - 10, before any
/// table's chain at dstnat, whatever the order of installation.
#[test]
fn without_the_exclusion_redirect_egress_survives_istio_rules_reinstalled() {
    let config = example("redirect");
    let pod = MeshPod::start(
        "noExclOutredirect",
        config.clone(),
        &without_exclusions(&config),
        None,
    );
    for round in 1..=2 {
        if round == 2 {
            pod.reinstall_istio_rules();
        }
        let got = pod
            .net
            .guest
            .run(exchange(cluster(EXCHANGE_PORT), 1000, 1000));
        let report = pod.report();
        got.unwrap_or_else(|e| panic!("round {round}: {e}\n{report}"))
            .assert_intact(1000, 1000);
        assert_eq!(
            RelayStats::get(&pod.vmpod().relays().egress.accepted),
            round as u64,
            "{report}"
        );
        assert_eq!(outbound_hops(&report, POD_IP), round, "{report}");
        assert!(inbound_guest_hops(&report).is_empty(), "{report}");
    }
    assert_eq!(pod.servers.peer_ips(), vec![POD_IP.to_string(); 2]);
}

/// kernel mode without any annotation: forwarded guest TCP once met
/// Istio's inbound capture and ended at Envoy's inbound port; now it is
/// forwarded and masqueraded past Envoy.
#[test]
fn without_annotations_kernel_egress_is_forwarded_past_envoy() {
    let config = example("kernel");
    let pod = MeshPod::start(
        "noExclOutkernel",
        config.clone(),
        &without_exclusions(&config),
        None,
    );
    let got = pod
        .net
        .guest
        .run(exchange(cluster(EXCHANGE_PORT), 1000, 1000));
    let report = pod.report();
    got.unwrap_or_else(|e| panic!("{e}\n{report}"))
        .assert_intact(1000, 1000);
    assert!(inbound_guest_hops(&report).is_empty(), "{report}");
    assert_eq!(outbound_hops(&report, GUEST_IP), 0, "{report}");
    assert_eq!(pod.servers.peer_ips(), vec![POD_IP.to_string()], "{report}");
}

/// Without the exclusion, vmpod's forwarder's connection to the guest was
/// captured by Istio's OUTPUT rules as an outbound call of the pod, and
/// with outboundTrafficPolicy REGISTRY_ONLY (the guest's private address is
/// in no registry) ingress broke. vmpod's `pod_to_guest_nat_first` now
/// binds that connection's NAT before Istio's OUTPUT chain runs.
fn ingress_without_the_exclusion_works_under_registry_only(mode: &str) {
    ingress_without_the_exclusion(mode, "noExclIn", Some("10.89.0.0/24"));
}

/// The same under ALLOW_ANY, where ingress once worked but passed Envoy
/// twice, the second time as an outbound call of the pod to the guest.
fn ingress_without_the_exclusion_takes_no_detour_under_allow_any(mode: &str) {
    ingress_without_the_exclusion(mode, "noExclDet", None);
}

fn ingress_without_the_exclusion(mode: &str, test: &str, registry: Option<&str>) {
    let config = example(mode);
    let pod = MeshPod::start(
        &format!("{test}{mode}"),
        config.clone(),
        &without_exclusions(&config),
        registry,
    );
    let guest_server = guest_exchange_server(&pod.net.guest);
    let to: SocketAddr = format!("{POD_IP}:{INGRESS_PORT}").parse().unwrap();
    let got = pod.net.cluster.run(exchange(to, 1000, 1000));
    let report = pod.report();
    got.unwrap_or_else(|e| panic!("ingress: {e}\n{report}"))
        .assert_intact(1000, 1000);
    let seen = format!("15006 {CLUSTER_IP}:");
    let dst = format!("-> {POD_IP}:{INGRESS_PORT}: relaying");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&seen) && l.ends_with(&dst)),
        "ingress must pass Envoy's inbound port 15006:\n{report}"
    );
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("15001 ") && l.contains(&format!("-> {GUEST_IP}:"))),
        "vmpod's hop to the guest must not be captured as an outbound call:\n{report}"
    );
    let ingress = &pod.vmpod().relays().ingress[0].1;
    assert_eq!(RelayStats::get(&ingress.accepted), 1, "{report}");
    // vmpod, not Envoy, made the last hop.
    assert_eq!(
        guest_server.peer_ips(),
        vec![GATEWAY_IP.to_string()],
        "{report}"
    );
}

macro_rules! per_mode {
    ($check:ident: $($mode:ident),+) => {
        mod $check {
            $(
                #[test]
                fn $mode() {
                    super::$check(stringify!($mode));
                }
            )+
        }
    };
}

per_mode!(egress_passes_the_sidecar: tproxy, redirect, kernel);
per_mode!(ingress_passes_the_sidecar: tproxy, redirect, kernel);
per_mode!(ingress_without_the_exclusion_works_under_registry_only: tproxy, redirect, kernel);
per_mode!(ingress_without_the_exclusion_takes_no_detour_under_allow_any: tproxy, redirect, kernel);

// ---- the render ------------------------------------------------------------

#[test]
fn render_sidecar_prints_the_annotations() {
    for (name, args) in [
        ("example", vec!["tests/configs/example.yaml"]),
        ("redirect", vec!["tests/configs/redirect.yaml"]),
    ] {
        let out = run_ok(
            Command::new(env!("CARGO_BIN_EXE_vmpod"))
                .current_dir(repo_root())
                .arg("render")
                .args(&args)
                .args(["--what", "sidecar"]),
        );
        assert_golden(&format!("{name}.sidecar"), &out);
    }
    // Kernel mode, with both consoles.
    let text = std::fs::read_to_string(repo_root().join("tests/configs/example.yaml"))
        .unwrap()
        .replace("mode: tproxy", "mode: kernel")
        + "consoles:\n  display:\n    port: 5900\n    insecure: true\n  libvirt:\n    port: 16509\n    credentials_file: /etc/vmpod/secrets/libvirt-credentials\n";
    let dir = std::env::temp_dir().join(format!("vmpod-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kernel-consoles.yaml");
    std::fs::write(&path, text).unwrap();
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_vmpod"))
            .arg("render")
            .arg(&path)
            .args(["--what", "sidecar"]),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_golden("kernel-consoles.sidecar", &out);
}
