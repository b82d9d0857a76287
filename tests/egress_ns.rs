//! The egress data path in each mode (tproxy, redirect, kernel), with no VM:
//! vmpod's own network setup and relays run in-process in a "pod" network
//! namespace, a "guest" namespace joined to the bridge by a veth plays the
//! VM, and servers in a "cluster" namespace play the rest of the world (see
//! tests/support/podnet.rs). Assertions are on what the guest, the servers
//! and the kernel see.
//!
//! Needs root, `ip` and `nft`.

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use podnet::{
    CLOSED_PORT, ECHO_PORT, EXCHANGE_PORT, GATEWAY_IP, Opened, PodNet, Servers, TAP, Vmpod, config,
    connect_and_read, exchange, fd_count, logs_of, raise_fd_limit, wait_until,
};
use support::sandbox::{CLUSTER_IP, POD_IP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vmpod::relay::stats::RelayStats;

/// The fd-count tests take it exclusively: other tests of this process
/// would open and close sockets under them.
static FDS: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FDS.read().unwrap_or_else(|e| e.into_inner())
}

fn cluster(port: u16) -> SocketAddr {
    format!("{CLUSTER_IP}:{port}").parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A pod with vmpod running in `mode` and the cluster's servers.
fn running(
    test: &str,
    mode: &str,
    edit: impl FnOnce(String) -> String,
) -> (PodNet, Servers, Vmpod) {
    let net = PodNet::new(&format!("{test}{mode}"));
    let servers = Servers::start(&net.cluster, CLUSTER_IP);
    // `accel`: tproxy with the kernel moving established connections.
    let vm = if mode == "accel" {
        net.start_vmpod(config("tproxy", |t| podnet::with_accel(edit(t))))
    } else {
        net.start_vmpod(config(mode, edit))
    };
    (net, servers, vm)
}

fn stop(net: &PodNet, vm: Vmpod) {
    let errors = net.stop_vmpod(vm);
    assert!(errors.is_empty(), "teardown failed: {errors:?}");
}

fn is_proxy(mode: &str) -> bool {
    mode != "kernel"
}

fn reaches_the_cluster_as_the_pod(mode: &str) {
    let _g = shared();
    let (net, servers, vm) = running("asPod", mode, |t| t);
    let got = net
        .guest
        .run(exchange(cluster(EXCHANGE_PORT), 100, 100))
        .expect("exchange through the pod");
    got.assert_intact(100, 100);
    assert_eq!(
        servers.peer_ips(),
        vec![POD_IP.to_string()],
        "source seen by the server"
    );
    if is_proxy(mode) {
        let e = &vm.relays().egress;
        assert_eq!(RelayStats::get(&e.accepted), 1, "the proxy carried it");
    }
    stop(&net, vm);
}

fn ten_megabytes_each_way(mode: &str) {
    let _g = shared();
    let (net, _servers, vm) = running("tenMB", mode, |t| t);
    const TEN_MB: u64 = 10 * 1024 * 1024;
    let started = Instant::now();
    let got = net
        .guest
        .run(exchange(cluster(EXCHANGE_PORT), TEN_MB, TEN_MB))
        .expect("10 MB each way");
    eprintln!("{mode}: 10 MB each way in {:?}", started.elapsed());
    got.assert_intact(TEN_MB, TEN_MB);
    if is_proxy(mode) {
        let e = &vm.relays().egress;
        // The 8-byte header and the trailer ride along.
        assert!(RelayStats::get(&e.bytes_out) >= TEN_MB);
        assert!(RelayStats::get(&e.bytes_in) >= TEN_MB);
    }
    if mode == "accel" {
        assert!(
            vmpod::relay::accel::joined_total() > 0,
            "no connection took the kernel path"
        );
    }
    stop(&net, vm);
}

fn half_close_passes_the_fin_and_keeps_the_answer(mode: &str) {
    let _g = shared();
    let (net, _servers, vm) = running("halfClose", mode, |t| t);
    // The server answers only after it has read the guest's FIN.
    let got = net
        .guest
        .run(exchange(cluster(EXCHANGE_PORT), 8, 0))
        .expect("answer after the guest's FIN");
    got.assert_intact(8, 0);
    stop(&net, vm);
}

fn refused_upstream_reaches_the_guest(mode: &str) {
    let _g = shared();
    let (net, _servers, vm) = running("refused", mode, |t| t);
    let result = net.guest.run(connect_and_read(cluster(CLOSED_PORT)));
    let err = result.expect_err("a closed port must not look like a served one");
    if is_proxy(mode) {
        // The handshake was with the proxy; the refusal comes as a RST.
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let e = &vm.relays().egress;
        assert_eq!(RelayStats::get(&e.upstream_failed), 1);
    } else {
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
    stop(&net, vm);
}

fn a_thousand_concurrent_connections(mode: &str) {
    let _g = FDS.write().unwrap_or_else(|e| e.into_inner());
    raise_fd_limit();
    let (net, servers, vm) = running("thousand", mode, |t| t);
    const N: usize = 1000;
    // Warm up, so lazily opened fds are in the baseline.
    net.guest
        .run(exchange(cluster(EXCHANGE_PORT), 10, 10))
        .expect("warm-up")
        .assert_intact(10, 10);
    let egress = vm.relays().egress.clone();
    wait_until(
        "the warm-up connection to end",
        Duration::from_secs(5),
        || (RelayStats::get(&egress.active) == 0).then_some(()),
    );
    let baseline = fd_count();
    let peers = servers.peers.clone();
    let proxy = is_proxy(mode);
    let started = Instant::now();
    let peak = net.guest.run(async move {
        let opens: Vec<_> = (0..N)
            .map(|_| tokio::spawn(Opened::open(cluster(EXCHANGE_PORT), 1000)))
            .collect();
        let mut opened = Vec::new();
        for o in opens {
            opened.push(o.await.unwrap().expect("connect"));
        }
        // All N are open end to end at once: the server has them all.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let served = peers.lock().unwrap().len() - 1;
            if served == N {
                break;
            }
            assert!(Instant::now() < deadline, "the server got {served} of {N}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if proxy {
            assert_eq!(RelayStats::get(&egress.active), N as u64);
        }
        let peak = fd_count();
        let exchanges: Vec<_> = opened
            .into_iter()
            .map(|o| tokio::spawn(o.finish(1000)))
            .collect();
        for e in exchanges {
            e.await
                .unwrap()
                .expect("exchange")
                .assert_intact(1000, 1000);
        }
        peak
    });
    eprintln!(
        "{mode}: {N} concurrent exchanges in {:?}; fds: baseline {baseline}, peak {peak}",
        started.elapsed()
    );
    // Guest and server sockets, and two per connection in the proxy (a few
    // fds of the baseline may have been closing already).
    let opened = if proxy { 4 * N } else { 2 * N };
    assert!(
        peak + 10 >= baseline + opened,
        "peak {peak}, baseline {baseline}"
    );
    wait_until(
        "the fd count to return to baseline",
        Duration::from_secs(10),
        || (fd_count() <= baseline).then_some(()),
    );
    if proxy {
        assert_eq!(RelayStats::get(&vm.relays().egress.active), 0);
    }
    stop(&net, vm);
}

fn connection_limit_refuses_new_and_keeps_old(mode: &str) {
    let _g = shared();
    let (net, _servers, vm) = running("limit", mode, |t| {
        t.replace("    exclude: []", "    exclude: []\n    max_connections: 5")
    });
    let egress = vm.relays().egress.clone();
    let stats = egress.clone();
    net.guest.run(async move {
        let mut held = Vec::new();
        for i in 0..5u8 {
            let mut s = TcpStream::connect(cluster(ECHO_PORT))
                .await
                .expect("connect");
            s.write_all(&[b'a' + i]).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("echo within the limit");
            assert_eq!(b[0], b'a' + i);
            held.push(s);
        }
        assert_eq!(RelayStats::get(&stats.active), 5);
        let sixth = connect_and_read(cluster(ECHO_PORT)).await;
        assert_eq!(
            sixth
                .expect_err("the 6th connection must be refused")
                .kind(),
            io::ErrorKind::ConnectionReset
        );
        for (i, s) in held.iter_mut().enumerate() {
            s.write_all(b"again").await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b)
                .await
                .unwrap_or_else(|e| panic!("connection {i} broke past the limit: {e}"));
            assert_eq!(&b, b"again");
        }
        drop(held);
        // Freed slots serve new connections again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while RelayStats::get(&stats.active) > 0 {
            assert!(Instant::now() < deadline, "connections did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut s = TcpStream::connect(cluster(ECHO_PORT)).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("a slot freed up");
    });
    assert_eq!(RelayStats::get(&egress.refused), 1);
    stop(&net, vm);
}

fn loop_guard_refuses_vmpod_itself(mode: &str) {
    let _g = shared();
    // The firewall refuses the guest every pod port not in guest_access
    // (see guest_is_isolated_from_the_pod); listing the egress port lets
    // the connection reach the relay, whose own guard must refuse it.
    let (net, _servers, vm) = running("loop", mode, |t| {
        t.replace("  mtu: auto\n", "  mtu: auto\n  guest_access: [9401]\n")
    });
    for target in [format!("{POD_IP}:9401"), format!("{GATEWAY_IP}:9401")] {
        let to = addr(&target);
        let err = net
            .guest
            .run(connect_and_read(to))
            .expect_err("a connection to the egress listener itself must be refused");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "{target}: {err}"
        );
        let logs = logs_of(&net.pod);
        assert!(
            logs.contains(&format!("loop: {target} is vmpod itself")),
            "the refusal of {target} must be logged:\n{logs}"
        );
    }
    assert_eq!(RelayStats::get(&vm.relays().egress.refused), 2);
    // And the proxy still serves the guest.
    net.guest
        .run(exchange(cluster(EXCHANGE_PORT), 10, 10))
        .expect("egress after the refusals")
        .assert_intact(10, 10);
    stop(&net, vm);
}

/// The cloud metadata address, served here by the cluster namespace so that
/// only vmpod's refusal can keep the guest from it.
const METADATA_IP: &str = "169.254.169.254";
/// A sidecar's port the config opens to the guest, and one it does not.
const LISTED_PORT: u16 = 15021;
const UNLISTED_PORT: u16 = 15000;

/// A UDP datagram from the guest to `to`, and the answer or the error the
/// kernel reports (an ICMP error arrives as the error of `recv`).
async fn udp_probe(to: SocketAddr) -> io::Result<Vec<u8>> {
    let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    s.connect(to).await?;
    s.send(b"probe").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    Ok(buf[..n].to_vec())
}

/// The guest as an attacker of its own pod: on the gateway and the pod IP,
/// a sidecar's pod-local listeners answer it only when listed in
/// `network.guest_access`; vmpod's health port never; the metadata address
/// is refused (TCP reset, ICMP administratively prohibited) though it is
/// reachable from the pod; the cluster is still reached.
fn guest_is_isolated_from_the_pod(mode: &str) {
    let _g = shared();
    let net = PodNet::new(&format!("isolate{mode}"));
    let servers = Servers::start(&net.cluster, CLUSTER_IP);
    net.cluster.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{METADATA_IP}/32"),
        "dev",
        "eth0",
    ]);
    let _metadata = Servers::start(&net.cluster, METADATA_IP);
    let _listed = Servers::start_exchange_on(&net.pod, "0.0.0.0", LISTED_PORT);
    let _unlisted = Servers::start_exchange_on(&net.pod, "0.0.0.0", UNLISTED_PORT);
    let pod_udp = net.pod.run(async {
        tokio::net::UdpSocket::bind("0.0.0.0:5353")
            .await
            .expect("bind a pod-local UDP port")
    });
    // A pod process on DNS's port at the pod IP (vmpod's forwarder has the
    // gateway's): the firewall opens 53 at the gateway only.
    let pod_dns = net.pod.run(async {
        tokio::net::UdpSocket::bind(format!("{POD_IP}:53"))
            .await
            .expect("bind the pod IP's UDP 53")
    });
    let udp_echo = net.pod.spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = pod_udp.recv_from(&mut buf).await {
            let _ = pod_udp.send_to(&buf[..n], from).await;
        }
    });
    let dns_echo = net.pod.spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = pod_dns.recv_from(&mut buf).await {
            let _ = pod_dns.send_to(&buf[..n], from).await;
        }
    });
    let metadata = addr(&format!("{METADATA_IP}:{EXCHANGE_PORT}"));
    // Control: the address is served, to the pod itself.
    net.pod
        .run(exchange(metadata, 10, 10))
        .expect("the pod reaches the metadata stand-in")
        .assert_intact(10, 10);
    let vm = net.start_vmpod(config(mode, |t| {
        t.replace(
            "  mtu: auto\n",
            &format!("  mtu: auto\n  guest_access: [{LISTED_PORT}]\n"),
        )
    }));

    let mut table = Vec::new();
    for ip in [GATEWAY_IP, POD_IP] {
        let listed = addr(&format!("{ip}:{LISTED_PORT}"));
        net.guest
            .run(exchange(listed, 10, 10))
            .unwrap_or_else(|e| panic!("{mode}: the listed {listed} must answer the guest: {e}"))
            .assert_intact(10, 10);
        table.push(format!("{listed}: answered"));
        for port in [UNLISTED_PORT, 8181] {
            let to = addr(&format!("{ip}:{port}"));
            let err = net
                .guest
                .run(connect_and_read(to))
                .expect_err(&format!("{mode}: the guest reached {to}"));
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{to}: {err}");
            table.push(format!("{to}: {err}"));
        }
        let udp = addr(&format!("{ip}:5353"));
        let err = net
            .guest
            .run(udp_probe(udp))
            .expect_err(&format!("{mode}: the guest reached {udp}/udp"));
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionRefused,
            "{udp}/udp: {err}"
        );
        table.push(format!("{udp}/udp: {err}"));
    }
    let pod_dns = addr(&format!("{POD_IP}:53"));
    let err = net.guest.run(udp_probe(pod_dns)).expect_err(&format!(
        "{mode}: the guest reached a pod process on {pod_dns}/udp"
    ));
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "{pod_dns}/udp: {err}"
    );
    table.push(format!("{pod_dns}/udp (a pod process): {err}"));
    let err = net
        .guest
        .run(connect_and_read(metadata))
        .expect_err(&format!("{mode}: the guest reached the metadata address"));
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "{metadata}: {err}"
    );
    table.push(format!("{metadata}: {err}"));
    let err = net
        .guest
        .run(udp_probe(addr(&format!("{METADATA_IP}:53"))))
        .expect_err(&format!("{mode}: UDP to the metadata address"));
    assert_eq!(err.kind(), io::ErrorKind::HostUnreachable, "{err}");
    table.push(format!("{METADATA_IP}:53/udp: {err}"));
    // What is allowed still works.
    net.guest
        .run(exchange(cluster(EXCHANGE_PORT), 10, 10))
        .expect("the cluster, past the refusals")
        .assert_intact(10, 10);
    eprintln!("{mode}: the guest's probes\n  {}", table.join("\n  "));
    if is_proxy(mode) {
        let e = &vm.relays().egress;
        assert_eq!(RelayStats::get(&e.accepted), 1, "only the cluster exchange");
    }
    assert!(
        servers.peer_ips().iter().all(|p| p == POD_IP),
        "{:?}",
        servers.peer_ips()
    );
    udp_echo.abort();
    dns_echo.abort();
    stop(&net, vm);
}

