//! The ingress data path without a VM: vmpod's network setup and relays run
//! in-process in a "pod" network namespace, servers in a "guest" namespace
//! (a veth on the bridge, at 10.0.1.2) play the VM, and clients in the
//! "cluster" namespace (or the pod itself, as a sidecar would) connect to
//! the pod's ports (see tests/support/podnet.rs). Assertions are on what
//! clients, guest servers and the kernel see.
//!
//! Needs root, `ip`, `nft`, `ss` and `curl`.

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use podnet::{
    GATEWAY_IP, GUEST_IP, Ns, Opened, PodNet, Servers, Vmpod, connect_and_read, exchange, fd_count,
    plan_of, raise_fd_limit, serve_each, wait_until,
};
use support::sandbox::{CLUSTER_IP, POD_IP, output_text, require};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use vmpod::config::{FileChecks, VmConfig};
use vmpod::relay::running::Relays;
use vmpod::relay::stats::RelayStats;

/// The guest's servers (podnet's `Servers::start` on the guest address).
const EXCHANGE: u16 = 7000;
const ECHO: u16 = 7001;
const HTTP: u16 = 8080;
const UDP_ECHO: u16 = 7007;
const PROXY_HEADER_ECHO: u16 = 7010;
/// Started by the test that uses it (`answer_and_close`).
const ANSWER_AND_CLOSE: u16 = 7011;
/// Nothing listens there in the guest.
const CLOSED: u16 = 7999;

/// IPv6 addresses given to the pod's and the cluster's eth0 by [`with_ipv6`].
const POD_IP6: &str = "fd89::2";
const CLUSTER_IP6: &str = "fd89::1";
/// A second IPv4 address of the pod, to prove answers leave from the
/// address a client used.
const POD_IP_SECOND: &str = "10.89.0.3";

/// The fd-count test takes it exclusively: other tests of this process
/// would open and close sockets under it.
static FDS: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FDS.read().unwrap_or_else(|e| e.into_inner())
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    SocketAddr::new(ip, port)
}

/// The example config in egress `mode` with `ingress` (YAML list items,
/// indented as under `network.ingress`) in place of its ingress list, and
/// `egress_extra` lines added under `network.egress`.
fn config(mode: &str, ingress: &str, egress_extra: &str) -> VmConfig {
    let text = support::vm::example_config(|t| t);
    let start = text
        .find("  ingress:\n")
        .expect("example has network.ingress");
    let end = text.find("lifecycle:").expect("example has lifecycle");
    let mut text = format!("{}  ingress:\n{ingress}{}", &text[..start], &text[end..]);
    text = text.replace("mode: tproxy", &format!("mode: {mode}"));
    if !egress_extra.is_empty() {
        text = text.replace(
            "    exclude: []\n",
            &format!("    exclude: []\n{egress_extra}"),
        );
    }
    if vmpod::relay::accel::test_mode() {
        text = podnet::with_accel(text);
    }
    vmpod::config::load("ingress.yaml", &text, FileChecks::Warn)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .config
}

/// One ingress list item.
fn entry(name: &str, port: u16, guest_port: u16, extra: &str) -> String {
    let mut s = format!("    - name: {name}\n      port: {port}\n      guest_port: {guest_port}\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("      {}\n", line.trim()));
    }
    s
}

fn stats(vm: &Vmpod, name: &str) -> Arc<RelayStats> {
    vm.relays()
        .ingress
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no ingress relay {name}"))
        .1
        .clone()
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    RelayStats::get(counter)
}

fn stop(net: &PodNet, vm: Vmpod) {
    let errors = net.stop_vmpod(vm);
    assert!(errors.is_empty(), "teardown failed: {errors:?}");
}

/// Gives the pod and the cluster IPv6 addresses on their shared link.
fn with_ipv6(net: &PodNet) {
    for (ns, ip) in [(&net.pod, POD_IP6), (&net.cluster, CLUSTER_IP6)] {
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
    }
}

/// `ss` listing of the pod: `-ltn` or `-lun`, one `ADDR:PORT` per line.
fn pod_sockets(net: &PodNet, flags: &str) -> Vec<String> {
    net.pod
        .sh(&["ss", "-H", flags])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn curl(ns: &Ns, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["curl", "-sS", "-m", "5"];
    argv.extend_from_slice(args);
    let out = ns.command(&argv).output().expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(output_text(&out))
    }
}

// ---- the guest's servers --------------------------------------------------

/// An HTTP/1.0 server in `ns` on `ip:port` that answers every request with
/// `hello from the guest; peer=IP` (the address the connection came from).
fn http_server(ns: &Ns, ip: &str, port: u16) -> tokio::task::JoinHandle<()> {
    serve_each(ns, addr(ip, port), |mut s, peer| async move {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("hello from the guest; peer={}\n", peer.ip());
        let answer = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
    })
}

/// A UDP server in `ns` on `ip:port` answering each datagram with
/// `PEER;PAYLOAD`, PEER being the socket it came from; it records the peers.
fn udp_echo(
    ns: &Ns,
    ip: &str,
    port: u16,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<SocketAddr>>>) {
    let at = addr(ip, port);
    let sock = ns.run(async move { UdpSocket::bind(at).await.expect("bind udp echo") });
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let task = ns.spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            seen.lock().unwrap().push(peer);
            let mut answer = format!("{peer};").into_bytes();
            answer.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&answer, peer).await;
        }
    });
    (task, peers)
}

