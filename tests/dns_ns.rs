//! vmpod's DNS forwarder on the gateway of a pod namespace, queried by
//! `dig` in a guest namespace, forwarding to a small DNS server in the
//! cluster namespace that the pod's resolv.conf names. Assertions are on
//! what dig received and what the server saw (the pod's address, never the
//! guest's).
//!
//! Needs root, `ip`, `nft` (the harness) and `dig` (bind9-dnsutils).

#[path = "support/guest_bridge.rs"]
mod guest_bridge;
#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_bridge::bridged;
use podnet::{GATEWAY_IP, Ns, PodNet};
use support::sandbox::{CLUSTER_IP, POD_IP, require};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use vmpod::dns::stats::get;
use vmpod::dns::{DnsForwarder, DnsStats, ForwarderConfig, resolv};

const NAME: &str = "web.default.svc.cluster.local";
/// Its UDP answer is truncated; over TCP it has `BIG_COUNT` A records.
const BIG: &str = "big.cluster.local";
const BIG_COUNT: u8 = 40;

// ---- a tiny authoritative server in the cluster namespace --------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

/// Who asked the cluster's DNS server what.
type Seen = Arc<Mutex<Vec<(Proto, SocketAddr, String)>>>;

struct ClusterDns {
    seen: Seen,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ClusterDns {
    fn start(ns: &Ns, addr: SocketAddr) -> ClusterDns {
        let seen: Seen = Arc::default();
        let (udp, tcp) = ns.run(async move {
            (
                UdpSocket::bind(addr).await.expect("bind udp 53"),
                TcpListener::bind(addr).await.expect("bind tcp 53"),
            )
        });
        let s = seen.clone();
        let udp_task = ns.spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some((name, answer)) = answer(&buf[..n], Proto::Udp) {
                    s.lock().unwrap().push((Proto::Udp, peer, name));
                    let _ = udp.send_to(&answer, peer).await;
                }
            }
        });
        let s = seen.clone();
        let tcp_task = ns.spawn(async move {
            loop {
                let Ok((mut conn, peer)) = tcp.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    while let Ok(len) = conn.read_u16().await {
                        let mut q = vec![0u8; len as usize];
                        if conn.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let Some((name, a)) = answer(&q, Proto::Tcp) else {
                            return;
                        };
                        s.lock().unwrap().push((Proto::Tcp, peer, name));
                        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                        framed.extend(a);
                        if conn.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ClusterDns {
            seen,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn seen(&self) -> Vec<(Proto, SocketAddr, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// The question's name (lowercase, no trailing dot), its type, and where it ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
    out
}

/// The answer to query `q`: A, AAAA and SRV for NAME, many A for BIG
/// (truncated over UDP), NXDOMAIN for the rest.
fn answer(q: &[u8], proto: Proto) -> Option<(String, Vec<u8>)> {
    let (name, qtype, end) = question(q)?;
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut truncated = false;
    match (name.as_str(), qtype) {
        (NAME, 1) => records.push((1, vec![10, 96, 0, 50])),
        (NAME, 28) => {
            let ip: std::net::Ipv6Addr = "fd00::50".parse().unwrap();
            records.push((28, ip.octets().to_vec()));
        }
        (NAME, 33) => {
            let mut rdata = vec![0, 10, 0, 5, 0x1f, 0x90]; // priority 10, weight 5, port 8080
            rdata.extend(encode_name(NAME));
            records.push((33, rdata));
        }
        (BIG, 1) if proto == Proto::Udp => truncated = true,
        (BIG, 1) => {
            for i in 1..=BIG_COUNT {
                records.push((1, vec![10, 96, 1, i]));
            }
        }
        _ => {}
    }
    let known = name == NAME || name == BIG;
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0100 | 0x0080; // QR AA RD RA
    if truncated {
        flags |= 0x0200;
    }
    if !known {
        flags |= 3; // NXDOMAIN
    }
    let mut a = Vec::new();
    a.extend(&q[..2]);
    a.extend(flags.to_be_bytes());
    a.extend(1u16.to_be_bytes());
    a.extend((records.len() as u16).to_be_bytes());
    a.extend([0, 0, 0, 0]);
    a.extend(&q[12..end]);
    for (rtype, rdata) in records {
        a.extend([0xC0, 12]);
        a.extend(rtype.to_be_bytes());
        a.extend(1u16.to_be_bytes());
        a.extend(30u32.to_be_bytes());
        a.extend((rdata.len() as u16).to_be_bytes());
        a.extend(rdata);
    }
    Some((name, a))
}

// ---- the forwarder in the pod namespace ----------------------------------

struct Forwarder {
    stats: Arc<DnsStats>,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stops `fwd` and waits until its sockets are closed, so port 53 can be
/// bound again (an abort alone only asks the runtime to drop the task).
fn stop_forwarder(net: &PodNet, fwd: Forwarder) {
    fwd.task.abort();
    wait_until_bindable(net);
}

fn wait_until_bindable(net: &PodNet) {
    let addr: SocketAddr = format!("{GATEWAY_IP}:53").parse().unwrap();
    net.pod.run(async move {
        for _ in 0..100 {
            if UdpSocket::bind(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{addr} still bound 2 s after the forwarder was stopped");
    });
}

fn start_forwarder(net: &PodNet, edit: impl FnOnce(&mut ForwarderConfig)) -> Forwarder {
    // The pod's resolv.conf, as the kubelet writes it (a test file: the
    // machine's /etc/resolv.conf is not touched).
    let conf = resolv::parse(&format!(
        "search default.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver {CLUSTER_IP}\noptions ndots:5\n"
    ));
    let mut config = ForwarderConfig::new(
        format!("{GATEWAY_IP}:53").parse().unwrap(),
        conf.server_addrs(53, resolv::interface_index),
    );
    config.attempt_timeout = Duration::from_millis(800);
    edit(&mut config);
    let fwd = net
        .pod
        .run(async move { DnsForwarder::bind(config) })
        .unwrap_or_else(|e| panic!("{e}"));
    Forwarder {
        stats: fwd.stats(),
        task: net.pod.spawn(fwd.run()),
    }
}

fn dig(net: &PodNet, args: &[&str]) -> String {
    let mut argv = vec!["dig", "@10.0.1.1", "+tries=1", "+time=3"];
    argv.extend(args);
    let out = net.guest.command(&argv).output().expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(net: &PodNet, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend(args);
    let mut lines: Vec<String> = dig(net, &a).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn require_dig() {
    require(&[("dig", "bind9-dnsutils")]);
}

#[test]
fn a_aaaa_and_srv_over_udp_and_tcp_come_from_the_pod_address() {
    require_dig();
    let net = bridged("dnsforward", true);
    let server = ClusterDns::start(&net.cluster, format!("{CLUSTER_IP}:53").parse().unwrap());
    let fwd = start_forwarder(&net, |_| {});
    for transport in ["+notcp", "+tcp"] {
        assert_eq!(
            short(&net, &[transport, NAME, "A"]),
            ["10.96.0.50"],
            "{transport}"
        );
        assert_eq!(
            short(&net, &[transport, NAME, "AAAA"]),
            ["fd00::50"],
            "{transport}"
        );
        assert_eq!(
            short(&net, &[transport, NAME, "SRV"]),
            [format!("10 5 8080 {NAME}.")],
            "{transport}"
        );
    }
    let nx = dig(&net, &["nothing.cluster.local", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");

    let seen = server.seen();
    assert_eq!(seen.len(), 7, "{seen:?}");
    for (_, peer, _) in &seen {
        assert_eq!(peer.ip(), POD_IP.parse::<IpAddr>().unwrap(), "{seen:?}");
    }
    let udp = seen.iter().filter(|s| s.0 == Proto::Udp).count();
    assert_eq!((udp, seen.len() - udp), (4, 3));
    let ports: std::collections::HashSet<u16> = seen
        .iter()
        .filter(|s| s.0 == Proto::Udp)
        .map(|s| s.1.port())
        .collect();
    assert_eq!(
        ports.len(),
        4,
        "a fresh source port per UDP query: {seen:?}"
    );
    let s = &fwd.stats;
    assert_eq!((get(&s.udp_queries), get(&s.tcp_queries)), (4, 3));
    assert_eq!(get(&s.answers), 7);
    assert_eq!(get(&s.failures), 0);
    assert_eq!(get(&s.latency.count), 7);
}

#[test]
fn a_truncated_answer_makes_the_client_retry_over_tcp() {
    require_dig();
    let net = bridged("dnstruncated", true);
    let server = ClusterDns::start(&net.cluster, format!("{CLUSTER_IP}:53").parse().unwrap());
    let fwd = start_forwarder(&net, |_| {});
    let answers = short(&net, &[BIG, "A"]);
    assert_eq!(answers.len(), BIG_COUNT as usize, "{answers:?}");
    let protos: Vec<Proto> = server.seen().into_iter().map(|s| s.0).collect();
    assert_eq!(protos, [Proto::Udp, Proto::Tcp]);
    assert_eq!(get(&fwd.stats.truncated), 1);
}

#[test]
fn a_silent_upstream_gives_servfail_within_the_bound_and_the_next_one_answers() {
    require_dig();
    let net = bridged("dnssilent", true);
    // A second cluster address whose port 53 takes datagrams and never answers.
    let silent_ip = "10.89.0.53";
    net.cluster.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{silent_ip}/24"),
        "dev",
        "eth0",
    ]);
    let silent: SocketAddr = format!("{silent_ip}:53").parse().unwrap();
    let _hole = net
        .cluster
        .run(async move { std::sync::Arc::new(UdpSocket::bind(silent).await.unwrap()) });
    let silent_tcp = net
        .cluster
        .run(async move { TcpListener::bind(silent).await.unwrap() });
    let server = ClusterDns::start(&net.cluster, format!("{CLUSTER_IP}:53").parse().unwrap());

    // Only the silent one: SERVFAIL after one attempt timeout.
    {
        let fwd = start_forwarder(&net, |c| {
            c.upstreams = vec![silent];
            c.attempt_timeout = Duration::from_millis(500);
        });
        for transport in ["+notcp", "+tcp"] {
            let started = Instant::now();
            let out = dig(&net, &[transport, NAME, "A"]);
            let took = started.elapsed();
            assert!(out.contains("status: SERVFAIL"), "{transport}: {out}");
            assert!(
                took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
                "{transport}: SERVFAIL after {took:?}"
            );
        }
        assert_eq!(get(&fwd.stats.timeouts), 2);
        assert_eq!(get(&fwd.stats.failures), 2);
        stop_forwarder(&net, fwd);
    }
    // Silent first, then the real one: the answer, one timeout later.
    let fwd = start_forwarder(&net, |c| {
        c.upstreams = vec![silent, format!("{CLUSTER_IP}:53").parse().unwrap()];
        c.attempt_timeout = Duration::from_millis(500);
    });
    assert_eq!(short(&net, &[NAME, "A"]), ["10.96.0.50"]);
    assert_eq!(get(&fwd.stats.timeouts), 1);
    assert_eq!(get(&fwd.stats.answers), 1);
    assert_eq!(server.seen().len(), 1);
    drop(silent_tcp);
}

#[test]
fn queries_beyond_the_in_flight_limit_are_dropped() {
    require_dig();
    let net = bridged("dnsinflight", true);
    let silent_ip = "10.89.0.53";
    net.cluster.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{silent_ip}/24"),
        "dev",
        "eth0",
    ]);
    let silent: SocketAddr = format!("{silent_ip}:53").parse().unwrap();
    let _hole = net
        .cluster
        .run(async move { UdpSocket::bind(silent).await.unwrap() });
    let fwd = start_forwarder(&net, |c| {
        c.upstreams = vec![silent];
        c.attempt_timeout = Duration::from_secs(2);
        c.max_in_flight = 4;
    });
    // Ten queries at once from the guest; four are held, six dropped.
    let answered = net.guest.run(async {
        let s = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let gw: SocketAddr = format!("{GATEWAY_IP}:53").parse().unwrap();
        for id in 0..10u16 {
            let mut q = id.to_be_bytes().to_vec();
            q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1]);
            s.send_to(&q, gw).await.unwrap();
        }
        let mut n = 0;
        let mut buf = [0u8; 512];
        while tokio::time::timeout(Duration::from_secs(4), s.recv(&mut buf))
            .await
            .is_ok()
        {
            n += 1;
        }
        n
    });
    assert_eq!(get(&fwd.stats.dropped_busy), 6);
    assert_eq!(answered, 4, "the held ones get SERVFAIL");
}

#[test]
fn idle_tcp_connections_are_closed_and_their_number_is_bounded() {
    require_dig();
    let net = bridged("dnstcpidle", true);
    let _server = ClusterDns::start(&net.cluster, format!("{CLUSTER_IP}:53").parse().unwrap());
    let fwd = start_forwarder(&net, |c| {
        c.tcp_idle_timeout = Duration::from_millis(300);
        c.max_tcp_connections = 2;
    });
    let (rejected_after, idle_after) = net.guest.run(async {
        use tokio::net::TcpStream;
        let gw: SocketAddr = format!("{GATEWAY_IP}:53").parse().unwrap();
        let started = Instant::now();
        let mut a = TcpStream::connect(gw).await.unwrap();
        let _b = TcpStream::connect(gw).await.unwrap();
        let mut c = TcpStream::connect(gw).await.unwrap();
        let mut buf = [0u8; 16];
        // The third is closed at once (EOF or reset), long before the idle timeout.
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        let rejected_after = started.elapsed();
        let r = tokio::time::timeout(Duration::from_secs(3), a.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0))),
            "an idle connection is closed: {r:?}"
        );
        (rejected_after, started.elapsed())
    });
    assert!(
        rejected_after < Duration::from_millis(250),
        "{rejected_after:?}"
    );
    assert!(
        idle_after >= Duration::from_millis(250) && idle_after < Duration::from_secs(2),
        "{idle_after:?}"
    );
    assert_eq!(get(&fwd.stats.tcp_rejected), 1);
    assert_eq!(get(&fwd.stats.tcp_connections), 2);
    // The slots are free again.
    assert_eq!(short(&net, &["+tcp", NAME, "A"]), ["10.96.0.50"]);
}
