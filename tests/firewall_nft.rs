//! The nft script vmpod renders: golden files, and the real kernel's view of
//! it in a fresh network namespace per case (needs root, `nft`, `unshare`
//! and `ip`; without them these tests fail and say what is missing).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::golden::{assert_golden, golden_configs};
use vmpod::config::{EgressMode, IngressMode, Ipv6Mode, Protocol, UdpEgress, VmConfig};
use vmpod::net::firewall::FirewallPlan;

/// The table `run` applies for `config` (IPv6 beside IPv4 when
/// `network.ipv6: on`).
fn plan(config: &VmConfig) -> FirewallPlan {
    vmpod::plan::Plan::build(config, &vmpod::host::HostFacts::fixed(), None)
        .expect("plan")
        .network
        .firewall
}

/// `c` with IPv6 beside IPv4: default ULA addresses, a v6 exclusion.
fn dual_stack(mut c: VmConfig) -> VmConfig {
    c.network.ipv6 = Ipv6Mode::On;
    c.network
        .egress
        .exclude
        .push("fd00:96::/64".parse().unwrap());
    c
}

/// The golden configs plus variants of the example made here: kernel mode,
/// IPv6 (tproxy, with exclusions), and dnat ingress ports.
fn cases() -> Vec<(&'static str, VmConfig)> {
    let mut cases = golden_configs();
    let mut kernel = example();
    kernel.network.egress.mode = EgressMode::Kernel;
    let mut ipv6 = example();
    ipv6.network.gateway = "fd00:1::1/64".parse().unwrap();
    ipv6.network.guest_ip = "fd00:1::2".parse().unwrap();
    ipv6.network.egress.exclude = vec![
        "fd00:96::/64".parse().unwrap(),
        "fd00:97::/64".parse().unwrap(),
    ];
    cases.push(("kernel", kernel));
    cases.push(("ipv6", ipv6));
    cases.push(("dnat", dnat()));
    cases.push(("dual-stack", dual_stack(example())));
    cases
}

/// The example with its HTTP port and a UDP port in `mode: dnat`.
fn dnat() -> VmConfig {
    let mut c = example();
    let http = &mut c.network.ingress[0];
    http.mode = IngressMode::Dnat;
    let mut dns = http.clone();
    dns.name = "dns".into();
    dns.port = 5353;
    dns.guest_port = Some(53);
    dns.protocol = Protocol::Udp;
    c.network.ingress.push(dns);
    c
}

fn example() -> VmConfig {
    golden_configs()
        .into_iter()
        .find_map(|(name, config)| (name == "example").then_some(config))
        .expect("the golden configs include `example`")
}

/// More rule shapes for the kernel to accept, beyond the golden ones.
fn kernel_only_cases() -> Vec<(&'static str, VmConfig)> {
    let variant = |name, mode, udp, exclude: &[&str], ipv6: bool| {
        let mut c = example();
        c.network.egress.mode = mode;
        c.network.egress.udp = udp;
        c.network.egress.exclude = exclude.iter().map(|n| n.parse().unwrap()).collect();
        if ipv6 {
            c.network.gateway = "fd00:1::1/64".parse().unwrap();
            c.network.guest_ip = "fd00:1::2".parse().unwrap();
        }
        (name, c)
    };
    // A mask wider than the mark: the kernel's listing of the AND/OR mark
    // expression must equal what the renderer writes.
    let mut wide_mask = example();
    wide_mask.network.egress.fwmark = "0x4000/0xc000".parse().unwrap();
    vec![
        ("tproxy-wide-fwmark-mask", wide_mask),
        variant(
            "kernel-udp-off",
            EgressMode::Kernel,
            UdpEgress::Off,
            &[],
            false,
        ),
        variant(
            "redirect-one-exclusion",
            EgressMode::Redirect,
            UdpEgress::Masquerade,
            &["169.254.169.254/32"],
            false,
        ),
        variant(
            "redirect-ipv6",
            EgressMode::Redirect,
            UdpEgress::Masquerade,
            &["fd00:96::/64"],
            true,
        ),
        (
            "dual-stack-redirect-dnat",
            dual_stack({
                let mut c = dnat();
                c.network.egress.mode = EgressMode::Redirect;
                c
            }),
        ),
        ("dual-stack-kernel", {
            let mut c = dual_stack(example());
            c.network.egress.mode = EgressMode::Kernel;
            c
        }),
        variant(
            "kernel-ipv6-udp-off",
            EgressMode::Kernel,
            UdpEgress::Off,
            &[],
            true,
        ),
    ]
}

#[test]
fn scripts_match_the_golden_files() {
    for (name, config) in cases() {
        assert_golden(&format!("{name}.nft"), &plan(&config).script());
    }
}

#[test]
fn the_kernel_accepts_applies_replaces_and_deletes_each_table() {
    require_root_tools();
    for (name, config) in cases().into_iter().chain(kernel_only_cases()) {
        check_in_fresh_namespace(name, &config);
    }
}