fn present(net: &PodNet, argv: &[&str], needle: &str) -> bool {
    let out = net.pod.command(argv).output().expect("run in pod");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(needle)
}

/// Removes something with `remove`, then waits for it to be back; the time it took.
fn restored_within(net: &PodNet, remove: &[&str], check: &[&str], needle: &str) -> Duration {
    assert!(
        present(net, check, needle),
        "{needle} missing before removal"
    );
    net.pod.sh(remove);
    let removed = Instant::now();
    assert!(
        !present(net, check, needle),
        "`{}` did not remove it",
        remove.join(" ")
    );
    wait_until(
        &format!("{needle} to be restored after `{}`", remove.join(" ")),
        // Reconcile runs every second; the bound is loose because a loaded
        // CI machine stretches it (the figure belongs to the reliability
        // scorecard, not to a timed test).
        Duration::from_secs(10),
        || present(net, check, needle).then_some(()),
    );
    removed.elapsed()
}

fn reconcile_restores_what_others_removed(mode: &str) {
    let _g = shared();
    // An MTU of its own, so that a changed one is vmpod's to set back.
    let (net, _servers, vm) = running("reconcile", mode, |t| t.replace("mtu: auto", "mtu: 1400"));
    let mut removals: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (
            vec!["nft", "flush", "ruleset"],
            vec!["nft", "list", "table", "inet", "vmpod"],
            "table inet vmpod",
        ),
        (
            vec!["ip", "link", "set", "virbr0", "down"],
            vec!["ip", "link", "show", "virbr0"],
            ",UP",
        ),
        (
            vec!["ip", "address", "del", "10.0.1.1/24", "dev", "virbr0"],
            vec!["ip", "-4", "address", "show", "dev", "virbr0"],
            "inet 10.0.1.1/24",
        ),
        (
            vec!["ip", "link", "set", "virbr0", "mtu", "1300"],
            vec!["ip", "link", "show", "virbr0"],
            "mtu 1400 ",
        ),
        (
            vec!["ip", "link", "set", TAP, "nomaster"],
            vec!["ip", "link", "show", TAP],
            "master virbr0",
        ),
        (
            vec!["ip", "link", "set", TAP, "down"],
            vec!["ip", "link", "show", TAP],
            ",UP",
        ),
        (
            vec!["sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"],
            vec!["sysctl", "net.ipv4.conf.all.rp_filter"],
            "= 0",
        ),
        (
            vec!["sysctl", "-w", "net.ipv4.conf.vguest.rp_filter=2"],
            vec!["sysctl", "net.ipv4.conf.vguest.rp_filter"],
            "= 0",
        ),
    ];
    if mode == "tproxy" {
        removals.push((
            vec![
                "ip",
                "rule",
                "del",
                "fwmark",
                "0x4000/0x4000",
                "lookup",
                "4000",
            ],
            vec!["ip", "rule"],
            "lookup 4000",
        ));
        removals.push((
            vec![
                "ip", "route", "del", "local", "default", "dev", "lo", "table", "4000",
            ],
            vec!["ip", "route", "show", "table", "4000"],
            "local default dev lo",
        ));
        removals.push((
            vec!["ip", "rule", "flush"],
            vec!["ip", "rule"],
            "32766:\tfrom all lookup main",
        ));
    }
    let mut figures = Vec::new();
    for (remove, check, needle) in removals {
        let took = restored_within(&net, &remove, &check, needle);
        figures.push(format!("`{}` repaired in {took:?}", remove.join(" ")));
        net.guest
            .run(exchange(cluster(EXCHANGE_PORT), 10, 10))
            .unwrap_or_else(|e| panic!("egress after `{}` and repair: {e}", remove.join(" ")))
            .assert_intact(10, 10);
    }
    if mode == "tproxy" {
        // The flush took the pod's own rules too: all of them are back.
        let rules = net.pod.sh(&["ip", "rule"]);
        for want in [
            "32000:",
            "32766:",
            "32767:",
            "lookup 4000",
            "lookup main",
            "lookup default",
        ] {
            assert!(
                rules.contains(want),
                "{want} after `ip rule flush`:\n{rules}"
            );
        }
    }
    eprintln!("{mode}:\n  {}", figures.join("\n  "));
    let logs = logs_of(&net.pod);
    for line in [
        "repaired table inet vmpod: found the table missing; did applied it again",
        "repaired bridge virbr0: found link down; did set it up",
        "repaired bridge virbr0: found address 10.0.1.1/24 missing; did added 10.0.1.1/24",
        "repaired bridge virbr0: found MTU 1300; did set MTU 1400",
        "repaired tap vguest: found not a port of virbr0; did attached it to virbr0",
        "repaired tap vguest: found link down; did set it up",
        "repaired sysctl net.ipv4.conf.all.rp_filter: found net.ipv4.conf.all.rp_filter = 1; did set net.ipv4.conf.all.rp_filter = 0",
    ] {
        assert!(logs.contains(line), "missing `{line}` in:\n{logs}");
    }
    if mode == "tproxy" {
        assert!(
            logs.contains("repaired rule ip rule 32766: from all lookup main: found"),
            "{logs}"
        );
    }
    stop(&net, vm);
}