/// A TCP server in `ns` that reads a PROXY protocol header (v1 or v2) off
/// each connection, sends its bytes back at once (before the client says
/// anything), then echoes the rest.
fn proxy_header_echo(ns: &Ns, ip: &str, port: u16) -> tokio::task::JoinHandle<()> {
    serve_each(ns, addr(ip, port), |mut s, _| async move {
        let Ok(header) = read_proxy_header(&mut s).await else {
            return;
        };
        if s.write_all(&header).await.is_err() {
            return;
        }
        let (mut r, mut w) = s.into_split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
}

async fn read_proxy_header(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut first = [0u8; 16];
    s.read_exact(&mut first[..6]).await?;
    if &first[..6] == b"PROXY " {
        let mut line = first[..6].to_vec();
        while !line.ends_with(b"\r\n") {
            line.push(s.read_u8().await?);
            if line.len() > 107 {
                return Err(io::Error::other("v1 line longer than 107 bytes"));
            }
        }
        return Ok(line);
    }
    s.read_exact(&mut first[6..]).await?;
    let len = u16::from_be_bytes([first[14], first[15]]) as usize;
    let mut header = first.to_vec();
    header.resize(16 + len, 0);
    s.read_exact(&mut header[16..]).await?;
    Ok(header)
}

/// The guest's usual servers: exchange and echo (podnet), HTTP, UDP echo,
/// PROXY header echo.
struct Guest {
    _servers: Servers,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    udp_peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
    }
}

fn guest_servers(net: &PodNet) -> Guest {
    let servers = Servers::start(&net.guest, GUEST_IP);
    let (udp, udp_peers) = udp_echo(&net.guest, GUEST_IP, UDP_ECHO);
    Guest {
        _servers: servers,
        _tasks: vec![
            http_server(&net.guest, GUEST_IP, HTTP),
            udp,
            proxy_header_echo(&net.guest, GUEST_IP, PROXY_HEADER_ECHO),
        ],
        udp_peers,
    }
}

// ---- clients ------------------------------------------------------------

/// A connected UDP client: it accepts answers only from `to` itself.
async fn udp_client(bind: &str, to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr(bind, 0)).await.expect("bind client");
    s.connect(to).await.expect("connect client");
    s
}

