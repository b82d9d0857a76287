//! Policy routing for TPROXY: packets carrying vmpod's mark are looked up in
//! a table of vmpod's own whose default route is `local`, so the kernel
//! delivers the guest's connections to the transparent listener.

use std::fmt;

use crate::config::{EgressMode, VmConfig};

/// Priority of vmpod's rule: before `main` (32766), after `local` (0), and
/// clear of Istio's (32764/32765 in ambient mode).
pub const RULE_PRIORITY: u32 = 32000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRoute {
    pub fwmark: u32,
    pub table: u32,
    pub priority: u32,
    pub ipv6: bool,
}

/// The policy route `config` needs: only tproxy mode has one.
pub fn plan(config: &VmConfig) -> Option<PolicyRoute> {
    let egress = &config.network.egress;
    (egress.mode == EgressMode::Tproxy).then(|| PolicyRoute {
        fwmark: egress.fwmark,
        table: egress.route_table,
        priority: RULE_PRIORITY,
        ipv6: config.network.gateway.addr().is_ipv6(),
    })
}

impl fmt::Display for PolicyRoute {
    /// The `ip` commands an operator would type for the same state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (family, default) = if self.ipv6 {
            ("-6 ", "::/0")
        } else {
            ("", "0.0.0.0/0")
        };
        writeln!(
            f,
            "ip {family}rule add fwmark {:#x}/{:#x} lookup {} priority {}",
            self.fwmark, self.fwmark, self.table, self.priority
        )?;
        write!(
            f,
            "ip {family}route add local {default} dev lo table {}",
            self.table
        )
    }
}
