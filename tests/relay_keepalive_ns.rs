//! Issue 16, dead peers: a relayed connection whose client vanishes
//! without a FIN (every packet to and from it dropped by nftables) is freed
//! by TCP keepalive, not held for the idle timeout (1 h here). Everything
//! runs on the loopback of a fresh network namespace: the client at
//! 127.0.0.3, the relay and its upstream at 127.0.0.1.
//!
//! Needs root, `ip` and `nft`.

#[path = "support/podnet.rs"]
mod podnet;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podnet::Ns;
use support::sandbox::{require, run_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use vmpod::relay::copy::Timeouts;
use vmpod::relay::drain::Drainer;
use vmpod::relay::ingress::IngressDestination;
use vmpod::relay::proxy::{self, ProxySettings};
use vmpod::relay::socket::{Keepalive, tcp_listener};
use vmpod::relay::stats::RelayStats;

/// A namespace deleted on drop, even when the test fails.
struct NetnsGuard(String);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

const KEEPALIVE: Keepalive = Keepalive {
    idle: Duration::from_secs(1),
    interval: Duration::from_secs(1),
    count: 2,
};

#[test]
fn a_client_that_vanishes_without_a_fin_is_freed_by_keepalive() {
    require(&[("ip", "iproute2"), ("nft", "nftables")]);
    let name = format!("vmpod-ka-{}", std::process::id());
    run_ok(std::process::Command::new("ip").args(["netns", "add", &name]));
    let _guard = NetnsGuard(name.clone());
    let ns = Ns::enter(&name);
    ns.sh(&["ip", "link", "set", "lo", "up"]);

    let stats = Arc::new(RelayStats::default());
    let (_drainer, drain) = Drainer::new();
    let st = stats.clone();
    let (relay, upstream_end) = ns.run(async move {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let relay: SocketAddr = listener.local_addr().unwrap();
        let settings = ProxySettings {
            connect_timeout: Duration::from_secs(5),
            timeouts: Timeouts {
                idle: Duration::from_secs(3600),
                half_closed: Duration::from_secs(60),
            },
            max_connections: 10,
            proxy_protocol: None,
            keepalive: Some(KEEPALIVE),
            accel: vmpod::relay::accel::test_mode(),
        };
        tokio::spawn(proxy::serve(
            "ingress",
            listener,
            Arc::new(IngressDestination { guest: up_addr }),
            settings,
            settings.limit(),
            st,
            drain,
        ));
        // The upstream's side: how (and when) its connection ended.
        let upstream_end = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut b = [0u8; 16];
            let n = s.read(&mut b).await.unwrap();
            s.write_all(&b[..n]).await.unwrap();
            let r = s.read(&mut b).await;
            (Instant::now(), r.map_err(|e| e.kind()))
        });
        (relay, upstream_end)
    });
    let client = ns.run(async move {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut c = sock.connect(relay).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");
        c
    });
    assert_eq!(RelayStats::get(&stats.active), 1);
    // The client vanishes: no FIN, no RST, nothing in either direction.
    ns.sh(&["nft", "add", "table", "inet", "vanish"]);
    ns.sh(&[
        "nft",
        "add chain inet vanish in { type filter hook input priority 0; }",
    ]);
    ns.sh(&["nft", "add rule inet vanish in ip saddr 127.0.0.3 drop"]);
    ns.sh(&["nft", "add rule inet vanish in ip daddr 127.0.0.3 drop"]);
    let vanished = Instant::now();
    let (ended_at, how) = ns.join(upstream_end);
    let freed_after = ended_at - vanished;
    eprintln!(
        "keepalive {KEEPALIVE:?}: the dead client's connection was freed {freed_after:?} after it vanished ({how:?} upstream)"
    );
    // idle 1 s + 2 probes 1 s apart = about 3 s; well under the idle timeout.
    assert!(
        freed_after >= Duration::from_secs(2) && freed_after < Duration::from_secs(10),
        "freed after {freed_after:?}"
    );
    assert!(
        how.is_err(),
        "the upstream is reset (the relay failed the connection): {how:?}"
    );
    let t = Instant::now();
    while RelayStats::get(&stats.active) > 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(RelayStats::get(&stats.active), 0, "the relay freed it");
    drop(client);
}