/// Sends `payload` and waits up to `wait` for one answer.
async fn ask(s: &UdpSocket, payload: &[u8], wait: Duration) -> io::Result<String> {
    s.send(payload).await?;
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(wait, s.recv(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The peer part of a UDP echo answer.
fn answer_peer(answer: &str) -> SocketAddr {
    answer
        .split_once(';')
        .and_then(|(p, _)| p.parse().ok())
        .unwrap_or_else(|| panic!("not an echo answer: {answer}"))
}

// ---- TCP ----------------------------------------------------------------

#[test]
fn http_from_the_cluster_over_ipv4_and_ipv6() {
    require(&[("curl", "curl"), ("ss", "iproute2")]);
    let _g = shared();
    let net = PodNet::new("http46");
    with_ipv6(&net);
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config("tproxy", &entry("http", 9080, HTTP, ""), ""));
    let listening = pod_sockets(&net, "-ltn");
    for want in ["0.0.0.0:9080", "[::]:9080"] {
        assert!(
            listening.iter().any(|l| l == want),
            "no listener {want}: {listening:?}"
        );
    }
    for url in [
        format!("http://{POD_IP}:9080/"),
        format!("http://[{POD_IP6}]:9080/"),
    ] {
        let body = curl(&net.cluster, &[&url]).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            body,
            format!("hello from the guest; peer={GATEWAY_IP}\n"),
            "{url}"
        );
    }
    let s = stats(&vm, "http");
    assert_eq!(get(&s.accepted), 2);
    assert!(get(&s.bytes_in) > 0 && get(&s.bytes_out) > 0);
    stop(&net, vm);
    assert!(
        !pod_sockets(&net, "-ltn")
            .iter()
            .any(|l| l.ends_with(":9080")),
        "the listeners outlived stop"
    );
}

#[test]
fn a_pod_without_ipv6_listens_on_ipv4_only() {
    require(&[("ss", "iproute2")]);
    let _g = shared();
    let net = PodNet::new("noipv6");
    net.pod
        .sh(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    net.pod
        .sh(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    net.pod
        .sh(&["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
    let inet6 = net.pod.sh(&["ip", "-6", "addr"]);
    assert!(inet6.trim().is_empty(), "the pod still has IPv6: {inet6}");
    let _guest = guest_servers(&net);
    let ingress = format!(
        "{}{}",
        entry("http", 9080, HTTP, ""),
        entry("echo", UDP_ECHO, UDP_ECHO, "protocol: udp")
    );
    let vm = net.start_vmpod(config("tproxy", &ingress, ""));
    let tcp = pod_sockets(&net, "-ltn");
    let udp = pod_sockets(&net, "-lun");
    assert!(tcp.iter().any(|l| l == "0.0.0.0:9080"), "{tcp:?}");
    assert!(udp.iter().any(|l| l == "0.0.0.0:7007"), "{udp:?}");
    assert!(
        !tcp.iter().chain(&udp).any(|l| l.starts_with('[')),
        "IPv6 sockets in a pod without IPv6: {tcp:?} {udp:?}"
    );
    let body = curl(&net.cluster, &[&format!("http://{POD_IP}:9080/")]).expect("http over IPv4");
    assert!(body.starts_with("hello from the guest"), "{body}");
    stop(&net, vm);
}

#[test]
fn ten_megabytes_each_way_with_checksums() {
    let _g = shared();
    let net = PodNet::new("tenMB");
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config("tproxy", &entry("data", 9000, EXCHANGE, ""), ""));
    const TEN_MB: u64 = 10 * 1024 * 1024;
    let started = Instant::now();
    let got = net
        .cluster
        .run(exchange(addr(POD_IP, 9000), TEN_MB, TEN_MB))
        .expect("10 MB each way through the ingress forwarder");
    eprintln!("ingress: 10 MB each way in {:?}", started.elapsed());
    got.assert_intact(TEN_MB, TEN_MB);
    let s = stats(&vm, "data");
    assert!(get(&s.bytes_out) >= TEN_MB && get(&s.bytes_in) >= TEN_MB);
    stop(&net, vm);
}

/// The send buffer (`ss -m`'s `tb`) of each established pod socket whose
/// local or peer address ends in `:port`.
fn pod_send_buffers(net: &PodNet, ports: &[u16]) -> Vec<(String, u64)> {
    let text = net.pod.sh(&["ss", "-Htnm", "state", "established"]);
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let (Some(socket), Some(mem)) = (lines.next(), lines.next()) {
        let addrs: Vec<&str> = socket.split_whitespace().skip(2).take(2).collect();
        let ours = addrs
            .iter()
            .any(|a| ports.iter().any(|p| a.ends_with(&format!(":{p}"))));
        let tb = mem
            .split(['(', ','])
            .find_map(|f| f.strip_prefix("tb"))
            .and_then(|v| v.parse().ok());
        if let (true, Some(tb)) = (ours, tb) {
            found.push((addrs.join(" "), tb));
        }
    }
    found
}

/// Under accel both relayed sockets get the fixed send buffer that keeps
/// the kernel's psock worker from stalling on a full queue; the splice
/// path leaves the kernel's autotuning alone.
#[test]
fn accelerated_sockets_get_the_wide_send_buffer_and_others_do_not() {
    let _g = shared();
    let net = PodNet::new("sndbuf");
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config("tproxy", &entry("echo", 9000, ECHO, ""), ""));
    let accel = vmpod::relay::accel::test_mode();
    let held = net.cluster.run(async {
        let mut c = TcpStream::connect(addr(POD_IP, 9000)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        c
    });
    let buffers = pod_send_buffers(&net, &[9000, ECHO]);
    assert_eq!(buffers.len(), 2, "the relay's two sockets: {buffers:?}");
    // SO_SNDBUFFORCE of 4 MiB, which the kernel doubles; autotuning stops
    // at tcp_wmem's maximum (4 MiB), so it never shows this figure.
    const WIDE: u64 = 8 << 20;
    for (socket, tb) in &buffers {
        if accel {
            assert_eq!(*tb, WIDE, "accelerated socket {socket}");
        } else {
            assert_ne!(*tb, WIDE, "socket {socket} on the splice path");
        }
    }
    drop(held);
    stop(&net, vm);
}

#[test]
fn half_close_passes_the_fin_and_keeps_the_answer() {
    let _g = shared();
    let net = PodNet::new("halfClose");
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config("tproxy", &entry("data", 9000, EXCHANGE, ""), ""));
    // The guest's server answers only after it has read the client's FIN.
    net.cluster
        .run(exchange(addr(POD_IP, 9000), 8, 0))
        .expect("answer after the client's FIN")
        .assert_intact(8, 0);
    net.cluster
        .run(exchange(addr(POD_IP, 9000), 100_000, 3))
        .expect("a long upload, a short answer after the FIN")
        .assert_intact(100_000, 3);
    stop(&net, vm);
}

/// A guest server that answers a 64-byte request and closes at once, as
/// an HTTP/1.0 server or a health endpoint does: its FIN follows the
/// answer within microseconds, and the client hangs up only after it.
fn answer_and_close(ns: &Ns, ip: &str, port: u16) -> tokio::task::JoinHandle<()> {
    serve_each(ns, addr(ip, port), |mut s, _| async move {
        let mut request = [0u8; 64];
        if s.read_exact(&mut request).await.is_ok() {
            request.reverse();
            let _ = s.write_all(&request).await;
        }
    })
}

#[test]
fn answers_followed_at_once_by_the_guests_fin_all_arrive() {
    let _g = shared();
    let net = PodNet::new("answerClose");
    let _server = answer_and_close(&net.guest, GUEST_IP, ANSWER_AND_CLOSE);
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry("short", 9000, ANSWER_AND_CLOSE, ""),
        "",
    ));
    const CLIENTS: usize = 4;
    const EACH: usize = 500;
    let target = addr(POD_IP, 9000);
    let failures = net.cluster.run(async move {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(async move {
                    let mut failed = Vec::new();
                    for i in 0..EACH {
                        let request: Vec<u8> = (0..64).map(|b| (b + c + i) as u8).collect();
                        let want: Vec<u8> = request.iter().rev().copied().collect();
                        let got = async {
                            let mut s = TcpStream::connect(target).await?;
                            s.write_all(&request).await?;
                            let mut answer = Vec::new();
                            s.read_to_end(&mut answer).await?;
                            Ok::<_, io::Error>(answer)
                        }
                        .await;
                        match got {
                            Ok(answer) if answer == want => {}
                            Ok(answer) => {
                                failed.push(format!("{} bytes, not the answer", answer.len()))
                            }
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    failed
                })
            })
            .collect();
        let mut failed = Vec::new();
        for c in clients {
            failed.extend(c.await.unwrap());
        }
        failed
    });
    assert!(
        failures.is_empty(),
        "{} of {} exchanges failed, the first: {:?}",
        failures.len(),
        CLIENTS * EACH,
        &failures[..failures.len().min(3)]
    );
    let s = stats(&vm, "short");
    wait_until("the last connection to end", Duration::from_secs(5), || {
        (get(&s.active) == 0).then_some(())
    });
    assert_eq!(get(&s.bytes_out), 64 * (CLIENTS * EACH) as u64);
    assert_eq!(get(&s.bytes_in), 64 * (CLIENTS * EACH) as u64);
    stop(&net, vm);
}

#[test]
fn a_refusing_guest_resets_the_client_and_no_one_else() {
    let _g = shared();
    let net = PodNet::new("refused");
    let _guest = guest_servers(&net);
    let ingress = format!(
        "{}{}",
        entry("data", 9000, EXCHANGE, ""),
        entry("closed", 9099, CLOSED, "")
    );
    let vm = net.start_vmpod(config("tproxy", &ingress, ""));
    net.cluster.run(async {
        // A connection in flight on another port of the pod...
        let open = Opened::open(addr(POD_IP, 9000), 1000)
            .await
            .expect("open data connection");
        // ...and one to a port the guest does not serve.
        let err = connect_and_read(addr(POD_IP, 9099))
            .await
            .expect_err("a refused guest port must not look served");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        open.finish(1000)
            .await
            .expect("the other connection is untouched")
            .assert_intact(1000, 1000);
    });
    assert_eq!(get(&stats(&vm, "closed").upstream_failed), 1);
    assert_eq!(get(&stats(&vm, "data").upstream_failed), 0);
    stop(&net, vm);
}

#[test]
fn a_thousand_concurrent_connections() {
    let _g = FDS.write().unwrap_or_else(|e| e.into_inner());
    raise_fd_limit();
    let net = PodNet::new("thousand");
    let servers = Servers::start_exchange_on(&net.guest, GUEST_IP, EXCHANGE);
    let vm = net.start_vmpod(config("tproxy", &entry("data", 9000, EXCHANGE, ""), ""));
    const N: usize = 1000;
    let target = addr(POD_IP, 9000);
    net.cluster
        .run(exchange(target, 10, 10))
        .expect("warm-up")
        .assert_intact(10, 10);
    let s = stats(&vm, "data");
    wait_until("the warm-up to end", Duration::from_secs(5), || {
        (get(&s.active) == 0).then_some(())
    });
    let baseline = fd_count();
    let peers = servers.peers.clone();
    let active = s.clone();
    let started = Instant::now();
    let peak = net.cluster.run(async move {
        let opens: Vec<_> = (0..N)
            .map(|_| tokio::spawn(Opened::open(target, 1000)))
            .collect();
        let mut opened = Vec::new();
        for o in opens {
            opened.push(o.await.unwrap().expect("connect"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let served = peers.lock().unwrap().len() - 1;
            if served == N {
                break;
            }
            assert!(Instant::now() < deadline, "the guest got {served} of {N}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            get(&active.active),
            N as u64,
            "all {N} open through vmpod at once"
        );
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
        "ingress: {N} concurrent exchanges in {:?}; fds: baseline {baseline}, peak {peak}",
        started.elapsed()
    );
    // Client and guest sockets, and two per connection in the forwarder.
    assert!(
        peak + 10 >= baseline + 4 * N,
        "peak {peak}, baseline {baseline}"
    );
    wait_until(
        "the fd count to return to baseline",
        Duration::from_secs(10),
        || (fd_count() <= baseline).then_some(()),
    );
    assert_eq!(get(&s.active), 0);
    assert_eq!(get(&s.accepted), N as u64 + 1);
    stop(&net, vm);
}

#[test]
fn the_connection_limit_is_per_port() {
    let _g = shared();
    let net = PodNet::new("portLimit");
    let _guest = guest_servers(&net);
    let ingress = format!(
        "{}{}",
        entry("echo", 9001, ECHO, "max_connections: 5"),
        entry("other", 9002, ECHO, "")
    );
    // The egress relay's limit is lower: the ingress port must not use it.
    let vm = net.start_vmpod(config("tproxy", &ingress, "    max_connections: 2\n"));
    let limited = stats(&vm, "echo");
    let counters = limited.clone();
    net.cluster.run(async move {
        let mut held = Vec::new();
        for i in 0..5u8 {
            let mut s = TcpStream::connect(addr(POD_IP, 9001))
                .await
                .expect("connect");
            s.write_all(&[b'a' + i]).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("echo within the limit");
            held.push(s);
        }
        assert_eq!(get(&counters.active), 5);
        let sixth = connect_and_read(addr(POD_IP, 9001)).await;
        assert_eq!(
            sixth
                .expect_err("the 6th connection must be refused")
                .kind(),
            io::ErrorKind::ConnectionReset
        );
        // Another port has its own budget.
        let mut other = Vec::new();
        for _ in 0..6 {
            let mut s = TcpStream::connect(addr(POD_IP, 9002))
                .await
                .expect("connect other");
            s.write_all(b"o").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("the other port serves");
            other.push(s);
        }
        for (i, s) in held.iter_mut().enumerate() {
            s.write_all(b"again").await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b)
                .await
                .unwrap_or_else(|e| panic!("connection {i} broke past the limit: {e}"));
            assert_eq!(&b, b"again");
        }
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&counters.active) > 0 {
            assert!(Instant::now() < deadline, "connections did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut s = TcpStream::connect(addr(POD_IP, 9001)).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("a slot freed up");
    });
    assert_eq!(get(&limited.refused), 1);
    assert_eq!(get(&stats(&vm, "other").refused), 0);
    stop(&net, vm);
}

// ---- PROXY protocol -----------------------------------------------------

/// Connects to `to` from `from_ns`, reads the header the guest's server
/// echoes before sending anything, then checks the data still flows.
fn header_seen_by_the_guest(from_ns: &Ns, to: SocketAddr) -> (Vec<u8>, SocketAddr) {
    from_ns.run(async move {
        let mut s = TcpStream::connect(to).await.expect("connect");
        let me = s.local_addr().unwrap();
        // Nothing is sent yet: the header must come anyway.
        let header = tokio::time::timeout(Duration::from_secs(5), read_proxy_header(&mut s))
            .await
            .expect("the header arrives before the client sends a byte")
            .expect("a PROXY header");
        s.write_all(b"client bytes").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            rest, b"client bytes",
            "the client's bytes follow the header"
        );
        (header, me)
    })
}

fn v2_expected(family: u8, src: &[u8], dst: &[u8], sport: u16, dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    h.push(family);
    h.extend_from_slice(&((src.len() * 2 + 4) as u16).to_be_bytes());
    h.extend_from_slice(src);
    h.extend_from_slice(dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_v2_header_bytes_reach_the_guest() {
    let _g = shared();
    let net = PodNet::new("ppv2");
    with_ipv6(&net);
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry("pp", 9010, PROXY_HEADER_ECHO, "proxy_protocol: v2"),
        "",
    ));
    let (header, me) = header_seen_by_the_guest(&net.cluster, addr(POD_IP, 9010));
    let cluster: std::net::Ipv4Addr = CLUSTER_IP.parse().unwrap();
    let pod: std::net::Ipv4Addr = POD_IP.parse().unwrap();
    assert_eq!(
        header,
        v2_expected(0x11, &cluster.octets(), &pod.octets(), me.port(), 9010),
        "TCP4 header"
    );
    assert_eq!(header.len(), 28);

    let (header, me) = header_seen_by_the_guest(&net.cluster, addr(POD_IP6, 9010));
    let cluster: std::net::Ipv6Addr = CLUSTER_IP6.parse().unwrap();
    let pod: std::net::Ipv6Addr = POD_IP6.parse().unwrap();
    assert_eq!(
        header,
        v2_expected(0x21, &cluster.octets(), &pod.octets(), me.port(), 9010),
        "TCP6 header"
    );
    assert_eq!(header.len(), 52);
    stop(&net, vm);
}

#[test]
fn proxy_protocol_v1_line_reaches_the_guest() {
    let _g = shared();
    let net = PodNet::new("ppv1");
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry("pp", 9010, PROXY_HEADER_ECHO, "proxy_protocol: v1"),
        "",
    ));
    let (header, me) = header_seen_by_the_guest(&net.cluster, addr(POD_IP, 9010));
    assert_eq!(
        String::from_utf8_lossy(&header),
        format!("PROXY TCP4 {CLUSTER_IP} {POD_IP} {} 9010\r\n", me.port())
    );
    stop(&net, vm);
}

// ---- UDP ----------------------------------------------------------------

#[test]
fn udp_echo_for_a_hundred_clients_each_gets_its_own_answers() {
    let _g = shared();
    let net = PodNet::new("udp100");
    with_ipv6(&net);
    net.pod.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{POD_IP_SECOND}/24"),
        "dev",
        "eth0",
    ]);
    let guest = guest_servers(&net);
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry("echo", UDP_ECHO, UDP_ECHO, "protocol: udp"),
        "",
    ));
    const N: usize = 100;
    // Connected clients accept answers only from the address they sent to:
    // some use the pod's second IPv4 address, some its IPv6 one.
    let target = |i: usize| match i % 4 {
        0 => (CLUSTER_IP6, addr(POD_IP6, UDP_ECHO)),
        1 => (CLUSTER_IP, addr(POD_IP_SECOND, UDP_ECHO)),
        _ => (CLUSTER_IP, addr(POD_IP, UDP_ECHO)),
    };
    let upstreams = net.cluster.run(async move {
        let mut clients = Vec::new();
        for i in 0..N {
            let (bind, to) = target(i);
            clients.push(udp_client(bind, to).await);
        }
        let rounds: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                tokio::spawn(async move {
                    let mut seen = HashSet::new();
                    for round in 0..3 {
                        let payload = format!("client {i} round {round}");
                        let answer = ask(&c, payload.as_bytes(), Duration::from_secs(5))
                            .await
                            .unwrap_or_else(|e| panic!("client {i} round {round}: {e}"));
                        assert!(
                            answer.ends_with(&format!(";{payload}")),
                            "client {i} got someone else's answer: {answer}"
                        );
                        seen.insert(answer_peer(&answer));
                    }
                    assert_eq!(seen.len(), 1, "client {i} moved between sessions: {seen:?}");
                    seen.into_iter().next().unwrap()
                })
            })
            .collect();
        let mut upstreams = HashSet::new();
        for r in rounds {
            upstreams.insert(r.await.unwrap());
        }
        upstreams
    });
    assert_eq!(upstreams.len(), N, "one upstream socket per client");
    assert!(
        upstreams.iter().all(|u| u.ip().to_string() == GATEWAY_IP),
        "{upstreams:?}"
    );
    assert_eq!(guest.udp_peers.lock().unwrap().len(), 3 * N);
    let s = stats(&vm, "echo");
    assert_eq!(get(&s.accepted), N as u64);
    assert_eq!(get(&s.active), N as u64);
    assert_eq!(get(&s.refused), 0);
    stop(&net, vm);
    wait_until(
        "the sessions to end with the relay",
        Duration::from_secs(5),
        || (get(&s.active) == 0).then_some(()),
    );
}