#[test]
fn applying_over_another_mode_replaces_the_whole_table() {
    require_root_tools();
    let cases = cases();
    let get = |wanted: &str| {
        let (_, c) = cases.iter().find(|(n, _)| *n == wanted).unwrap();
        plan(c)
    };
    let (tproxy, kernel) = (get("example"), get("kernel"));
    let dir = scratch_dir("replace");
    let first = write(&dir, "tproxy.nft", &tproxy.script());
    let second = write(&dir, "kernel.nft", &kernel.script());
    let out = in_namespace(
        r#"nft -f "$1"; nft -f "$2"; nft list table inet vmpod"#,
        &[&first, &second],
    );
    assert!(
        !out.contains("egress_tproxy"),
        "tproxy chain left over:\n{out}"
    );
    assert!(out.contains("chain egress_masquerade"), "{out}");
    assert_eq!(
        count_rules(&out),
        15,
        "kernel mode has 15 rules (four identity DNATs that keep a mesh's nat off the guest's \
         connections, masquerade, six of guest_input: established, health guard, DHCP and DNS \
         over UDP, DNS over TCP, TCP and UDP refusals; four of guest_forward: the metadata addresses), the \
         kernel holds:\n{out}"
    );
}

/// Check, apply twice, prove idempotence and that a foreign table survives,
/// then delete — all in one fresh namespace, asserting on what nft lists.
fn check_in_fresh_namespace(name: &str, config: &VmConfig) {
    let plan = plan(config);
    let dir = scratch_dir(name);
    let script = write(&dir, "apply.nft", &plan.script());
    let delete = write(&dir, "delete.nft", FirewallPlan::delete_script());
    let bridge = &config.network.bridge;

    // `nft -c` alone: the check an operator would run on a rendered script.
    in_namespace(r#"nft -c -f "$1""#, &[&script]);

    let out = in_namespace(
        r#"
        ip link add "$1" type bridge
        nft -f "$2"
        echo '=== first'; nft list table inet vmpod
        nft -f - < "$2"
        echo '=== second'; nft list table inet vmpod
        echo '=== tables'; nft list tables
        nft add table inet sidecar
        nft add chain inet sidecar out '{ type nat hook output priority -100; }'
        nft add rule inet sidecar out tcp dport 80 redirect to :15001
        nft -f "$2"
        echo '=== with-sidecar'; nft list tables
        nft -f "$3"
        echo '=== deleted'; nft list tables
        echo '=== sidecar'; nft list table inet sidecar
        "#,
        &[Path::new(bridge.as_str()), &script, &delete],
    );
    let section = |title: &str| -> String {
        let start = format!("=== {title}\n");
        let rest = out
            .split_once(&start)
            .unwrap_or_else(|| panic!("{name}: no section {title} in:\n{out}"))
            .1;
        rest.split("=== ").next().unwrap_or("").to_string()
    };

    // What the kernel holds is what was rendered, to the character: the
    // plan is written the way `nft list` prints.
    let first = section("first");
    assert_eq!(
        protocol_keywords(&first),
        plan.to_string(),
        "{name}: the kernel's table differs from the plan"
    );
    assert_eq!(
        first,
        section("second"),
        "{name}: applying twice changed the table"
    );
    assert_eq!(
        section("tables").trim(),
        "table inet vmpod",
        "{name}: tables"
    );
    assert_eq!(
        sorted_lines(&section("with-sidecar")),
        ["table inet sidecar", "table inet vmpod"],
        "{name}: applying must leave other tables alone"
    );
    assert_eq!(
        section("deleted").trim(),
        "table inet sidecar",
        "{name}: delete must remove our table and only ours"
    );
    assert!(
        section("sidecar").contains("tcp dport 80 redirect to :15001"),
        "{name}: the sidecar's rule was touched:\n{out}"
    );
}

/// `nft list` names protocols after /etc/protocols (`ipv6-icmp`), or by
/// number when the file is missing; vmpod writes nft's own keywords.
fn protocol_keywords(listing: &str) -> String {
    [
        ("6", "tcp"),
        ("17", "udp"),
        ("1", "icmp"),
        ("58", "icmpv6"),
        ("ipv6-icmp", "icmpv6"),
    ]
    .iter()
    .fold(listing.to_string(), |text, (listed, keyword)| {
        text.replace(
            &format!("l4proto {listed} "),
            &format!("l4proto {keyword} "),
        )
        .replace(
            &format!("l4proto != {listed} "),
            &format!("l4proto != {keyword} "),
        )
    })
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort_unstable();
    lines
}

/// A rule line of `nft list` output: inside a chain, not its `type` line.
fn count_rules(listing: &str) -> usize {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("comment \""))
        .count()
}

/// Run `sh -c script` with `args` as $1.. in a new, empty network namespace.
/// Panics with the output when the script fails.
fn in_namespace(script: &str, args: &[&Path]) -> String {
    let wrapped = format!("set -eu\n{script}");
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &wrapped, "sh"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "unshare --net sh -c failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("firewall_nft")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Fail, naming what is missing, unless we are root with nft, unshare and ip.
fn require_root_tools() {
    let mut missing = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        missing.push(format!(
            "root (effective uid is {euid}; run the tests as root)"
        ));
    }
    for (tool, package) in [
        ("nft", "nftables"),
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
    ] {
        if !on_path(tool) {
            missing.push(format!("`{tool}` on PATH (Debian package {package})"));
        }
    }
    assert!(
        missing.is_empty(),
        "this test needs a real kernel firewall and is not skipped; missing: {}",
        missing.join(", ")
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}
