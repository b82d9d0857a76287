//! The IPv6 servers (Router Advertisements and stateful DHCPv6) against
//! real clients, with no VM: vmpod's bridge code and servers run in-process
//! in a "pod" network namespace (tests/support/podnet.rs), and a "guest"
//! namespace joined to the bridge by a veth plays the VM. What is asserted
//! is what the guest's kernel and its DHCPv6 clients (ISC dhclient, dhcpcd)
//! hold or were told.
//!
//! Needs root, `ip`, `dhclient` (isc-dhcp-client), `dhcpcd` (dhcpcd-base),
//! `rdisc6` (ndisc6), `unshare` (util-linux).

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dhcproto::v6::{DhcpOption, IANA, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use ipnet::{IpNet, Ipv6Net};
use podnet::{PodNet, wait_until};
use support::sandbox::require;
use vmpod::ipv6::stats::get;
use vmpod::ipv6::{Dhcpv6Server, Ipv6Config, Mac, RouterAdvertiser};
use vmpod::net::link::Netlink;

const BRIDGE: &str = "virbr0";

/// A pod with a bridge holding the gateway's IPv6 address, the guest's
/// veth on it, and the RA and DHCPv6 servers running in the pod.
struct Lab {
    // Servers first: stopped before their namespace's runtime goes.
    ra: Option<RouterAdvertiser>,
    dhcp: Option<Dhcpv6Server>,
    config: Ipv6Config,
    dir: PathBuf,
    children: Vec<Child>,
    net: PodNet,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("client logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn guest_mac(net: &PodNet) -> Mac {
    let out = net.guest.sh(&["ip", "-j", "link", "show", "dev", "eth0"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    let text = v[0]["address"].as_str().expect("a MAC").to_string();
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// Builds the lab; `edit` adjusts the servers' config (which starts as the
/// defaults the lead uses, for the guest's real MAC).
fn lab(test: &str, edit: impl FnOnce(&mut Ipv6Config)) -> Lab {
    require(&[
        ("ip", "iproute2"),
        ("dhclient", "isc-dhcp-client"),
        ("dhcpcd", "dhcpcd-base"),
        ("rdisc6", "ndisc6"),
        ("unshare", "util-linux"),
    ]);
    let net = PodNet::new(test);
    let mut config = Ipv6Config::new(test, BRIDGE, guest_mac(&net), 1500);
    config.search = vec!["svc.cluster.local".into(), "cluster.local".into()];
    // Fast first RAs, so a test does not wait for the 2 s default.
    config.schedule.initial_interval = Duration::from_millis(500);
    edit(&mut config);
    let gateway = IpNet::V6(Ipv6Net::new(config.gateway, 64).unwrap());
    net.pod.run(async move {
        let nl = Netlink::connect().expect("rtnetlink");
        nl.ensure_bridge(BRIDGE, gateway, None)
            .await
            .expect("bridge with the IPv6 gateway");
    });
    net.pod
        .sh(&["ip", "link", "set", podnet::TAP, "master", BRIDGE]);
    // A guest kernel as a VM's: accepts RAs, does not forward.
    for (key, value) in [("forwarding", "0"), ("accept_ra", "1")] {
        net.guest.sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.eth0.{key}={value}"),
        ]);
    }
    let c = config.clone();
    let (ra, dhcp) = net.pod.run(async move {
        let ra = RouterAdvertiser::start(&c).expect("RA server");
        let dhcp = Dhcpv6Server::start(&c).expect("DHCPv6 server");
        (ra, dhcp)
    });
    let dir = std::env::temp_dir().join(format!("vmpod-ipv6-{}", net.sandbox.name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    Lab {
        ra: Some(ra),
        dhcp: Some(dhcp),
        config,
        dir,
        children: Vec::new(),
        net,
    }
}

impl Lab {
    fn ra(&self) -> &RouterAdvertiser {
        self.ra.as_ref().unwrap()
    }

    fn dhcp(&self) -> &Dhcpv6Server {
        self.dhcp.as_ref().unwrap()
    }

    /// A link-local address of `dev` in `ns` that passed DAD.
    fn link_local(&self, ns: &podnet::Ns, dev: &str) -> Ipv6Addr {
        wait_until(
            &format!("a usable link-local address on {dev} in {}", ns.name),
            Duration::from_secs(10),
            || {
                let out = ns.sh(&[
                    "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
                ]);
                if out.contains("tentative") {
                    return None;
                }
                out.split_whitespace()
                    .skip_while(|w| *w != "inet6")
                    .nth(1)
                    .and_then(|a| a.split('/').next()?.parse().ok())
            },
        )
    }

    fn guest_routes(&self) -> String {
        self.net.guest.sh(&["ip", "-6", "route", "show"])
    }

    /// Starts `argv` in the guest namespace; killed when the lab goes.
    fn spawn_in_guest(&mut self, argv: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.join(log)).expect("log file");
        let child = self
            .net
            .guest
            .command(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
        self.children.push(child);
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// A client script that saves its environment per reason and, on a
    /// bind, adds the address to the interface (what a distribution's
    /// script does, so the kernel holds what the server gave).
    fn write_script(&self, name: &str, bound: &str, address_var: &str) -> PathBuf {
        let path = self.dir.join(name);
        let dir = self.dir.display();
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n\
                 env | sort > {dir}/{name}.env.$reason\n\
                 echo \"$reason\" >> {dir}/{name}.reasons\n\
                 if [ \"$reason\" = {bound} ]; then\n\
                   ip -6 addr add \"${address_var}/128\" dev \"$interface\" nodad || true\n\
                 fi\n\
                 exit 0\n"
            ),
        )
        .unwrap();
        Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        path
    }

    fn wait_file_has(&self, name: &str, needle: &str, timeout: Duration) -> String {
        let what = format!("{name} to contain {needle} (in {})", self.dir.display());
        wait_until(&what, timeout, || {
            let text = self.read(name);
            text.contains(needle).then_some(text)
        })
    }
}

/// The lease variables a client script was given, for the test's output.
fn show_lease_vars(client: &str, env: &str) {
    let vars: Vec<&str> = env
        .lines()
        .filter(|l| l.starts_with("new_") || l.starts_with("reason="))
        .collect();
    eprintln!("{client} script environment:\n  {}", vars.join("\n  "));
}

fn env_var(env: &str, key: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('\'').to_string())
}

// ---- (a) the guest kernel's own RA handling ----------------------------

/// The default route via the bridge's link-local, the MTU, the on-link
/// prefix route, and (with A=0, the default) no SLAAC address.
#[test]
fn the_kernel_takes_route_mtu_and_prefix_from_the_ra_and_no_slaac_address() {
    let lab = lab("raKernel", |c| c.mtu = 1400);
    let started = Instant::now();
    let bridge_ll = lab.link_local(&lab.net.pod, BRIDGE);
    let route = wait_until(
        "a default route from the RA",
        Duration::from_secs(15),
        || {
            let r = lab.net.guest.sh(&["ip", "-6", "route", "show", "default"]);
            r.contains("proto ra").then_some(r)
        },
    );
    eprintln!(
        "the guest had its RA default route {:?} after the servers started",
        started.elapsed()
    );
    assert!(
        route.contains(&format!("via {bridge_ll} dev eth0")),
        "default route {route:?} is not via the bridge's link-local {bridge_ll}"
    );
    let mtu = lab
        .net
        .guest
        .sh(&["cat", "/proc/sys/net/ipv6/conf/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1400", "IPv6 MTU from the RA");
    // The on-link prefix route, with the prefix's valid lifetime (the
    // kernel marks it "proto kernel", as for any RA prefix).
    let routes = lab.guest_routes();
    let prefix_route = routes
        .lines()
        .find(|l| l.starts_with(&format!("{} dev eth0", lab.config.prefix)))
        .unwrap_or_else(|| panic!("no on-link prefix route: {routes}"));
    assert!(prefix_route.contains("expires"), "{prefix_route}");
    let addrs = lab
        .net
        .guest
        .sh(&["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    assert!(
        addrs.trim().is_empty(),
        "A=0 must leave the guest without a SLAAC address: {addrs}"
    );
    assert!(get(&lab.ra().stats().adverts_sent) >= 1);
    // The pod's bridge has the kernel defaults (accept_ra=1, forwarding=0):
    // the server warns that a guest's RA would be taken by the pod.
    assert!(
        podnet::logs_of(&lab.net.pod).contains("set net.ipv6.conf.virbr0.accept_ra=0"),
        "{}",
        podnet::logs_of(&lab.net.pod)
    );

    // Stopping sends a final RA with router lifetime 0: the guest drops the
    // default route at once instead of keeping a dead router for 30 min.
    let mut lab = lab;
    let ra = lab.ra.take().unwrap();
    lab.net.pod.run(async move { ra.stop().await });
    wait_until(
        "the default route to go after the final RA",
        Duration::from_secs(5),
        || {
            let r = lab.net.guest.sh(&["ip", "-6", "route", "show", "default"]);
            r.trim().is_empty().then_some(())
        },
    );
}

#[test]
fn with_the_autonomous_flag_the_guest_forms_a_slaac_address() {
    let lab = lab("raSlaac", |c| c.autonomous = true);
    let prefix = lab.config.prefix;
    let addr = wait_until("a SLAAC address", Duration::from_secs(15), || {
        let out = lab.net.guest.sh(&[
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse::<Ipv6Addr>().ok())
    });
    assert!(prefix.contains(&addr), "{addr} is not in {prefix}");
}

/// rdisc6 solicits and prints the advertisement as a host parses it.
#[test]
fn rdisc6_sees_flags_prefix_mtu_rdnss_and_dnssl() {
    let lab = lab("raRdisc6", |c| c.mtu = 1450);
    lab.link_local(&lab.net.pod, BRIDGE);
    lab.link_local(&lab.net.guest, "eth0");
    let solicited_before = get(&lab.ra().stats().solicits_received);
    let out = lab
        .net
        .guest
        .sh(&["rdisc6", "-1", "-w", "3000", "-r", "3", "eth0"]);
    // rdisc6 aligns its columns with runs of spaces: compare without them.
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let seen = words(&out);
    for want in [
        "Stateful address conf. : Yes".to_string(),
        "Stateful other conf. : Yes".into(),
        "Router lifetime : 1800 (0x00000708) seconds".into(),
        "MTU : 1450 bytes (valid)".into(),
        format!(
            "Prefix : {} On-link : Yes Autonomous address conf.: No",
            lab.config.prefix
        ),
        format!("Recursive DNS server : {}", lab.config.gateway),
        "DNS search list : svc.cluster.local cluster.local".into(),
    ] {
        assert!(seen.contains(&want), "rdisc6 lacks {want:?}:\n{out}");
    }
    assert!(get(&lab.ra().stats().solicits_received) > solicited_before);
}

// ---- (b, c) DHCPv6 clients ---------------------------------------------

/// ISC dhclient -6 gets the configured address and DNS, and with the RA's
/// on-link prefix the guest reaches the gateway's address.
#[test]
fn dhclient_gets_the_address_and_dns() {
    let mut lab = lab("dhclient", |_| {});
    lab.link_local(&lab.net.guest, "eth0");
    let script = lab.write_script("dhclient", "BOUND6", "new_ip6_address");
    let (leases, pid) = (lab.dir.join("leases"), lab.dir.join("pid"));
    let started = Instant::now();
    lab.spawn_in_guest(
        &[
            "dhclient",
            "-6",
            "-d",
            "-v",
            "-sf",
            script.to_str().unwrap(),
            "-lf",
            leases.to_str().unwrap(),
            "-pf",
            pid.to_str().unwrap(),
            "eth0",
        ],
        "dhclient.log",
    );
    lab.wait_file_has("dhclient.reasons", "BOUND6", Duration::from_secs(20));
    eprintln!("dhclient -6 bound after {:?}", started.elapsed());
    let env = lab.read("dhclient.env.BOUND6");
    show_lease_vars("dhclient -6", &env);
    assert_eq!(
        env_var(&env, "new_ip6_address").as_deref(),
        Some(lab.config.guest.to_string().as_str()),
        "{env}"
    );
    assert_eq!(
        env_var(&env, "new_dhcp6_name_servers").as_deref(),
        Some(lab.config.gateway.to_string().as_str()),
        "{env}"
    );
    let search = env_var(&env, "new_dhcp6_domain_search").unwrap_or_default();
    assert!(search.contains("svc.cluster.local."), "{env}");
    let lease = lab
        .dhcp()
        .lease()
        .borrow()
        .clone()
        .expect("the server has a lease");
    assert_eq!(lease.address, lab.config.guest);
    // The address the kernel now holds reaches the gateway on the link.
    wait_until("the default route", Duration::from_secs(10), || {
        lab.guest_routes()
            .contains("default via fe80")
            .then_some(())
    });
    let gateway = SocketAddrV6::new(lab.config.gateway, 7070, 0, 0);
    let listener = lab.net.pod.run(async move {
        tokio::net::TcpListener::bind(gateway)
            .await
            .expect("listen")
    });
    let accept = lab
        .net
        .pod
        .spawn(async move { listener.accept().await.map(|(_, peer)| peer) });
    lab.net.guest.run(async move {
        tokio::net::TcpStream::connect(gateway)
            .await
            .expect("connect to the gateway's address")
    });
    let peer = lab.net.pod.join(accept).expect("accept");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V6(lab.config.guest),
        "the guest's source"
    );
    assert!(get(&lab.dhcp().stats().leases_granted) >= 1);
}

/// dhcpcd (Debian's dhcpcd-base) as the second client. busybox `udhcpc6`
/// is not in Debian 12's busybox builds (busybox-static and busybox both
/// lack the applet), so dhcpcd stands in for it. It runs with private
/// /run and /var/lib (a mount namespace of its own) so it leaves nothing
/// on the machine, with DUID-LL so the server matches its MAC.
#[test]
fn dhcpcd_gets_the_address_and_dns() {
    let mut lab = lab("dhcpcd", |_| {});
    lab.link_local(&lab.net.guest, "eth0");
    let script = lab.write_script("dhcpcd", "BOUND6", "new_dhcp6_ia_na1_ia_addr1");
    let conf = lab.dir.join("dhcpcd.conf");
    std::fs::write(
        &conf,
        format!(
            "ipv6only\nduid ll\nnoipv6rs\nia_na 1\noption domain_name_servers, domain_search\n\
             script {}\n",
            script.display()
        ),
    )
    .unwrap();
    let cmd = format!(
        "mount -t tmpfs none /run && mount -t tmpfs none /var/lib && \
         exec dhcpcd -B -6 -d -f {} -t 20 eth0",
        conf.display()
    );
    lab.spawn_in_guest(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &cmd,
        ],
        "dhcpcd.log",
    );
    lab.wait_file_has("dhcpcd.reasons", "BOUND6", Duration::from_secs(25));
    let env = lab.read("dhcpcd.env.BOUND6");
    show_lease_vars("dhcpcd", &env);
    assert_eq!(
        env_var(&env, "new_dhcp6_ia_na1_ia_addr1").as_deref(),
        Some(lab.config.guest.to_string().as_str()),
        "{env}"
    );
    assert_eq!(
        env_var(&env, "new_dhcp6_name_servers").as_deref(),
        Some(lab.config.gateway.to_string().as_str()),
        "{env}"
    );
    assert!(
        env_var(&env, "new_dhcp6_domain_search")
            .unwrap_or_default()
            .contains("svc.cluster.local"),
        "{env}"
    );
}

// ---- (d) another client ------------------------------------------------

#[test]
fn a_client_whose_duid_carries_another_mac_gets_nothing() {
    // The server expects a MAC the guest does not have.
    let mut lab = lab("otherMac", |c| c.guest_mac = [0x52, 0x54, 0, 0xde, 0xad, 1]);
    lab.link_local(&lab.net.guest, "eth0");
    let script = lab.write_script("dhclient", "BOUND6", "new_ip6_address");
    let (leases, pid) = (lab.dir.join("leases"), lab.dir.join("pid"));
    lab.spawn_in_guest(
        &[
            "dhclient",
            "-6",
            "-d",
            "-v",
            "-D",
            "LL",
            "-sf",
            script.to_str().unwrap(),
            "-lf",
            leases.to_str().unwrap(),
            "-pf",
            pid.to_str().unwrap(),
            "eth0",
        ],
        "dhclient.log",
    );
    let stats = lab.dhcp().stats();
    wait_until(
        "the server to ignore the client's SOLICITs",
        Duration::from_secs(10),
        || (get(&stats.other_client) >= 2).then_some(()),
    );
    assert_eq!(get(&stats.advertise_sent) + get(&stats.reply_sent), 0);
    assert!(lab.dhcp().lease().borrow().is_none());
    assert!(!lab.read("dhclient.reasons").contains("BOUND6"));
}

// ---- (e) malformed packets, and a measured exchange --------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn solicit(mac: &Mac, rapid: bool) -> Vec<u8> {
    let mut m = Message::new_with_id(MessageType::Solicit, [7, 7, 7]);
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(mac);
    m.opts_mut().insert(DhcpOption::ClientId(duid));
    m.opts_mut().insert(DhcpOption::IANA(IANA {
        id: 1,
        t1: 0,
        t2: 0,
        opts: Default::default(),
    }));
    if rapid {
        m.opts_mut().insert(DhcpOption::RapidCommit);
    }
    m.to_vec().unwrap()
}

/// A client socket on the guest's [::]:546, bound to eth0.
fn client_socket() -> std::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_only_v6(true).unwrap();
    s.bind_device(Some(b"eth0")).unwrap();
    s.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 546, 0, 0).into())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.into()
}

