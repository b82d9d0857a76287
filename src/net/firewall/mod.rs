//! The one nftables table vmpod owns: `table inet vmpod`.
//!
//! [`plan`] turns the config into a typed table (chains of rules); its
//! `Display` is the nft syntax, the same shape `nft list table inet vmpod`
//! prints. [`FirewallPlan::script`] wraps it into an atomic, idempotent
//! `nft -f -` transaction that replaces our table whatever state it is in,
//! and [`FirewallPlan::delete_script`] removes it. Neither ever touches
//! another table: the sidecar's tables share this network namespace, so
//! `flush ruleset` is never used.
//!
//! What the table does, per egress mode (S = guest subnet, B = bridge):
//! - `tproxy`: guest TCP from S to a non-local destination is handed to the
//!   transparent egress listener by `tproxy` just after mangle priority (after
//!   a mesh's own TPROXY, which it overrides) and marked;
//!   packets of connections the listener already holds (`socket
//!   transparent 1`) get the same mark. The policy route `fwmark M lookup T`
//!   with a `local` default route in T is set up by rtnetlink, not here.
//! - `redirect`: guest TCP is `redirect`ed to the listener in nat prerouting
//!   (`guest_nat_first`); the listener reads the original destination with
//!   SO_ORIGINAL_DST.
//! - `kernel`: no proxy chain; guest traffic is forwarded and masqueraded.
//!
//! Any mesh, no annotation: a mesh captures the pod's *inbound* TCP with a
//! nat REDIRECT in prerouting (Istio sidecar and ambient to 15006, Linkerd
//! to 4143) and its outbound TCP with one in output. The guest's packets
//! arrive in prerouting, and vmpod's hop to the guest leaves through output,
//! so both would be captured. The kernel binds a connection's NAT once, at
//! its first packet, running the nat chains of all tables at a hook in
//! priority order and skipping the rest once one has bound it. So
//! `guest_nat_first` (prerouting, dstnat - 10) binds every new connection
//! from B (redirect mode's redirect, else an identity DNAT to its own
//! destination) and `pod_to_guest_nat_first` (output, -110) binds every new
//! connection to B; the meshes' chains (iptables-nft and istio-nftables use
//! -100) never see them. The relays' upstream connections are ordinary
//! connections of the pod and stay the mesh's to capture.
//!
//! Ingress ports in `mode: dnat` are forwarded by the kernel: DNAT to the
//! guest for traffic arriving at a pod address (`ingress_dnat`) and for
//! traffic the pod sends itself, e.g. a sidecar delivering from 127.0.0.6
//! (`ingress_dnat_local`), and SNAT to the gateway for what came from the
//! pod's loopback, which the guest could not answer (`ingress_dnat_snat`,
//! with `route_localnet` on B; KubeVirt's masquerade binding does the same).
//! Both DNAT chains run just after the standard dstnat priority, so a
//! sidecar's own capture of the port (Istio's REDIRECT to Envoy) goes first
//! and its delivery then reaches the guest through the output rule. In
//! tproxy mode the guest's answers on these connections are let past TPROXY.
//!
//! In every mode, traffic the proxy does not carry (UDP unless `udp: off`,
//! ICMP, TCP to excluded destinations) is masqueraded behind the pod's
//! address when it leaves other than through B. At every address of the
//! pod (the gateway is one of them) the guest reaches only what
//! `network.guest_access` lists, plus vmpod's DHCP and DNS (`guest_input`):
//! the pod's listeners are not the guest's to use, and vmpod's health and
//! console ports, for the kubelet, Prometheus and console users, are
//! refused even when listed. Destinations of `network.egress.deny` (the
//! metadata service by default) skip the proxy rules and are refused in
//! `guest_forward`, so the refusal holds in every egress mode. Every rule
//! carries a `comment` saying why, for the operator reading `nft list table`.
//!
//! The module is split by job: [`model`] holds the rule types, [`plan`]
//! turns the config into a table of them, [`render`] writes them as nft
//! syntax (quoting every string).

mod model;
mod plan;
mod render;
#[cfg(test)]
mod tests;

pub use model::*;
pub use plan::{Ipv6Guest, plan, plan_for};

/// The address family of vmpod's table: one table for IPv4 and IPv6.
pub const TABLE_FAMILY: &str = "inet";
/// The name of vmpod's table.
pub const TABLE_NAME: &str = "vmpod";

const DELETE_SCRIPT: &str = "delete table inet vmpod\n";

impl FirewallPlan {
    /// The apply script for `nft -f -`: one transaction that creates the
    /// table if missing (so the delete cannot fail), deletes it with
    /// everything in it, and creates it anew. Applying it twice gives the
    /// same table; other tables are untouched.
    pub fn script(&self) -> String {
        format!(
            "# vmpod: replace table {TABLE_FAMILY} {TABLE_NAME} in one transaction; no other table is touched.\n\
             table {TABLE_FAMILY} {TABLE_NAME} {{}}\n\
             delete table {TABLE_FAMILY} {TABLE_NAME}\n\
             {self}"
        )
    }

    /// The teardown script for `nft -f -`. It fails when the table does not
    /// exist; the caller decides whether that matters.
    pub fn delete_script() -> &'static str {
        DELETE_SCRIPT
    }
}
