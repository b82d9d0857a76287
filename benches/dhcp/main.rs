//! vmpod's DHCPv4 server alone, for deploy/bench/dhcp.sh: serves the guest
//! MAC on a bridge of the current network namespace until killed, exactly
//! as `vmpod run` would (the same `DhcpServer`, the options of the default
//! config). Not a test: the script measures it from a client namespace.
//!
//!   dhcp BRIDGE SERVER_IP GUEST_MAC GUEST_IP

use std::net::Ipv4Addr;
use std::time::Duration;

use vmpod::dhcp::{DhcpConfig, DhcpServer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; the script passes four values.
    let args: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [bridge, server, mac, guest] = args.as_slice() else {
        eprintln!("usage: dhcp BRIDGE SERVER_IP GUEST_MAC GUEST_IP (run by deploy/bench/dhcp.sh)");
        std::process::exit(2);
    };
    let server: Ipv4Addr = server.parse().expect("SERVER_IP");
    let mac: vmpod::config::MacAddr = mac.parse().expect("GUEST_MAC");
    let config = DhcpConfig {
        bridge: bridge.to_string(),
        server,
        guest_mac: mac.octets(),
        guest_ip: guest.parse().expect("GUEST_IP"),
        prefix_len: 24,
        router: Some(server),
        dns: vec![server],
        search: vec!["svc.cluster.local".into(), "cluster.local".into()],
        domain: None,
        mtu: Some(1500),
        hostname: Some("bench".into()),
        lease: Duration::from_secs(3600),
        routes: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dhcp = DhcpServer::bind(config).expect("bind the DHCP server");
        eprintln!("dhcp bench server: serving");
        dhcp.run().await;
    });
}