fn teardown_leaves_the_pod_as_it_was(mode: &str) {
    let _g = shared();
    let net = PodNet::new(&format!("teardown{mode}"));
    let _servers = Servers::start(&net.cluster, CLUSTER_IP);
    // Another container's state, which vmpod must neither remove nor change.
    net.pod.sh(&[
        "nft",
        "add table ip sidecar; add chain ip sidecar output { type nat hook output priority -100; }; add rule ip sidecar output tcp dport 1 return",
    ]);
    net.pod.sh(&[
        "ip", "rule", "add", "fwmark", "0x539", "lookup", "133", "priority", "32764",
    ]);
    let before = net.pod_state();
    let vm = net.start_vmpod(config(mode, |t| t));
    net.guest
        .run(exchange(cluster(EXCHANGE_PORT), 10, 10))
        .expect("egress")
        .assert_intact(10, 10);
    let during = net.pod_state();
    assert_ne!(
        before, during,
        "vmpod changed nothing: the comparison proves nothing"
    );
    stop(&net, vm);
    assert_eq!(net.pod_state(), before, "teardown left the pod changed");
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

per_mode!(reaches_the_cluster_as_the_pod: tproxy, redirect, kernel, accel);
per_mode!(ten_megabytes_each_way: tproxy, redirect, kernel, accel);
per_mode!(half_close_passes_the_fin_and_keeps_the_answer: tproxy, redirect, kernel, accel);
per_mode!(refused_upstream_reaches_the_guest: tproxy, redirect, kernel, accel);
per_mode!(a_thousand_concurrent_connections: tproxy, redirect, kernel, accel);
// Kernel mode has no proxy: no connection limit and nothing to loop into.
per_mode!(connection_limit_refuses_new_and_keeps_old: tproxy, redirect, accel);
per_mode!(loop_guard_refuses_vmpod_itself: tproxy, redirect);
per_mode!(guest_is_isolated_from_the_pod: tproxy, redirect, kernel);
per_mode!(reconcile_restores_what_others_removed: tproxy, redirect, kernel);
per_mode!(teardown_leaves_the_pod_as_it_was: tproxy, redirect, kernel);
