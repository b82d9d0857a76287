//! `network.egress.udp: relay` with no VM: vmpod's network setup and relays
//! run in-process in a "pod" namespace, a "guest" namespace behind the
//! bridge plays the VM, and a UDP echo server in a "cluster" namespace
//! records who sent each datagram (see tests/support/podnet.rs). The guest
//! uses connected sockets, so it takes an answer only from the address it
//! sent to: the reply socket's transparent source is checked by the kernel.
//!
//! Needs root, `ip` and `nft`.

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podnet::{PodNet, Vmpod, config, wait_until};
use support::sandbox::{CLUSTER_IP, POD_IP};
use tokio::net::UdpSocket;
use vmpod::relay::udp_egress::{DropReason, UdpEgressStats};

const ECHO_PORT: u16 = 7007;

/// Every sender the echo server has seen, one entry per datagram.
type Seen = Arc<Mutex<Vec<SocketAddr>>>;

/// A UDP echo server on the cluster address.
fn echo_server(net: &PodNet) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let addr: SocketAddr = format!("{CLUSTER_IP}:{ECHO_PORT}").parse().unwrap();
    let socket = net
        .cluster
        .run(async move { UdpSocket::bind(addr).await.expect("bind echo") });
    net.cluster.spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            s.lock().unwrap().push(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    seen
}

fn relay_config(extra: &str) -> vmpod::config::VmConfig {
    let extra = extra.to_string();
    config("tproxy", move |t| {
        t.replace("    udp: masquerade\n", &format!("    udp: relay\n{extra}"))
    })
}

fn stats(vm: &Vmpod) -> Arc<UdpEgressStats> {
    vm.relays()
        .udp_egress
        .clone()
        .expect("the UDP egress relay runs")
}

fn echo_addr() -> SocketAddr {
    format!("{CLUSTER_IP}:{ECHO_PORT}").parse().unwrap()
}

/// `n` guest sockets, each connected to the echo server; each sends
/// `rounds` datagrams, one at a time, waiting `wait` for each answer and
/// sending at most `tries` times.
/// Per socket, the answers it got back intact.
async fn guest_sessions(n: usize, rounds: usize, wait: Duration, tries: usize) -> Vec<usize> {
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let s = UdpSocket::bind("0.0.0.0:0").await.expect("bind");
            s.connect(echo_addr()).await.expect("connect");
            let mut ok = 0;
            for r in 0..rounds {
                let msg = format!("session {i} round {r}");
                // As a real UDP client does: the datagram is sent again
                // when no answer came (UDP may lose one on a loaded
                // machine), and stale answers are skipped.
                'tries: for _ in 0..tries {
                    s.send(msg.as_bytes()).await.expect("send");
                    let mut buf = [0u8; 256];
                    while let Ok(Ok(len)) = tokio::time::timeout(wait, s.recv(&mut buf)).await {
                        if &buf[..len] == msg.as_bytes() {
                            ok += 1;
                            break 'tries;
                        }
                    }
                }
            }
            ok
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("session task"));
    }
    out
}