#[test]
fn udp_sessions_expire_when_idle_and_not_before() {
    let _g = shared();
    let net = PodNet::new("udpIdle");
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry(
            "echo",
            UDP_ECHO,
            UDP_ECHO,
            "protocol: udp\nudp_idle_timeout: 1s",
        ),
        "",
    ));
    let s = stats(&vm, "echo");
    let to = addr(POD_IP, UDP_ECHO);
    // Busy for 3 s, a datagram every 300 ms: one session throughout.
    let (client, first) = net.cluster.run(async move {
        let c = udp_client(CLUSTER_IP, to).await;
        let mut peers = HashSet::new();
        for i in 0..10 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let a = ask(&c, format!("busy {i}").as_bytes(), Duration::from_secs(2))
                .await
                .expect("answer");
            peers.insert(answer_peer(&a));
        }
        assert_eq!(peers.len(), 1, "an active session must not expire");
        (c, peers.into_iter().next().unwrap())
    });
    assert_eq!((get(&s.accepted), get(&s.expired)), (1, 0));
    // Then silent: gone after the timeout.
    let silent = Instant::now();
    wait_until("the idle session to expire", Duration::from_secs(5), || {
        (get(&s.expired) == 1).then_some(())
    });
    let took = silent.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "expired after only {took:?}"
    );
    assert_eq!(get(&s.active), 0);
    let second = net.cluster.run(async move {
        let a = ask(&client, b"again", Duration::from_secs(2))
            .await
            .expect("a new session answers");
        answer_peer(&a)
    });
    assert_eq!(
        get(&s.accepted),
        2,
        "the next datagram opened a new session"
    );
    eprintln!("upstream socket before expiry {first}, after {second}; expired after {took:?}");
    stop(&net, vm);
}

