//! The guest's link as vmpod's DHCP server and DNS forwarder see it, without
//! the rest of vmpod's network setup: a bridge in the pod namespace holding
//! the gateway address, with the guest's veth (the tap's stand-in) on it,
//! and the guest's MAC set to the one the server is configured for.
//!
//! Included with `#[path]` next to `podnet.rs`, whose `PodNet` it builds on.
#![allow(dead_code)]

use crate::podnet::{GATEWAY_IP, PodNet, TAP};

pub const BRIDGE: &str = "vmbr0";
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A `PodNet` whose guest veth is on a bridge holding GATEWAY_IP/24. With
/// `guest_address: false` the guest's eth0 has no address, as a DHCP
/// client starts.
pub fn bridged(test: &str, guest_address: bool) -> PodNet {
    let net = PodNet::new(test);
    let p = &net.pod;
    p.sh(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
    p.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{GATEWAY_IP}/24"),
        "dev",
        BRIDGE,
    ]);
    p.sh(&["ip", "link", "set", BRIDGE, "up"]);
    p.sh(&["ip", "link", "set", TAP, "master", BRIDGE]);
    let g = &net.guest;
    g.sh(&["ip", "link", "set", "eth0", "down"]);
    g.sh(&[
        "ip",
        "link",
        "set",
        "eth0",
        "address",
        &mac_text(&GUEST_MAC),
    ]);
    g.sh(&["ip", "link", "set", "eth0", "up"]);
    if !guest_address {
        g.sh(&["ip", "addr", "flush", "dev", "eth0"]);
    } else {
        // The flush of `ip link set down` took the default route with it.
        let _ = g
            .command(&["ip", "route", "replace", "default", "via", GATEWAY_IP])
            .status();
    }
    net
}