fn eth0_index() -> u32 {
    nix::net::if_::if_nametoindex("eth0").expect("eth0 exists")
}

/// Sends `packet` to All_DHCP_Relay_Agents_and_Servers and waits for one
/// answer; the answer and the time it took.
fn exchange(sock: &std::net::UdpSocket, packet: &[u8]) -> Option<(Message, Duration)> {
    let to = SocketAddrV6::new("ff02::1:2".parse().unwrap(), 547, 0, eth0_index());
    let started = Instant::now();
    sock.send_to(packet, to).unwrap();
    let mut buf = [0u8; 1500];
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let took = started.elapsed();
            return Some((Message::decode(&mut Decoder::new(&buf[..n])).ok()?, took));
        }
    }
    None
}

#[test]
fn a_rapid_commit_solicit_is_answered_fast_and_updates_the_lease_watch() {
    let lab = lab("rapid", |_| {});
    lab.link_local(&lab.net.guest, "eth0");
    let mac = lab.config.guest_mac;
    let mut lease = lab.dhcp().lease();
    assert!(lease.borrow_and_update().is_none());
    let (replies, times) = lab.net.guest.run(async move {
        let sock = client_socket();
        let mut replies = Vec::new();
        let mut times = Vec::new();
        for i in 0..20 {
            let (reply, took) = exchange(&sock, &solicit(&mac, i % 2 == 0)).expect("an answer");
            replies.push(reply.msg_type());
            times.push(took);
        }
        (replies, times)
    });
    assert_eq!(replies[0], MessageType::Reply, "rapid commit");
    assert_eq!(replies[1], MessageType::Advertise);
    let mut sorted = times.clone();
    sorted.sort();
    eprintln!(
        "DHCPv6 SOLICIT -> answer: median {:?}, max {:?} over {} exchanges",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted.len()
    );
    assert!(
        sorted[sorted.len() / 2] < Duration::from_millis(10),
        "{sorted:?}"
    );
    assert!(lease.has_changed().unwrap(), "the lease watch saw the bind");
    let l = lease.borrow_and_update().clone().expect("a lease");
    assert_eq!(l.address, lab.config.guest);
}