#[test]
fn udp_session_limit_drops_new_clients_only() {
    let _g = shared();
    let net = PodNet::new("udpLimit");
    let _guest = guest_servers(&net);
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry(
            "echo",
            UDP_ECHO,
            UDP_ECHO,
            "protocol: udp\nmax_sessions: 3\nudp_idle_timeout: 2s",
        ),
        "",
    ));
    let s = stats(&vm, "echo");
    let to = addr(POD_IP, UDP_ECHO);
    let (held, fourth) = net.cluster.run(async move {
        let mut held = Vec::new();
        for i in 0..3 {
            let c = udp_client(CLUSTER_IP, to).await;
            ask(&c, format!("c{i}").as_bytes(), Duration::from_secs(2))
                .await
                .expect("within the limit");
            held.push(c);
        }
        let fourth = udp_client(CLUSTER_IP, to).await;
        let err = ask(&fourth, b"c3", Duration::from_secs(1))
            .await
            .expect_err("a 4th client gets no answer at the limit");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        for (i, c) in held.iter().enumerate() {
            ask(c, b"still", Duration::from_secs(2))
                .await
                .unwrap_or_else(|e| panic!("session {i} broke at the limit: {e}"));
        }
        (held, fourth)
    });
    assert_eq!(get(&s.refused), 1, "the dropped datagram is counted");
    assert_eq!(get(&s.accepted), 3);
    wait_until(
        "the three sessions to expire",
        Duration::from_secs(8),
        || (get(&s.expired) == 3).then_some(()),
    );
    net.cluster.run(async move {
        ask(&fourth, b"c3 again", Duration::from_secs(2))
            .await
            .expect("a freed slot serves the 4th client");
        drop(held);
    });
    stop(&net, vm);
}