#[test]
fn guest_udp_leaves_as_the_pod_and_the_answers_come_back() {
    let net = PodNet::new("udpAsPod");
    let seen = echo_server(&net);
    let vm = net.start_vmpod(relay_config(""));
    let rules = net
        .pod
        .sh(&["nft", "list", "chain", "inet", "vmpod", "egress_tproxy"]);
    assert!(
        rules.contains("meta l4proto udp fib daddr type unicast tproxy ip to :9401"),
        "{rules}"
    );
    const SESSIONS: usize = 200;
    let got = net
        .guest
        .run(guest_sessions(SESSIONS, 3, Duration::from_secs(3), 3));
    let logs = podnet::logs_of(&net.pod);
    assert_eq!(got, vec![3; SESSIONS], "answers per guest socket:\n{logs}");
    let seen = seen.lock().unwrap().clone();
    // At least one datagram per round (more where one was sent again).
    assert!(seen.len() >= 3 * SESSIONS, "{}", seen.len());
    assert!(
        seen.iter().all(|a| a.ip().to_string() == POD_IP),
        "the server must see only the pod's address: {seen:?}"
    );
    let mut ports: Vec<u16> = seen.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), SESSIONS, "one pod socket per guest session");
    let s = stats(&vm);
    let get = UdpEgressStats::get;
    assert_eq!(get(&s.sessions_opened), SESSIONS as u64);
    assert_eq!(get(&s.sessions_active), SESSIONS as u64);
    let resent = seen.len() as u64 - 3 * SESSIONS as u64;
    assert!(get(&s.datagrams_out) >= 3 * SESSIONS as u64);
    assert!(get(&s.datagrams_in) >= 3 * SESSIONS as u64);
    assert!(get(&s.bytes_out) > 0);
    // Only a datagram the kernel would not take at once may be dropped,
    // and then the guest sent it again.
    for why in DropReason::ALL {
        let allowed = if why == DropReason::Send {
            resent + 3
        } else {
            0
        };
        assert!(
            s.dropped(why) <= allowed,
            "{}: {}",
            why.as_str(),
            s.dropped(why)
        );
    }
    // The guest's DNS to the gateway is not the relay's: the rule leaves
    // local destinations alone (nothing listens there in this test).
    let before = get(&s.datagrams_out);
    net.guest.run(async {
        let s = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        s.send_to(b"not relayed", "10.0.1.1:53").await.unwrap();
        s.send_to(b"not relayed", "255.255.255.255:9").await.ok();
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        get(&s.datagrams_out),
        before,
        "gateway and broadcast are not relayed"
    );
    let errors = net.stop_vmpod(vm);
    assert!(errors.is_empty(), "teardown failed: {errors:?}");
    assert_eq!(get(&s.sessions_active), 0, "stopping ends every session");
}

#[test]
fn idle_sessions_are_evicted_and_past_the_limit_datagrams_are_dropped() {
    let net = PodNet::new("udpLimit");
    let seen = echo_server(&net);
    let vm = net.start_vmpod(relay_config(
        "    udp_idle_timeout: 1s\n    udp_stream_timeout: 2s\n    udp_max_sessions: 3\n",
    ));
    let s = stats(&vm);
    let get = UdpEgressStats::get;
    // Five guest sockets at once: three sessions fit, two are dropped.
    let got = net
        .guest
        .run(guest_sessions(5, 1, Duration::from_millis(1500), 1));
    let answered = got.iter().filter(|&&n| n == 1).count();
    assert_eq!(answered, 3, "answers per socket: {got:?}");
    assert_eq!(s.dropped(DropReason::SessionLimit), 2);
    assert_eq!(get(&s.sessions_opened), 3);
    assert_eq!(seen.lock().unwrap().len(), 3);
    // Answered once, with one datagram each way: both ways, so the stream
    // timeout (2 s) applies.
    wait_until("the sessions to idle out", Duration::from_secs(6), || {
        (get(&s.sessions_active) == 0).then_some(())
    });
    assert_eq!(get(&s.sessions_evicted), 3);
    // The table has room again.
    let got = net
        .guest
        .run(guest_sessions(3, 1, Duration::from_secs(2), 1));
    assert_eq!(got, vec![1; 3]);
    assert_eq!(get(&s.sessions_opened), 6);
    let errors = net.stop_vmpod(vm);
    assert!(errors.is_empty(), "teardown failed: {errors:?}");
}

#[test]
fn a_one_way_session_ends_at_the_idle_timeout() {
    let net = PodNet::new("udpIdle");
    // Nothing answers on the cluster's port 7008: datagrams go one way.
    let vm = net.start_vmpod(relay_config(
        "    udp_idle_timeout: 1s\n    udp_stream_timeout: 30s\n",
    ));
    let s = stats(&vm);
    let get = UdpEgressStats::get;
    net.guest.run(async {
        let s = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let to: SocketAddr = format!("{CLUSTER_IP}:7008").parse().unwrap();
        s.send_to(b"anyone?", to).await.unwrap();
    });
    wait_until("the session to open", Duration::from_secs(2), || {
        (get(&s.sessions_opened) == 1).then_some(())
    });
    let opened = std::time::Instant::now();
    wait_until(
        "the one-way session to idle out",
        Duration::from_secs(5),
        || (get(&s.sessions_evicted) == 1).then_some(()),
    );
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "a session never answered ends at udp_idle_timeout, not the stream timeout"
    );
    let errors = net.stop_vmpod(vm);
    assert!(errors.is_empty(), "teardown failed: {errors:?}");
}