#[test]
fn a_malformed_flood_is_survived_and_counted() {
    let lab = lab("flood", |_| {});
    lab.link_local(&lab.net.pod, BRIDGE);
    lab.link_local(&lab.net.guest, "eth0");
    let mac = lab.config.guest_mac;
    let ra_stats = lab.ra().stats();
    let dhcp_stats = lab.dhcp().stats();
    const N: usize = 3000;
    let started = Instant::now();
    lab.net.guest.run(async move {
        use socket2::{Domain, Protocol, Socket, Type};
        let mut rng = XorShift(0x1357_9bdf_2468_ace0);
        let udp = client_socket();
        let raw = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        raw.bind_device(Some(b"eth0")).unwrap();
        raw.set_multicast_hops_v6(255).unwrap();
        let dhcp_to = SocketAddrV6::new("ff02::1:2".parse().unwrap(), 547, 0, eth0_index());
        let ra_to = SocketAddrV6::new("ff02::2".parse().unwrap(), 0, 0, eth0_index());
        let valid = solicit(&mac, false);
        for i in 0..N {
            // Random bytes, or a valid SOLICIT with a few bytes changed.
            let mut p: Vec<u8> = if i % 2 == 0 {
                (0..(rng.next() % 200)).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let at = (rng.next() as usize) % v.len();
                    v[at] = rng.next() as u8;
                }
                v.truncate(1 + (rng.next() as usize) % v.len());
                v
            };
            let _ = udp.send_to(&p, dhcp_to);
            // An RS type byte, so the kernel's filter lets it through.
            if p.is_empty() {
                p.push(0);
            }
            p[0] = 133;
            let _ = raw.send_to(&p, &ra_to.into());
            if i % 200 == 0 {
                // Keep within the sockets' buffers.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    eprintln!(
        "sent {N} malformed DHCPv6 and RS packets in {:?}",
        started.elapsed()
    );
    wait_until(
        "the servers to count the flood",
        Duration::from_secs(5),
        || (get(&dhcp_stats.malformed) > 100 && get(&ra_stats.malformed) > 100).then_some(()),
    );
    eprintln!(
        "DHCPv6: received {}, malformed {}; RA: malformed {}, solicitations {}",
        get(&dhcp_stats.received),
        get(&dhcp_stats.malformed),
        get(&ra_stats.malformed),
        get(&ra_stats.solicits_received),
    );
    // Both still answer.
    let answered = lab.net.guest.run(async move {
        let sock = client_socket();
        exchange(&sock, &solicit(&mac, false)).map(|(m, _)| m.msg_type())
    });
    assert_eq!(answered, Some(MessageType::Advertise));
    let out = lab
        .net
        .guest
        .sh(&["rdisc6", "-1", "-w", "3000", "-r", "3", "eth0"]);
    assert!(out.contains("Stateful address conf."), "{out}");
}

/// The servers refuse a bridge they cannot serve, with errors that say why.
#[test]
fn start_names_a_missing_or_down_bridge() {
    require(&[("ip", "iproute2")]);
    let net = PodNet::new("badBridge");
    let mut c = Ipv6Config::new("x", "nosuchbr", [2, 0, 0, 0, 0, 2], 1500);
    let err = net.pod.run({
        let c = c.clone();
        async move { RouterAdvertiser::start(&c).err().map(|e| e.to_string()) }
    });
    assert_eq!(
        err.as_deref(),
        Some("bridge nosuchbr does not exist in this network namespace")
    );
    net.pod
        .sh(&["ip", "link", "add", "downbr", "type", "bridge"]);
    c.bridge = "downbr".into();
    let err = net
        .pod
        .run(async move { Dhcpv6Server::start(&c).err().map(|e| e.to_string()) });
    assert_eq!(
        err.as_deref(),
        Some("bridge downbr is down; the IPv6 servers need it up")
    );
}

// ---- the test guest's own DHCPv6 client --------------------------------

/// The test guest's userland (images/test-guest: its dhclient, its busybox
/// script, its libc), unpacked from the initramfs and run chrooted in the
/// guest namespace, takes the lease: the address lands on eth0, and the
/// script writes resolv.conf, /run/vmpod/ip6 and the identity page.
#[test]
fn the_test_guest_userland_takes_its_dhcpv6_lease() {
    require(&[("cpio", "cpio"), ("gzip", "gzip"), ("chroot", "coreutils")]);
    let images = support::guest::ensure_built();
    let mut lab = lab("guestUserland", |_| {});
    let root = lab.dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    support::sandbox::run_ok(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {} | (cd {} && cpio -idm --quiet)",
        images.join("initrd.gz").display(),
        root.display()
    )));
    lab.link_local(&lab.net.guest, "eth0");
    // The guest's rc decides "there is an IPv6 router" with this function,
    // from busybox ip's view of the RA's default route.
    let root_text = root.to_str().unwrap().to_string();
    wait_until(
        "the guest's ipv6_router to see the RA's default route",
        Duration::from_secs(10),
        || {
            lab.net
                .guest
                .command(&[
                    "chroot",
                    &root_text,
                    "/bin/sh",
                    "-c",
                    ". /etc/vmpod/functions.sh && ipv6_router",
                ])
                .status()
                .expect("chroot")
                .success()
                .then_some(())
        },
    );
    let r = root.display();
    let cmd = format!(
        "mount --bind /dev {r}/dev && mount -t proc proc {r}/proc && \
         mount -t tmpfs tmpfs {r}/run && mkdir -p {r}/run/vmpod && \
         exec chroot {r} /sbin/dhclient -6 -d -cf /etc/dhcp/dhclient6.conf \
         -sf /etc/vmpod/dhclient6.script -lf /var/lib/dhcp/dhclient6.leases \
         -pf /run/dhclient6.pid eth0"
    );
    lab.spawn_in_guest(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &cmd,
        ],
        "guest-dhclient.log",
    );
    let guest = lab.config.guest.to_string();
    wait_until(
        "the guest's address on eth0",
        Duration::from_secs(20),
        || {
            let addrs = lab
                .net
                .guest
                .sh(&["ip", "-6", "addr", "show", "dev", "eth0"]);
            addrs.contains(&format!("inet6 {guest}/128")).then_some(())
        },
    );
    // The script's files are in the chroot's /run (a tmpfs of the client's
    // mount namespace) and in the unpacked root.
    wait_until(
        "the identity page to name the address",
        Duration::from_secs(5),
        || {
            let page = std::fs::read_to_string(root.join("www/index.html")).unwrap_or_default();
            page.contains(&format!("ip6={guest}")).then_some(())
        },
    );
    let resolv = std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap();
    assert!(
        resolv.contains(&format!("nameserver {}", lab.config.gateway)),
        "{resolv}"
    );
    assert!(
        resolv.contains("search svc.cluster.local cluster.local"),
        "{resolv}"
    );
}