// ---- dnat -----------------------------------------------------------------

fn dnat_reaches_the_guest_from_the_cluster_and_the_pod(mode: &str) {
    require(&[("curl", "curl"), ("ss", "iproute2")]);
    let _g = shared();
    let net = PodNet::new(&format!("dnat{mode}"));
    let guest = guest_servers(&net);
    let ingress = format!(
        "{}{}{}",
        entry("http", 9080, HTTP, "mode: dnat"),
        entry("echo", 9007, UDP_ECHO, "protocol: udp\nmode: dnat"),
        entry("data", 9000, EXCHANGE, "mode: dnat"),
    );
    let config = config(mode, &ingress, "");
    let plan = vmpod::net::firewall::plan(&config);
    let vm = net.start_vmpod(config);
    assert_eq!(
        net.pod.sh(&["nft", "list", "table", "inet", "vmpod"]),
        plan.to_string(),
        "the kernel holds the planned table"
    );
    assert_eq!(
        net.pod
            .sh(&["sysctl", "-n", "net.ipv4.conf.virbr0.route_localnet"])
            .trim(),
        "1"
    );
    let tcp = pod_sockets(&net, "-ltn");
    let udp = pod_sockets(&net, "-lun");
    assert!(
        !tcp.iter()
            .any(|l| l.ends_with(":9080") || l.ends_with(":9000"))
            && !udp.iter().any(|l| l.ends_with(":9007")),
        "no listener for a dnat port: {tcp:?} {udp:?}"
    );
    assert!(vm.relays().ingress.is_empty(), "dnat ports have no relay");

    // From the cluster: the guest sees the client's own address.
    let url = format!("http://{POD_IP}:9080/");
    let body = curl(&net.cluster, &[&url]).unwrap_or_else(|e| panic!("{mode}: cluster: {e}"));
    assert_eq!(
        body,
        format!("hello from the guest; peer={CLUSTER_IP}\n"),
        "{mode}"
    );
    const TEN_MB: u64 = 10 * 1024 * 1024;
    let started = Instant::now();
    net.cluster
        .run(exchange(addr(POD_IP, 9000), TEN_MB, TEN_MB))
        .unwrap_or_else(|e| panic!("{mode}: 10 MB each way: {e}"))
        .assert_intact(TEN_MB, TEN_MB);
    eprintln!(
        "dnat ({mode} egress): 10 MB each way in {:?}",
        started.elapsed()
    );

    // From the pod itself, as a sidecar delivers: 127.0.0.1, and the pod
    // address from 127.0.0.6 (Envoy's inbound passthrough). The guest sees
    // the gateway.
    for args in [
        vec!["http://127.0.0.1:9080/".to_string()],
        vec![
            "--interface".into(),
            "127.0.0.6".into(),
            format!("http://{POD_IP}:9080/"),
        ],
        vec![format!("http://{POD_IP}:9080/")],
    ] {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let body = curl(&net.pod, &argv).unwrap_or_else(|e| panic!("{mode}: pod {args:?}: {e}"));
        assert!(
            body.starts_with("hello from the guest; peer="),
            "{mode}: {args:?}: {body}"
        );
        if args[0] != format!("http://{POD_IP}:9080/") {
            assert_eq!(
                body,
                format!("hello from the guest; peer={GATEWAY_IP}\n"),
                "{mode}: {args:?}: loopback sources are rewritten to the gateway"
            );
        }
    }

    // UDP both ways, from the cluster and from 127.0.0.1.
    let answers = [
        (&net.cluster, CLUSTER_IP, addr(POD_IP, 9007)),
        (&net.pod, "127.0.0.1", addr("127.0.0.1", 9007)),
    ]
    .map(|(ns, bind, to)| {
        ns.run(async move {
            let c = udp_client(bind, to).await;
            ask(&c, b"dnat udp", Duration::from_secs(3)).await
        })
    });
    let cluster_answer = answers[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("{mode}: udp cluster: {e}"));
    assert_eq!(answer_peer(cluster_answer).ip().to_string(), CLUSTER_IP);
    let pod_answer = answers[1]
        .as_ref()
        .unwrap_or_else(|e| panic!("{mode}: udp 127.0.0.1: {e}"));
    assert_eq!(answer_peer(pod_answer).ip().to_string(), GATEWAY_IP);
    assert_eq!(guest.udp_peers.lock().unwrap().len(), 2);

    stop(&net, vm);
    let after = curl(&net.cluster, &[&url]);
    assert!(
        after.is_err(),
        "{mode}: the port still forwards after teardown: {after:?}"
    );
}

/// A sidecar's capture of the port goes first, whichever table came
/// first: Istio-style REDIRECT of inbound TCP to an Envoy stand-in, which
/// delivers to the pod port from 127.0.0.6, and vmpod's output DNAT takes
/// that delivery to the guest.
#[test]
fn dnat_leaves_the_sidecar_capture_first() {
    require(&[("curl", "curl"), ("iptables", "iptables")]);
    let _g = shared();
    let net = PodNet::new("dnatSidecar");
    let _guest = guest_servers(&net);
    // The sidecar's rule is older than vmpod's table: at the same priority
    // the newer chain would run first and bypass the sidecar.
    net.pod.sh(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "9080",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15006",
    ]);
    let delivered = Arc::new(Mutex::new(0usize));
    let count = delivered.clone();
    let envoy = net.pod.run(async {
        TcpListener::bind("0.0.0.0:15006")
            .await
            .expect("bind 15006")
    });
    let _envoy = net.pod.spawn(async move {
        loop {
            let Ok((mut inbound, _)) = envoy.accept().await else {
                continue;
            };
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(addr("127.0.0.6", 0)).unwrap();
                let Ok(mut app) = sock.connect(addr(POD_IP, 9080)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut app).await;
            });
        }
    });
    let vm = net.start_vmpod(config(
        "tproxy",
        &entry("http", 9080, HTTP, "mode: dnat"),
        "",
    ));
    let body =
        curl(&net.cluster, &[&format!("http://{POD_IP}:9080/")]).expect("through the sidecar");
    assert_eq!(body, format!("hello from the guest; peer={GATEWAY_IP}\n"));
    assert_eq!(
        *delivered.lock().unwrap(),
        1,
        "the connection passed the sidecar"
    );
    stop(&net, vm);
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