/// With short lifetimes, dhclient renews (T1) and keeps the same address,
/// and the server counts the renewal as another grant.
#[test]
fn dhclient_renews_and_keeps_the_address() {
    let mut lab = lab("renew", |c| {
        c.lifetimes.renew = 2;
        c.lifetimes.rebind = 3;
        c.lifetimes.address_preferred = 4;
        c.lifetimes.address_valid = 8;
    });
    lab.link_local(&lab.net.guest, "eth0");
    let script = lab.write_script("dhclient", "BOUND6", "new_ip6_address");
    let (leases, pid) = (lab.dir.join("leases"), lab.dir.join("pid"));
    lab.spawn_in_guest(
        &[
            "dhclient",
            "-6",
            "-d",
            "-v",
            "-sf",
            script.to_str().unwrap(),
            "-lf",
            leases.to_str().unwrap(),
            "-pf",
            pid.to_str().unwrap(),
            "eth0",
        ],
        "dhclient.log",
    );
    lab.wait_file_has("dhclient.reasons", "RENEW6", Duration::from_secs(30));
    let env = lab.read("dhclient.env.RENEW6");
    assert_eq!(
        env_var(&env, "new_ip6_address").as_deref(),
        Some(lab.config.guest.to_string().as_str()),
        "{env}"
    );
    let stats = lab.dhcp().stats();
    assert!(get(&stats.renew) >= 1);
    assert!(get(&stats.leases_granted) >= 2, "bind and renew");
    assert!(lab.dhcp().lease().borrow().is_some());
}

/// A bridge deleted under the servers is reported, not silently served.
#[test]
fn a_bridge_deleted_under_the_ra_server_is_reported() {
    let lab = lab("bridgeGone", |_| {});
    lab.net.pod.sh(&["ip", "link", "del", BRIDGE]);
    wait_until(
        "the RA server to report it",
        Duration::from_secs(10),
        || {
            podnet::logs_of(&lab.net.pod)
                .contains("the bridge this RA server was bound to is gone")
                .then_some(())
        },
    );
}