// tproxy needs the guest's answers let past TPROXY; the others must not
// be disturbed by the dnat chains either.
per_mode!(dnat_reaches_the_guest_from_the_cluster_and_the_pod: tproxy, redirect, kernel);

// ---- bad input ----------------------------------------------------------

#[test]
fn a_busy_port_names_the_port_and_the_field() {
    let _g = shared();
    let net = PodNet::new("busy");
    let ingress = format!(
        "{}{}",
        entry("http", 9080, HTTP, ""),
        entry("echo", UDP_ECHO, UDP_ECHO, "protocol: udp")
    );
    let config = config("tproxy", &ingress, "");
    // Something else in the pod holds the UDP port.
    let holder = net
        .pod
        .run(async { UdpSocket::bind("0.0.0.0:7007").await.expect("hold") });
    let plan = plan_of(&config);
    let relays = plan.relays.clone();
    let err = net
        .pod
        .run(async move { Relays::start(&relays).err().map(|e| e.to_string()) })
        .expect("a busy UDP port must fail the start");
    assert!(
        err.contains("0.0.0.0:7007") && err.contains("network.ingress[1].port"),
        "{err}"
    );
    let err = net
        .pod
        .run(async move {
            vmpod::preflight::ports(&plan.listeners)
                .err()
                .map(|e| e.to_string())
        })
        .expect("preflight must see the busy UDP port");
    assert!(
        err.contains("port 7007/udp for network.ingress[1].port is already in use"),
        "{err}"
    );
    drop(holder);
    // The TCP listener of the first entry was closed with the failed start.
    let tcp = pod_sockets(&net, "-ltn");
    assert!(!tcp.iter().any(|l| l.ends_with(":9080")), "{tcp:?}");
}

#[test]
fn vmpod_run_with_a_busy_udp_port_exits_1_and_leaves_nothing() {
    require(&[
        ("libvirtd", "libvirt-daemon-system"),
        ("virtlogd", "libvirt-daemon-system"),
    ]);
    let _g = shared();
    let net = PodNet::new("busyRun");
    let dir = net.sandbox.state.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"not booted: the port check fails first").unwrap();
    let text = format!(
        "name: busy\nboot:\n  kernel: {}\nnetwork:\n  ingress:\n{}{}",
        kernel.display(),
        entry("http", 9080, 9080, ""),
        entry("dns", 5353, 53, "protocol: udp"),
    );
    let path = dir.join("vm.yaml");
    std::fs::write(&path, &text).unwrap();
    let before = net.pod_state();
    let holder = net
        .pod
        .run(async { UdpSocket::bind("0.0.0.0:5353").await.expect("hold") });
    let out = net
        .pod
        .command(&[env!("CARGO_BIN_EXE_vmpod"), "run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .expect("run vmpod");
    drop(holder);
    let log = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "exit 1 expected:\n{log}");
    assert!(
        log.contains("port 5353/udp for network.ingress[1].port is already in use"),
        "{log}"
    );
    assert!(
        !log.contains("daemon ready"),
        "nothing may start first:\n{log}"
    );
    assert_eq!(
        net.pod_state(),
        before,
        "a failed start must leave the pod as it was"
    );
    let links = net.pod.sh(&["ip", "-br", "link"]);
    assert!(!links.contains("virbr0"), "{links}");
    let leftover = Command::new("pgrep")
        .args(["-f", &path.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&leftover.stdout).trim().is_empty(),
        "a vmpod process outlived the failure"
    );
}
